"""Seq2seq translation (Chinese<->English) with additive, dot, general or no attention.

    python -m training seq2seq --direction zh-en            GRU + additive attention (the default)
    python -m training seq2seq --direction en-zh --cell lstm --attention dot --name en-zh-lstm-dot
    python -m training seq2seq --pairs my_pairs.tsv         your own "chinese<TAB>english" pairs
    python -m training seq2seq --resume                     continue after the last finished epoch
    python -m training evaluate seq2seq --direction zh-en   BLEU / chrF on the test split -> metrics.json
    python -m training evaluate seq2seq --grid              attention x cell comparison (markdown table)
    python -m training evaluate seq2seq --heatmap docs/attention.png --text "我们明天见。"
    torchrun --nproc_per_node=2 -m training seq2seq --device cpu    DistributedDataParallel

The pairs are split once into train / validation / test (``--val-fraction`` each) by ``--split-seed``;
both directions and every grid run share that split, so no model is scored on a sentence it (or its
mirror) trained on.

Under torchrun every process follows the same batches (``--batch-size`` pairs, whatever the number of
processes) and trains on its share of each, in ``--micro-batch-size`` pieces with gradient accumulation
where needed; rank 0 checks the validation loss, decides on early stopping for all, and writes.

The training state (model, optimizer, epoch, history, early-stopping counters, best model, vocabularies,
random streams) is saved after every epoch in ``.seq2seq-<name>-train-state`` beside the checkpoint;
``--resume`` continues from the epoch after it.
"""

from __future__ import annotations

import argparse
import copy
import functools
import json
import logging
import os
import random
import time
from collections import defaultdict
from collections.abc import Callable, Iterator, Sequence
from contextlib import nullcontext
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, TypeVar

import torch

from models.checkpoint import checkpoint_id, load_checkpoint, save_checkpoint, update_metrics
from models.pipelines.attention_image import attention_png
from models.pipelines.translation import Translator, load
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
from training.common import apply_profile, pick_device, progress, set_seed
from training.data import HSK_SOURCE, SPLIT_SEED, load_hsk_pairs, read_tsv, user_provenance
from training.distributed import Distributed, setup
from training.state import load_state, restore_rng, save_state, state_dir

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
# --grid trains len(CELLS) * len(ATTENTIONS) models, so each one is smaller than the quick profile's.
GRID_SETTINGS: dict[str, Any] = {"epochs": 20, "embedding_dim": 64, "hidden_dim": 128, "batch_size": 64,
                                 "micro_batch_size": None, "max_train_pairs": None, "lr": 2e-3, "patience": 2}
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
    parser.add_argument("--dropout", type=float, default=0.3)
    parser.add_argument("--batch-size", type=int, default=None, help="global batch size (sentence pairs)")
    parser.add_argument("--micro-batch-size", type=int, default=None,
                        help="pairs per forward pass on one process (default: its whole share)")
    parser.add_argument("--lr", type=float, default=None, help="Adam learning rate")
    parser.add_argument("--teacher-forcing", type=float, default=1.0,
                        help="probability of feeding the reference token (else the model's own guess)")
    parser.add_argument("--clip", type=float, default=1.0, help="gradient norm clipping threshold")
    parser.add_argument("--patience", type=int, default=None,
                        help="stop after this many epochs without a better validation loss")
    parser.add_argument("--min-count", type=int, default=2, help="rarer tokens are <unk>")
    parser.add_argument("--bf16", action=argparse.BooleanOptionalAction, default=True,
                        help="train under bfloat16 autocast (weights stay float32)")
    parser.add_argument("--compile", action="store_true", help="torch.compile the model")
    parser.add_argument("--max-train-pairs", type=int, default=None,
                        help="use only the first N training pairs (the tiny profile's shortcut)")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    _add_data_arguments(parser)
    _add_model_arguments(parser)
    parser.add_argument("--name", default=None,
                        help="checkpoint name (id seq2seq-NAME); default: the direction, e.g. zh-en")
    parser.add_argument("--resume", action="store_true",
                        help="continue from the training state kept beside the checkpoint (.<id>-train-state)")


