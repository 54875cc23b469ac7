"""Text classifiers (MLP, CNN, RNN, LSTM, GRU, BERT): the genre of a Shakespeare passage, or your labels.

    python -m training classifier --arch mlp|cnn|rnn|lstm|gru|bert    writes checkpoints/clf-<arch>/
    python -m training classifier --arch cnn --labeled FILE.tsv       your own label<TAB>text rows
    python -m training evaluate classifier --arch cnn                 test accuracy and macro-F1 again

The Shakespeare task: passages of at least ``MIN_PASSAGE_WORDS`` words, built from consecutive speeches
(``SPEAKER: text`` per speech, as the corpus renders them), labelled comedy, history or tragedy by their
play. Training, validation (model selection) and test passages come from the shared play split's
training, validation and test plays, so a test passage is from a play no model — BERT's pretraining
included — has seen. A ``--labeled`` file is shuffled with the split seed and cut 80/10/10.

Genres are unbalanced (more comedies), so by default the loss weights each class by the inverse of its
share of the training passages (``--class-weights balanced``): macro-F1 counts every genre equally.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import logging
import math
import random
import time
from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from models.checkpoint import checkpoint_id, load_checkpoint, save_checkpoint, update_metrics
from models.classifier import (
    ARCHITECTURES,
    VOCAB_FILE,
    SubwordEncoder,
    WordEncoder,
    build_model,
    build_vocab,
    config_class,
    pad_batch,
)
from models.tokenizers import words
from training.common import apply_profile, pick_device, progress, set_seed, weight_decay_groups
from training.data import (
    GENRE_LABELS,
    SPLIT_SEED,
    plays_in,
    read_tsv,
    shakespeare_provenance,
    user_provenance,
)

FAMILY = "classifier"
MIN_PASSAGE_WORDS = 60
ALL_ARCHITECTURES = (*ARCHITECTURES, "bert")

# Per architecture, per profile. quick: what `make serve` trains (see the README for measured times on
# two CPU cores); tiny: a few seconds each, for the test session. bf16 autocast where it measured
# faster on CPU (oneDNN's LSTM and the Transformer), fp32 where it did not (the RNN and GRU kernels).
_WORDS = {"min_count": 2, "max_len": 256, "embed_dim": 128, "class_weights": "balanced", "weight_decay": 0.01,
          "batch_size": 64, "precision": "fp32"}
_TINY = {**_WORDS, "epochs": 1, "embed_dim": 32, "max_len": 64, "max_passages": 600, "lr": 3e-3}
_RNN = {"num_layers": 1, "pooling": "mean", "dropout": 0.3}
PROFILES: dict[str, dict[str, dict[str, Any]]] = {
    "mlp": {
        "tiny": {**_TINY, "epochs": 2, "hidden_sizes": [32], "activation": "relu", "dropout": 0.2},
        "quick": {**_WORDS, "epochs": 10, "hidden_sizes": [128], "activation": "relu", "dropout": 0.5, "lr": 2e-3},
        "full": {**_WORDS, "epochs": 30, "embed_dim": 256, "hidden_sizes": [256], "activation": "relu",
                 "dropout": 0.5, "lr": 1e-3},
    },
    "cnn": {
        "tiny": {**_TINY, "kernel_sizes": [3, 4, 5], "kernel_counts": [16, 16, 16], "stride": 1, "padding": 0,
                 "pooling": "max", "dropout": 0.5},
        "quick": {**_WORDS, "epochs": 3, "kernel_sizes": [3, 4, 5], "kernel_counts": [64, 64, 64], "stride": 1,
                  "padding": 0, "pooling": "max", "dropout": 0.5, "lr": 2e-3},
        "full": {**_WORDS, "epochs": 20, "embed_dim": 256, "kernel_sizes": [3, 4, 5],
                 "kernel_counts": [100, 100, 100], "stride": 1, "padding": 0, "pooling": "max", "dropout": 0.5,
                 "lr": 1e-3},
    },
    **{cell: {
        "tiny": {**_TINY, **_RNN, "hidden_size": 32, "max_passages": 400},
        "quick": {**_WORDS, **_RNN, "epochs": 3, "hidden_size": 128, "max_len": 128, "lr": 3e-3,
                  "precision": "bf16" if cell == "lstm" else "fp32"},
        "full": {**_WORDS, **_RNN, "epochs": 15, "embed_dim": 256, "hidden_size": 256, "num_layers": 2,
                 "lr": 1e-3, "precision": "bf16" if cell == "lstm" else "fp32"},
    } for cell in ("rnn", "lstm", "gru")},
    # Fine-tuning the pretrained encoder: few epochs with a warm-up and linear decay, as in BERT §4.1. The
    # learning rate is higher than the paper's (5e-4, picked on the validation plays over 2e-4): the encoder
    # is small and its pretraining short.
    "bert": {
        "tiny": {"epochs": 1, "max_passages": 200, "batch_size": 16, "lr": 5e-4, "class_weights": "balanced",
                 "weight_decay": 0.01, "dropout": 0.1, "precision": "bf16"},
        "quick": {"epochs": 1, "batch_size": 32, "lr": 5e-4, "class_weights": "balanced", "weight_decay": 0.01,
                  "dropout": 0.1, "precision": "bf16"},
        "full": {"epochs": 3, "batch_size": 32, "lr": 1e-4, "class_weights": "balanced", "weight_decay": 0.01,
                 "dropout": 0.1, "precision": "bf16"},
    },
}

log = logging.getLogger("training.classifier")


# ---- arguments -----------------------------------------------------------------------------------


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--arch", choices=ALL_ARCHITECTURES, required=True, help="the network to train")
    parser.add_argument("--labeled", type=Path, default=None,
                        help="your own data instead of the plays: a TSV of label<TAB>text rows")
    parser.add_argument("--max-passages", type=int, default=None, help="use at most this many training passages")
    parser.add_argument("--batch-size", type=int, default=None)
    parser.add_argument("--lr", type=float, default=None, help="peak learning rate (AdamW, linear decay)")
    parser.add_argument("--weight-decay", type=float, default=None)
    parser.add_argument("--class-weights", choices=("balanced", "none"), default=None,
                        help="balanced: weight each class's loss by the inverse of its training share")
    parser.add_argument("--precision", choices=("fp32", "bf16"), default=None, help="bf16 autocast or fp32")
    parser.add_argument("--dropout", type=float, default=None)
    words_group = parser.add_argument_group("word-level models (mlp, cnn, rnn, lstm, gru)")
    words_group.add_argument("--min-count", type=int, default=None, help="vocabulary: words seen this often")
    words_group.add_argument("--max-len", type=int, default=None, help="words read per passage")
    words_group.add_argument("--embed-dim", type=int, default=None)
    words_group.add_argument("--hidden-sizes", type=int, nargs="+", default=None, help="mlp: hidden layer widths")
    words_group.add_argument("--activation", choices=("relu", "tanh", "gelu"), default=None, help="mlp")
    words_group.add_argument("--kernel-sizes", type=int, nargs="+", default=None, help="cnn: words per kernel")
    words_group.add_argument("--kernel-counts", type=int, nargs="+", default=None,
                             help="cnn: kernels (feature maps) per kernel size")
    words_group.add_argument("--stride", type=int, default=None, help="cnn")
    words_group.add_argument("--padding", type=int, default=None, help="cnn: zero vectors at each end")
    words_group.add_argument("--pooling", default=None,
                             help="pooling over time: cnn max|avg; rnn/lstm/gru last|max|mean")
    words_group.add_argument("--hidden-size", type=int, default=None, help="rnn/lstm/gru state size")
    words_group.add_argument("--num-layers", type=int, default=None, help="rnn/lstm/gru stacked layers")
    parser.add_argument("--bert", type=Path, default=None,
                        help="bert: the pretraining checkpoint to fine-tune (default: <out>/bert)")


def add_evaluate_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--arch", choices=ALL_ARCHITECTURES, required=True)
    parser.add_argument("--labeled", type=Path, default=None, help="the TSV the checkpoint was trained on")


# ---- data ----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Splits:
    train: list[tuple[str, str]]  # (label, text)
    validation: list[tuple[str, str]]
    test: list[tuple[str, str]]
    labels: list[str]
    provenance: dict[str, Any]


def genre_passages(part: str, seed: int = SPLIT_SEED) -> list[tuple[str, str]]:
    """(genre, passage) pairs from the plays of one part of the split, in play and speech order.

    Consecutive speeches are joined until they hold ``MIN_PASSAGE_WORDS`` words (speaker names not
    counted); a play's leftover speeches shorter than that are dropped.
    """
    passages = []
    for play in plays_in(part, seed):
        speeches: list[str] = []
        count = 0
        for speech in play.speeches:
            speeches.append(f"{speech.speaker}: {speech.text}")
            count += len(words(speech.text))
            if count >= MIN_PASSAGE_WORDS:
                passages.append((play.genre, "\n".join(speeches)))
                speeches, count = [], 0
    return passages


def labeled_splits(path: Path, seed: int = SPLIT_SEED) -> tuple[list, list, list]:
    """A user's ``label<TAB>text`` rows, shuffled with ``seed`` and cut 80 / 10 / 10."""
    rows = [(label, text) for label, text in read_tsv(path, 2, "label<TAB>text")]
    if len(rows) < 3:
        raise ValueError(f"{path}: need at least 3 rows (training, validation, test), got {len(rows)}")
    random.Random(seed).shuffle(rows)
    n_held = max(1, round(0.1 * len(rows)))
    return rows[2 * n_held:], rows[n_held:2 * n_held], rows[:n_held]


