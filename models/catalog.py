"""The checkpoints the project knows by name, and the command that trains each.

Training reads this to know what ``python -m training all`` (and so ``make serve``) builds; the
service reads it to name the training command in a 503 for a model that is not loaded.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class CatalogEntry:
    id: str
    family: str
    name: str
    train_args: tuple[str, ...]
    default: bool = True  # trained by `python -m training all` / `make serve`

    @property
    def train_command(self) -> str:
        return "python -m training " + " ".join(self.train_args)


CATALOG: tuple[CatalogEntry, ...] = (
    CatalogEntry("word2vec-sg", "word2vec", "sg", ("word2vec", "--mode", "sg")),
    CatalogEntry("word2vec-cbow", "word2vec", "cbow", ("word2vec", "--mode", "cbow")),
)


def entry(family: str, name: str) -> CatalogEntry | None:
    return next((e for e in CATALOG if e.family == family and e.name == name), None)


def train_command(family: str, name: str) -> str:
    """The command that trains ``<family>-<name>``, for messages that tell a user what to run."""
    known = entry(family, name)
    return known.train_command if known else f"python -m training {family}"
