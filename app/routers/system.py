"""Liveness, readiness and the OpenAI-style model list."""

from __future__ import annotations

from datetime import datetime
from typing import Any, Literal

from fastapi import APIRouter, Depends
from fastapi.responses import JSONResponse
from pydantic import BaseModel, Field

from app.registry import LoadedModel, Registry, get_registry
from app.schemas import ERROR_DESCRIPTIONS, Error

router = APIRouter(tags=["system"])
v1_router = APIRouter(prefix="/v1", tags=["system"],
                      responses={401: {"model": Error, "description": ERROR_DESCRIPTIONS[401]}})


class Health(BaseModel):
    status: Literal["ok"] = "ok"


class CheckpointState(BaseModel):
    id: str
    status: Literal["loaded", "refused"]
    reason: str | None = None


class Readiness(BaseModel):
    ready: bool
    checkpoints: list[CheckpointState]


class ModelCard(BaseModel):
    id: str = Field(description="Checkpoint id, `<family>-<name>`.", examples=["word2vec-sg"])
    object: Literal["model"] = "model"
    created: int = Field(description="Unix time the checkpoint was written.")
    owned_by: str = "lineage"
    family: str
    name: str = Field(description="Short name within the family, what endpoints' `model` field takes.")
    architecture: str
    parameters: int
    vocab_size: int | None
    training_data: dict[str, Any]
    metrics: dict[str, Any]


class ModelList(BaseModel):
    object: Literal["list"] = "list"
    data: list[ModelCard]


@router.get("/health", response_model=Health, summary="The process is alive")
def health() -> Health:
    return Health()


@router.get("/ready", response_model=Readiness, summary="Ready once at least one model is loaded",
            responses={503: {"model": Readiness, "description": "No model is loaded"}})
def ready(registry: Registry = Depends(get_registry)) -> JSONResponse:
    body = readiness(registry)
    return JSONResponse(status_code=200 if body.ready else 503, content=body.model_dump())


def readiness(registry: Registry) -> Readiness:
    return Readiness(
        ready=bool(registry.models),
        checkpoints=[CheckpointState(id=s.id, status=s.status, reason=s.reason) for s in registry.statuses.values()],
    )


@v1_router.get("/models", response_model=ModelList, summary="Loaded models, in the OpenAI list shape")
def list_models(registry: Registry = Depends(get_registry)) -> ModelList:
    return ModelList(data=[_card(m) for m in registry.models])


def _card(model: LoadedModel) -> ModelCard:
    created = model.config.get("created")
    return ModelCard(
        id=model.id,
        created=int(datetime.fromisoformat(created).timestamp()) if created else 0,
        family=model.family,
        name=model.name,
        architecture=model.architecture,
        parameters=model.parameters,
        vocab_size=model.config.get("model", {}).get("vocab_size"),
        training_data=model.config.get("data", {}),
        metrics=model.metrics,
    )
