"""The one checkpoint format shared by training (writer) and the service (reader).

A checkpoint is a directory ``<root>/<family>-<name>/`` holding

- ``config.json``   format version, family, architecture, hyperparameters, tokenizer reference,
                    data provenance and licence, split seed, library versions;
- ``model.safetensors`` the weights (tensors only: nothing is ever unpickled);
- the tokenizer or vocabulary file named by ``config["tokenizer"]["file"]``;
- ``metrics.json``  the final evaluation.

Checkpoints are written into a temporary sibling directory and renamed into place, so a crash
mid-save leaves either the previous checkpoint or none, never half of one.
"""

from __future__ import annotations

import glob
import json
import os
import platform
import shutil
import tempfile
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

FORMAT_VERSION = 1
CONFIG_FILE = "config.json"
WEIGHTS_FILE = "model.safetensors"
METRICS_FILE = "metrics.json"


class CheckpointError(ValueError):
    """A checkpoint directory that cannot be read as this format."""


@dataclass
class Checkpoint:
    path: Path
    config: dict[str, Any]
    state_dict: dict[str, torch.Tensor]
    metrics: dict[str, Any] = field(default_factory=dict)

    @property
    def id(self) -> str:
        return self.config["id"]

    @property
    def family(self) -> str:
        return self.config["family"]

    def file(self, name: str) -> Path:
        """Path of an auxiliary file (tokenizer, vocabulary) inside the checkpoint."""
        path = self.path / name
        if not path.is_file():
            raise CheckpointError(f"{self.path.name}: missing file {name}")
        return path


def library_versions() -> dict[str, str]:
    import numpy

    return {"python": platform.python_version(), "torch": torch.__version__, "numpy": numpy.__version__}


def save_checkpoint(
    root: Path,
    config: dict[str, Any],
    state_dict: dict[str, torch.Tensor],
    metrics: dict[str, Any],
    files: dict[str, str | bytes] | None = None,
) -> Path:
    """Write a checkpoint atomically into ``root/config['id']`` and return its path.

    ``config`` must hold at least ``id``, ``family`` and ``architecture``; the format version,
    library versions and creation time are added here. ``files`` maps auxiliary file names to
    their contents (text or bytes).
    """
    for key in ("id", "family", "architecture"):
        if key not in config:
            raise CheckpointError(f"config is missing {key!r}")
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    final = root / config["id"]
    config = {
        "format_version": FORMAT_VERSION,
        **config,
        "versions": library_versions(),
        "created": datetime.now(UTC).isoformat(timespec="seconds"),
    }
    # Staging directories a killed writer left behind (hidden: the service never lists them).
    for stale in root.glob(glob.escape(f".{config['id']}.") + "*"):
        shutil.rmtree(stale, ignore_errors=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{config['id']}.", dir=root))
    try:
        # safetensors refuses shared or non-contiguous storage; tied weights are saved once per name.
        tensors = {k: v.detach().to("cpu").contiguous().clone() for k, v in state_dict.items()}
        save_file(tensors, str(staging / WEIGHTS_FILE), metadata={"format": "pt"})
        _write_json(staging / CONFIG_FILE, config)
        _write_json(staging / METRICS_FILE, metrics)
        for name, content in (files or {}).items():
            mode = "wb" if isinstance(content, bytes) else "w"
            with open(staging / name, mode, **({} if mode == "wb" else {"encoding": "utf-8"})) as f:
                f.write(content)
        _fsync_dir(staging)
        _replace_dir(staging, final)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return final


def update_metrics(path: Path, metrics: dict[str, Any]) -> None:
    """Replace ``metrics.json`` of an existing checkpoint (evaluation after the fact)."""
    tmp = Path(path) / (METRICS_FILE + ".tmp")
    _write_json(tmp, metrics)
    os.replace(tmp, Path(path) / METRICS_FILE)


def read_config(path: Path) -> dict[str, Any]:
    path = Path(path)
    try:
        config = json.loads((path / CONFIG_FILE).read_text(encoding="utf-8"))
    except FileNotFoundError as e:
        raise CheckpointError(f"{path.name}: no {CONFIG_FILE}") from e
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise CheckpointError(f"{path.name}: {CONFIG_FILE} is not valid JSON ({e})") from e
    if not isinstance(config, dict):
        raise CheckpointError(f"{path.name}: {CONFIG_FILE} is not an object")
    if config.get("format_version") != FORMAT_VERSION:
        raise CheckpointError(
            f"{path.name}: format version {config.get('format_version')!r}, expected {FORMAT_VERSION}"
        )
    for key in ("id", "family", "architecture"):
        if key not in config:
            raise CheckpointError(f"{path.name}: {CONFIG_FILE} is missing {key!r}")
    return config


def load_checkpoint(path: Path, map_location: str = "cpu") -> Checkpoint:
    """Read a checkpoint directory; raises CheckpointError on anything malformed."""
    path = Path(path)
    config = read_config(path)
    weights = path / WEIGHTS_FILE
    if not weights.is_file():
        raise CheckpointError(f"{path.name}: no {WEIGHTS_FILE}")
    try:
        state_dict = load_file(str(weights), device=map_location)
    except Exception as e:  # safetensors raises its own error types for truncated or foreign files
        raise CheckpointError(f"{path.name}: cannot read {WEIGHTS_FILE} ({e})") from e
    metrics: dict[str, Any] = {}
    if (path / METRICS_FILE).is_file():
        try:
            metrics = json.loads((path / METRICS_FILE).read_text(encoding="utf-8"))
        except json.JSONDecodeError as e:
            raise CheckpointError(f"{path.name}: {METRICS_FILE} is not valid JSON ({e})") from e
    return Checkpoint(path=path, config=config, state_dict=state_dict, metrics=metrics)


def find_checkpoints(root: Path) -> list[Path]:
    """Every checkpoint directory under ``root`` (staging directories excluded), sorted by name."""
    root = Path(root)
    if not root.is_dir():
        return []
    return sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))


def _write_json(path: Path, obj: Any) -> None:
    with open(path, "w", encoding="utf-8") as f:
        json.dump(obj, f, indent=2, ensure_ascii=False, sort_keys=False)
        f.write("\n")
        f.flush()
        os.fsync(f.fileno())


def _fsync_dir(path: Path) -> None:
    for child in path.iterdir():
        with open(child, "rb") as f:
            os.fsync(f.fileno())


def _replace_dir(staging: Path, final: Path) -> None:
    """Swap ``staging`` into ``final``; an existing checkpoint is moved aside first, then removed."""
    if final.exists():
        old = final.with_name(f".{final.name}.old")
        shutil.rmtree(old, ignore_errors=True)
        os.replace(final, old)
        os.replace(staging, final)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.replace(staging, final)
