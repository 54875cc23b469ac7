"""Quality and speed per second on CPU against nanoGPT's own CPU recipe, on the same text and machine.

    python bench/gpt_cpu.py --nanogpt /path/to/nanoGPT [--threads 1] [--budget SECONDS] [--out bench-out]

The corpus is every play rendered as ``SPEAKER:`` lines in one text file; the last 10% is validation and
characters are the tokens, as in nanoGPT's shakespeare_char. The runs, one after another:

1. nanoGPT's ``train.py`` with its README's CPU recipe (4 layers x 4 heads x 128 wide, block 64, batch 12,
   2,000 iterations, fp32), given our split as its ``train.bin``/``val.bin`` (with ``--nanogpt``). Its
   final weights are loaded into our GPT (the same architecture) and scored on the whole validation text
   like ours.
2. Our trainer with nanoGPT's exact recipe (fp32, 2,000 steps): tokens/s against nanoGPT's at one shape.
3. Our defaults: the plain command ``python -m training gpt --corpus plays.txt --tokenizer char
   --val-fraction 0.1 --max-seconds BUDGET``, shaped by ``training.gpt.BUDGET_RULE``. BUDGET is chosen so
   that the whole command takes nanoGPT's wall-clock time: its time less what our command spends outside
   the training loop (starting, reading the text, scoring the whole validation text), as measured in run 2.
   ``--budget`` gives it instead.
4. Our tuned run: the same command with ``--compile``.

Then the tokens/s levers at nanoGPT's shape, one after another in this process: the median time of a
training step as the loop takes it, and with one thing changed at a time (foreach AdamW, batches gathered
ahead, the loss read once per 50 steps instead of every step, bf16 autocast, torch.compile; and
nanoGPT's model in place of ours when its path is given).

Last, the ceiling: one step's weight matrix products alone (each linear layer's forward product and its
two backward ones, at nanoGPT's shape), timed in fp32 and in bf16. A step does all of them and more, so the
batch's tokens over their time bound any trainer's tokens/s at this shape; each run's GFLOP/s counts
training FLOPs as PaLM's appendix B does.

Tokens/s is training tokens over training time: nanoGPT's iterations that evaluate are left out of its
time; ours is the loop's figure. Every process uses ``--threads`` threads (one by default, on shared cores).
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import pickle
import re
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from models.gpt import GPT, GPTConfig
from training.common import weight_decay_groups
from training.data import load_plays
from training.text import bits_per_char, encode, predicted_chars, read_documents, train_tokenizer, window_loss

ROOT = Path(__file__).resolve().parent.parent
SHAPE = {"n_layer": 4, "n_head": 4, "n_embd": 128, "block_size": 64}
BATCH = 12
# nanoGPT's README, "I only have a macbook" (CPU): its flags, verbatim in meaning.
NANOGPT_RECIPE = ("--device=cpu", "--compile=False", "--eval_iters=20", "--log_interval=1", "--block_size=64",
                  "--batch_size=12", "--n_layer=4", "--n_head=4", "--n_embd=128", "--dropout=0.0")
ITERATIONS = 2000  # its --max_iters and --lr_decay_iters
EVAL_INTERVAL = 250  # its shakespeare_char config's; it saves the weights at an evaluation
# The same recipe in our flags (its config's lr 1e-3 to 1e-4, 100 warm-up steps, beta2 0.99).
RECIPE = ("--n-layer", "4", "--n-head", "4", "--n-embd", "128", "--block-size", "64", "--batch-size", "12",
          "--lr", "1e-3", "--min-lr", "1e-4", "--warmup-steps", "100", "--beta2", "0.99",
          "--dropout", "0", "--precision", "fp32", "--eval-interval", "0", "--max-seconds", "0")


@dataclass
class Row:
    label: str
    steps: int
    train_seconds: float
    wall_seconds: float
    tokens_per_second: float
    val_bpc: float


def environment(threads: int) -> dict[str, str]:
    return {**os.environ, "OMP_NUM_THREADS": str(threads), "TORCH_THREADS": str(threads), "PROGRESS": "0",
            "PYTHONPATH": str(ROOT)}


def timed(command: list[str], cwd: Path, threads: int) -> tuple[str, float]:
    print("$ " + " ".join(command), flush=True)
    started = time.perf_counter()
    result = subprocess.run(command, cwd=cwd, env=environment(threads), capture_output=True, text=True)
    if result.returncode != 0:
        sys.exit(f"failed:\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}")
    return result.stdout, time.perf_counter() - started


# ---- nanoGPT's own train.py ------------------------------------------------------------------------------


def nanogpt_data(corpus: Path, root: Path) -> tuple[torch.Tensor, int]:
    """Our split and character ids as nanoGPT's dataset ``plays_char`` under ``root/data``; returns the
    validation ids and the characters they predict (for bits per character)."""
    train_docs, val_docs, _ = read_documents(corpus, 0.1)
    tokenizer = train_tokenizer("char", train_docs, 0)
    train, val = encode(tokenizer, train_docs), encode(tokenizer, val_docs)
    data = root / "data" / "plays_char"
    data.mkdir(parents=True, exist_ok=True)
    train.numpy().astype(np.uint16).tofile(data / "train.bin")
    val.numpy().astype(np.uint16).tofile(data / "val.bin")
    with open(data / "meta.pkl", "wb") as f:
        pickle.dump({"vocab_size": tokenizer.vocab_size}, f)
    return val, predicted_chars(tokenizer, val_docs, val)


def run_nanogpt(nanogpt: Path, corpus: Path, out: Path, threads: int, iterations: int) -> Row:
    root = out / "nanogpt-run"
    val, val_chars = nanogpt_data(corpus, root)
    configurator = root / "configurator.py"  # train.py reads it from the working directory
    configurator.unlink(missing_ok=True)
    configurator.symlink_to(nanogpt / "configurator.py")
    interval = min(EVAL_INTERVAL, iterations)  # the last iteration evaluates, and saves
    command = [sys.executable, str(nanogpt / "train.py"), str(nanogpt / "config/train_shakespeare_char.py"),
               *NANOGPT_RECIPE, f"--max_iters={iterations}", f"--lr_decay_iters={iterations}", "--dataset=plays_char",
               f"--eval_interval={interval}", "--out_dir=out",
               "--always_save_checkpoint=True"]  # the final weights, scored below
    stdout, wall = timed(command, root, threads)
    times = {int(i): float(ms) / 1000 for i, ms in re.findall(r"^iter (\d+): loss \S+, time ([\d.]+)ms", stdout, re.M)}
    training = [dt for i, dt in times.items() if i % interval]  # evaluating iterations left out
    checkpoint = torch.load(root / "out" / "ckpt.pt", map_location="cpu", weights_only=False)
    model = GPT(GPTConfig(vocab_size=checkpoint["model_args"]["vocab_size"], **SHAPE))
    weights = {k.removeprefix("_orig_mod.").removeprefix("transformer.").replace("h.", "blocks.", 1): v
               for k, v in checkpoint["model"].items()}
    model.load_state_dict(weights)
    nats, count = window_loss(model, val, SHAPE["block_size"], torch.device("cpu"))
    return Row("nanoGPT train.py, its CPU recipe (fp32)", checkpoint["iter_num"], sum(times.values()), wall,
               BATCH * SHAPE["block_size"] * len(training) / sum(training),
               bits_per_char(nats, count, val_chars)["val_bpc"])


# ---- ours ------------------------------------------------------------------------------------------------


def run_ours(label: str, name: str, flags: tuple[str, ...], corpus: Path, out: Path, threads: int) -> Row:
    _, wall = timed([sys.executable, "-m", "training", "gpt", "--corpus", str(corpus), "--tokenizer", "char",
                     "--val-fraction", "0.1", "--out", str(out), "--name", name, "--force", *flags], ROOT, threads)
    m = json.loads((out / f"gpt-{name}" / "metrics.json").read_text())
    return Row(label, m["steps"], m["train_seconds"], wall, m["tokens_per_second"], m["val_bpc"])


# ---- the ceiling: what the step's matrix products alone allow -----------------------------------------


def weight_shapes(vocab_size: int) -> list[tuple[int, int]]:
    """(inputs, outputs) of every linear layer at nanoGPT's shape: each block's query-key-value, attention
    output, and two feed-forward layers, then the output layer."""
    d = SHAPE["n_embd"]
    return [(d, 3 * d), (d, d), (d, 4 * d), (4 * d, d)] * SHAPE["n_layer"] + [(d, vocab_size)]


def flops_per_token(vocab_size: int) -> int:
    """Training FLOPs per token at nanoGPT's shape, counted as PaLM's appendix B does: 6 per weight of every
    matrix product (``weight_shapes``), and 12·layers·d·T for attention's two products over the whole T×T
    square."""
    weights = sum(k * n for k, n in weight_shapes(vocab_size))
    return 6 * weights + 12 * SHAPE["n_layer"] * SHAPE["n_embd"] * SHAPE["block_size"]


def weight_product_seconds(vocab_size: int, dtype: torch.dtype, repeats: int) -> float:
    """Median seconds of one step's weight matrix products alone, at nanoGPT's shape in ``dtype``: each linear
    layer's forward product and its two backward ones (the input's and the weight's gradient) on the batch's
    rows. Nothing else of a step (attention, norms, GELU, softmax, AdamW) is in it, so rows / this is an
    upper bound on any trainer's tokens/s at this shape and precision."""
    rows = BATCH * SHAPE["block_size"]
    operands = [(torch.randn(rows, k, dtype=dtype), torch.randn(n, k, dtype=dtype), torch.randn(rows, n, dtype=dtype))
                for k, n in weight_shapes(vocab_size)]

    def step() -> None:
        for x, w, g in operands:
            x @ w.T  # forward
            g @ w  # the input's gradient
            g.T @ x  # the weight's gradient

    step()
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        step()
        times.append(time.perf_counter() - started)
    return statistics.median(times)


