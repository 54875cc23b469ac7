"""The training state kept beside a checkpoint, so ``--resume`` continues a run where it stopped.

A trainer saves its weights, optimizer, schedule, progress counters, loss history and random streams in
``state.pt`` under a hidden ``.<checkpoint id>-train-state`` directory (hidden, so the service never
lists it). The file is written with ``torch.save`` and read back with ``weights_only=True``: it holds
tensors and plain values (numbers, strings, lists, tuples, dicts) only, and loading it runs no code.

Under torchrun every rank reads the state at start; only rank 0 writes it, with every rank's torch RNG
gathered into it, so each rank continues its own random stream (dropout differs per rank).
"""

from __future__ import annotations

import json
import os
import pickle
from pathlib import Path
from typing import Any

import torch

from training.distributed import Distributed

STATE_FORMAT = 1
History = dict[str, list] | list[dict[str, Any]]


def state_dir(out: Path, checkpoint_id: str) -> Path:
    return Path(out) / f".{checkpoint_id}-train-state"


def load_state(directory: Path) -> dict[str, Any]:
    path = directory / "state.pt"
    if not path.is_file():
        raise FileNotFoundError(f"--resume: no training state at {path}")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, EOFError) as e:  # not a file torch.save wrote, or cut short
        raise ValueError(f"--resume: {path} is not a training state ({type(e).__name__})") from e
    found = state.get("format") if isinstance(state, dict) else type(state).__name__
    if found != STATE_FORMAT:
        raise ValueError(f"--resume: {path} has format {found!r}, expected {STATE_FORMAT}")
    return state


def save_state(directory: Path, dist: Distributed, state: dict[str, Any], history: History) -> None:
    """Write ``state`` with the history and every rank's RNG; a collective, so every rank calls it."""
    rng = dist.gather(torch.get_rng_state())
    if not dist.is_main:
        return
    directory.mkdir(parents=True, exist_ok=True)
    tmp = directory / "state.pt.tmp"
    torch.save({**state, "format": STATE_FORMAT, "torch_rng": rng, "history": history}, tmp)
    os.replace(tmp, directory / "state.pt")  # a kill mid-write leaves the previous state whole
    # A readable copy of the loss curve; resuming reads the one inside state.pt.
    (directory / "history.json").write_text(json.dumps(history) + "\n", encoding="utf-8")


def restore_rng(state: dict[str, Any], dist: Distributed) -> None:
    """This rank's torch RNG as saved; a run resumed on another number of processes keeps its fresh seed."""
    if len(state["torch_rng"]) == dist.world_size:
        torch.set_rng_state(state["torch_rng"][dist.rank])
