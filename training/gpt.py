"""GPT: a decoder-only Transformer language model (byte-level BPE or characters), torchrun-ready.

    python -m training gpt                                   # BPE, Shakespeare play split -> checkpoints/gpt
    python -m training gpt --tokenizer char --corpus plays.txt --val-fraction 0.1 --name char
    python -m training gpt --max-seconds 100                 # train for 100 s, shaped for that budget
    python -m training gpt --resume                          # continue from checkpoints/.gpt-train-state
    torchrun --nproc_per_node=2 -m training gpt --device cpu # DistributedDataParallel, same global batch

Training reads random windows of the text (``training.text``) on the shared loop (``training.loop``):
``--batch-size`` windows per optimizer step whatever the number of processes. Every evaluation during
training also writes the served checkpoint, so a run stopped early leaves its last evaluated model
servable.

``--max-seconds`` on the command line is the whole budget: the profile's step cap no longer applies, the
learning rate decays with the clock, and the model's shape, batch and learning rate come from
``BUDGET_RULE`` for that many seconds (flags given beside it still win). A profile's own budget (the
served quick GPT's 180 s) keeps the profile's shape.
"""

from __future__ import annotations

import argparse
import logging
import math
from pathlib import Path
from typing import Any

from models.catalog import checkpoint_id_of
from models.checkpoint import load_checkpoint
from models.gpt import GPT, PRESETS, GPTConfig, load
from training import loop, text
from training.common import add_name_arguments, checkpoint_name, pick_device
from training.data import SPLIT_SEED

log = logging.getLogger("training.gpt")

FAMILY = "gpt"

PROFILES: dict[str, dict[str, Any]] = {
    # seconds on 2 cores: integration tests serve this one
    "tiny": {"tokenizer": "bpe", "vocab_size": 384, "n_layer": 2, "n_head": 2, "n_embd": 64, "block_size": 128,
             "batch_size": 16, "max_steps": 60, "lr": 3e-3, "min_lr": 3e-4, "warmup_steps": 5,
             "eval_interval": 0, "train_chars": 400_000, "val_chars": 100_000, "max_seconds": 30.0},
    # make serve: a 512-token context. Measured under 180 s: 192 wide beats 128 (2.70 against 2.77 bits/char)
    # at the same speed, 256 is too slow (2.83), and batch 4 beats 8 (2.65 against 2.70): at this budget
    # optimizer steps matter more than batch size. The 400 steps end the run on the AVX-512 machine (97 s with
    # the evaluations); on a slower one the 100 s do (make serve's budget, see the README's Training).
    "quick": {"tokenizer": "bpe", "vocab_size": 2048, "n_layer": 4, "n_head": 6, "n_embd": 192, "block_size": 512,
              "batch_size": 4, "max_steps": 400, "lr": 2e-3, "min_lr": 2e-4, "warmup_steps": 30,
              "eval_interval": 100, "eval_batches": 4, "max_seconds": 100.0},
    # one GPU: a GPT-2-small-shaped model, 1024 positions
    "full": {"tokenizer": "bpe", "vocab_size": 8192, "n_layer": 12, "n_head": 12, "n_embd": 768,
             "block_size": 1024, "batch_size": 64, "max_steps": 5000, "lr": 6e-4, "min_lr": 6e-5,
             "warmup_steps": 200, "dropout": 0.1, "eval_interval": 500},
}
DEFAULTS: dict[str, Any] = {"dropout": 0.0, "position": "learned", "weight_decay": 0.1, "beta2": 0.95,
                            "eval_batches": 20, "bias": False}
