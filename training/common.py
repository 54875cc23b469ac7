"""Pieces every trainer uses: profiles, checkpoint names, seeding, device choice, progress bars."""

from __future__ import annotations

import argparse
import logging
import os
import random
import re
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
import torch
from tqdm.auto import tqdm

from models.catalog import DEFAULT_IDS, ID_PATTERN, ID_PREFIXES, MAX_ID_LENGTH, checkpoint_id_of

PROFILES = ("tiny", "quick", "full")
T = TypeVar("T")

log = logging.getLogger("training")


def apply_profile(args: argparse.Namespace, profiles: Mapping[str, Mapping[str, Any]]) -> argparse.Namespace:
    """Fill every option the user left unset (None) from the chosen profile's values."""
    if args.profile not in profiles:
        raise SystemExit(f"unknown profile {args.profile!r}; choose one of {', '.join(profiles)}")
    for key, value in profiles[args.profile].items():
        if getattr(args, key, None) is None:
            setattr(args, key, value)
    return args


# ---- checkpoint names --------------------------------------------------------------------------------


def add_name_arguments(parser: argparse.ArgumentParser, default: str) -> None:
    """``--name`` and ``--force``, as every trainer has them; ``default`` says what the name is without one."""
    parser.add_argument("--name", default=None,
                        help=f"the checkpoint's name in its family, so its id (default: {default}; trained on your own "
                             "data file, that name followed by the file's, e.g. word2vec-sg-mytext)")
    parser.add_argument("--force", action="store_true",
                        help="train your own data into the default checkpoint itself, overwriting it")


def checkpoint_name(args: argparse.Namespace, family: str, default: str, data: Path | None) -> str:
    """The name of the checkpoint a run trains: ``--name``; else ``default`` on the default data; else, on the
    user's own ``data`` file, the default checkpoint's id followed by the file's name (``word2vec-sg-mytext``,
    ``gpt-mytext``), so that it lands beside the default checkpoint. Writing the user's data into a default
    checkpoint takes ``--force``: it is never done silently."""
    if args.name is not None:
        name = args.name
    elif data is None or args.force:
        name = default
    else:
        stem = re.sub(r"[^a-z0-9._-]+", "-", data.stem.lower()).strip(".-_") or "data"
        derived = f"{checkpoint_id_of(family, default)}-{stem}"[:MAX_ID_LENGTH].rstrip(".-_")
        name = derived.removeprefix(ID_PREFIXES[family] + "-")
    checkpoint = checkpoint_id_of(family, name)
    if not re.fullmatch(ID_PATTERN, name) or len(checkpoint) > MAX_ID_LENGTH:
        raise ValueError(f"--name {name!r}: a name is letters, digits, '.', '_' and '-', not beginning with '.', '_' "
                         f"or '-', and its checkpoint id ({checkpoint}) at most {MAX_ID_LENGTH} characters")
    if data is not None and checkpoint in DEFAULT_IDS and not args.force:
        raise ValueError(f"{checkpoint} is a default checkpoint, trained on the project's data: training it on "
                         f"{data} would replace it. Leave --name out for a checkpoint of its own, or add --force")
    return name


def set_seed(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def pick_device(name: str | None) -> torch.device:
    """``auto`` (default) is CUDA when available, else CPU."""
    if name in (None, "auto"):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise SystemExit("--device cuda asked for, but CUDA is not available")
    return torch.device(name)


def configure_threads() -> None:
    """Honour TORCH_THREADS / OMP_NUM_THREADS; torch otherwise uses every core, which is what we want."""
    threads = os.environ.get("TORCH_THREADS")
    if threads:
        torch.set_num_threads(int(threads))


def progress(iterable: Iterable[T] | None = None, **kwargs: Any) -> tqdm:
    """A tqdm bar that stays quiet when stderr is not a terminal and PROGRESS=0 is set."""
    kwargs.setdefault("dynamic_ncols", True)
    kwargs.setdefault("disable", os.environ.get("PROGRESS", "1") == "0")
    return tqdm(iterable, **kwargs)


def pretrained_checkpoint_path(given: Path | None, out: str | Path, checkpoint_id: str, instead: str) -> Path:
    """The checkpoint a run starts from: the one ``given``, else ``out/<checkpoint_id>``, which must exist."""
    path = given if given is not None else Path(out) / checkpoint_id
    if not (path / "config.json").is_file():
        raise FileNotFoundError(f"no {checkpoint_id} checkpoint at {path}; train it first with `python -m training "
                                f"{checkpoint_id.split('-')[0]}`, {instead}")
    return path


def weight_decay_groups(model: torch.nn.Module, weight_decay: float) -> list[dict[str, Any]]:
    """AdamW parameter groups: matrices (weights, embeddings) decay; biases and LayerNorm gains do not."""
    params = [p for p in model.parameters() if p.requires_grad]
    return [{"params": [p for p in params if p.dim() >= 2], "weight_decay": weight_decay},
            {"params": [p for p in params if p.dim() < 2], "weight_decay": 0.0}]


def length_grouped(lengths: Sequence[int], batch_size: int, rng: random.Random | None) -> list[list[int]]:
    """Batches of example indices with close lengths, so that a batch pads little: sorted by length within
    pools of 50 batches. With ``rng`` (training) the examples are shuffled first and the batches after, so
    every epoch mixes them differently."""
    order = list(range(len(lengths)))
    if rng is not None:
        rng.shuffle(order)
    pool = 50 * batch_size
    order = [i for start in range(0, len(order), pool)
             for i in sorted(order[start:start + pool], key=lengths.__getitem__)]
    batches = [order[i:i + batch_size] for i in range(0, len(order), batch_size)]
    if rng is not None:
        rng.shuffle(batches)
    return batches
