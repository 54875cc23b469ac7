"""KV cache against recomputing the whole context, on the served GPT checkpoint.

    python bench/kv_cache.py [--checkpoint checkpoints/gpt] [--prompt-tokens 64] [--new-tokens 256]

Both decoders run greedily from the same prompt (the start of a validation play), so they must
produce the same tokens; the figure is the wall-clock time for the new tokens, best of --repeats.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

# As `python -m training` does: idle OpenMP threads sleep rather than spin (set before torch loads).
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import torch  # noqa: E402

from models.checkpoint import load_checkpoint  # noqa: E402
from models.gpt import GPT, load  # noqa: E402
from models.sampling import SamplingParams  # noqa: E402
from models.tokenizers import load_text_tokenizer  # noqa: E402
from training.data import plays_in  # noqa: E402


def timed(model: GPT, prompt: torch.Tensor, new_tokens: int, use_cache: bool,
          repeats: int) -> tuple[float, torch.Tensor]:
    best, out = float("inf"), prompt
    for _ in range(repeats):
        started = time.perf_counter()
        out = model.generate(prompt, new_tokens, SamplingParams(temperature=0.0), use_cache=use_cache)
        best = min(best, time.perf_counter() - started)
    return best, out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkpoint", type=Path, default=Path("checkpoints/gpt"))
    parser.add_argument("--prompt-tokens", type=int, default=64)
    parser.add_argument("--new-tokens", type=int, default=256)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    if threads := os.environ.get("TORCH_THREADS"):
        torch.set_num_threads(int(threads))
    if not (args.checkpoint / "config.json").is_file():
        print(f"no checkpoint at {args.checkpoint}; train it with `python -m training gpt`", file=sys.stderr)
        return 1

    checkpoint = load_checkpoint(args.checkpoint)
    model = load(checkpoint, torch.device("cpu"))
    config = model.config
    if args.prompt_tokens + args.new_tokens > config.block_size:
        print(f"note: {args.prompt_tokens + args.new_tokens} positions exceed the context of {config.block_size}; "
              "both decoders slide the window", file=sys.stderr)
    tokenizer = load_text_tokenizer(checkpoint, config.vocab_size)
    ids = tokenizer.encode(plays_in("validation")[0].render())[:args.prompt_tokens]
    prompt = torch.tensor([ids])
    model.generate(prompt, 8, SamplingParams(temperature=0.0))  # warm up the allocator and kernels

    recompute_s, recomputed = timed(model, prompt, args.new_tokens, False, args.repeats)
    cached_s, cached = timed(model, prompt, args.new_tokens, True, args.repeats)
    same = int((cached == recomputed).all(dim=0).sum()) - args.prompt_tokens

    print(f"model: {args.checkpoint} ({config.n_layer} layers, {config.n_embd} wide, {config.n_head} heads, "
          f"context {config.block_size}, vocabulary {config.vocab_size}), {model.num_parameters() / 1e6:.2f}M "
          f"parameters")
    print(f"machine: {torch.get_num_threads()} torch threads, OMP_WAIT_POLICY={os.environ['OMP_WAIT_POLICY']}, "
          f"load average {os.getloadavg()[0]:.2f}")
    print(f"{args.new_tokens} new tokens after a {args.prompt_tokens}-token prompt, greedy, best of {args.repeats}:")
    print(f"  recompute the context : {recompute_s:7.3f} s  {args.new_tokens / recompute_s:8.1f} tokens/s")
    print(f"  KV cache              : {cached_s:7.3f} s  {args.new_tokens / cached_s:8.1f} tokens/s")
    print(f"  speed-up              : {recompute_s / cached_s:7.1f}x")
    print(f"  identical tokens      : {same}/{args.new_tokens}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