# The shape, batch and learning rate for a budget given with --max-seconds: the first row whose seconds cover
# it. measured on the plays as characters (--tokenizer char --val-fraction 0.1, fp32, one thread):
# - 70 s: nanoGPT's CPU shape (4 x 4 x 128, block 64, batch 12) at lr 2e-3 on the clock reaches 2.59
#   bits/char, where the profile's quick shape stops at 3.58 and nanoGPT's own recipe at 2.70;
# - ~150 s of compute (equal CPU seconds, same lr): the same shape 2.48 (3,000 steps), 4 x 6 x 192 with
#   block 128 2.97 (600 steps): below five minutes optimizer steps matter more than width.
# Past 300 s the wider model's row is not measured yet: more compute per step pays once there are steps to spare.
BUDGET_RULE: tuple[tuple[float, dict[str, Any]], ...] = (
    (300.0, {"n_layer": 4, "n_head": 4, "n_embd": 128, "block_size": 64, "batch_size": 12, "lr": 2e-3,
             "min_lr": 2e-4, "warmup_steps": 30, "beta2": 0.99}),
    (math.inf, {"n_layer": 4, "n_head": 6, "n_embd": 192, "block_size": 128, "batch_size": 12, "lr": 2e-3,
                "min_lr": 2e-4, "warmup_steps": 30, "beta2": 0.99}),
)
MODEL_FIELDS = ("n_layer", "n_head", "n_embd", "block_size", "dropout", "bias", "position")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    g = parser.add_argument_group("gpt")
    g.add_argument("--preset", choices=PRESETS, default=None, help="GPT-2 layer/head/width preset")
    g.add_argument("--n-layer", type=int, default=None)
    g.add_argument("--n-head", type=int, default=None)
    g.add_argument("--n-embd", type=int, default=None, help="model width")
    g.add_argument("--dropout", type=float, default=None)
    g.add_argument("--bias", action=argparse.BooleanOptionalAction, default=None,
                   help="biases in Linear and LayerNorm layers (GPT-2 had them)")
    g.add_argument("--position", choices=("learned", "sinusoidal"), default=None,
                   help="position embeddings: learned (GPT) or fixed sinusoids")
    g.add_argument("--min-lr", type=float, default=None, help="learning rate at the end of the cosine")
    g.add_argument("--warmup-steps", type=int, default=None)
    g.add_argument("--beta2", type=float, default=None, help="AdamW's second-moment decay")
    text.add_arguments(g)
    add_name_arguments(parser, "gpt: the id gpt; X gives gpt-X")
    loop.add_arguments(parser)


def for_budget(seconds: float) -> dict[str, Any]:
    """The settings ``BUDGET_RULE`` gives a run of ``seconds``."""
    return next(settings for limit, settings in BUDGET_RULE if seconds <= limit)


def resolve_arguments(args: argparse.Namespace) -> argparse.Namespace:
    """Explicit flags win, then the GPT-2 preset, then the budget rule (only with --max-seconds on the command
    line), then the profile, then the defaults."""
    budget = for_budget(args.max_seconds) if loop.budget_given(args) else {}
    return loop.resolve(args, {**DEFAULTS, **PROFILES[args.profile], **budget, **PRESETS.get(args.preset or "", {})})


def train(args: argparse.Namespace) -> list[Path]:
    resolve_arguments(args)
    name = checkpoint_name(args, FAMILY, FAMILY, args.corpus)
    with loop.Run(args, checkpoint_id_of(FAMILY, name)) as run:
        run.restore(args, MODEL_FIELDS)
        data = text.prepare(args, run)
        config = GPTConfig(vocab_size=data.tokenizer.vocab_size, **{k: getattr(args, k) for k in MODEL_FIELDS})
        model = GPT(config).to(run.device)
        record = loop.Record({
            "id": checkpoint_id_of(FAMILY, name), "family": FAMILY, "name": name,
            "architecture": "GPT: decoder-only Transformer, pre-LayerNorm, tied input/output embeddings",
            "model": config.to_dict(), "tokenizer": {"type": data.tokenizer.type, "file": data.tokenizer.file_name},
            "data": data.provenance, "split_seed": SPLIT_SEED,
        }, {data.tokenizer.file_name: data.tokenizer.to_json()}, GPT.weights, GPT.num_parameters)
        schedule = loop.Schedule(args.lr, args.min_lr, args.warmup_steps)
        settings = loop.Settings(loop.total_steps(args, text.steps_per_epoch(data, args)), schedule,
                                 betas=(0.9, args.beta2), serve_as=record)
        trained = run.fit(text.WindowTask(model, data, args, run.device), settings,
                          rebuild={"model_config": config.to_dict(), **text.rebuild(data)})
        if not run.is_main:
            return []
        with run.autocast():
            nats, count = text.window_loss(model, data.val, args.block_size, run.device)
        metrics = text.bits_per_char(nats, count, data.val_chars)
        log.info("%s: validation %.4f nats/token, %.4f bits/char", record.config["id"], metrics["val_loss"],
                 metrics["val_bpc"])
        return [run.save(record, trained, metrics)]


# ---- evaluation of a saved checkpoint --------------------------------------------------------------


def add_evaluate_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--name", default="gpt", help="checkpoint name (gpt, or X for gpt-X)")
    parser.add_argument("--corpus", type=Path, default=None,
                        help="evaluate on the last --val-fraction of this file (default: what it was trained on)")
    parser.add_argument("--val-fraction", type=float, default=None)
    parser.add_argument("--precision", choices=("auto", "fp32", "bf16"), default="auto")


def evaluate(args: argparse.Namespace) -> dict[str, Any]:
    """Validation loss and bits per character of a saved checkpoint; refreshes its metrics.json."""
    checkpoint = load_checkpoint(Path(args.out) / checkpoint_id_of(FAMILY, args.name))
    device = pick_device(args.device)
    return text.rescore(checkpoint, load(checkpoint, device), args.precision,
                        lambda model, ids: text.window_loss(model, ids, model.config.block_size, device),
                        args.corpus, args.val_fraction)
