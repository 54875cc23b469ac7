"""GPT: a decoder-only Transformer language model (byte-level BPE or characters), torchrun-ready.

    python -m training gpt                                   # BPE, Shakespeare play split -> checkpoints/gpt
    python -m training gpt --tokenizer char --corpus plays.txt --val-fraction 0.1 --name char
    python -m training gpt --max-seconds 100                 # stop and evaluate at a wall-clock budget
    python -m training gpt --resume                          # continue from checkpoints/.gpt-train-state
    torchrun --nproc_per_node=2 -m training gpt --device cpu # DistributedDataParallel, same global batch

``--batch-size`` is the global batch (sequences per optimizer step) whatever the number of
processes; each process takes its share of every batch, split further into ``--micro-batch-size``
pieces with gradient accumulation when it does not fit at once. The batches are drawn from one
seeded stream that every process follows, so N processes see exactly the sequences one would.
"""

from __future__ import annotations

import argparse
import logging
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from models.checkpoint import load_checkpoint, save_checkpoint, update_metrics
from models.gpt import GPT, PRESETS, GPTConfig
from models.pipelines.text_generation import load
from models.tokenizers import ByteBPETokenizer, CharTokenizer, TextTokenizer
from training.common import apply_profile, progress, set_seed, weight_decay_groups
from training.data import SPLIT_SEED, plays_in, read_text_file, shakespeare_provenance, split_text, user_provenance
from training.distributed import Distributed, setup
from training.state import load_state, restore_rng, save_state, state_dir

log = logging.getLogger("training.gpt")

FAMILY = "gpt"

PROFILES: dict[str, dict[str, Any]] = {
    # seconds on 2 cores: integration tests serve this one
    "tiny": {"tokenizer": "bpe", "vocab_size": 384, "n_layer": 2, "n_head": 2, "n_embd": 64, "block_size": 128,
             "batch_size": 16, "max_steps": 60, "lr": 3e-3, "min_lr": 3e-4, "warmup_steps": 5,
             "eval_interval": 0, "train_chars": 400_000, "val_chars": 100_000, "max_seconds": 30.0,
             "dtype": "float32"},  # bf16 only pays off on wider matrices
    # make serve: under 4 minutes on 2 cores, a 512-token context. Measured under the same 180 s: 192 wide
    # beats 128 (2.70 against 2.77 bits/char) at the same speed, 256 is too slow (2.83), and batch 4
    # beats 8 (2.65 against 2.70): at this budget optimizer steps matter more than batch size.
    "quick": {"tokenizer": "bpe", "vocab_size": 2048, "n_layer": 4, "n_head": 6, "n_embd": 192, "block_size": 512,
              "batch_size": 4, "max_steps": 400, "lr": 2e-3, "min_lr": 2e-4, "warmup_steps": 30,
              "eval_interval": 100, "eval_batches": 4, "max_seconds": 180.0},
    # one GPU: a GPT-2-small-shaped model, 1024 positions
    "full": {"tokenizer": "bpe", "vocab_size": 8192, "n_layer": 12, "n_head": 12, "n_embd": 768,
             "block_size": 1024, "batch_size": 64, "max_steps": 5000, "lr": 6e-4, "min_lr": 6e-5,
             "warmup_steps": 200, "dropout": 0.1, "eval_interval": 500},
}
DEFAULTS: dict[str, Any] = {"dropout": 0.0, "position": "learned", "weight_decay": 0.1, "beta2": 0.95,
                            "grad_clip": 1.0, "eval_batches": 20, "dtype": "auto", "bias": False}
