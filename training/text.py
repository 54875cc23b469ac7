"""Text for the language models, the GPT and the recurrent LMs alike: the documents, their tokenizer, and
next-token prediction on random windows.

Both families read the same documents (the play split, or a user's text cut in two) through the same
tokenizers and count bits per character the same way, so their figures compare.
"""

from __future__ import annotations

import argparse
import logging
import math
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from models.checkpoint import Checkpoint, update_metrics
from models.tokenizers import ByteBPETokenizer, CharTokenizer, TextTokenizer, load_text_tokenizer
from training.data import SPLIT_SEED, plays_in, read_text_file, shakespeare_provenance, split_text, user_provenance
from training.loop import Batch, Run, autocast, resolve_precision

log = logging.getLogger("training")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--tokenizer", choices=("bpe", "char"), default=None,
                        help="byte-level BPE or one token per character")
    parser.add_argument("--vocab-size", type=int, default=None, help="BPE vocabulary size")
    parser.add_argument("--block-size", type=int, default=None, help="tokens per training window (context)")
    parser.add_argument("--eval-batches", type=int, default=None, help="batches of windows per validation check")
    parser.add_argument("--train-chars", type=int, default=None,
                        help="use only the first N characters of training text")
    parser.add_argument("--val-chars", type=int, default=None,
                        help="use only the first N characters of validation text")


@dataclass
class TextData:
    tokenizer: TextTokenizer
    train: torch.Tensor  # token ids of the training text, documents joined
    val: torch.Tensor
    val_chars: int  # characters covered by the validation targets (every token but the first)
    provenance: dict[str, Any]


def read_documents(corpus: Path | None, val_fraction: float, train_chars: int | None = None,
                   val_chars: int | None = None) -> tuple[list[str], list[str], dict[str, Any]]:
    """Training and validation documents: the play split by default, or the user's text cut in two."""
    if corpus is not None:
        train_text, val_text = split_text(read_text_file(corpus), val_fraction)
        train, val = [train_text], [val_text]
        provenance = user_provenance(corpus, val_fraction)
    else:
        train = [p.render() for p in plays_in("train")]
        val = [p.render() for p in plays_in("validation")]
        provenance = shakespeare_provenance(SPLIT_SEED, ("train",))
    return truncate(train, train_chars), truncate(val, val_chars), provenance


def truncate(documents: list[str], limit: int | None) -> list[str]:
    if not limit:
        return documents
    kept: list[str] = []
    for doc in documents:
        room = limit - sum(map(len, kept))
        if room <= 0:
            break
        kept.append(doc[:room])
    return kept


def train_tokenizer(kind: str, documents: list[str], vocab_size: int) -> TextTokenizer:
    if kind == "char":
        return CharTokenizer.train(documents)
    return ByteBPETokenizer.train(documents, vocab_size)


def encode(tokenizer: TextTokenizer, documents: list[str]) -> torch.Tensor:
    """All documents as one id stream, separated by end-of-text (BPE) or a newline (characters).

    Long texts are encoded in pieces cut after a newline so `tokenizers` can use every core; the
    pieces decode back to exactly the text, so the bits-per-character count is unaffected.
    """
    ids: list[int] = []
    for i, doc in enumerate(documents):
        if i and tokenizer.eos_id is not None:
            ids.append(tokenizer.eos_id)
        elif i:
            doc = "\n" + doc
        if isinstance(tokenizer, ByteBPETokenizer):
            for piece in tokenizer.encode_batch(split_lines(doc, 32_768)):
                ids.extend(piece)
        else:
            ids.extend(tokenizer.encode(doc))
    return torch.tensor(ids, dtype=torch.int32)


def predicted_chars(tokenizer: TextTokenizer, documents: list[str], ids: torch.Tensor) -> int:
    """Characters behind every token but the first (the one no window predicts), for bits per character.

    End-of-text separators cover no characters; newline separators cover one.
    """
    separators = 0 if tokenizer.eos_id is not None else len(documents) - 1
    return sum(map(len, documents)) + separators - len(tokenizer.decode(ids[:1].tolist()))


def split_lines(text: str, size: int) -> list[str]:
    pieces, start = [], 0
    while start < len(text):
        end = text.find("\n", start + size)
        end = len(text) if end < 0 else end + 1
        pieces.append(text[start:end])
        start = end
    return pieces


def prepare(args: argparse.Namespace, run: Run) -> TextData:
    """The documents, encoded by the resumed run's tokenizer or one trained on rank 0 and shared with the
    others, so every rank encodes alike."""
    train_docs, val_docs, provenance = read_documents(args.corpus, args.val_fraction, args.train_chars,
                                                      args.val_chars)
    tokenizer_json = None
    if run.saved:
        args.tokenizer = "char" if run.saved["tokenizer_type"] == "char" else "bpe"
        tokenizer_json = run.saved["tokenizer"]
    kind = "char" if args.tokenizer == "char" else "byte_bpe"
    if tokenizer_json is None:
        if run.is_main:
            started = time.perf_counter()
            tokenizer_json = train_tokenizer(args.tokenizer, train_docs, args.vocab_size).to_json()
            log.info("tokenizer: %s trained in %.1f s", kind, time.perf_counter() - started)
        tokenizer_json = run.dist.broadcast(tokenizer_json)
    tokenizer = (CharTokenizer if kind == "char" else ByteBPETokenizer).from_json(tokenizer_json)
    train, val = encode(tokenizer, train_docs), encode(tokenizer, val_docs)
    if len(train) <= args.block_size + 1:
        raise ValueError(f"the training text has {len(train)} tokens; more than --block-size "
                         f"{args.block_size} are needed")
    log.info("data: %d training tokens, %d validation tokens (%d characters)", len(train), len(val),
             predicted_chars(tokenizer, val_docs, val))
    return TextData(tokenizer, train, val, predicted_chars(tokenizer, val_docs, val), provenance)


