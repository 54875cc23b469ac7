"""Every checkpoint under ``CHECKPOINT_DIR``, loaded once, looked up by the pipeline a route needs.

``Registry.get(kind, name)`` answers with a pipeline of exactly that type, found by checkpoint id or
short name, or with the error that says why not:

- a name the project knows (its catalog) or a checkpoint in ``CHECKPOINT_DIR``, not loaded: 503 naming
  the command that trains it;
- a loaded model that answers another kind of question: 422 naming the models that fit;
- anything else: 404.
"""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Generic, TypeVar

import torch
from fastapi import HTTPException, Request

from app.observability import note_model
from models import pipelines
from models.catalog import CATALOG, ID_PREFIXES, family_of, outdated, train_command
from models.checkpoint import CheckpointError, find_checkpoints, load_checkpoint
from models.pipelines import (
    AttentionMaps,
    FillMask,
    NextSentence,
    Pipeline,
    TextClassifier,
    TextEmbedder,
    TextGenerator,
    Translator,
    WordVectors,
)

log = logging.getLogger("app.registry")

P = TypeVar("P", WordVectors, Translator, FillMask, NextSentence, TextGenerator, TextClassifier, TextEmbedder,
              AttentionMaps)

# What a route calls the models it takes, in its error messages.
NOUNS: dict[type, str] = {
    WordVectors: "word2vec model", Translator: "translation model", FillMask: "fill-mask model",
    NextSentence: "next-sentence model", TextGenerator: "language model", TextClassifier: "classifier",
    TextEmbedder: "embedding model",
    AttentionMaps: "model with self-attention",
}


@dataclass
class LoadedModel:
    id: str
    family: str
    name: str
    architecture: str
    config: dict[str, Any]
    metrics: dict[str, Any]
    parameters: int
    pipelines: tuple[Pipeline, ...]

    def names(self, name: str) -> bool:
        return name in (self.id, self.name)


@dataclass(frozen=True)
class Served(Generic[P]):
    """A pipeline found for a request, with the id of the checkpoint behind it (the reply names it)."""

    id: str
    pipeline: P


@dataclass
class CheckpointStatus:
    id: str
    status: str  # "loaded" or "refused"
    reason: str | None = None
    outdated: str | None = None  # why today's default recipe would train it otherwise (models.catalog.outdated)


class ModelError(HTTPException):
    """An answer about the ``model`` field (OpenAI's error names it as its ``param``)."""

    param = "model"


class ModelNotLoaded(ModelError):
    """503: a model the project knows is not loaded; the message names the command that trains it."""

    def __init__(self, checkpoint_id: str, command: str, reason: str | None = None):
        why = f" (refused: {reason})" if reason else ""
        super().__init__(status_code=503, detail=f"model '{checkpoint_id}' is not loaded{why}; train it with "
                                                 f"`{command}` and restart or reload the service")


class UnknownModel(ModelError):
    """404: no checkpoint of that name, loaded or not."""

    def __init__(self, noun: str, name: str, known: list[str]):
        super().__init__(status_code=404, detail=f"unknown {noun} '{name}'; known: {', '.join(known) or 'none'}")


class WrongModel(ModelError):
    """422: a loaded model that answers another kind of question, or a name that fits several."""

    def __init__(self, message: str, fitting: list[str]):
        super().__init__(status_code=422, detail=f"{message}; models that fit: {', '.join(fitting) or 'none loaded'}")


