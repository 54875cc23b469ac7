"""Recurrent language models (RNN, LSTM, GRU) on the GPT's corpus, split and tokenizers.

    python -m training lm --cell rnn|lstm|gru                 characters, Shakespeare play split -> lm-<cell>
    python -m training lm --cell lstm --tokenizer bpe          byte-level BPE, as the GPT's default
    python -m training lm --cell gru --corpus my.txt --val-fraction 0.1
    python -m training lm --cell lstm --max-seconds 60         stop and evaluate at a wall-clock budget
    python -m training evaluate lm --cell lstm                 validation bits per character again

The text, its split and the tokenizers are the GPT's (``training.text``), so bits per character compare
across the lineage. Training reads random windows of ``--block-size`` tokens, each from a zero state.
Validation carries the state across the whole validation text, cut into ``EVAL_ROWS`` contiguous
streams read in parallel: a recurrent model's context is everything it has read, and this is how it is
used when it generates.
"""

from __future__ import annotations

import argparse
import logging
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from models.catalog import checkpoint_id_of
from models.checkpoint import load_checkpoint
from models.rnn import CELLS, RNNLanguageModel, RNNLanguageModelConfig, load
from training import loop, text
from training.common import add_name_arguments, checkpoint_name, pick_device
from training.data import SPLIT_SEED

log = logging.getLogger("training.lm")

FAMILY = "lm"
EVAL_ROWS = 16  # parallel streams the validation text is cut into
EVAL_CHUNK = 256  # tokens per forward call while carrying the state

_MODEL = {"tokenizer": "char", "vocab_size": 2048, "embed_dim": 64, "num_layers": 1, "dropout": 0.0,
          "tie_weights": False, "block_size": 128, "batch_size": 32, "weight_decay": 0.01, "eval_batches": 8}
PROFILES: dict[str, dict[str, Any]] = {
    # seconds: the test session trains and serves these
    "tiny": {**_MODEL, "hidden_size": 64, "block_size": 64, "batch_size": 16, "max_steps": 40, "lr": 1e-2,
             "min_lr": 1e-3, "warmup_steps": 4, "eval_interval": 20, "train_chars": 200_000, "val_chars": 20_000,
             "max_seconds": 20.0},
    # make serve: the 250 steps end each run on the AVX-512 machine (the GRU's slowest, about 35 s: 427 steps in
    # the leaderboard's 60 s); on a slower one the 50 s do (make serve's budget, see the README's Training)
    "quick": {**_MODEL, "hidden_size": 256, "max_steps": 250, "lr": 5e-3, "min_lr": 5e-4, "warmup_steps": 20,
              "eval_interval": 50, "max_seconds": 50.0},
    # one GPU
    "full": {**_MODEL, "embed_dim": 256, "hidden_size": 1024, "num_layers": 2, "dropout": 0.2, "block_size": 256,
             "batch_size": 64, "max_steps": 10_000, "lr": 2e-3, "min_lr": 1e-4, "warmup_steps": 200,
             "eval_interval": 500, "eval_batches": 20},
}
MODEL_FIELDS = ("cell", "embed_dim", "hidden_size", "num_layers", "dropout", "tie_weights")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    g = parser.add_argument_group("lm")
    g.add_argument("--cell", choices=CELLS, required=True, help="the recurrence: Elman RNN, LSTM or GRU")
    g.add_argument("--embed-dim", type=int, default=None)
    g.add_argument("--hidden-size", type=int, default=None, help="state size h")
    g.add_argument("--num-layers", type=int, default=None, help="stacked recurrent layers")
    g.add_argument("--dropout", type=float, default=None)
    g.add_argument("--tie-weights", action=argparse.BooleanOptionalAction, default=None,
                   help="share the embedding with the output layer V (needs --embed-dim = --hidden-size)")
    g.add_argument("--min-lr", type=float, default=None, help="learning rate at the end of the cosine")
    g.add_argument("--warmup-steps", type=int, default=None)
    text.add_arguments(g)
    add_name_arguments(parser, "the cell, e.g. lstm")
    loop.add_arguments(parser)


def add_evaluate_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--cell", choices=CELLS, required=True)
    parser.add_argument("--name", default=None, help="the checkpoint's name (default: the cell)")
    parser.add_argument("--precision", choices=("auto", "fp32", "bf16"), default="auto")


@torch.no_grad()
def stateful_nats(model: RNNLanguageModel, ids: torch.Tensor, device: torch.device) -> tuple[float, int]:
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
        logits, new_state = model.run(x, state if carry else None)
        state = new_state if carry else state
        nats += F.cross_entropy(logits.float().flatten(0, 1), y.flatten(), reduction="sum").item()
        count += y.numel()
    model.train(was_training)
    return nats, count


def resolve_arguments(args: argparse.Namespace) -> argparse.Namespace:
    return loop.resolve(args, PROFILES[args.profile])


def train(args: argparse.Namespace) -> list[Path]:
    resolve_arguments(args)
    name = checkpoint_name(args, FAMILY, args.cell, args.corpus)
    model_id = checkpoint_id_of(FAMILY, name)
    with loop.Run(args, model_id) as run:
        run.restore(args, MODEL_FIELDS)
        data = text.prepare(args, run)
        config = RNNLanguageModelConfig(vocab_size=data.tokenizer.vocab_size,
                                        **{k: getattr(args, k) for k in MODEL_FIELDS})
        model = RNNLanguageModel(config).to(run.device)
        settings = loop.Settings(loop.total_steps(args, text.steps_per_epoch(data, args)),
                                 loop.Schedule(args.lr, args.min_lr, args.warmup_steps))
        trained = run.fit(text.WindowTask(model, data, args, run.device), settings,
                          rebuild={"model_config": asdict(config), **text.rebuild(data)})
        if not run.is_main:
            return []
        with run.autocast():
            nats, count = stateful_nats(model, data.val, run.device)
        metrics = text.bits_per_char(nats, count, data.val_chars)
        log.info("%s: validation %.4f nats/token, %.4f bits/char after %d steps in %.1f s", model_id,
                 metrics["val_loss"], metrics["val_bpc"], trained.steps, trained.seconds)
        return [run.save(loop.Record({
            "id": model_id, "family": FAMILY, "name": name,
            "architecture": {"rnn": "Elman RNN", "lstm": "LSTM", "gru": "GRU"}[args.cell] + " language model",
            "model": asdict(config), "tokenizer": {"type": data.tokenizer.type, "file": data.tokenizer.file_name},
            "data": data.provenance, "split_seed": SPLIT_SEED,
        }, {data.tokenizer.file_name: data.tokenizer.to_json()}), trained, metrics)]


def evaluate(args: argparse.Namespace) -> dict[str, Any]:
    """Validation loss and bits per character of ``lm-<cell>`` on the text it was trained on."""
    checkpoint = load_checkpoint(Path(args.out) / checkpoint_id_of(FAMILY, args.name or args.cell))
    device = pick_device(args.device)
    return text.rescore(checkpoint, load(checkpoint, device), args.precision,
                        lambda model, ids: stateful_nats(model, ids, device))
