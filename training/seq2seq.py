"""Seq2seq translation (Chinese<->English) with additive, dot, general or no attention.

    python -m training seq2seq --direction zh-en            GRU + additive attention (the default)
    python -m training seq2seq --direction en-zh --cell lstm --attention dot --name en-zh-lstm-dot
    python -m training seq2seq --pairs my_pairs.tsv         your own "chinese<TAB>english" pairs
    python -m training seq2seq --resume                     continue from the last saved state
    python -m training evaluate seq2seq --direction zh-en   BLEU / chrF on the test split -> metrics.json
    python -m training evaluate seq2seq --grid              attention x cell comparison (markdown table)
    python -m training evaluate seq2seq --heatmap docs/attention.png --text "我们明天见。"
    torchrun --nproc_per_node=2 -m training seq2seq --device cpu    DistributedDataParallel

The pairs are split once into train / validation / test (``--val-fraction`` each) by ``--split-seed``;
both directions and every grid run share that split, so no model is scored on a sentence it (or its
mirror) trained on. Training runs on the shared loop (``training.loop``), which checks the validation loss
after every epoch, keeps the best model and stops early.
"""

from __future__ import annotations

import argparse
import functools
import json
import logging
import os
import random
from collections import defaultdict
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, TypeVar

import torch
from torch import nn

from models.catalog import checkpoint_id_of
from models.checkpoint import load_checkpoint, update_metrics
from models.pipelines.attention_image import attention_png
from models.pipelines.translation import LENGTH_PENALTY, TranslationOptions, Translator, load
from models.seq2seq import (
    ATTENTIONS,
    BOS_ID,
    CELLS,
    DIRECTIONS,
    EOS_ID,
    SPECIALS,
    Seq2Seq,
    Seq2SeqConfig,
    build_vocab,
    encode,
    model_config_dict,
    pad_batch,
    tokenize,
)
from models.tokenizers import WordVocab
from training import loop
from training.common import add_name_arguments, checkpoint_name, length_grouped, pick_device
from training.data import HSK_SOURCE, SPLIT_SEED, load_hsk_pairs, read_tsv, user_provenance

FAMILY = "seq2seq"
SOURCE_VOCAB, TARGET_VOCAB = "source_vocab.json", "target_vocab.json"
MODEL_FIELDS = ("embedding_dim", "hidden_dim", "cell", "attention", "bidirectional", "dropout")

PROFILES: dict[str, dict[str, Any]] = {
    # seconds: a small model on a slice of the training pairs, enough for the service tests
    "tiny": {"epochs": 2, "embedding_dim": 32, "hidden_dim": 64, "batch_size": 64, "max_train_pairs": 640,
             "lr": 3e-3, "patience": 2},
    # make serve: both directions in under three minutes of one CPU core (about 5 s an epoch each)
    "quick": {"epochs": 15, "embedding_dim": 96, "hidden_dim": 192, "batch_size": 64,
              "max_train_pairs": None, "lr": 2e-3, "patience": 2},
    # a GPU, or patience
    "full": {"epochs": 80, "embedding_dim": 256, "hidden_dim": 512, "batch_size": 64,
             "max_train_pairs": None, "lr": 1e-3, "patience": 6},
}
DEFAULTS: dict[str, Any] = {"dropout": 0.3, "teacher_forcing": 1.0, "min_count": 2}
# --grid trains len(CELLS) * len(ATTENTIONS) models, so each one is smaller than the quick profile's.
GRID_FLAGS = ("--epochs", "20", "--embedding-dim", "64", "--hidden-dim", "128", "--batch-size", "64", "--lr", "2e-3",
              "--patience", "2")
# Inclusive upper bounds of the source-length buckets (HSK sentences are 3-18 characters, 1-14 words).
BUCKET_EDGES = {"zh": (7, 9, 11), "en": (5, 7, 9)}

log = logging.getLogger("training.seq2seq")
T = TypeVar("T")


# ---- flags --------------------------------------------------------------------------------------------


def _add_data_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--direction", choices=DIRECTIONS, default="zh-en", help="translate from-to")
    parser.add_argument("--pairs", type=Path, default=None,
                        help="TSV of 'chinese<TAB>english' pairs instead of the HSK sentences")
    parser.add_argument("--split-seed", type=int, default=SPLIT_SEED,
                        help="seed of the train/validation/test split of the pairs")