class Registry:
    def __init__(self, root: Path, device: torch.device):
        self.root = Path(root)
        self.device = device
        self._models: dict[str, LoadedModel] = {}
        # (kind, name) -> what get found, and in which version of _models: every request looks its model up,
        # and the search over every loaded pipeline cost more than a cached answer (measured: 20 µs of
        # 15 models, some 2% of a batched fill-mask request's CPU).
        self._found: dict[tuple[type[Pipeline], str], tuple[dict[str, LoadedModel], LoadedModel, Pipeline]] = {}
        self.statuses: dict[str, CheckpointStatus] = {}
        self._lock = threading.Lock()

    def load_all(self) -> None:
        """Load every checkpoint; a bad one is refused (logged, listed in /ready), the rest still serve.

        Called again (``POST /v1/admin/reload``), each model is swapped only once its new version has
        loaded: a checkpoint that now fails keeps serving its previous version, and one whose
        directory is gone is dropped.
        """
        with self._lock:  # one reload at a time; lookups never wait on this
            previous = dict(self._models)
            models: dict[str, LoadedModel] = {}
            statuses: dict[str, CheckpointStatus] = {}
            for path in find_checkpoints(self.root):
                try:
                    loaded = self._load(path)
                except Exception as e:  # any failure in one checkpoint must not stop the others
                    log.error("refused checkpoint %s: %s", path.name, e)
                    if path.name in previous:
                        models[path.name] = previous[path.name]
                        statuses[path.name] = CheckpointStatus(path.name, "loaded", f"kept previous version: {e}",
                                                               outdated(previous[path.name].config))
                    else:
                        statuses[path.name] = CheckpointStatus(path.name, "refused", str(e))
                    continue
                models[loaded.id] = loaded
                statuses[path.name] = CheckpointStatus(path.name, "loaded", outdated=outdated(loaded.config))
                log.info("loaded %s (%s, %d parameters)", loaded.id, loaded.architecture, loaded.parameters)
            # Readers see the old dict or the new one, never a half-built one.
            self._models = models
            self.statuses = statuses

    def _load(self, path: Path) -> LoadedModel:
        checkpoint = load_checkpoint(path)
        if checkpoint.id != path.name:
            raise CheckpointError(f"directory {path.name} holds checkpoint id {checkpoint.id!r}")
        try:
            loaded = pipelines.load(checkpoint, self.device)
        except KeyError as e:  # a loader reads config keys and tensors by name: say which one is absent
            raise CheckpointError(f"{path.name}: missing {e} (a config.json key or a tensor the "
                                  f"{checkpoint.family} loader reads)") from e
        config = checkpoint.config
        return LoadedModel(
            id=checkpoint.id,
            family=checkpoint.family,
            name=config.get("name", checkpoint.id.removeprefix(checkpoint.family + "-")),
            architecture=config["architecture"],
            config=config,
            metrics=checkpoint.metrics,
            parameters=sum(t.numel() for t in checkpoint.state_dict.values()),
            pipelines=loaded,
        )

    @property
    def models(self) -> list[LoadedModel]:
        return sorted(self._models.values(), key=lambda m: m.id)

    def get(self, kind: type[P], name: str) -> Served[P]:
        """The ``kind`` pipeline of the loaded model called ``name`` (its id, or its short name)."""
        loaded = self._models
        found_before = self._found.get((kind, name))
        if found_before is not None and found_before[0] is loaded:
            _, model, pipeline = found_before
            note_model(model.id)
            return Served(model.id, pipeline)  # type: ignore[arg-type]  # cached from an isinstance match
        models = sorted(loaded.values(), key=lambda m: m.id)
        fitting = [(m, p) for m in models for p in m.pipelines if isinstance(p, kind)]
        found = [(m, p) for m, p in fitting if m.id == name] or [(m, p) for m, p in fitting if m.name == name]
        if len(found) > 1:
            raise WrongModel(f"'{name}' names several {NOUNS[kind]}s", [m.id for m, _ in found])
        if found:
            model, pipeline = found[0]
            self._found[kind, name] = (loaded, model, pipeline)
            note_model(model.id)
            return Served(model.id, pipeline)
        families = pipelines.families_serving(kind)
        other = next((m for m in models if m.names(name)), None)
        if other is not None and other.family in families:  # a family only some of whose models answer this
            raise WrongModel(f"model '{name}' is not a {NOUNS[kind]}: {other.id} is a {other.architecture}",
                             [m.id for m, _ in fitting])
        self._raise_if_known(name, families)
        if other is not None:
            raise WrongModel(f"model '{name}' is not a {NOUNS[kind]}: {other.id} is a {other.family} model",
                             [m.id for m, _ in fitting])
        known = {e.id for e in CATALOG if e.family in families} | {m.id for m, _ in fitting}
        raise UnknownModel(NOUNS[kind], name, sorted(known))

    def find(self, name: str) -> LoadedModel:
        """The loaded model called ``name``, of any kind: its id, or a short name no other model has."""
        models = self.models
        found = [m for m in models if m.id == name] or [m for m in models if m.name == name]
        if len(found) > 1:
            raise WrongModel(f"'{name}' names several models; ask for one by id", [m.id for m in found])
        if found:
            return found[0]
        self._raise_if_known(name, tuple(ID_PREFIXES))
        raise UnknownModel("model", name, [m.id for m in models])

    def _raise_if_known(self, name: str, families: tuple[str, ...]) -> None:
        """503 for a name of these families that the catalog lists or ``CHECKPOINT_DIR`` holds, not loaded."""
        for entry in CATALOG:
            if entry.family in families and name in (entry.id, entry.name):
                raise ModelNotLoaded(entry.id, entry.train_command, self._refusal(entry.id))
        for checkpoint_id in (name, *(f"{ID_PREFIXES[family]}-{name}" for family in families)):
            family = family_of(checkpoint_id)
            present = checkpoint_id in self.statuses or (self.root / checkpoint_id / "config.json").is_file()
            if family in families and present:
                raise ModelNotLoaded(checkpoint_id, train_command(checkpoint_id), self._refusal(checkpoint_id))

    def _refusal(self, checkpoint_id: str) -> str | None:
        status = self.statuses.get(checkpoint_id)
        return status.reason if status is not None and status.status == "refused" else None


async def get_registry(request: Request) -> Registry:  # async: see app.inference.get_pool
    return request.app.state.registry
