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
    CatalogEntry("gpt", "gpt", "gpt", ("gpt",)),
    CatalogEntry("bert", "bert", "bert", ("bert",)),
    CatalogEntry("seq2seq-zh-en", "seq2seq", "zh-en", ("seq2seq", "--direction", "zh-en")),
    CatalogEntry("seq2seq-en-zh", "seq2seq", "en-zh", ("seq2seq", "--direction", "en-zh")),
    *(CatalogEntry(f"clf-{arch}", "classifier", arch, ("classifier", "--arch", arch))
      for arch in ("mlp", "cnn", "rnn", "lstm", "gru")),
    *(CatalogEntry(f"lm-{cell}", "lm", cell, ("lm", "--cell", cell)) for cell in ("rnn", "lstm", "gru")),
    # Fine-tunes the bert checkpoint, so it comes after it.
    CatalogEntry("clf-bert", "classifier", "bert", ("classifier", "--arch", "bert")),
)


def entry(family: str, name: str) -> CatalogEntry | None:
    return next((e for e in CATALOG if e.family == family and e.name == name), None)
