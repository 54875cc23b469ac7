"""Recurrent language models (RNN, LSTM, GRU) on the GPT's corpus, split and tokenizers.

    python -m training lm --cell rnn|lstm|gru                 characters, Shakespeare play split -> lm-<cell>
    python -m training lm --cell lstm --tokenizer bpe          byte-level BPE, as the GPT's default
    python -m training lm --cell gru --corpus my.txt --val-fraction 0.1
    python -m training lm --cell lstm --max-seconds 60         stop and evaluate at a wall-clock budget
    python -m training evaluate lm --cell lstm                 validation bits per character again

The text, its split and the tokenizers are the GPT trainer's own (``training.gpt``), so bits per
character compare across the lineage. Training reads random windows of ``--block-size`` tokens, each
from a zero state. Validation carries the state across the whole validation text, cut into
``EVAL_ROWS`` contiguous streams read in parallel: a recurrent model's context is everything it has
read, and this is how it is used when it generates.
"""

from __future__ import annotations

import argparse
import logging
import math
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from models.checkpoint import checkpoint_id, load_checkpoint, save_checkpoint, update_metrics
from models.pipelines.text_generation import load
from models.rnn import CELLS, RNNLanguageModel, RNNLanguageModelConfig
from training import gpt
from training.common import apply_profile, pick_device, progress, set_seed, weight_decay_groups
from training.data import SPLIT_SEED

log = logging.getLogger("training.lm")

FAMILY = "lm"
EVAL_ROWS = 16  # parallel streams the validation text is cut into
EVAL_CHUNK = 256  # tokens per forward call while carrying the state

_MODEL = {"tokenizer": "char", "vocab_size": 2048, "embed_dim": 64, "num_layers": 1, "dropout": 0.0,
          "tie_weights": False, "block_size": 128, "batch_size": 32, "weight_decay": 0.01, "grad_clip": 1.0,
          "dtype": "auto", "eval_batches": 8}
PROFILES: dict[str, dict[str, Any]] = {
    # seconds: the test session trains and serves these
    "tiny": {**_MODEL, "hidden_size": 64, "block_size": 64, "batch_size": 16, "max_steps": 40, "lr": 1e-2,
             "min_lr": 1e-3, "warmup_steps": 4, "eval_interval": 0, "train_chars": 200_000, "val_chars": 20_000,
             "max_seconds": 20.0},
    # make serve: well under a minute each on 2 cores
    "quick": {**_MODEL, "hidden_size": 256, "max_steps": 250, "lr": 5e-3, "min_lr": 5e-4, "warmup_steps": 20,
              "eval_interval": 50, "train_chars": None, "val_chars": None, "max_seconds": 60.0},
    # one GPU
    "full": {**_MODEL, "embed_dim": 256, "hidden_size": 1024, "num_layers": 2, "dropout": 0.2, "block_size": 256,
             "batch_size": 64, "max_steps": 10_000, "lr": 2e-3, "min_lr": 1e-4, "warmup_steps": 200,
             "eval_interval": 500, "eval_batches": 20, "train_chars": None, "val_chars": None, "max_seconds": None},
}
MODEL_FIELDS = ("cell", "embed_dim", "hidden_size", "num_layers", "dropout", "tie_weights")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    g = parser.add_argument_group("lm")
    g.add_argument("--cell", choices=CELLS, required=True, help="the recurrence: Elman RNN, LSTM or GRU")
    g.add_argument("--tokenizer", choices=("char", "bpe"), default=None,
                   help="one token per character (default) or the GPT's byte-level BPE")
    g.add_argument("--vocab-size", type=int, default=None, help="BPE vocabulary size")
    g.add_argument("--embed-dim", type=int, default=None)
    g.add_argument("--hidden-size", type=int, default=None, help="state size h")
    g.add_argument("--num-layers", type=int, default=None, help="stacked recurrent layers")
    g.add_argument("--dropout", type=float, default=None)
    g.add_argument("--tie-weights", action=argparse.BooleanOptionalAction, default=None,
                   help="share the embedding with the output layer V (needs --embed-dim = --hidden-size)")
    g.add_argument("--block-size", type=int, default=None, help="tokens per training window (backprop length)")
    g.add_argument("--batch-size", type=int, default=None, help="windows per optimizer step")
    g.add_argument("--max-steps", type=int, default=None, help="optimizer steps (--epochs overrides)")
    g.add_argument("--lr", type=float, default=None, help="peak learning rate")
    g.add_argument("--min-lr", type=float, default=None, help="learning rate at the end of the cosine")
    g.add_argument("--warmup-steps", type=int, default=None)
    g.add_argument("--weight-decay", type=float, default=None)
    g.add_argument("--grad-clip", type=float, default=None, help="clip the gradient norm to this (0: off)")
    g.add_argument("--max-seconds", type=float, default=None,
                   help="wall-clock budget for the training loop; the cosine follows it (0: none)")
    g.add_argument("--eval-interval", type=int, default=None, help="steps between validation checks (0: end only)")
    g.add_argument("--eval-batches", type=int, default=None, help="windows (x batch) per validation check")
    g.add_argument("--dtype", choices=("auto", "bfloat16", "float32"), default=None,
                   help="autocast precision; auto is bfloat16 where the hardware computes it natively")
    g.add_argument("--train-chars", type=int, default=None, help="use only the first N characters of training text")
    g.add_argument("--val-chars", type=int, default=None, help="use only the first N characters of validation text")


