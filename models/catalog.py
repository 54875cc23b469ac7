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


# family -> how its checkpoint ids begin: ``<prefix>`` for a family's own default, ``<prefix>-<name>`` else
ID_PREFIXES: dict[str, str] = {"word2vec": "word2vec", "gpt": "gpt", "bert": "bert", "seq2seq": "seq2seq",
                               "classifier": "clf", "lm": "lm"}
# The trainers whose --name picks a checkpoint id of one's own (gpt-<name>, seq2seq-<name>).
NAMED_TRAINERS = ("gpt", "seq2seq")


def family_of(checkpoint_id: str) -> str | None:
    """The family a checkpoint id belongs to, read from its prefix."""
    return next((family for family, prefix in ID_PREFIXES.items()
                 if checkpoint_id == prefix or checkpoint_id.startswith(prefix + "-")), None)


def train_command(checkpoint_id: str) -> str:
    """The command that trains ``checkpoint_id``: the catalog's, or its trainer's for one named otherwise."""
    known = next((e for e in CATALOG if e.id == checkpoint_id), None)
    if known is not None:
        return known.train_command
    family = family_of(checkpoint_id)
    if family is None:
        raise ValueError(f"no family's checkpoint ids look like {checkpoint_id!r}")
    name = checkpoint_id.removeprefix(ID_PREFIXES[family] + "-")
    return f"python -m training {family}" + (f" --name {name}" if family in NAMED_TRAINERS else "")