def _add_model_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--cell", choices=CELLS, default="gru", help="recurrent cell of encoder and decoder")
    parser.add_argument("--attention", choices=ATTENTIONS, default="additive",
                        help="additive (Bahdanau), dot / general (Luong), none (fixed-vector baseline)")
    parser.add_argument("--bidirectional", action=argparse.BooleanOptionalAction, default=True,
                        help="bidirectional encoder")
    parser.add_argument("--embedding-dim", type=int, default=None)
    parser.add_argument("--hidden-dim", type=int, default=None)
    parser.add_argument("--dropout", type=float, default=None)
    parser.add_argument("--teacher-forcing", type=float, default=None,
                        help="probability of feeding the reference token (else the model's own guess)")
    parser.add_argument("--patience", type=int, default=None,
                        help="stop after this many validation checks (epochs) without a better validation loss")
    parser.add_argument("--min-count", type=int, default=None, help="rarer tokens are <unk>")
    parser.add_argument("--max-train-pairs", type=int, default=None,
                        help="use only the first N training pairs (the tiny profile's shortcut)")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    _add_data_arguments(parser)
    _add_model_arguments(parser)
    add_name_arguments(parser, "the direction, e.g. zh-en")
    loop.add_arguments(parser)


def add_evaluate_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--direction", choices=DIRECTIONS, default="zh-en")
    parser.add_argument("--name", default=None, help="checkpoint name; default: the direction")
    parser.add_argument("--beam-size", type=int, default=1, help="1 = greedy decoding")
    parser.add_argument("--length-penalty", type=float, default=LENGTH_PENALTY)
    parser.add_argument("--heatmap", type=Path, default=None, metavar="PNG",
                        help="draw the attention of --text into this PNG instead of scoring the test split")
    parser.add_argument("--text", default=None, help="the sentence for --heatmap")
    grid = parser.add_argument_group("--grid: train and compare every cell x attention pair")
    grid.add_argument("--grid", action="store_true")
    grid.add_argument("--epochs", type=int, default=None, help="grid epochs (default 20)")
    grid.add_argument("--seed", type=int, default=0)
    grid.add_argument("--pairs", type=Path, default=None, help="grid on your own TSV pairs")
    grid.add_argument("--split-seed", type=int, default=SPLIT_SEED)
    grid.add_argument("--report", type=Path, default=None, help="also write the grid results as JSON here")


# ---- data -------------------------------------------------------------------------------------------


@dataclass
class Split:
    """Pairs already oriented source -> target, and where they came from."""

    train: list[tuple[str, str]]
    validation: list[tuple[str, str]]
    test: list[tuple[str, str]]
    provenance: dict[str, Any]
    seed: int


def load_pairs(pairs_file: Path | None) -> tuple[list[tuple[str, str]], dict[str, Any]]:
    """(Chinese, English) pairs: the HSK sentences, or a user's two-column TSV."""
    if pairs_file is None:
        return list(load_hsk_pairs()), dict(HSK_SOURCE)
    if not Path(pairs_file).is_file():
        raise FileNotFoundError(f"pairs file not found: {pairs_file}")
    rows = read_tsv(pairs_file, 2, "a Chinese<TAB>English pair")
    return [(zh, en) for zh, en in rows], user_provenance(pairs_file)


def split_pairs(pairs: Sequence[tuple[str, str]], direction: str, seed: int, fraction: float,
                provenance: dict[str, Any]) -> Split:
    """Shuffle by ``seed``, then ``fraction`` test, ``fraction`` validation, the rest train.

    The split is made on the (Chinese, English) pairs before orienting them, so both directions share it.
    """
    if not 0.0 < fraction < 0.5:
        raise ValueError(f"--val-fraction must be between 0 and 0.5, got {fraction}")
    order = list(range(len(pairs)))
    random.Random(seed).shuffle(order)
    n_held = max(1, round(len(pairs) * fraction))
    if len(pairs) < 2 * n_held + 1:
        raise ValueError(f"{len(pairs)} pairs are too few to split into train, validation and test")
    oriented = [(zh, en) if direction == "zh-en" else (en, zh) for zh, en in pairs]
    test = [oriented[i] for i in order[:n_held]]
    validation = [oriented[i] for i in order[n_held:2 * n_held]]
    train = [oriented[i] for i in order[2 * n_held:]]
    record = {**provenance, "split": {"seed": seed, "fraction_validation": fraction, "fraction_test": fraction,
                                      "train": len(train), "validation": len(validation), "test": len(test)}}
    return Split(train, validation, test, record, seed)