def load_splits(labeled: Path | None) -> Splits:
    if labeled is not None:
        train, validation, test = labeled_splits(labeled)
        labels = sorted({label for label, _ in train + validation + test})
        if len(labels) < 2:
            raise ValueError(f"{labeled}: needs at least two different labels")
        return Splits(train, validation, test, labels, user_provenance(labeled))
    return Splits(genre_passages("train"), genre_passages("validation"), genre_passages("test"),
                  list(GENRE_LABELS), shakespeare_provenance(parts=("train",)))


# ---- metrics -------------------------------------------------------------------------------------


def classification_metrics(gold: Sequence[int], predicted: Sequence[int], labels: Sequence[str]) -> dict[str, Any]:
    """Accuracy, macro-F1 (the mean of per-class F1, so every class counts the same), per-class figures
    and the confusion matrix (rows: gold, columns: predicted)."""
    k = len(labels)
    confusion = [[0] * k for _ in range(k)]
    for g, p in zip(gold, predicted, strict=True):
        confusion[g][p] += 1
    per_class = {}
    for c, label in enumerate(labels):
        tp = confusion[c][c]
        predicted_c = sum(confusion[r][c] for r in range(k))
        gold_c = sum(confusion[c])
        precision = tp / predicted_c if predicted_c else 0.0
        recall = tp / gold_c if gold_c else 0.0
        f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
        per_class[label] = {"precision": round(precision, 4), "recall": round(recall, 4), "f1": round(f1, 4),
                            "support": gold_c}
    total = len(gold)
    return {
        "accuracy": round(sum(confusion[c][c] for c in range(k)) / total, 4) if total else 0.0,
        "macro_f1": round(sum(v["f1"] for v in per_class.values()) / k, 4),
        "per_class": per_class,
        "confusion": confusion,
        "examples": total,
    }