def add_evaluate_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--cell", choices=CELLS, required=True)
    parser.add_argument("--dtype", choices=("auto", "bfloat16", "float32"), default="auto")


# ---- evaluation ----------------------------------------------------------------------------------


@torch.no_grad()
def stateful_nats(model: RNNLanguageModel, ids: torch.Tensor, device: torch.device, dtype: str) -> tuple[float, int]:
    """Summed nats over every validation target (all tokens but the first), and their count.

    The text is cut into ``EVAL_ROWS`` contiguous rows read side by side, ``EVAL_CHUNK`` tokens per
    call, each row's state carried from its start: only the first tokens of each row have little
    context. The few tokens that do not fill a row are scored as one more sequence.
    """
    was_training = model.training
    model.eval()
    rows = max(1, min(EVAL_ROWS, (len(ids) - 1) // EVAL_CHUNK))
    width = (len(ids) - 1) // rows
    inputs = ids[: rows * width].long().view(rows, width).to(device)
    targets = ids[1: rows * width + 1].long().view(rows, width).to(device)
    pieces = [(inputs[:, s:s + EVAL_CHUNK], targets[:, s:s + EVAL_CHUNK], True) for s in range(0, width, EVAL_CHUNK)]
    tail = ids[rows * width:].long().to(device)
    if len(tail) > 1:
        pieces.append((tail[None, :-1], tail[None, 1:], False))
    state, nats, count = None, 0.0, 0
    for x, y, carry in pieces:
        with gpt.autocast(device, dtype):
            logits, new_state = model.run(x, state if carry else None)
        state = new_state if carry else state
        nats += F.cross_entropy(logits.float().flatten(0, 1), y.flatten(), reduction="sum").item()
        count += y.numel()
    model.train(was_training)
    return nats, count


# ---- training ------------------------------------------------------------------------------------


def resolve_arguments(args: argparse.Namespace) -> argparse.Namespace:
    apply_profile(args, PROFILES)
    if args.max_seconds == 0:
        args.max_seconds = None
    return args


def train(args: argparse.Namespace) -> list[Path]:
    resolve_arguments(args)
    set_seed(args.seed)
    device = pick_device(args.device)
    dtype = gpt.resolve_dtype(args.dtype, device)
    started = time.perf_counter()

    train_docs, val_docs, provenance = gpt.read_documents(args)
    tokenizer = gpt.train_tokenizer(args.tokenizer, train_docs, args.vocab_size)
    train_ids, val_ids = gpt.encode(tokenizer, train_docs), gpt.encode(tokenizer, val_docs)
    val_chars = gpt.predicted_chars(tokenizer, val_docs, val_ids)
    if len(train_ids) <= args.block_size + 1:
        raise ValueError(f"the training text has {len(train_ids)} tokens; more than --block-size "
                         f"{args.block_size} are needed")
    if args.epochs is not None:
        args.max_steps = math.ceil(args.epochs * len(train_ids) / (args.batch_size * args.block_size))

    config = RNNLanguageModelConfig(vocab_size=tokenizer.vocab_size, **{k: getattr(args, k) for k in MODEL_FIELDS})
    model = RNNLanguageModel(config).to(device)
    parameters = sum(p.numel() for p in model.parameters())
    optimizer = torch.optim.AdamW(weight_decay_groups(model, args.weight_decay), lr=args.lr, foreach=True)
    model_id = checkpoint_id(FAMILY, args.cell)
    log.info("%s: %s, %d parameters, %s autocast, %d training / %d validation tokens", model_id, config,
             parameters, dtype, len(train_ids), len(val_ids))

    batches = torch.Generator().manual_seed(args.seed)
    curve: list[dict[str, float]] = []  # validation checks during training, for loss-against-time plots
    step, elapsed, losses = 0, 0.0, []
    model.train()
    loop_started = time.perf_counter()
    bar = progress(total=args.max_steps, desc=model_id, unit="step")
    while step < args.max_steps and not (args.max_seconds and elapsed >= args.max_seconds):
        lr = gpt.learning_rate(args, step, elapsed / args.max_seconds if args.max_seconds else 0.0)
        for group in optimizer.param_groups:
            group["lr"] = lr
        offsets = torch.randint(len(train_ids) - args.block_size, (args.batch_size,), generator=batches)
        x, y = gpt.batch(train_ids, offsets, args.block_size, device)
        with gpt.autocast(device, dtype):
            _, loss = model(x, y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if args.grad_clip:
            torch.nn.utils.clip_grad_norm_(model.parameters(), args.grad_clip)
        optimizer.step()
        step += 1
        losses.append(loss.item())
        elapsed = time.perf_counter() - loop_started
        bar.update(1)
        bar.set_postfix(loss=f"{losses[-1]:.3f}", tok_s=f"{step * args.batch_size * args.block_size / elapsed:,.0f}")
        if args.eval_interval and step % args.eval_interval == 0:
            # A quick look at a few windows; as in the GPT trainer, its time counts against --max-seconds.
            nats, count = gpt.validation_loss(model, val_ids, args.block_size, device, dtype, args.eval_batches)
            curve.append({"step": step, "seconds": round(elapsed, 2), "val_loss": round(nats / count, 5)})
    bar.close()
    train_seconds = elapsed

    nats, count = stateful_nats(model, val_ids, device, dtype)
    val_loss = nats / count
    curve.append({"step": step, "seconds": round(train_seconds, 2), "val_loss": round(val_loss, 5)})
    tokens_seen = step * args.batch_size * args.block_size
    metrics = {
        "val_loss": round(val_loss, 5),
        "val_bpc": round(nats / val_chars / math.log(2), 5),
        "val_perplexity": round(math.exp(val_loss), 3),
        "val_tokens": count,
        "val_chars": val_chars,
        "train_loss": round(sum(losses[-20:]) / max(1, len(losses[-20:])), 5),
        "steps": step,
        "tokens_seen": tokens_seen,
        "train_seconds": round(train_seconds, 1),
        "tokens_per_second": round(tokens_seen / max(train_seconds, 1e-9), 1),
        "parameters": parameters,
        "curve": curve,
    }
    log.info("%s: validation %.4f nats/token, %.4f bits/char after %d steps in %.1f s", model_id, val_loss,
             metrics["val_bpc"], step, train_seconds)
    path = save_checkpoint(args.out, {
        "id": model_id,
        "family": FAMILY,
        "name": args.cell,
        "architecture": {"rnn": "Elman RNN", "lstm": "LSTM", "gru": "GRU"}[args.cell] + " language model",
        "model": asdict(config),
        "tokenizer": {"type": tokenizer.type, "file": tokenizer.file_name},
        "data": provenance,
        "split_seed": SPLIT_SEED,
        "training": {
            "profile": args.profile, "seed": args.seed, "steps": step, "max_steps": args.max_steps,
            "batch_size": args.batch_size, "block_size": args.block_size, "lr": args.lr, "min_lr": args.min_lr,
            "warmup_steps": args.warmup_steps, "weight_decay": args.weight_decay, "grad_clip": args.grad_clip,
            "dtype": dtype, "device": device.type, "max_seconds": args.max_seconds,
            "seconds": round(time.perf_counter() - started, 1),
        },
    }, model.state_dict(), metrics, files={tokenizer.file_name: tokenizer.to_json()})
    return [path]


def evaluate(args: argparse.Namespace) -> dict[str, Any]:
    """Validation loss and bits per character of ``lm-<cell>`` on the text it was trained on."""
    checkpoint = load_checkpoint(Path(args.out) / checkpoint_id(FAMILY, args.cell))
    device = pick_device(args.device)
    data_record = checkpoint.config.get("data", {})
    corpus = Path(data_record["file"]) if "file" in data_record else None
    source = argparse.Namespace(corpus=corpus, val_fraction=data_record.get("val_fraction", 0.1),
                                train_chars=None, val_chars=None)
    _, val_docs, _ = gpt.read_documents(source)
    generator = load(checkpoint, device)
    model, tokenizer = generator.model, generator.tokenizer
    ids = gpt.encode(tokenizer, val_docs)
    nats, count = stateful_nats(model, ids, device, gpt.resolve_dtype(args.dtype, device))
    metrics = {**checkpoint.metrics, "val_loss": round(nats / count, 5),
               "val_bpc": round(nats / gpt.predicted_chars(tokenizer, val_docs, ids) / math.log(2), 5),
               "val_perplexity": round(math.exp(nats / count), 3), "val_tokens": count}
    update_metrics(checkpoint.path, metrics)
    return metrics