def languages(direction: str) -> tuple[str, str]:
    source, target = direction.split("-")
    return source, target


class Batches:
    """Length-bucketed batches of (source ids, ``<bos> target ids <eos>``), reshuffled every epoch.

    Sentences of similar length share a batch, so the decoder loop rarely runs over padding.
    """

    def __init__(self, pairs: Sequence[tuple[str, str]], direction: str, source_vocab: WordVocab,
                 target_vocab: WordVocab, batch_size: int):
        source_language, target_language = languages(direction)
        self.examples = [(encode(tokenize(s, source_language), source_vocab),
                          [BOS_ID, *encode(tokenize(t, target_language), target_vocab), EOS_ID])
                         for s, t in pairs]
        self.examples = [e for e in self.examples if e[0]]
        self.batch_size = batch_size

    def __len__(self) -> int:
        return -(-len(self.examples) // self.batch_size)

    def epoch(self, rng: random.Random | None) -> list[list[int]]:
        """Each batch's example indices, grouped by source length."""
        return length_grouped([len(source) for source, _ in self.examples], self.batch_size, rng)

    def pad(self, indices: Sequence[int], device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
        """(source, target) id tensors of these examples."""
        return (pad_batch([self.examples[i][0] for i in indices], device),
                pad_batch([self.examples[i][1] for i in indices], device))

    def predicted(self, indices: Sequence[int]) -> int:
        """Target tokens the decoder predicts for these examples: all but each target's ``<bos>``."""
        return sum(len(self.examples[i][1]) - 1 for i in indices)


# ---- training -----------------------------------------------------------------------------------------


def one_thread_unless_asked(command: Callable[[argparse.Namespace], T]) -> Callable[[argparse.Namespace], T]:
    """Run ``command`` with one intra-op thread unless TORCH_THREADS says otherwise.

    A decoder step is a few small matrix products; split over threads they gain little, and on shared
    cores the threads' synchronisation made a training step 5-10x slower than one thread did.
    """

    @functools.wraps(command)
    def wrapper(args: argparse.Namespace) -> T:
        if os.environ.get("TORCH_THREADS"):
            return command(args)
        before = torch.get_num_threads()
        torch.set_num_threads(1)
        try:
            return command(args)
        finally:
            torch.set_num_threads(before)

    return wrapper


@torch.no_grad()
def validation_loss(model: Seq2Seq, batches: Batches, device: torch.device) -> float:
    """Token-weighted mean cross-entropy with the reference fed in (teacher forcing 1)."""
    total, count = 0.0, 0
    for indices in batches.epoch(None):
        _, loss = model(*batches.pad(indices, device))
        tokens = batches.predicted(indices)
        total += loss.item() * tokens
        count += tokens
    return total / max(count, 1)


class TranslationTask:
    """Cross-entropy of the next target token, teacher-forced, on length-bucketed batches reshuffled every
    epoch; validated by the loss on the validation pairs."""

    def __init__(self, model: Seq2Seq, train: Batches, validation: Batches, args: argparse.Namespace,
                 device: torch.device):
        self.model, self.train, self.validation, self.device = model, train, validation, device
        self.teacher_forcing, self.seed = args.teacher_forcing, args.seed

    def batches(self) -> Iterator[loop.Batch[list[int]]]:
        rng = random.Random(self.seed)
        while True:
            for indices in self.train.epoch(rng):
                yield loop.Batch(indices, len(indices), self.train.predicted(indices))

    def loss(self, model: nn.Module, indices: list[int], rows: list[int]) -> torch.Tensor:
        """A piece's mean loss counts by its share of the batch's target tokens (a plain mean of the pieces'
        means would weigh short sentences more)."""
        mine = [indices[r] for r in rows]
        _, loss = model(*self.train.pad(mine, self.device), teacher_forcing=self.teacher_forcing)
        return loss * (self.train.predicted(mine) / self.train.predicted(indices))

    def validate(self, model: nn.Module) -> dict[str, float]:
        return {"val_loss": validation_loss(model, self.validation, self.device)}


@dataclass
class Fitted:
    translator: Translator
    trained: loop.Trained
    steps_per_epoch: int


def fit(run: loop.Run, split: Split, direction: str, args: argparse.Namespace) -> Fitted:
    """Train on ``split.train`` with early stopping on ``split.validation``; returns the best epoch's model."""
    source_language, target_language = languages(direction)
    train_pairs = split.train[: args.max_train_pairs] if args.max_train_pairs else split.train
    if run.saved:  # the vocabularies the saved weights were trained with
        source_vocab, target_vocab = (WordVocab(**json.loads(run.saved[key])) for key in ("source_vocab",
                                                                                          "target_vocab"))
    else:
        source_vocab = build_vocab((tokenize(s, source_language) for s, _ in train_pairs), args.min_count)
        target_vocab = build_vocab((tokenize(t, target_language) for _, t in train_pairs), args.min_count)
    train_batches = Batches(train_pairs, direction, source_vocab, target_vocab, args.batch_size)
    val_batches = Batches(split.validation, direction, source_vocab, target_vocab, 256)
    config = Seq2SeqConfig(len(source_vocab), len(target_vocab), args.embedding_dim, args.hidden_dim,
                           args.cell, args.attention, args.bidirectional, args.dropout)
    model = Seq2Seq(config).to(run.device)
    epoch = len(train_batches)
    settings = loop.Settings(loop.total_steps(args, epoch), loop.Schedule(args.lr, decay="none"), eval_interval=epoch,
                             selection=loop.Selection("val_loss", patience=args.patience))
    trained = run.fit(TranslationTask(model, train_batches, val_batches, args, run.device), settings,
                      rebuild={"model_config": asdict(config), "source_vocab": source_vocab.to_json(),
                               "target_vocab": target_vocab.to_json()})
    return Fitted(Translator(model.eval(), source_vocab, target_vocab, direction, run.device), trained, epoch)


# ---- scoring --------------------------------------------------------------------------------------------


def bucket_of(length: int, edges: Sequence[int]) -> str:
    """Label of the source-length bucket holding ``length`` (edges are inclusive upper bounds)."""
    lower = 1
    for edge in edges:
        if length <= edge:
            return f"{lower}-{edge}"
        lower = edge + 1
    return f"{lower}+"


def score(translator: Translator, pairs: Sequence[tuple[str, str]],
          options: TranslationOptions = TranslationOptions(), batch_size: int = 128) -> dict[str, Any]:
    """Corpus BLEU and chrF (sacrebleu, lower-cased), overall and by source-length bucket."""
    import sacrebleu

    target_language = translator.target_language
    hypotheses: list[str] = []
    for start in range(0, len(pairs), batch_size):
        chunk = [s for s, _ in pairs[start:start + batch_size]]
        hypotheses += [r.translation for r in translator.translate(chunk, options)]
    references = [t for _, t in pairs]
    # Chinese has no spaces, so BLEU needs sacrebleu's Chinese tokenizer; the model writes lower case.
    bleu = sacrebleu.BLEU(tokenize="zh" if target_language == "zh" else "13a", lowercase=True)
    chrf = sacrebleu.CHRF(lowercase=True)
    edges = BUCKET_EDGES[translator.source_language]
    groups: dict[str, list[int]] = defaultdict(list)
    for i, (source, _) in enumerate(pairs):
        groups[bucket_of(len(tokenize(source, translator.source_language)), edges)].append(i)
    buckets = {}
    for label in sorted(groups, key=lambda b: int(b.split("-")[0].rstrip("+"))):
        idx = groups[label]
        buckets[label] = {
            "sentences": len(idx),
            "bleu": round(bleu.corpus_score([hypotheses[i] for i in idx], [[references[i] for i in idx]]).score, 2),
        }
    return {
        "bleu": round(bleu.corpus_score(hypotheses, [references]).score, 2),
        "chrf": round(chrf.corpus_score(hypotheses, [references]).score, 2),
        "sentences": len(pairs),
        "decoding": ("greedy" if options.beam_size == 1
                     else f"beam {options.beam_size}, length penalty {options.length_penalty}"),
        "bleu_signature": str(bleu.get_signature()),
        "chrf_signature": str(chrf.get_signature()),
        "bleu_by_source_length": buckets,
        "examples": [{"source": s, "reference": t, "translation": h}
                     for (s, t), h in list(zip(pairs, hypotheses, strict=True))[:5]],
    }


# ---- the command ------------------------------------------------------------------------------------------


def resolve_arguments(args: argparse.Namespace) -> argparse.Namespace:
    return loop.resolve(args, {**DEFAULTS, **PROFILES[args.profile]})


@one_thread_unless_asked
def train(args: argparse.Namespace) -> list[Path]:
    resolve_arguments(args)
    if args.corpus is not None:
        raise ValueError("seq2seq trains on sentence pairs: pass --pairs FILE.tsv, not --corpus")
    name = checkpoint_name(args, FAMILY, args.direction, args.pairs)
    pairs, provenance = load_pairs(args.pairs)
    split = split_pairs(pairs, args.direction, args.split_seed, args.val_fraction, provenance)
    log.info("seq2seq-%s: %d train / %d validation / %d test pairs", name, len(split.train),
             len(split.validation), len(split.test))
    with loop.Run(args, checkpoint_id_of(FAMILY, name)) as run:
        run.restore(args, MODEL_FIELDS)
        fitted = fit(run, split, args.direction, args)
        if not run.is_main:
            return []
        translator, best, epoch = fitted.translator, fitted.trained.best or {}, fitted.steps_per_epoch
        metrics = {"validation_loss": best.get("val_loss"), "best_epoch": round(best.get("step", 0) / epoch, 2),
                   "epochs": round(fitted.trained.steps / epoch, 2), "test": score(translator, split.test)}
        log.info("seq2seq-%s: test BLEU %.2f, chrF %.2f", name, metrics["test"]["bleu"], metrics["test"]["chrf"])
        return [run.save(loop.Record({
            "id": checkpoint_id_of(FAMILY, name), "family": FAMILY, "name": name,
            "architecture": f"{'bidirectional ' if args.bidirectional else ''}{args.cell.upper()} encoder-decoder, "
                            f"{args.attention} attention",
            "model": model_config_dict(translator.model.config, args.direction),
            "tokenizer": {"type": "WordVocab", "file": SOURCE_VOCAB,
                          "files": {"source": SOURCE_VOCAB, "target": TARGET_VOCAB},
                          "units": {"zh": "characters", "en": "lower-cased words, punctuation split"},
                          "specials": list(SPECIALS)},
            "data": {**split.provenance, "trained_on": ["train"],
                     "train_pairs_used": args.max_train_pairs or len(split.train)},
            "split_seed": split.seed,
        }, {SOURCE_VOCAB: translator.source_vocab.to_json(), TARGET_VOCAB: translator.target_vocab.to_json()}),
            fitted.trained, metrics)]


@one_thread_unless_asked
def evaluate(args: argparse.Namespace) -> dict[str, Any]:
    if args.grid:
        return grid(args)
    name = args.name or args.direction
    path = Path(args.out) / checkpoint_id_of(FAMILY, name)
    if not path.is_dir():
        command = f"python -m training seq2seq --direction {args.direction}" + (f" --name {name}" if args.name else "")
        raise FileNotFoundError(f"no checkpoint {path}; train it with `{command}`")
    checkpoint = load_checkpoint(path)
    device = pick_device(args.device)
    translator = load(checkpoint, device)
    options = TranslationOptions(beam_size=args.beam_size, length_penalty=args.length_penalty)
    if args.heatmap is not None:
        if not args.text:
            raise ValueError("--heatmap needs --text")
        result = translator.translate([args.text], options)[0]
        args.heatmap.parent.mkdir(parents=True, exist_ok=True)
        args.heatmap.write_bytes(attention_png(result, title=f"{checkpoint.id}: {result.translation}"))
        return {"heatmap": str(args.heatmap), "translation": result.translation,
                "source_tokens": result.source_tokens, "target_tokens": result.target_tokens}
    data = checkpoint.config["data"]
    pairs, provenance = load_pairs(Path(data["file"]) if "file" in data else None)
    split = split_pairs(pairs, translator.direction, checkpoint.config["split_seed"],
                        data["split"]["fraction_test"], provenance)
    key = "test" if args.beam_size == 1 else f"test_beam_{args.beam_size}"
    metrics = {**checkpoint.metrics, key: score(translator, split.test, options)}
    update_metrics(path, metrics)
    return metrics


# ---- the grid ------------------------------------------------------------------------------------------


def grid(args: argparse.Namespace) -> dict[str, Any]:
    """Every cell x attention pair at ``GRID_FLAGS`` on one split, trained into ``<out>/.seq2seq-grid`` (hidden
    from the service); BLEU overall and by source length."""
    from training.cli import run_command

    flags = [*GRID_FLAGS, *(["--epochs", str(args.epochs)] if args.epochs else []), "--seed", str(args.seed),
             "--split-seed", str(args.split_seed), "--direction", args.direction, "--device", args.device,
             "--out", str(Path(args.out) / ".seq2seq-grid"), *(["--pairs", str(args.pairs)] if args.pairs else [])]
    runs = []
    for cell in CELLS:
        for attention in ATTENTIONS:
            (path,) = run_command(["seq2seq", *flags, "--cell", cell, "--attention", attention,
                                   "--name", f"{args.direction}-{cell}-{attention}"])
            checkpoint = load_checkpoint(path)
            result, training = checkpoint.metrics["test"], checkpoint.config["training"]
            runs.append({"cell": cell, "attention": attention, "bleu": result["bleu"], "chrf": result["chrf"],
                         "validation_loss": checkpoint.metrics["validation_loss"],
                         "epochs": checkpoint.metrics["epochs"], "seconds": training["seconds"],
                         "parameters": checkpoint.metrics["parameters"],
                         "bleu_by_source_length": result["bleu_by_source_length"]})
    report = {"direction": args.direction, "split_seed": args.split_seed, "flags": flags,
              "test_sentences": checkpoint.metrics["test"]["sentences"], "runs": runs}
    print(grid_markdown(report))
    if args.report is not None:
        args.report.parent.mkdir(parents=True, exist_ok=True)
        args.report.write_text(json.dumps(report, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    return report


def grid_markdown(report: dict[str, Any]) -> str:
    """Two tables: every run, then BLEU by source-length bucket averaged over the cells per attention."""
    runs = report["runs"]
    buckets = list(runs[0]["bleu_by_source_length"])
    counts = [runs[0]["bleu_by_source_length"][b]["sentences"] for b in buckets]
    head = ["cell", "attention", "BLEU", "chrF", "val loss", "epochs"]
    lines = ["| " + " | ".join(head + [f"BLEU {b} ({n})" for b, n in zip(buckets, counts, strict=True)]) + " |",
             "|" + "---|" * (len(head) + len(buckets))]
    for r in runs:
        cells = [r["cell"], r["attention"], f"{r['bleu']:.1f}", f"{r['chrf']:.1f}", f"{r['validation_loss']:.3f}",
                 f"{r['epochs']:g}"]
        cells += [f"{r['bleu_by_source_length'][b]['bleu']:.1f}" for b in buckets]
        lines.append("| " + " | ".join(cells) + " |")
    lines += ["", "| attention (mean over cells) | BLEU | " + " | ".join(f"BLEU {b}" for b in buckets) + " |",
              "|" + "---|" * (2 + len(buckets))]
    for attention in ATTENTIONS:
        mine = [r for r in runs if r["attention"] == attention]
        mean = sum(r["bleu"] for r in mine) / len(mine)
        per_bucket = [sum(r["bleu_by_source_length"][b]["bleu"] for r in mine) / len(mine) for b in buckets]
        lines.append(f"| {attention} | {mean:.1f} | " + " | ".join(f"{v:.1f}" for v in per_bucket) + " |")
    return "\n".join(lines)
