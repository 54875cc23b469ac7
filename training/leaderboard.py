"""Leaderboard: train the lineage on one task each and write the README table and its plots.

    python -m training leaderboard                        quick profile, 60 s per language model
    python -m training leaderboard --lm-seconds 120 --profile full

Genre classification (comedy / history / tragedy) of the test plays' passages by the MLP, CNN, RNN,
LSTM, GRU and BERT classifiers, beside a TF-IDF + logistic-regression baseline fitted on the very same
passages and split, so every network is measured against what a linear model gets. Each network is
trained with ``--seeds`` seeds (mean ± standard deviation in the table, every seed in a plot), and each
word-level one with random embeddings and with embeddings started from word2vec. Language
modelling: the RNN, LSTM and GRU language models and the GPT, all on characters of the same plays,
each trained for the same wall-clock budget (``--lm-seconds``), compared in validation bits per
character, with their validation loss plotted against training time.

Everything it trains goes to ``<out>/.leaderboard/`` (hidden from the service, so served checkpoints
are never replaced), except that an existing ``<out>/bert`` is fine-tuned rather than pretrained
again and an existing ``<out>/word2vec-sg`` gives the word2vec vectors (to the word-level classifiers, and to
BERT's pretraining where its profile starts from them). The table replaces whatever is
between ``MARKERS`` in the README (a section is added if they are missing); the plots and a JSON of every
figure go to ``docs/``.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import os
import platform
import time
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import torch

from models.checkpoint import load_checkpoint
from training.classifier import ALL_ARCHITECTURES, classification_metrics, genre_passages
from training.data import GENRE_LABELS

log = logging.getLogger("training.leaderboard")

MARKERS = ("<!-- leaderboard:start -->", "<!-- leaderboard:end -->")
LM_CELLS = ("rnn", "lstm", "gru")
GPT_NAME = "leaderboard-char"
# The GPT gets the shape and schedule that bench/gpt_cpu.py measured for a CPU budget of minutes (nanoGPT's
# CPU recipe with a learning rate of 2e-3): the served profile's 512-token context takes too few steps in a
# minute to be a fair entry. Its precision is the loop's `auto`: bf16 only where it pays (GPUs, AMX CPUs);
# measured: forced bf16 on an AVX-512-BF16 CPU without AMX took 0.71x the steps of fp32 in its minute (859
# against 1,203), and ended at 2.95 bits/char against 2.78.
GPT_FLAGS = ("--n-layer", "4", "--n-head", "4", "--n-embd", "128", "--block-size", "64", "--batch-size", "12",
             "--lr", "2e-3", "--min-lr", "2e-4", "--warmup-steps", "30", "--beta2", "0.99", "--dropout", "0")
BASELINE_C = (0.3, 1.0, 3.0, 10.0)  # inverse regularisation strengths tried; validation macro-F1 picks one
NAMES = {"mlp": "MLP (bag of embeddings)", "cnn": "TextCNN", "rnn": "RNN", "lstm": "LSTM", "gru": "GRU",
         "bert": "BERT (fine-tuned)"}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    g = parser.add_argument_group("leaderboard")
    g.add_argument("--lm-seconds", type=float, default=60.0,
                   help="wall-clock training budget of each language model")
    g.add_argument("--eval-interval", type=int, default=25,
                   help="language models: steps between the validation checks that make the plot")
    g.add_argument("--readme", type=Path, default=Path("README.md"), help="the README whose table is replaced")
    g.add_argument("--docs", type=Path, default=Path("docs"), help="where the plot and the JSON go")
    g.add_argument("--reuse", action="store_true",
                   help="keep the classifiers (and BERT) an earlier run with the same profile and seed left in "
                        "<out>/.leaderboard; the language models are always trained again, their budget being "
                        "the comparison")
    g.add_argument("--seeds", type=int, default=3,
                   help="train every classifier with this many seeds (--seed, --seed + 1, ...) and report the mean "
                        "and standard deviation; BERT is pretrained once for all of them")
    g.add_argument("--skip", nargs="+", default=[], metavar="ROW",
                   choices=[*ALL_ARCHITECTURES, "word2vec", "gpt", *(f"lm-{c}" for c in LM_CELLS)],
                   help="leave these rows out (e.g. bert gpt when their code is not installed; word2vec: the "
                        "classifiers whose embeddings start from word2vec)")


# ---- running the trainers --------------------------------------------------------------------------


def _run(argv: list[str]) -> Path:
    """Train one checkpoint through the CLI's own parser, so flags and profiles are exactly the command's."""
    from training.cli import run_command

    (path,) = run_command(argv)
    return path


def _reusable(args: argparse.Namespace, path: Path, seed: int) -> bool:
    """With --reuse: a checkpoint an earlier leaderboard run trained with this profile and seed."""
    if not args.reuse or not (path / "config.json").is_file():
        return False
    settings = load_checkpoint(path).config.get("recipe", {}).get("settings", {})
    return settings.get("profile") == args.profile and settings.get("seed") == seed


def _common(args: argparse.Namespace, runs: Path, seed: int | None = None) -> list[str]:
    return ["--profile", args.profile, "--seed", str(args.seed if seed is None else seed), "--out", str(runs),
            "--device", args.device]


def seeds(args: argparse.Namespace) -> list[int]:
    if args.seeds < 1:
        raise ValueError(f"--seeds must be at least 1, got {args.seeds}")
    return [args.seed + k for k in range(args.seeds)]


# ---- classification --------------------------------------------------------------------------------


def tfidf_baseline(seed: int) -> dict[str, Any]:
    """TF-IDF (words and word pairs, sublinear counts) + logistic regression with balanced class weights."""
    from sklearn.feature_extraction.text import TfidfVectorizer
    from sklearn.linear_model import LogisticRegression

    train, validation, test = (genre_passages(part) for part in ("train", "validation", "test"))
    index = {label: i for i, label in enumerate(GENRE_LABELS)}
    started = time.perf_counter()
    vectorizer = TfidfVectorizer(sublinear_tf=True, ngram_range=(1, 2), min_df=2)
    x_train = vectorizer.fit_transform([text for _, text in train])
    y_train = [index[label] for label, _ in train]
    x_val = vectorizer.transform([text for _, text in validation])
    best: tuple[float, Any, float] | None = None
    for c in BASELINE_C:
        model = LogisticRegression(C=c, class_weight="balanced", max_iter=2000, random_state=seed).fit(x_train, y_train)
        score = classification_metrics([index[label] for label, _ in validation], model.predict(x_val).tolist(),
                                        GENRE_LABELS)["macro_f1"]
        if best is None or score > best[0]:
            best = (score, model, c)
    assert best is not None
    _, model, c = best
    seconds = time.perf_counter() - started
    predicted = model.predict(vectorizer.transform([text for _, text in test])).tolist()
    test_metrics = classification_metrics([index[label] for label, _ in test], predicted, GENRE_LABELS)
    return {"test_accuracy": test_metrics["accuracy"], "test_macro_f1": test_metrics["macro_f1"],
            "parameters": int(model.coef_.size + model.intercept_.size), "train_seconds": round(seconds, 1),
            "C": c, "features": len(vectorizer.vocabulary_), "test": test_metrics}


def _pretrained(args: argparse.Namespace, runs: Path, command: str, served: Path, extra: Sequence[str] = ()) -> Path:
    """The served checkpoint (``<out>/bert``, ``<out>/word2vec-sg``) if there is one, else one trained once
    for the leaderboard: every seed of the classifiers that start from it shares it."""
    if (served / "config.json").is_file():
        return served
    mine = runs / served.name
    return mine if _reusable(args, mine, args.seed) else _run([command, *_common(args, runs), *extra])


def _bert_starts_from_word2vec(profile: str) -> bool:
    """Whether BERT's pretraining profile starts its WordPiece embeddings from word2vec."""
    from training.bert import PROFILES

    return PROFILES[profile].get("embeddings") == "word2vec"