MODEL_FIELDS = ("n_layer", "n_head", "n_embd", "block_size", "dropout", "bias", "position")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    g = parser.add_argument_group("gpt")
    g.add_argument("--name", default="gpt", help="checkpoint name: 'gpt' writes checkpoints/gpt, X writes gpt-X")
    g.add_argument("--tokenizer", choices=("bpe", "char"), default=None,
                   help="byte-level BPE (default) or one token per character")
    g.add_argument("--vocab-size", type=int, default=None, help="BPE vocabulary size")
    g.add_argument("--preset", choices=PRESETS, default=None, help="GPT-2 layer/head/width preset")
    g.add_argument("--n-layer", type=int, default=None)
    g.add_argument("--n-head", type=int, default=None)
    g.add_argument("--n-embd", type=int, default=None, help="model width")
    g.add_argument("--block-size", type=int, default=None, help="context length in tokens")
    g.add_argument("--dropout", type=float, default=None)
    g.add_argument("--bias", action=argparse.BooleanOptionalAction, default=None,
                   help="biases in Linear and LayerNorm layers (GPT-2 had them)")
    g.add_argument("--position", choices=("learned", "sinusoidal"), default=None,
                   help="position embeddings: learned (GPT) or fixed sinusoids")
    g.add_argument("--batch-size", type=int, default=None, help="global batch: sequences per optimizer step")
    g.add_argument("--micro-batch-size", type=int, default=None,
                   help="sequences per forward pass on one process (default: its whole share)")
    g.add_argument("--max-steps", type=int, default=None, help="optimizer steps (--epochs overrides)")
    g.add_argument("--lr", type=float, default=None, help="peak learning rate")
    g.add_argument("--min-lr", type=float, default=None, help="learning rate at the end of the cosine")
    g.add_argument("--warmup-steps", type=int, default=None)
    g.add_argument("--weight-decay", type=float, default=None)
    g.add_argument("--beta2", type=float, default=None, help="AdamW's second-moment decay")
    g.add_argument("--grad-clip", type=float, default=None, help="clip the gradient norm to this (0: off)")
    g.add_argument("--max-seconds", type=float, default=None,
                   help="wall-clock budget for the training loop; the cosine follows it (0: none)")
    g.add_argument("--eval-interval", type=int, default=None,
                   help="steps between validation checks, each also writing the checkpoint (0: end only)")
    g.add_argument("--eval-batches", type=int, default=None, help="batches per validation check during training")
    g.add_argument("--dtype", choices=("auto", "bfloat16", "float32"), default=None,
                   help="autocast precision; auto is bfloat16 where the CPU or GPU computes it natively")
    g.add_argument("--compile", action="store_true", help="torch.compile the model (worth it on CUDA)")
    g.add_argument("--resume", action="store_true",
                   help="continue from the training state kept beside the checkpoint (.<id>-train-state)")
    g.add_argument("--train-chars", type=int, default=None, help="use only the first N characters of training text")
    g.add_argument("--val-chars", type=int, default=None, help="use only the first N characters of validation text")


# ---- data ---------------------------------------------------------------------------------------


@dataclass
class TextData:
    tokenizer: TextTokenizer
    train: torch.Tensor  # token ids of the training text, documents joined
    val: torch.Tensor
    val_chars: int  # characters covered by the validation targets (every token but the first)
    provenance: dict[str, Any]


def checkpoint_name(name: str) -> str:
    return FAMILY if name == FAMILY else f"{FAMILY}-{name}"


def read_documents(args: argparse.Namespace) -> tuple[list[str], list[str], dict[str, Any]]:
    """Training and validation documents: the play split by default, or the user's text cut in two."""
    if args.corpus is not None:
        train_text, val_text = split_text(read_text_file(args.corpus), args.val_fraction)
        train, val = [train_text], [val_text]
        provenance = user_provenance(args.corpus, args.val_fraction)
    else:
        train = [p.render() for p in plays_in("train")]
        val = [p.render() for p in plays_in("validation")]
        provenance = shakespeare_provenance(SPLIT_SEED, ("train",))
    return truncate(train, args.train_chars), truncate(val, args.val_chars), provenance


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


def prepare_data(args: argparse.Namespace, dist: Distributed, tokenizer_json: str | None) -> TextData:
    train_docs, val_docs, provenance = read_documents(args)
    kind = "char" if args.tokenizer == "char" else "byte_bpe"
    if tokenizer_json is None:
        # Rank 0 trains the tokenizer and hands it to the others, so every rank encodes alike.
        if dist.is_main:
            started = time.perf_counter()
            tokenizer_json = train_tokenizer(args.tokenizer, train_docs, args.vocab_size).to_json()
            log.info("tokenizer: %s trained in %.1f s", kind, time.perf_counter() - started)
        tokenizer_json = dist.broadcast(tokenizer_json)
    tokenizer = (CharTokenizer if kind == "char" else ByteBPETokenizer).from_json(tokenizer_json)
    train, val = encode(tokenizer, train_docs), encode(tokenizer, val_docs)
    val_chars = predicted_chars(tokenizer, val_docs, val)
    log.info("data: %d training tokens, %d validation tokens (%d characters)", len(train), len(val), val_chars)
    return TextData(tokenizer, train, val, val_chars, provenance)