# ---- batches -------------------------------------------------------------------------------------


def batches(encoded: list[list[int]], targets: list[int], batch_size: int, rng: random.Random | None,
            pad_id: int = 0) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Padded (ids, targets) batches. With ``rng`` (training): shuffled, then grouped by length within
    windows of 50 batches, so a batch pads little but the order of batches stays random."""
    order = list(range(len(encoded)))
    if rng is not None:
        rng.shuffle(order)
        window = 50 * batch_size
        order = [i for s in range(0, len(order), window)
                 for i in sorted(order[s:s + window], key=lambda i: len(encoded[i]))]
    chunks = [order[s:s + batch_size] for s in range(0, len(order), batch_size)]
    if rng is not None:
        rng.shuffle(chunks)
    for chunk in chunks:
        yield pad_batch([encoded[i] for i in chunk], pad_id), torch.tensor([targets[i] for i in chunk])


def autocast(device: torch.device, precision: str) -> contextlib.AbstractContextManager:
    if precision == "bf16":
        return torch.autocast(device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext()


@torch.no_grad()
def predict(model: nn.Module, encoded: list[list[int]], device: torch.device, precision: str,
            pad_id: int = 0, batch_size: int = 128) -> list[int]:
    model.eval()
    predicted: list[int] = []
    for ids, _ in batches(encoded, [0] * len(encoded), batch_size, None, pad_id):
        with autocast(device, precision):
            logits, _ = model(ids.to(device))
        predicted += logits.argmax(dim=-1).tolist()
    return predicted


# ---- model and encoder per architecture --------------------------------------------------------------


def _bert_checkpoint_path(args: argparse.Namespace) -> Path:
    path = args.bert if args.bert is not None else Path(args.out) / "bert"
    if not (path / "config.json").is_file():
        raise FileNotFoundError(f"no BERT checkpoint at {path}; train it first with `python -m training bert`"
                                " (or point --bert at one)")
    return path


@dataclass
class Setup:
    """What one architecture brings to training: the network, its text encoder, and the checkpoint records."""

    model: nn.Module
    encoder: WordEncoder | SubwordEncoder
    hyperparameters: dict[str, Any]  # config["model"]
    tokenizer: dict[str, Any]  # config["tokenizer"]
    files: dict[str, str]
    provenance: dict[str, Any] = field(default_factory=dict)  # added to config["data"]


def setup(args: argparse.Namespace, splits: Splits) -> Setup:
    n_classes = len(splits.labels)
    if args.arch == "bert":
        from models.bert import BertForSequenceClassification, load_tokenizer

        pretrained = load_checkpoint(_bert_checkpoint_path(args))
        tokenizer = load_tokenizer(pretrained)
        model = BertForSequenceClassification.from_pretrained(pretrained, n_classes, classifier_dropout=args.dropout)
        encoder = SubwordEncoder(tokenizer, pretrained.config["model"]["max_position"])
        return Setup(model, encoder,
                     {**pretrained.config["model"], "num_classes": n_classes, "classifier_dropout": args.dropout},
                     {"type": "wordpiece", "file": "tokenizer.json", "max_len": encoder.max_len},
                     {"tokenizer.json": tokenizer.to_str()},
                     {"initialised_from": {"id": pretrained.id, "data": pretrained.config.get("data")}})
    vocab = build_vocab((text for _, text in splits.train), args.min_count)
    # The config's fields are the flags of the same names.
    hyperparameters = {f.name: getattr(args, f.name) for f in fields(config_class(args.arch))
                       if getattr(args, f.name, None) is not None}
    if args.arch in ("rnn", "lstm", "gru"):
        hyperparameters["cell"] = args.arch
    model = build_model(args.arch, {**hyperparameters, "vocab_size": len(vocab), "num_classes": n_classes})
    return Setup(model, WordEncoder(vocab, args.max_len), asdict(model.config),
                 {"type": "word", "file": VOCAB_FILE, "max_len": args.max_len, "min_count": args.min_count},
                 {VOCAB_FILE: vocab.to_json()})


def class_weights(targets: list[int], n_classes: int, how: str) -> torch.Tensor | None:
    """``balanced``: n / (classes · n_c), scikit-learn's rule, so every class carries the same total weight."""
    if how == "none":
        return None
    counts = Counter(targets)
    return torch.tensor([len(targets) / (n_classes * max(1, counts[c])) for c in range(n_classes)])