def add_evaluate_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--direction", choices=DIRECTIONS, default="zh-en")
    parser.add_argument("--name", default=None, help="checkpoint name; default: the direction")
    parser.add_argument("--beam-size", type=int, default=1, help="1 = greedy decoding")
    parser.add_argument("--length-penalty", type=float, default=0.6)
    parser.add_argument("--heatmap", type=Path, default=None, metavar="PNG",
                        help="draw the attention of --text into this PNG instead of scoring the test split")
    parser.add_argument("--text", default=None, help="the sentence for --heatmap")
    grid = parser.add_argument_group("--grid: train and compare every cell x attention pair")
    grid.add_argument("--grid", action="store_true")
    grid.add_argument("--epochs", type=int, default=None, help=f"grid epochs (default {GRID_SETTINGS['epochs']})")
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

    def epoch(self, rng: random.Random | None) -> Iterator[list[int]]:
        """Each batch's example indices."""
        order = list(range(len(self.examples)))
        if rng is not None:
            rng.shuffle(order)
        # Sort within pools of 50 batches: close lengths per batch, yet a different mix each epoch.
        pool = 50 * self.batch_size
        order = [i for start in range(0, len(order), pool)
                 for i in sorted(order[start:start + pool], key=lambda i: len(self.examples[i][0]))]
        batches = [order[i:i + self.batch_size] for i in range(0, len(order), self.batch_size)]
        if rng is not None:
            rng.shuffle(batches)
        yield from batches

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


def autocast(device: torch.device, bf16: bool):
    """bf16 autocast: on CUDA, and on CPUs with AVX-512 BF16, where it nearly halves a step at hidden 256."""
    return torch.autocast(device.type, dtype=torch.bfloat16) if bf16 else nullcontext()


@torch.no_grad()
def validation_loss(model: Seq2Seq, batches: Batches, device: torch.device, bf16: bool) -> float:
    """Token-weighted mean cross-entropy with the reference fed in (teacher forcing 1)."""
    model.eval()
    total, count = 0.0, 0
    for indices in batches.epoch(None):
        with autocast(device, bf16):
            _, loss = model(*batches.pad(indices, device))
        tokens = batches.predicted(indices)
        total += loss.item() * tokens
        count += tokens
    return total / max(count, 1)


def train_step(model: torch.nn.Module, batches: Batches, indices: list[int], optimizer: torch.optim.Optimizer,
               args: argparse.Namespace, dist: Distributed) -> float:
    """One optimizer step on the global batch ``indices``; returns its loss (mean over its target tokens).

    This process trains on its rows of the batch, in pieces of at most ``--micro-batch-size``. A piece's
    mean loss counts by its share of the batch's target tokens, so the pieces add up to the batch's mean
    however it is split (a plain mean of the pieces' means would weigh short sentences more).
    """
    n_tokens = batches.predicted(indices)
    pieces = dist.micro_batches(len(indices), args.micro_batch_size)
    optimizer.zero_grad(set_to_none=True)
    loss_sum = torch.zeros((), device=dist.device)
    for i, (rows, weight) in enumerate(pieces):
        mine = [indices[r] for r in rows]
        with dist.accumulating(model, last=i == len(pieces) - 1):
            with autocast(dist.device, args.bf16):
                _, loss = model(*batches.pad(mine, dist.device), teacher_forcing=args.teacher_forcing)
            share = loss * (weight * batches.predicted(mine) / n_tokens)
            # DDP averages the processes' gradients; the batch's gradient is their sum.
            (share * dist.world_size).backward()
        loss_sum += share.detach()
    torch.nn.utils.clip_grad_norm_(model.parameters(), args.clip)
    optimizer.step()
    return dist.sum([loss_sum.item()])[0]


@dataclass
class Fitted:
    model: Seq2Seq
    source_vocab: WordVocab
    target_vocab: WordVocab
    history: list[dict[str, float]]
    best_epoch: int
    steps: int
    seconds: float
    tokens_per_second: float  # target tokens, over the training passes only