def batch(data: torch.Tensor, offsets: torch.Tensor, block_size: int,
          device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """Inputs and next-token targets for windows starting at ``offsets``."""
    window = data[offsets[:, None] + torch.arange(block_size + 1)].long()
    x, y = window[:, :-1], window[:, 1:]
    if device.type == "cuda":
        return x.pin_memory().to(device, non_blocking=True), y.pin_memory().to(device, non_blocking=True)
    return x, y


# ---- the schedule, precision, evaluation ---------------------------------------------------------


def learning_rate(args: argparse.Namespace, step: int, time_fraction: float) -> float:
    """Linear warmup, then a cosine to ``min_lr`` over the steps or the time budget, whichever runs out first."""
    if step < args.warmup_steps:
        return args.lr * (step + 1) / args.warmup_steps
    progress_fraction = (step - args.warmup_steps) / max(1, args.max_steps - args.warmup_steps)
    progress_fraction = min(1.0, max(progress_fraction, time_fraction))
    return args.min_lr + 0.5 * (args.lr - args.min_lr) * (1.0 + math.cos(math.pi * progress_fraction))


def resolve_dtype(name: str, device: torch.device) -> str:
    """bfloat16 autocast where the hardware has bf16 arithmetic (about 3x on AVX-512-BF16 CPUs)."""
    if name != "auto":
        return name
    if device.type == "cuda":
        return "bfloat16" if torch.cuda.is_bf16_supported() else "float32"
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return "float32"
    return "bfloat16" if ("avx512_bf16" in flags or "amx_bf16" in flags) else "float32"


def autocast(device: torch.device, dtype: str) -> Any:
    return torch.autocast(device.type, dtype=torch.bfloat16, enabled=dtype == "bfloat16")


@torch.no_grad()
def validation_loss(model: GPT, ids: torch.Tensor, block_size: int, device: torch.device, dtype: str,
                    max_batches: int | None = None, batch_size: int = 16) -> tuple[float, int]:
    """Summed nats over the validation targets and their count, in consecutive ``block_size`` windows.

    With ``max_batches`` only that many evenly spaced batches are read (a quick check during training).
    """
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
        x, y = batch(ids, torch.tensor(group), length, device)
        with autocast(device, dtype):
            _, loss = model(x, y)
        nats += loss.item() * y.numel()
        count += y.numel()
    model.train(was_training)
    return nats, count


# ---- training -----------------------------------------------------------------------------------


def resolve_arguments(args: argparse.Namespace) -> argparse.Namespace:
    """Explicit flags win, then the GPT-2 preset, then the profile, then the defaults."""
    for key, value in PRESETS.get(args.preset or "", {}).items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    apply_profile(args, PROFILES)
    for key, value in DEFAULTS.items():
        if getattr(args, key, None) is None:
            setattr(args, key, value)
    if args.max_seconds == 0:
        args.max_seconds = None
    return args


def train(args: argparse.Namespace) -> list[Path]:
    resolve_arguments(args)
    with setup(args.device) as dist:
        return _train(args, dist)


def _train(args: argparse.Namespace, dist: Distributed) -> list[Path]:
    device = dist.device
    dtype = resolve_dtype(args.dtype, device)
    set_seed(args.seed + dist.rank)  # dropout differs per rank; the batch stream below does not
    states = state_dir(args.out, checkpoint_name(args.name))
    state = load_state(states) if args.resume else None
    if state is not None:  # the model and tokenizer are the saved ones; the schedule is today's flags
        for key in MODEL_FIELDS:
            setattr(args, key, state["model_config"][key])
        args.tokenizer = "char" if state["tokenizer"]["type"] == "char" else "bpe"

    data = prepare_data(args, dist, state["tokenizer"]["json"] if state else None)
    if len(data.train) <= args.block_size + 1:
        raise ValueError(f"the training text has {len(data.train)} tokens; more than --block-size "
                         f"{args.block_size} are needed")
    config = GPTConfig(vocab_size=data.tokenizer.vocab_size, **{k: getattr(args, k) for k in MODEL_FIELDS})
    if args.epochs is not None:
        args.max_steps = math.ceil(args.epochs * len(data.train) / (args.batch_size * args.block_size))

    per_rank, remainder = divmod(args.batch_size, dist.world_size)
    micro = args.micro_batch_size or per_rank
    if remainder or per_rank % micro:
        raise ValueError(f"--batch-size {args.batch_size} must split evenly over {dist.world_size} processes "
                         f"and then into micro-batches of {micro}")
    pieces = dist.micro_batches(args.batch_size, micro)
    accumulation = len(pieces)

    raw = GPT(config).to(device)
    optimizer = torch.optim.AdamW(weight_decay_groups(raw, args.weight_decay), lr=args.lr, betas=(0.9, args.beta2),
                                  fused=device.type == "cuda")
    batches = torch.Generator().manual_seed(args.seed)  # the global batch stream, identical on every rank
    step, tokens_seen, seconds_before = 0, 0, 0.0
    history: dict[str, list] = {"step": [], "loss": [], "lr": [], "val_loss": []}
    if state is not None:
        raw.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        batches.set_state(state["batch_rng"])
        restore_rng(state, dist)
        step, tokens_seen, seconds_before = state["step"], state["tokens"], state["seconds"]
        history = state["history"]
        log.info("resumed at step %d", step)
    model = dist.wrap(raw)
    forward = torch.compile(model) if args.compile else model
    log.info("model: %s, %.2fM parameters, %s autocast on %s, global batch %d x %d tokens, %d process(es)",
             config, raw.num_parameters() / 1e6, dtype, device, args.batch_size, args.block_size, dist.world_size)

    def snapshot() -> dict[str, Any]:
        return {"step": step, "tokens": tokens_seen, "seconds": seconds_before + elapsed,
                "model_config": config.to_dict(), "model": raw.state_dict(), "optimizer": optimizer.state_dict(),
                "batch_rng": batches.get_state(),
                "tokenizer": {"type": data.tokenizer.type, "json": data.tokenizer.to_json()}}

    def progress_metrics() -> dict[str, Any]:
        return {
            "train_loss": round(sum(history["loss"][-20:]) / max(1, len(history["loss"][-20:])), 5),
            "steps": step,
            "tokens_seen": tokens_seen,
            "train_seconds": round(seconds_before + elapsed, 1),
            "tokens_per_second": round((tokens_seen - tokens_at_start) / max(elapsed, 1e-9), 1),
            "parameters": raw.num_parameters(),
        }

    def serve(metrics: dict[str, Any]) -> Path:
        """Write the checkpoint the service reads; atomically, so a kill leaves the previous one whole."""
        return save_checkpoint(args.out, {
            "id": checkpoint_name(args.name),
            "family": FAMILY,
            "name": args.name,
            "architecture": "GPT: decoder-only Transformer, pre-LayerNorm, tied input/output embeddings",
            "model": config.to_dict(),
            "tokenizer": {"type": data.tokenizer.type, "file": data.tokenizer.file_name},
            "data": data.provenance,
            "split_seed": SPLIT_SEED,
            "training": {
                "profile": args.profile, "seed": args.seed, "steps": step, "max_steps": args.max_steps,
                "batch_size": args.batch_size, "micro_batch_size": micro, "world_size": dist.world_size,
                "lr": args.lr, "min_lr": args.min_lr, "warmup_steps": args.warmup_steps,
                "weight_decay": args.weight_decay, "beta2": args.beta2, "grad_clip": args.grad_clip,
                "dtype": dtype, "device": device.type, "max_seconds": args.max_seconds,
                "seconds": metrics["train_seconds"], "compile": args.compile,
            },
        }, raw.weights(), metrics, files={data.tokenizer.file_name: data.tokenizer.to_json()})

    raw.train()
    started = time.perf_counter()
    elapsed = 0.0  # rank 0's clock, shared with every rank so they stop on the same step
    tokens_at_start = tokens_seen
    bar = progress(total=args.max_steps, initial=step, desc="gpt", unit="step")
    while step < args.max_steps and not (args.max_seconds and elapsed >= args.max_seconds):
        lr = learning_rate(args, step, elapsed / args.max_seconds if args.max_seconds else 0.0)
        for group in optimizer.param_groups:
            group["lr"] = lr
        offsets = torch.randint(len(data.train) - args.block_size, (args.batch_size,), generator=batches)
        loss_sum = torch.zeros((), device=device)
        for i, (rows, _) in enumerate(pieces):  # equal pieces (checked above): each weighs the same
            x, y = batch(data.train, offsets[rows], args.block_size, device)
            with dist.accumulating(model, last=i == accumulation - 1):
                with autocast(device, dtype):
                    _, loss = forward(x, y)
                (loss / accumulation).backward()
            loss_sum += loss.detach()
        if args.grad_clip:
            torch.nn.utils.clip_grad_norm_(raw.parameters(), args.grad_clip)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        step += 1
        tokens_seen += args.batch_size * args.block_size
        mean_loss, elapsed = dist.sum([loss_sum.item() / accumulation / dist.world_size,
                                       time.perf_counter() - started if dist.is_main else 0.0])
        history["step"].append(step)
        history["loss"].append(mean_loss)
        history["lr"].append(lr)
        rate = (tokens_seen - tokens_at_start) / max(elapsed, 1e-9)
        bar.update(1)
        bar.set_postfix(loss=f"{mean_loss:.3f}", tok_s=f"{rate:,.0f}", lr=f"{lr:.2e}")
        if args.eval_interval and step % args.eval_interval == 0 and step < args.max_steps:
            if dist.is_main:
                nats, count = validation_loss(raw, data.val, args.block_size, device, dtype, args.eval_batches)
                history["val_loss"].append([step, nats / count])
                log.info("step %d: train loss %.4f, val loss %.4f, %.0f tokens/s", step, mean_loss,
                         nats / count, rate)
                # The served checkpoint follows training, so a run stopped early leaves its last evaluated
                # model servable; val_tokens tells how much of the validation text this check read.
                serve({"val_loss": round(nats / count, 5), "val_tokens": count, **progress_metrics()})
            save_state(states, dist, snapshot(), history)
    bar.close()
    save_state(states, dist, snapshot(), history)
    if not dist.is_main:
        dist.barrier()
        return []

    nats, count = validation_loss(raw, data.val, args.block_size, device, dtype)
    val_loss = nats / count
    metrics = {
        "val_loss": round(val_loss, 5),
        "val_bpc": round(nats / data.val_chars / math.log(2), 5),
        "val_perplexity": round(math.exp(val_loss), 3),
        "val_tokens": count,
        "val_chars": data.val_chars,
        **progress_metrics(),
    }
    log.info("validation: loss %.4f nats/token, %.4f bits/char", val_loss, metrics["val_bpc"])
    path = serve(metrics)
    dist.barrier()
    return [path]


# ---- evaluation of a saved checkpoint --------------------------------------------------------------


def add_evaluate_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--name", default="gpt", help="checkpoint name (gpt, or X for gpt-X)")
    parser.add_argument("--corpus", type=Path, default=None,
                        help="evaluate on the last --val-fraction of this file (default: what it was trained on)")
    parser.add_argument("--val-fraction", type=float, default=None)
    parser.add_argument("--dtype", choices=("auto", "bfloat16", "float32"), default="auto")


def evaluate(args: argparse.Namespace) -> dict[str, Any]:
    """Validation loss and bits per character of a saved checkpoint; refreshes its metrics.json."""
    from training.common import pick_device

    checkpoint = load_checkpoint(Path(args.out) / checkpoint_name(args.name))
    device = pick_device(args.device)
    data_record = checkpoint.config.get("data", {})
    if args.corpus is None and "file" in data_record:
        args.corpus = Path(data_record["file"])
    if args.val_fraction is None:
        args.val_fraction = data_record.get("val_fraction", 0.1)
    args.train_chars, args.val_chars = None, None
    _, val_docs, _ = read_documents(args)
    generator = load(checkpoint, device)
    model, tokenizer = generator.model, generator.tokenizer
    ids = encode(tokenizer, val_docs)
    chars = predicted_chars(tokenizer, val_docs, ids)
    nats, count = validation_loss(model, ids, model.config.block_size, device, resolve_dtype(args.dtype, device))
    metrics = {**checkpoint.metrics, "val_loss": round(nats / count, 5),
               "val_bpc": round(nats / chars / math.log(2), 5), "val_perplexity": round(math.exp(nats / count), 3),
               "val_tokens": count, "val_chars": chars}
    update_metrics(checkpoint.path, metrics)
    return metrics
