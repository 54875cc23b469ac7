"""Scoring a text in one forward pass (what /v1/completions' logprobs uses) against feeding it token by token
through a decoding session (what scoring on the generation loop would cost), for each language model.

    python bench/scoring.py --checkpoint-dir checkpoints [--characters 2000] [--repeats 5]

Both give the same log-probabilities (the tests check it); this prints how long each takes, best of the
repeats, and their ratio.
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable
from pathlib import Path

import torch

from models.checkpoint import load_checkpoint
from models.pipelines import text_generation
from models.sampling import LanguageModel
from training.data import plays_in


def best_of(repeats: int, fn: Callable[[], object]) -> float:
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        fn()
        times.append(time.perf_counter() - started)
    return min(times)


def stepped(model: LanguageModel, ids: list[int]) -> torch.Tensor:
    session, first = model.start(ids[:1], 1)
    rows = [first[0]] + [session.step(torch.tensor([token]))[0] for token in ids[1:]]
    return torch.stack(rows)


@torch.no_grad()
def measure(path: Path, text: str, repeats: int) -> tuple[int, float, float]:
    """(tokens, seconds to score them in one pass, seconds to step through them) for one checkpoint."""
    checkpoint = load_checkpoint(path)
    generator = text_generation.load(checkpoint, torch.device("cpu"))
    model = text_generation.LANGUAGE_MODELS[checkpoint.family](checkpoint, torch.device("cpu"))
    ids = generator.tokenizer.encode(text)
    return len(ids), best_of(repeats, lambda: generator.score(ids, 5)), best_of(repeats, lambda: stepped(model, ids))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkpoint-dir", type=Path, default=Path("checkpoints"))
    parser.add_argument("--characters", type=int, default=2000, help="length of the text scored")
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    text = plays_in("validation")[0].render()[:args.characters]
    print("| model | tokens | one forward pass | token by token | ratio |\n|---|---:|---:|---:|---:|")
    for checkpoint_id in ("gpt", "lm-rnn", "lm-lstm", "lm-gru"):
        if (args.checkpoint_dir / checkpoint_id).is_dir():
            tokens, one, each = measure(args.checkpoint_dir / checkpoint_id, text, args.repeats)
            print(f"| {checkpoint_id} | {tokens} | {one * 1000:.1f} ms | {each * 1000:.1f} ms | {each / one:.1f}x |")


if __name__ == "__main__":
    main()