def fit(split: Split, direction: str, args: argparse.Namespace, device: torch.device,
        describe: str = "seq2seq", *, dist: Distributed | None = None, states: Path | None = None,
        state: dict[str, Any] | None = None) -> Fitted:
    """Train on ``split.train`` with early stopping on ``split.validation``; returns the best epoch's model.

    With ``dist`` (under torchrun) each process trains on its share of every batch; every process returns
    the same model. With ``states`` the training state is saved there after every epoch; with ``state``,
    one saved so, training continues from the epoch after it.
    """
    dist = dist or Distributed(0, 1, 0, device)
    set_seed(args.seed + dist.rank)  # dropout differs per rank; the batches below do not
    source_language, target_language = languages(direction)
    train_pairs = split.train[: args.max_train_pairs] if args.max_train_pairs else split.train
    if state is None:
        source_vocab = build_vocab((tokenize(s, source_language) for s, _ in train_pairs), args.min_count)
        target_vocab = build_vocab((tokenize(t, target_language) for _, t in train_pairs), args.min_count)
    else:  # the vocabularies the saved weights were trained with
        source_vocab, target_vocab = (WordVocab(**json.loads(state[key])) for key in ("source_vocab", "target_vocab"))
    train_batches = Batches(train_pairs, direction, source_vocab, target_vocab, args.batch_size)
    val_batches = Batches(split.validation, direction, source_vocab, target_vocab, 256)
    config = Seq2SeqConfig(len(source_vocab), len(target_vocab), args.embedding_dim, args.hidden_dim,
                           args.cell, args.attention, args.bidirectional, args.dropout)
    raw = Seq2Seq(config).to(device)
    optimizer = torch.optim.Adam(raw.parameters(), lr=args.lr)
    rng = random.Random(args.seed)
    history: list[dict[str, float]] = []
    best_loss, best_state, best_epoch, since_best, steps = float("inf"), None, 0, 0, 0
    tokens, train_seconds, seconds_before = 0, 0.0, 0.0
    if state is not None:
        raw.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        rng.setstate(state["batch_rng"])
        restore_rng(state, dist)
        history, best_loss, best_state = state["history"], state["best_loss"], state["best_model"]
        best_epoch, since_best, steps = state["best_epoch"], state["since_best"], state["steps"]
        tokens, train_seconds, seconds_before = state["tokens"], state["train_seconds"], state["seconds"]
        log.info("%s: resumed after epoch %d", describe, len(history))
    model = dist.wrap(raw)  # DDP starts every rank from rank 0's weights
    forward = torch.compile(model) if args.compile else model
    started = time.perf_counter()
    epoch = len(history)
    while epoch < args.epochs and since_best < args.patience:
        epoch += 1
        raw.train()
        bar = progress(train_batches.epoch(rng), total=len(train_batches),
                       desc=f"{describe} epoch {epoch}/{args.epochs}", unit="batch", leave=False)
        total, count, epoch_tokens, epoch_start = 0.0, 0, 0, time.perf_counter()
        for indices in bar:
            total += train_step(forward, train_batches, indices, optimizer, args, dist)
            count += 1
            epoch_tokens += train_batches.predicted(indices)
            bar.set_postfix(loss=f"{total / count:.3f}",
                            tok_s=f"{epoch_tokens / (time.perf_counter() - epoch_start):.0f}")
        steps, tokens = steps + count, tokens + epoch_tokens
        train_seconds += time.perf_counter() - epoch_start
        # Rank 0 checks; the others take its answer, so all stop on the same epoch.
        val = dist.broadcast(validation_loss(raw, val_batches, device, args.bf16) if dist.is_main else None)
        history.append({"epoch": epoch, "train_loss": round(total / max(count, 1), 4), "val_loss": round(val, 4)})
        log.info("%s epoch %d: train loss %.3f, validation loss %.3f", describe, epoch, total / max(count, 1), val)
        if val < best_loss:
            best_loss, best_epoch, since_best = val, epoch, 0
            best_state = copy.deepcopy(raw.state_dict())
        else:
            since_best += 1
            if since_best >= args.patience:
                log.info("%s: no better validation loss for %d epochs, stopping", describe, since_best)
        if states is not None:
            save_state(states, dist, {
                "model_config": asdict(config), "model": raw.state_dict(), "optimizer": optimizer.state_dict(),
                "batch_rng": rng.getstate(), "best_loss": best_loss, "best_model": best_state,
                "best_epoch": best_epoch, "since_best": since_best, "steps": steps, "tokens": tokens,
                "train_seconds": train_seconds, "seconds": seconds_before + time.perf_counter() - started,
                "source_vocab": source_vocab.to_json(), "target_vocab": target_vocab.to_json(),
            }, history)
    if best_state is not None:
        raw.load_state_dict(best_state)
    return Fitted(raw.eval(), source_vocab, target_vocab, history, best_epoch, steps,
                  seconds_before + time.perf_counter() - started, tokens / max(train_seconds, 1e-9))


