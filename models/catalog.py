"""The checkpoints the project knows by name, and the command that trains each.

Training reads this to know what ``python -m training all`` (and so ``make serve``) builds; the
service reads it to name the training command in a 503 for a model that is not loaded, and to tell
which checkpoints an earlier recipe trained.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any

from models.checkpoint import FORMAT_VERSION


@dataclass(frozen=True)
class CatalogEntry:
    id: str
    family: str
    name: str
    train_args: tuple[str, ...]
    default: bool = True  # trained by `python -m training all` / `make serve`; else only by `all --extras`

    @property
    def train_command(self) -> str:
        return "python -m training " + " ".join(self.train_args)


CATALOG: tuple[CatalogEntry, ...] = (
    CatalogEntry("word2vec-sg", "word2vec", "sg", ("word2vec", "--mode", "sg")),
    CatalogEntry("word2vec-cbow", "word2vec", "cbow", ("word2vec", "--mode", "cbow")),
    CatalogEntry("gpt", "gpt", "gpt", ("gpt",)),
    CatalogEntry("bert", "bert", "bert", ("bert",)),
    CatalogEntry("seq2seq-zh-en", "seq2seq", "zh-en", ("seq2seq", "--direction", "zh-en")),
    CatalogEntry("seq2seq-en-zh", "seq2seq", "en-zh", ("seq2seq", "--direction", "en-zh")),
    *(CatalogEntry(f"clf-{arch}", "classifier", arch, ("classifier", "--arch", arch))
      for arch in ("mlp", "cnn", "rnn", "lstm", "gru")),
    *(CatalogEntry(f"lm-{cell}", "lm", cell, ("lm", "--cell", cell)) for cell in ("rnn", "lstm", "gru")),
    # Fine-tunes the bert checkpoint, so it comes after it.
    CatalogEntry("clf-bert", "classifier", "bert", ("classifier", "--arch", "bert")),
    # Extras: `python -m training all --extras` trains them too, past make serve's time budget.
    *(CatalogEntry(f"seq2seq-{d}-recurrent", "seq2seq", f"{d}-recurrent",
                   ("seq2seq", "--direction", d, "--arch", "recurrent"), default=False) for d in ("zh-en", "en-zh")),
)


# family -> how its checkpoint ids begin: ``<prefix>`` for a family's own default, ``<prefix>-<name>`` else
ID_PREFIXES: dict[str, str] = {"word2vec": "word2vec", "gpt": "gpt", "bert": "bert", "seq2seq": "seq2seq",
                               "classifier": "clf", "lm": "lm"}
# What a checkpoint id (and so a name) may be: what the service's `model` fields accept.
ID_PATTERN = r"[A-Za-z0-9][A-Za-z0-9._-]*"
MAX_ID_LENGTH = 64
DEFAULT_IDS = frozenset(e.id for e in CATALOG)


def checkpoint_id_of(family: str, name: str) -> str:
    """The id of the checkpoint called ``name`` in ``family`` (every trainer's ``--name``)."""
    prefix = ID_PREFIXES[family]
    return prefix if name == prefix else f"{prefix}-{name}"


def family_of(checkpoint_id: str) -> str | None:
    """The family a checkpoint id belongs to, read from its prefix."""
    return next((family for family, prefix in ID_PREFIXES.items()
                 if checkpoint_id == prefix or checkpoint_id.startswith(prefix + "-")), None)


def train_command(checkpoint_id: str) -> str:
    """The command that trains ``checkpoint_id``: the catalog's, or its trainer's with ``--name`` for one named
    otherwise."""
    known = next((e for e in CATALOG if e.id == checkpoint_id), None)
    if known is not None:
        return known.train_command
    family = family_of(checkpoint_id)
    if family is None:
        raise ValueError(f"no family's checkpoint ids look like {checkpoint_id!r}")
    name = checkpoint_id.removeprefix(ID_PREFIXES[family] + "-")
    return f"python -m training {family} --name {name}"


# ---- recipes --------------------------------------------------------------------------------------------
# A checkpoint records the recipe that trained it (config["recipe"]: its settings and their fingerprint).
# recipes.json, beside this file, holds the fingerprints of today's default recipes per profile; training
# writes it (`python -m training recipes --write`), and the service reads it to mark outdated checkpoints.

RECIPES_FILE = Path(__file__).with_name("recipes.json")


def fingerprint(settings: Mapping[str, Any]) -> str:
    """16 hex digits of the SHA-256 of the settings and the checkpoint format version, as canonical JSON."""
    text = json.dumps({"format_version": FORMAT_VERSION, "settings": settings}, sort_keys=True, ensure_ascii=True)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:16]


@cache
def default_recipes() -> dict[str, dict[str, str]]:
    """profile -> checkpoint id -> fingerprint of today's default recipe."""
    if not RECIPES_FILE.is_file():
        return {}
    return json.loads(RECIPES_FILE.read_text(encoding="utf-8"))["fingerprints"]


def recipe_changed(config: Mapping[str, Any], current: str) -> str | None:
    """Why a checkpoint was not trained by the recipe whose fingerprint is ``current``; None when it was."""
    recorded = config.get("recipe") or {}
    if "fingerprint" not in recorded:
        return "trained before checkpoints recorded their recipe"
    if recorded["fingerprint"] != current:
        return f"trained by recipe {recorded['fingerprint']}, today's is {current}"
    return None


def outdated(config: Mapping[str, Any]) -> str | None:
    """Why a default checkpoint is not what today's default recipe for its profile trains, with the command
    that retrains it; None when it is, and for a checkpoint that is not a default one."""
    known = next((e for e in CATALOG if e.id == config.get("id") and e.default), None)
    profile = ((config.get("recipe") or {}).get("settings", {}).get("profile")
               or config.get("training", {}).get("profile") or "quick")
    current = default_recipes().get(profile, {}).get(known.id) if known else None
    why = recipe_changed(config, current) if current else None
    return f"{why}; retrain with `python -m training all --missing --profile {profile}`" if why else None