def spread(values: list[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (0 for one value)."""
    mean = sum(values) / len(values)
    variance = sum((v - mean) ** 2 for v in values) / (len(values) - 1) if len(values) > 1 else 0.0
    return round(mean, 4), round(math.sqrt(variance), 4)


def classifier_row(args: argparse.Namespace, runs: Path, arch: str, model: str, extra: list[str],
                   name: str, note: str = "") -> dict[str, Any]:
    """One classifier trained with every seed: the mean and spread of its test figures."""
    per_seed = []
    for seed in seeds(args):
        path = runs / f"clf-{name}-seed{seed}"
        if not _reusable(args, path, seed):
            path = _run(["classifier", "--arch", arch, "--name", f"{name}-seed{seed}", *extra,
                         *(["--epochs", str(args.epochs)] if args.epochs is not None else []),
                         *_common(args, runs, seed)])
        m = load_checkpoint(path).metrics
        per_seed.append({"seed": seed, "id": path.name, **{k: m[k] for k in (
            "test_accuracy", "test_macro_f1", "val_macro_f1", "train_seconds", "parameters", "test")}})
    accuracy, accuracy_std = spread([r["test_accuracy"] for r in per_seed])
    macro_f1, macro_f1_std = spread([r["test_macro_f1"] for r in per_seed])
    return {"model": model, "id": f"clf-{name}", "test_accuracy": accuracy, "test_accuracy_std": accuracy_std,
            "test_macro_f1": macro_f1, "test_macro_f1_std": macro_f1_std,
            "val_macro_f1": spread([r["val_macro_f1"] for r in per_seed])[0],
            "parameters": per_seed[0]["parameters"],
            "train_seconds": round(sum(r["train_seconds"] for r in per_seed) / len(per_seed), 1),
            "note": note, "test": per_seed[0]["test"], "seeds": per_seed}


def classification_rows(args: argparse.Namespace, runs: Path) -> list[dict[str, Any]]:
    rows = [{"model": "TF-IDF + logistic regression (baseline)", "id": "tfidf-lr", **tfidf_baseline(args.seed)}]
    bert_word2vec = "bert" not in args.skip and _bert_starts_from_word2vec(args.profile)
    word2vec = (_pretrained(args, runs, "word2vec", Path(args.out) / "word2vec-sg")
                if "word2vec" not in args.skip or bert_word2vec else None)
    for arch in ALL_ARCHITECTURES:
        if arch in args.skip:
            continue
        if arch == "bert":
            bert = _pretrained(args, runs, "bert", Path(args.out) / "bert",
                               ["--word2vec", str(word2vec)] if bert_word2vec else [])
            pretraining = load_checkpoint(bert).metrics.get("train_seconds")
            rows.append(classifier_row(args, runs, arch, NAMES[arch], ["--bert", str(bert)], arch,
                                       f"+ {pretraining:.0f} s pretraining" if pretraining else ""))
            continue
        rows.append(classifier_row(args, runs, arch, NAMES[arch], ["--embeddings", "random"], arch))
        if "word2vec" not in args.skip:
            linked = ["--embeddings", "word2vec", "--word2vec", str(word2vec),
                      "--embed-dim", str(load_checkpoint(word2vec).config["model"]["dim"])]
            rows.append(classifier_row(args, runs, arch, f"{NAMES[arch]} + word2vec", linked, f"{arch}-word2vec"))
    return rows


# ---- language modelling ----------------------------------------------------------------------------


def lm_rows(args: argparse.Namespace, runs: Path) -> list[dict[str, Any]]:
    budget = ["--max-seconds", str(args.lm_seconds), "--eval-interval",
              str(args.eval_interval), "--eval-batches", "4", "--tokenizer", "char"]
    commands = [(f"lm-{cell}", NAMES[cell] + " LM", ["lm", "--cell", cell]) for cell in LM_CELLS]
    commands.append(("gpt", "GPT", ["gpt", "--name", GPT_NAME, *GPT_FLAGS]))
    rows = []
    for row, name, command in commands:
        if row in args.skip:
            continue
        checkpoint = load_checkpoint(_run([*command, *budget, *_common(args, runs)]))
        m = checkpoint.metrics
        # The checks during training read a few windows; the last point is the full validation text.
        curve = [(e["seconds"], e["val_loss"] / math.log(2)) for e in m["evaluations"]]
        curve.append((m["train_seconds"], m["val_bpc"]))
        rows.append({"model": name, "id": checkpoint.id, "val_bpc": m["val_bpc"], "parameters": m["parameters"],
                     "steps": m["steps"], "train_seconds": m["train_seconds"],
                     "tokens_per_second": m["tokens_per_second"], "curve": curve})
    if rows and rows[-1]["model"] == "GPT":
        window = load_checkpoint(runs / rows[-1]["id"]).config["model"]["block_size"]
        rows[-1]["val_bpc_windows"], rows[-1]["window"] = rows[-1]["val_bpc"], window
        for row in rows[:-1]:
            row["val_bpc_windows"], row["window"] = windowed_bpc(runs / row["id"], window, args.device), window
    return rows


def windowed_bpc(path: Path, window: int, device_name: str) -> float:
    """A recurrent model scored as the GPT is: consecutive windows of ``window`` tokens, each from a zero
    state, so the two columns compare like with like (the recurrent models' own figure carries the state)."""
    from models.rnn import load
    from models.tokenizers import load_text_tokenizer
    from training import loop, text
    from training.common import pick_device

    device = pick_device(device_name)
    checkpoint = load_checkpoint(path)
    model = load(checkpoint, device)
    tokenizer = load_text_tokenizer(checkpoint, model.config.vocab_size)
    _, val_docs, _ = text.read_documents(None, 0.1)
    ids = text.encode(tokenizer, val_docs)
    with loop.autocast(device, loop.resolve_precision("auto", device)):
        nats, _ = text.window_loss(model, ids, window, device)
    return round(nats / text.predicted_chars(tokenizer, val_docs, ids) / math.log(2), 5)


def plot(rows: list[dict[str, Any]], path: Path, budget: float) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.2), dpi=120)
    for row in rows:
        # The checks during training read a few windows; the star is the full validation text at the end.
        seconds, bpc = zip(*row["curve"][:-1], strict=True) if len(row["curve"]) > 1 else ((), ())
        line, = ax.plot(seconds, bpc, marker="o", markersize=3, label=f"{row['model']} ({row['val_bpc']:.2f})")
        ax.plot(*row["curve"][-1], marker="*", markersize=11, color=line.get_color())
    ax.set_xlabel("training time (s)")
    ax.set_ylabel("validation loss (bits per character)")
    ax.set_title(f"Character language models, {budget:g} s each on {torch.get_num_threads()} CPU threads")
    ax.grid(alpha=0.3)
    ax.legend(title="model (★ final val bits/char)")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)