# ---- scoring --------------------------------------------------------------------------------------------


def bucket_of(length: int, edges: Sequence[int]) -> str:
    """Label of the source-length bucket holding ``length`` (edges are inclusive upper bounds)."""
    lower = 1
    for edge in edges:
        if length <= edge:
            return f"{lower}-{edge}"
        lower = edge + 1
    return f"{lower}+"


def score(translator: Translator, pairs: Sequence[tuple[str, str]], beam_size: int = 1,
          length_penalty: float = 0.6, batch_size: int = 128) -> dict[str, Any]:
    """Corpus BLEU and chrF (sacrebleu, lower-cased), overall and by source-length bucket."""
    import sacrebleu

    target_language = translator.target_language
    hypotheses: list[str] = []
    for start in range(0, len(pairs), batch_size):
        chunk = [s for s, _ in pairs[start:start + batch_size]]
        hypotheses += [r.translation for r in translator.translate(chunk, beam_size, None, length_penalty)]
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
        "decoding": "greedy" if beam_size == 1 else f"beam {beam_size}, length penalty {length_penalty}",
        "bleu_signature": str(bleu.get_signature()),
        "chrf_signature": str(chrf.get_signature()),
        "bleu_by_source_length": buckets,
        "examples": [{"source": s, "reference": t, "translation": h}
                     for (s, t), h in list(zip(pairs, hypotheses, strict=True))[:5]],
    }


# ---- the command ------------------------------------------------------------------------------------------


@one_thread_unless_asked
def train(args: argparse.Namespace) -> list[Path]:
    apply_profile(args, PROFILES)
    if args.corpus is not None:
        raise ValueError("seq2seq trains on sentence pairs: pass --pairs FILE.tsv, not --corpus")
    with setup(args.device) as dist:
        return _train(args, dist)


def _train(args: argparse.Namespace, dist: Distributed) -> list[Path]:
    device = dist.device
    name = args.name or args.direction
    pairs, provenance = load_pairs(args.pairs)
    split = split_pairs(pairs, args.direction, args.split_seed, args.val_fraction, provenance)
    log.info("seq2seq-%s: %d train / %d validation / %d test pairs", name, len(split.train),
             len(split.validation), len(split.test))
    states = state_dir(args.out, checkpoint_id(FAMILY, name))
    state = load_state(states) if args.resume else None
    if state is not None:  # the saved model's shape; the other flags are today's
        for key in MODEL_FIELDS:
            setattr(args, key, state["model_config"][key])
    fitted = fit(split, args.direction, args, device, describe=f"seq2seq-{name}", dist=dist, states=states,
                 state=state)
    if not dist.is_main:
        dist.barrier()
        return []
    translator = Translator(fitted.model, fitted.source_vocab, fitted.target_vocab, args.direction, device)
    best = min(fitted.history, key=lambda h: h["val_loss"])
    metrics = {"validation_loss": best["val_loss"], "best_epoch": fitted.best_epoch,
               "tokens_per_second": round(fitted.tokens_per_second), "test": score(translator, split.test)}
    log.info("seq2seq-%s: test BLEU %.2f, chrF %.2f", name, metrics["test"]["bleu"], metrics["test"]["chrf"])
    train_pairs = args.max_train_pairs or len(split.train)
    config = {
        "id": checkpoint_id(FAMILY, name),
        "family": FAMILY,
        "name": name,
        "architecture": f"{'bidirectional ' if args.bidirectional else ''}{args.cell.upper()} encoder-decoder, "
                        f"{args.attention} attention",
        "model": model_config_dict(fitted.model.config, args.direction),
        "tokenizer": {"type": "WordVocab", "file": SOURCE_VOCAB,
                      "files": {"source": SOURCE_VOCAB, "target": TARGET_VOCAB},
                      "units": {"zh": "characters", "en": "lower-cased words, punctuation split"},
                      "specials": list(SPECIALS)},
        "data": {**split.provenance, "trained_on": ["train"], "train_pairs_used": train_pairs},
        "split_seed": split.seed,
        "training": {"profile": args.profile, "epochs": args.epochs, "epochs_run": len(fitted.history),
                     "best_epoch": fitted.best_epoch, "seed": args.seed, "steps": fitted.steps,
                     "seconds": round(fitted.seconds, 1), "batch_size": args.batch_size,
                     "micro_batch_size": args.micro_batch_size, "world_size": dist.world_size, "lr": args.lr,
                     "teacher_forcing": args.teacher_forcing, "clip": args.clip, "patience": args.patience,
                     "min_count": args.min_count, "bf16": args.bf16, "compile": args.compile, "device": str(device),
                     "history": fitted.history},
    }
    path = save_checkpoint(args.out, config, fitted.model.state_dict(), metrics,
                           {SOURCE_VOCAB: fitted.source_vocab.to_json(),
                            TARGET_VOCAB: fitted.target_vocab.to_json()})
    dist.barrier()
    return [path]