def rebuild(data: TextData) -> dict[str, str]:
    """What a resumed run needs of the text: its tokenizer (``prepare`` reads it back)."""
    return {"tokenizer_type": data.tokenizer.type, "tokenizer": data.tokenizer.to_json()}


def bits_per_char(nats: float, count: int, chars: int) -> dict[str, Any]:
    """The validation figures of summed ``nats`` over ``count`` tokens that cover ``chars`` characters."""
    return {"val_loss": round(nats / count, 5), "val_bpc": round(nats / chars / math.log(2), 5),
            "val_perplexity": round(math.exp(nats / count), 3), "val_tokens": count, "val_chars": chars}


def rescore(checkpoint: Checkpoint, model: nn.Module, precision: str,
            score: Callable[[nn.Module, torch.Tensor], tuple[float, int]], corpus: Path | None = None,
            val_fraction: float | None = None) -> dict[str, Any]:
    """Score ``model``, loaded from ``checkpoint``, again on the validation text it was trained with (or the last
    ``val_fraction`` of ``corpus``); ``score`` gives summed nats and their count. Refreshes metrics.json."""
    tokenizer = load_text_tokenizer(checkpoint, model.config.vocab_size)
    record = checkpoint.config.get("data", {})
    corpus = corpus or (Path(record["file"]) if "file" in record else None)
    _, documents, _ = read_documents(corpus, val_fraction or record.get("val_fraction", 0.1))
    ids = encode(tokenizer, documents)
    device = next(model.parameters()).device
    with autocast(device, resolve_precision(precision, device)):
        nats, count = score(model, ids)
    metrics = {**checkpoint.metrics, **bits_per_char(nats, count, predicted_chars(tokenizer, documents, ids))}
    update_metrics(checkpoint.path, metrics)
    return metrics


def windows(ids: torch.Tensor, offsets: torch.Tensor, block_size: int,
            device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """Inputs and next-token targets for windows starting at ``offsets``."""
    window = ids[offsets[:, None] + torch.arange(block_size + 1)].long()
    x, y = window[:, :-1], window[:, 1:]
    if device.type == "cuda":
        return x.pin_memory().to(device, non_blocking=True), y.pin_memory().to(device, non_blocking=True)
    return x, y


@torch.no_grad()
def window_loss(model: nn.Module, ids: torch.Tensor, block_size: int, device: torch.device,
                max_batches: int | None = None, batch_size: int = 16) -> tuple[float, int]:
    """Summed nats over the targets of ``ids`` and their count, read in consecutive ``block_size`` windows,
    each from an empty context. With ``max_batches`` only that many evenly spaced batches are read."""
    was_training = model.training
    model.eval()
    starts = list(range(0, len(ids) - 1, block_size))
    full = [s for s in starts if s + block_size < len(ids)]
    batches = [full[i:i + batch_size] for i in range(0, len(full), batch_size)]
    if max_batches is not None and len(batches) > max_batches:
        stride = len(batches) / max_batches
        batches = [batches[int(i * stride)] for i in range(max_batches)]
    elif full != starts:  # the last, shorter window
        batches.append([starts[-1]])
    nats, count = 0.0, 0
    for group in batches:
        length = min(block_size, len(ids) - 1 - group[0])
        x, y = windows(ids, torch.tensor(group), length, device)
        _, loss = model(x, y)
        nats += loss.item() * y.numel()
        count += y.numel()
    model.train(was_training)
    return nats, count


class WindowTask:
    """Next-token prediction on windows of ``block_size`` tokens at random offsets of the training text
    (``model(x, y)`` returns logits and the mean loss); validated on a few windows of the validation text."""

    def __init__(self, model: nn.Module, data: TextData, args: argparse.Namespace, device: torch.device):
        self.model, self.data, self.device = model, data, device
        self.block_size, self.batch_size, self.seed = args.block_size, args.batch_size, args.seed
        self.eval_batches = args.eval_batches

    def batches(self) -> Iterator[Batch[torch.Tensor]]:
        generator = torch.Generator().manual_seed(self.seed)
        while True:
            offsets = torch.randint(len(self.data.train) - self.block_size, (self.batch_size,), generator=generator)
            yield Batch(offsets, self.batch_size, self.batch_size * self.block_size)

    def loss(self, model: nn.Module, offsets: torch.Tensor, rows: list[int]) -> torch.Tensor:
        _, loss = model(*windows(self.data.train, offsets[rows], self.block_size, self.device))
        return loss * (len(rows) / len(offsets))

    def validate(self, model: nn.Module) -> dict[str, float]:
        nats, count = window_loss(model, self.data.val, self.block_size, self.device, self.eval_batches)
        return {"val_loss": nats / count, "val_tokens": count}


def steps_per_epoch(data: TextData, args: argparse.Namespace) -> int:
    return max(1, len(data.train) // (args.batch_size * args.block_size))