def plot_classifiers(rows: list[dict[str, Any]], path: Path) -> None:
    """Every seed's test macro-F1 as a dot, the mean as a bar, the baseline as a line."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    baseline, networks = rows[0], rows[1:]
    fig, ax = plt.subplots(figsize=(7, 0.9 + 0.35 * len(networks)), dpi=120)
    for y, row in enumerate(networks):
        ax.barh(y, row["test_macro_f1"], xerr=row.get("test_macro_f1_std", 0.0), color="#9ecae1", capsize=3)
        values = [r["test_macro_f1"] for r in row.get("seeds", [row])]
        ax.plot(values, [y] * len(values), "o", color="#08519c", markersize=4)
    ax.axvline(baseline["test_macro_f1"], color="#d62728", linestyle="--", label=baseline["model"])
    ax.set_yticks(range(len(networks)), [row["model"] for row in networks])
    ax.invert_yaxis()
    lowest = min(min(r["test_macro_f1"] for r in row.get("seeds", [row])) for row in rows)
    ax.set_xlim(max(0.0, lowest - 0.05), 1.0)
    ax.set_xlabel("test macro-F1 (dots: seeds; bars: mean ± std)")
    ax.grid(axis="x", alpha=0.3)
    ax.legend(loc="lower right", fontsize="small")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)


# ---- the README table ------------------------------------------------------------------------------


def _spread(row: dict[str, Any], key: str) -> str:
    return f"{row[key]:.3f} ± {row[key + '_std']:.3f}" if f"{key}_std" in row else f"{row[key]:.3f}"


def _seconds(row: dict[str, Any]) -> str:
    text = f"{row['train_seconds']:.1f}"
    return f"{text} {row['note']}" if row.get("note") else text


def table(classifiers: list[dict[str, Any]], lms: list[dict[str, Any]], args: argparse.Namespace,
          plot_path: Path) -> str:
    command = "python -m training leaderboard" + (f" --profile {args.profile}" if args.profile != "quick" else "")
    command += f" --seeds {args.seeds}" if getattr(args, "seeds", 3) != 3 else ""
    command += f" --lm-seconds {args.lm_seconds:g}" if args.lm_seconds != 60 else ""
    lines = [
        f"Measured with `{command}` ({datetime.now(UTC):%Y-%m-%d}, {platform.machine()}, "
        f"{torch.get_num_threads()} CPU threads, torch {torch.__version__}).",
        "",
        f"**Genre of a passage** (comedy / history / tragedy; {classifiers[0]['test']['examples']} passages of "
        "the 7 held-out test plays):",
        "",
        "| Model | Test accuracy | Test macro-F1 | Parameters | Training (s) |",
        "|---|---:|---:|---:|---:|",
    ]
    for row in classifiers:
        lines.append(f"| {row['model']} | {_spread(row, 'test_accuracy')} | {_spread(row, 'test_macro_f1')} | "
                     f"{row['parameters']:,} | {_seconds(row)} |")
    n_seeds = max(len(row.get("seeds", [])) for row in classifiers)
    if n_seeds > 1:
        image = Path(os.path.relpath(args.docs / "leaderboard_classifiers.png", args.readme.parent)).as_posix()
        lines += ["", f"Networks: mean ± standard deviation over {n_seeds} seeds (training seconds: the mean of "
                  "one run); the logistic regression is deterministic.", "",
                  f"![Test macro-F1 of every seed]({image})"]
    if lms:
        lines += [
            "",
            f"**Character language models**, each trained for {args.lm_seconds:g} s of wall-clock time on the "
            "training plays (validation plays scored):",
            "",
            "| Model | Val bits/char | Val bits/char, {w}-char windows | Parameters | Steps | Tokens/s |"
            .format(w=lms[-1].get("window", "?")),
            "|---|---:|---:|---:|---:|---:|",
        ]
        image = Path(os.path.relpath(plot_path, args.readme.parent)).as_posix()
        for row in sorted(lms, key=lambda r: r["val_bpc"]):
            windows = f"{row['val_bpc_windows']:.3f}" if "val_bpc_windows" in row else "–"
            lines.append(f"| {row['model']} | {row['val_bpc']:.3f} | {windows} | {row['parameters']:,} | "
                         f"{row['steps']:,} | {row['tokens_per_second']:,.0f} |")
        lines += [
            "",
            "Val bits/char: each model's own reading of the validation text — the recurrent models carry their "
            "state from the start of it, the GPT reads consecutive windows of its context. The windows column "
            "scores every model the GPT's way.",
            "",
            f"![Validation loss against training time]({image})",
        ]
    return "\n".join(lines)


def write_readme(readme: Path, text: str) -> None:
    start, end = MARKERS
    block = f"{start}\n{text}\n{end}"
    content = readme.read_text(encoding="utf-8") if readme.is_file() else ""
    if start in content and end in content:
        head, rest = content.split(start, 1)
        content = head + block + rest.split(end, 1)[1]
    else:
        content = content.rstrip("\n") + ("\n\n" if content else "") + "## Leaderboard\n\n" + block + "\n"
    readme.write_text(content, encoding="utf-8")


def train(args: argparse.Namespace) -> list[Path]:
    if args.corpus is not None:
        raise ValueError("the leaderboard compares models on the Shakespeare plays; --corpus is not supported")
    runs = Path(args.out) / ".leaderboard"
    classifiers = classification_rows(args, runs)
    lms = lm_rows(args, runs)
    plot_path = args.docs / "leaderboard_lm.png"
    written = [args.readme]
    if len(classifiers) > 1:
        plot_classifiers(classifiers, args.docs / "leaderboard_classifiers.png")
        written.append(args.docs / "leaderboard_classifiers.png")
    if lms:
        plot(lms, plot_path, args.lm_seconds)
        written.append(plot_path)
    write_readme(args.readme, table(classifiers, lms, args, plot_path))
    results = args.docs / "leaderboard.json"
    results.parent.mkdir(parents=True, exist_ok=True)
    results.write_text(json.dumps({"classification": classifiers, "language_models": lms,
                                   "lm_seconds": args.lm_seconds, "profile": args.profile, "seeds": seeds(args),
                                   "threads": torch.get_num_threads()}, indent=2) + "\n", encoding="utf-8")
    return [*written, results]
