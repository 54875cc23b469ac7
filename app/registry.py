"""Every checkpoint under ``CHECKPOINT_DIR``, loaded once, looked up by family and short name."""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from fastapi import HTTPException, Request

from app.observability import note_model
from models import bert, classifier, gpt, rnn, seq2seq, word2vec
from models.catalog import CATALOG, entry
from models.checkpoint import Checkpoint, CheckpointError, find_checkpoints, load_checkpoint

log = logging.getLogger("app.registry")

# family -> the model file's loader, which builds the ready-to-use inference object
LOADERS: dict[str, Callable[[Checkpoint, torch.device], Any]] = {
    "word2vec": word2vec.load,
    "gpt": gpt.load,
    "bert": bert.load,
    "seq2seq": seq2seq.load,
    "classifier": classifier.load,
    "lm": rnn.load,
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
    model: Any = field(repr=False)


@dataclass
class CheckpointStatus:
    id: str
    status: str  # "loaded" or "refused"
    reason: str | None = None


class ModelNotLoaded(HTTPException):
    """503: a model the project knows is not loaded; the message names the command that trains it."""

    def __init__(self, checkpoint_id: str, command: str):
        super().__init__(
            status_code=503,
            detail=f"model '{checkpoint_id}' is not loaded; train it with `{command}` "
                   "and restart or reload the service",
        )


class UnknownModel(HTTPException):
    """404: no checkpoint of that name exists in the family, loaded or not."""

    def __init__(self, family: str, name: str, known: list[str]):
        super().__init__(status_code=404,
                         detail=f"unknown {family} model {name!r}; known models: {', '.join(known) or 'none'}")


class Registry:
    def __init__(self, root: Path, device: torch.device):
        self.root = Path(root)
        self.device = device
        self._models: dict[str, LoadedModel] = {}
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
                        statuses[path.name] = CheckpointStatus(path.name, "loaded", f"kept previous version: {e}")
                    else:
                        statuses[path.name] = CheckpointStatus(path.name, "refused", str(e))
                    continue
                models[loaded.id] = loaded
                statuses[path.name] = CheckpointStatus(path.name, "loaded")
                log.info("loaded %s (%s, %d parameters)", loaded.id, loaded.architecture, loaded.parameters)
            # Readers see the old dict or the new one, never a half-built one.
            self._models = models
            self.statuses = statuses

    def _load(self, path: Path) -> LoadedModel:
        checkpoint = load_checkpoint(path)
        if checkpoint.id != path.name:
            raise CheckpointError(f"directory {path.name} holds checkpoint id {checkpoint.id!r}")
        loader = LOADERS.get(checkpoint.family)
        if loader is None:
            raise CheckpointError(f"unknown family {checkpoint.family!r}")
        try:
            model = loader(checkpoint, self.device)
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
            model=model,
        )

    @property
    def models(self) -> list[LoadedModel]:
        return sorted(self._models.values(), key=lambda m: m.id)

    def get(self, family: str, name: str) -> LoadedModel:
        for model in self._models.values():
            if model.family == family and model.name == name:
                note_model(model.id)
                return model
        known = entry(family, name)
        if known is None:
            raise UnknownModel(family, name, [e.name for e in CATALOG if e.family == family])
        raise ModelNotLoaded(known.id, known.train_command)

    def names(self, family: str) -> list[str]:
        return sorted(m.name for m in self._models.values() if m.family == family)


async def get_registry(request: Request) -> Registry:  # async: see app.inference.get_pool
    return request.app.state.registry