@one_thread_unless_asked
def evaluate(args: argparse.Namespace) -> dict[str, Any]:
    if args.grid:
        return grid(args)
    name = args.name or args.direction
    path = Path(args.out) / checkpoint_id(FAMILY, name)
    if not path.is_dir():
        command = f"python -m training seq2seq --direction {args.direction}" + (f" --name {name}" if args.name else "")
        raise FileNotFoundError(f"no checkpoint {path}; train it with `{command}`")
    checkpoint = load_checkpoint(path)
    device = pick_device(args.device)
    translator = load(checkpoint, device)
    if args.heatmap is not None:
        if not args.text:
            raise ValueError("--heatmap needs --text")
        result = translator.translate([args.text], args.beam_size, None, args.length_penalty)[0]
        args.heatmap.parent.mkdir(parents=True, exist_ok=True)
        args.heatmap.write_bytes(attention_png(result, title=f"{checkpoint.id}: {result.translation}"))
        return {"heatmap": str(args.heatmap), "translation": result.translation,
                "source_tokens": result.source_tokens, "target_tokens": result.target_tokens}
    data = checkpoint.config["data"]
    pairs, provenance = load_pairs(Path(data["file"]) if "file" in data else None)
    split = split_pairs(pairs, translator.direction, checkpoint.config["split_seed"],
                        data["split"]["fraction_test"], provenance)
    key = "test" if args.beam_size == 1 else f"test_beam_{args.beam_size}"
    metrics = {**checkpoint.metrics, key: score(translator, split.test, args.beam_size, args.length_penalty)}
    update_metrics(path, metrics)
    return metrics


# ---- the grid ------------------------------------------------------------------------------------------


def grid(args: argparse.Namespace) -> dict[str, Any]:
    """Every cell x attention pair at ``GRID_SETTINGS`` on one split; BLEU overall and by source length."""
    device = pick_device(args.device)
    settings = argparse.Namespace(**{**GRID_SETTINGS, "dropout": 0.3, "teacher_forcing": 1.0, "clip": 1.0,
                                     "min_count": 2, "bidirectional": True, "bf16": True, "compile": False,
                                     "seed": args.seed})
    if args.epochs is not None:
        settings.epochs = args.epochs
    pairs, provenance = load_pairs(args.pairs)
    split = split_pairs(pairs, args.direction, args.split_seed, 0.1, provenance)
    runs = []
    for cell in CELLS:
        for attention in ATTENTIONS:
            settings.cell, settings.attention = cell, attention
            fitted = fit(split, args.direction, settings, device, describe=f"{cell}/{attention}")
            translator = Translator(fitted.model, fitted.source_vocab, fitted.target_vocab, args.direction,
                                    device)
            result = score(translator, split.test)
            runs.append({"cell": cell, "attention": attention, "bleu": result["bleu"], "chrf": result["chrf"],
                         "validation_loss": min(h["val_loss"] for h in fitted.history),
                         "epochs": len(fitted.history), "seconds": round(fitted.seconds, 1),
                         "parameters": sum(p.numel() for p in fitted.model.parameters()),
                         "bleu_by_source_length": result["bleu_by_source_length"]})
            log.info("%s/%s: BLEU %.2f chrF %.2f", cell, attention, result["bleu"], result["chrf"])
    report = {"direction": args.direction, "split_seed": split.seed, "settings": {
        k: getattr(settings, k) for k in ("epochs", "embedding_dim", "hidden_dim", "batch_size", "lr", "patience")},
        "test_sentences": len(split.test), "runs": runs}
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
                 str(r["epochs"])]
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
