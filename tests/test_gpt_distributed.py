"""The GPT trainer under torchrun: two CPU processes (gloo) train as one process with the same global batch."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from models.checkpoint import load_checkpoint
from training.data import load_plays
from training.gpt import state_dir

ROOT = Path(__file__).resolve().parent.parent
# The flags both runs share: a small character model on the start of the plays.
FLAGS = ("--profile", "tiny", "--device", "cpu", "--tokenizer", "char", "--train-chars", "60000",
         "--val-chars", "6000", "--block-size", "32", "--batch-size", "8", "--max-steps", "12",
         "--max-seconds", "0", "--dtype", "float32")


def train(launcher: list[str], out: Path, corpus: Path, *extra: str) -> list[float]:
    env = {**os.environ, "PROGRESS": "0"}
    result = subprocess.run([*launcher, "-m", "training", "gpt", *FLAGS, "--corpus", str(corpus),
                             "--out", str(out), *extra],
                            cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    if result.returncode != 0:
        pytest.fail(f"{' '.join(launcher)} failed:\n{result.stdout}\n{result.stderr}")
    return json.loads((state_dir(out, "gpt") / "history.json").read_text())["loss"]


@pytest.fixture(scope="module")
def corpus(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("corpus") / "plays.txt"
    path.write_text("".join(p.render() for p in load_plays()[:2]), encoding="utf-8")
    return path


def test_two_processes_match_one_with_the_same_global_batch(tmp_path: Path, corpus: Path) -> None:
    single = train([sys.executable], tmp_path / "one", corpus)
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2"]
    # Each process takes 4 of the 8 sequences, in two micro-batches of 2 (gradient accumulation).
    double = train(torchrun, tmp_path / "two", corpus, "--micro-batch-size", "2")
    assert len(double) == len(single) == 12
    assert double == pytest.approx(single, abs=1e-3)
    assert single[-1] < single[0]

    checkpoint = load_checkpoint(tmp_path / "two" / "gpt")  # written once, by rank 0
    assert checkpoint.config["training"]["world_size"] == 2
    assert checkpoint.metrics["steps"] == 12 and checkpoint.metrics["val_bpc"] > 0
    assert sorted(p.name for p in (tmp_path / "two").iterdir()) == [".gpt-train-state", "gpt"]