def ceiling(vocab_size: int, repeats: int) -> list[tuple[str, float]]:
    """(precision, tokens/s that the weight products alone allow) in fp32 and bf16."""
    rows = BATCH * SHAPE["block_size"]
    results = [(name, rows / weight_product_seconds(vocab_size, dtype, repeats))
               for name, dtype in (("fp32", torch.float32), ("bf16", torch.bfloat16))]
    for name, tokens in results:
        print(f"  the weight products alone, {name}: at most {tokens:,.0f} tokens/s", flush=True)
    return results


# ---- the tokens/s levers ---------------------------------------------------------------------------------


def step_seconds(model: torch.nn.Module, data: torch.Tensor, steps: int, *, fused: bool = True,
                 ahead: bool = False, sync_every: int = 1, bf16: bool = False, compiled: bool = False) -> float:
    """Median seconds of a training step at nanoGPT's shape: windows gathered from ``data``, forward and
    backward, gradient clipping, AdamW, the loss read back; with the named lever changed."""
    T = SHAPE["block_size"]
    optimizer = torch.optim.AdamW(weight_decay_groups(model, 0.1), lr=1e-3, betas=(0.9, 0.99),
                                  **({"fused": True} if fused else {"foreach": True}))
    forward = torch.compile(model) if compiled else model
    generator = torch.Generator().manual_seed(0)

    def batch() -> tuple[torch.Tensor, torch.Tensor]:
        window = data[torch.randint(len(data) - T - 1, (BATCH,), generator=generator)[:, None] + torch.arange(T + 1)]
        window = window.long()
        return window[:, :-1].contiguous(), window[:, 1:].contiguous()

    ready = [batch() for _ in range(steps)] if ahead else []
    times, losses = [], []
    for i in range(steps):
        started = time.perf_counter()
        x, y = ready[i] if ahead else batch()
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            _, loss = forward(x, y)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        losses.append(loss.detach())
        if (i + 1) % sync_every == 0:
            torch.stack(losses).sum().item()
            losses = []
        times.append(time.perf_counter() - started)
    return statistics.median(times[steps // 5:])  # past warm-up (and compilation)


def levers(data: torch.Tensor, vocab_size: int, steps: int, nanogpt: Path | None) -> list[tuple[str, float]]:
    def ours() -> torch.nn.Module:
        torch.manual_seed(0)
        return GPT(GPTConfig(vocab_size=vocab_size, **SHAPE))

    cases: list[tuple[str, Callable[[], float]]] = [
        ("the loop's step (fp32, fused AdamW)", lambda: step_seconds(ours(), data, steps)),
        ("foreach AdamW (the loop's before)", lambda: step_seconds(ours(), data, steps, fused=False)),
        ("batches gathered ahead", lambda: step_seconds(ours(), data, steps, ahead=True)),
        ("loss read every 50 steps", lambda: step_seconds(ours(), data, steps, sync_every=50)),
        ("bf16 autocast", lambda: step_seconds(ours(), data, steps, bf16=True)),
        ("torch.compile", lambda: step_seconds(ours(), data, steps, compiled=True)),
    ]
    if nanogpt is not None:
        spec = importlib.util.spec_from_file_location("nanogpt_model", nanogpt / "model.py")
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        config = module.GPTConfig(vocab_size=vocab_size, bias=False, dropout=0.0, **SHAPE)
        cases.append(("nanoGPT's model.py in the same step", lambda: step_seconds(module.GPT(config), data, steps)))
    results = []
    for label, measure in cases:
        started = time.perf_counter()
        seconds = measure()
        results.append((label, seconds))
        print(f"  {label:<40} {BATCH * SHAPE['block_size'] / seconds:>8,.0f} tokens/s "
              f"({time.perf_counter() - started:.0f} s, load {os.getloadavg()[0]:.2f})", flush=True)
    return results


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--nanogpt", type=Path, default=None, help="a checkout of karpathy/nanoGPT to run")
    parser.add_argument("--budget", type=float, default=None,
                        help="--max-seconds of our budgeted runs; default: nanoGPT's wall-clock time (else our "
                             "recipe's) less our command's time outside the training loop")
    parser.add_argument("--threads", type=int, default=1, help="threads of every process")
    parser.add_argument("--iterations", type=int, default=ITERATIONS,
                        help="steps of nanoGPT's recipe, in both trainers (fewer: a quick check of the bench)")
    parser.add_argument("--lever-steps", type=int, default=150, help="training steps per lever")
    parser.add_argument("--out", type=Path, default=Path("bench-out"), help="where the corpus and checkpoints go")
    args = parser.parse_args()
    args.out = args.out.resolve()
    args.out.mkdir(parents=True, exist_ok=True)
    corpus = args.out / "plays.txt"
    corpus.write_text("".join(p.render() for p in load_plays()), encoding="utf-8")
    started = time.perf_counter()
    print(f"corpus: {corpus} ({corpus.stat().st_size:,} bytes), {args.threads} thread(s), "
          f"load average {os.getloadavg()[0]:.2f}", flush=True)

    rows: list[Row] = []
    if args.nanogpt is not None:
        rows.append(run_nanogpt(args.nanogpt.resolve(), corpus, args.out, args.threads, args.iterations))
    rows.append(run_ours(f"ours, nanoGPT's recipe (fp32, {args.iterations:,} steps)", "cpu-recipe",
                         (*RECIPE, "--max-steps", str(args.iterations)), corpus, args.out, args.threads))
    outside = rows[-1].wall_seconds - rows[-1].train_seconds  # our command's time around its training loop
    budget = args.budget or rows[0].wall_seconds - outside
    if budget < 1:
        sys.exit(f"nanoGPT's run took {rows[0].wall_seconds:.1f} s, less than our command's {outside:.1f} s outside "
                 "training: give --budget")
    print(f"our command's time outside training: {outside:.1f} s; budget {budget:.0f} s", flush=True)
    budgeted = ("--max-seconds", f"{budget:.0f}")
    rows.append(run_ours(f"ours, defaults: --max-seconds {budget:.0f}", "cpu-budget", budgeted, corpus, args.out,
                         args.threads))
    rows.append(run_ours(f"ours, tuned: --max-seconds {budget:.0f} --compile", "cpu-tuned", (*budgeted, "--compile"),
                         corpus, args.out, args.threads))

    print(f"\nlevers at nanoGPT's shape, {args.lever_steps} steps each:", flush=True)
    train_docs, _, _ = read_documents(corpus, 0.1)
    tokenizer = train_tokenizer("char", train_docs, 0)
    torch.set_num_threads(args.threads)
    lever_rows = levers(encode(tokenizer, train_docs), tokenizer.vocab_size, args.lever_steps, args.nanogpt)
    print("\nthe ceiling at nanoGPT's shape:", flush=True)
    ceilings = ceiling(tokenizer.vocab_size, args.lever_steps)
    flops = flops_per_token(tokenizer.vocab_size)

    anchor = rows[0]
    print(f"\nbudget {budget:.0f} s; load average now {os.getloadavg()[0]:.2f}; bench took "
          f"{time.perf_counter() - started:.0f} s")
    name = anchor.label.split(",")[0]
    print(f"| run | steps | train s | wall s | tokens/s | × {name} | GFLOP/s | val bits/char | Δ |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        print(f"| {r.label} | {r.steps:,} | {r.train_seconds:.1f} | {r.wall_seconds:.1f} | "
              f"{r.tokens_per_second:,.0f} | {r.tokens_per_second / anchor.tokens_per_second:.2f} | "
              f"{r.tokens_per_second * flops / 1e9:.1f} | {r.val_bpc:.3f} | {r.val_bpc - anchor.val_bpc:+.3f} |")
    print(f"\n| ceiling at nanoGPT's shape ({flops:,} training FLOPs a token) | tokens/s | × {name} |")
    print("|---|---:|---:|")
    for precision, tokens in ceilings:
        print(f"| the step's weight products alone, {precision} | {tokens:,.0f} | "
              f"{tokens / anchor.tokens_per_second:.2f} |")
    base = lever_rows[0][1]
    print("\n| lever at nanoGPT's shape | tokens/s | × the loop's step |")
    print("|---|---:|---:|")
    for label, seconds in lever_rows:
        print(f"| {label} | {BATCH * SHAPE['block_size'] / seconds:,.0f} | {base / seconds:.2f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