def parameter_count(model: nn.Module) -> int:
    return sum(p.numel() for p in {id(p): p for p in model.parameters()}.values())


# ---- training ------------------------------------------------------------------------------------


def train(args: argparse.Namespace) -> list[Path]:
    apply_profile(args, PROFILES[args.arch])
    set_seed(args.seed)
    device = pick_device(args.device)
    started = time.perf_counter()
    splits = load_splits(args.labeled)
    if args.max_passages is not None and len(splits.train) > args.max_passages:
        # A random subset keeps every play (and so every genre) represented.
        kept = sorted(random.Random(args.seed).sample(range(len(splits.train)), args.max_passages))
        splits = Splits([splits.train[i] for i in kept], splits.validation, splits.test, splits.labels,
                        splits.provenance)
    index = {label: i for i, label in enumerate(splits.labels)}

    parts = setup(args, splits)
    model = parts.model.to(device)
    pad_id = parts.encoder.pad_id
    encode = parts.encoder.encode

    def encoded(rows: list[tuple[str, str]]) -> tuple[list[list[int]], list[int]]:
        return [encode(text) for _, text in rows], [index[label] for label, _ in rows]

    train_x, train_y = encoded(splits.train)
    val_x, val_y = encoded(splits.validation)
    test_x, test_y = encoded(splits.test)
    weights = class_weights(train_y, len(splits.labels), args.class_weights)
    weights = weights.to(device) if weights is not None else None

    steps_per_epoch = math.ceil(len(train_x) / args.batch_size)
    total_steps = args.epochs * steps_per_epoch
    # foreach: one multi-tensor update per step, several times faster on CPU than the per-tensor loop.
    optimizer = torch.optim.AdamW(weight_decay_groups(model, args.weight_decay), lr=args.lr, foreach=True)
    warmup = max(1, total_steps // 20)
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: min((s + 1) / warmup, max(0.0, (total_steps - s) / max(1, total_steps - warmup))))
    model_id = checkpoint_id("clf", args.arch)
    log.info("%s: %d parameters, %d/%d/%d passages, %d steps", model_id, parameter_count(model),
             len(train_x), len(val_x), len(test_x), total_steps)

    rng = random.Random(args.seed)
    best: dict[str, Any] = {"macro_f1": -1.0}
    history = []
    train_started = time.perf_counter()
    bar = progress(total=total_steps, desc=model_id, unit="step")
    step = 0
    for epoch in range(1, args.epochs + 1):
        model.train()
        seen, loss_sum = 0, 0.0
        for ids, targets in batches(train_x, train_y, args.batch_size, rng, pad_id):
            ids, targets = ids.to(device), targets.to(device)
            with autocast(device, args.precision):
                logits, _ = model(ids)
            loss = F.cross_entropy(logits.float(), targets, weight=weights)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            optimizer.step()
            scheduler.step()
            step += 1
            seen += len(targets)
            loss_sum += loss.item() * len(targets)
            bar.update()
            bar.set_postfix(epoch=epoch, loss=f"{loss_sum / seen:.3f}",
                            ex_s=f"{step * args.batch_size / (time.perf_counter() - train_started):.0f}")
        val = classification_metrics(val_y, predict(model, val_x, device, args.precision, pad_id), splits.labels)
        history.append({"epoch": epoch, "train_loss": round(loss_sum / max(1, seen), 4),
                        "val_accuracy": val["accuracy"], "val_macro_f1": val["macro_f1"],
                        "seconds": round(time.perf_counter() - train_started, 1)})
        log.info("%s epoch %d: train loss %.3f, validation accuracy %.3f, macro-F1 %.3f", model_id, epoch,
                 loss_sum / max(1, seen), val["accuracy"], val["macro_f1"])
        # Model selection on the validation plays: the test plays are only looked at once, below.
        if val["macro_f1"] > best["macro_f1"]:
            best = {"macro_f1": val["macro_f1"], "epoch": epoch, "validation": val,
                    "state": copy.deepcopy(model.state_dict())}
    bar.close()
    train_seconds = time.perf_counter() - train_started
    model.load_state_dict(best["state"])

    test = classification_metrics(test_y, predict(model, test_x, device, args.precision, pad_id), splits.labels)
    log.info("%s: test accuracy %.3f, macro-F1 %.3f (epoch %d of %d)", model_id, test["accuracy"],
             test["macro_f1"], best["epoch"], args.epochs)
    metrics = {
        "test_accuracy": test["accuracy"], "test_macro_f1": test["macro_f1"],
        "val_accuracy": best["validation"]["accuracy"], "val_macro_f1": best["validation"]["macro_f1"],
        "test": test, "best_epoch": best["epoch"], "history": history,
        "parameters": parameter_count(model), "train_seconds": round(train_seconds, 1),
    }
    config = {
        "id": model_id,
        "family": FAMILY,
        "name": args.arch,
        "architecture": args.arch,
        "model": parts.hyperparameters,
        "tokenizer": parts.tokenizer,
        "labels": splits.labels,
        "data": {**splits.provenance, "passages": {"train": len(train_x), "validation": len(val_x),
                                                   "test": len(test_x)},
                 "min_passage_words": None if args.labeled else MIN_PASSAGE_WORDS, **parts.provenance},
        "split_seed": SPLIT_SEED,
        "training": {
            "profile": args.profile, "epochs": args.epochs, "best_epoch": best["epoch"], "seed": args.seed,
            "steps": step, "batch_size": args.batch_size, "lr": args.lr, "weight_decay": args.weight_decay,
            "class_weights": args.class_weights, "precision": args.precision, "device": str(device),
            "parameters": parameter_count(model), "seconds": round(time.perf_counter() - started, 1),
        },
    }
    return [save_checkpoint(args.out, config, model.state_dict(), metrics, parts.files)]


def evaluate(args: argparse.Namespace) -> dict[str, Any]:
    """Score ``clf-<arch>`` on its test passages again and refresh the test figures in metrics.json."""
    from models.pipelines.classification import load

    checkpoint = load_checkpoint(Path(args.out) / checkpoint_id("clf", args.arch))
    device = pick_device(args.device)
    classifier = load(checkpoint, device)
    labeled = args.labeled
    if labeled is None and "file" in checkpoint.config["data"]:
        labeled = Path(checkpoint.config["data"]["file"])
    test = load_splits(labeled).test
    index = {label: i for i, label in enumerate(classifier.labels)}
    probabilities = classifier.probabilities([text for _, text in test])
    result = classification_metrics([index[label] for label, _ in test], probabilities.argmax(dim=-1).tolist(),
                                    classifier.labels)
    metrics = {**checkpoint.metrics, "test_accuracy": result["accuracy"], "test_macro_f1": result["macro_f1"],
               "test": result}
    update_metrics(checkpoint.path, metrics)
    return metrics

