"""Liveness, readiness, and the models in OpenAI's shapes: the list, and one model by id or short name."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Depends, Path
from fastapi.responses import JSONResponse
from pydantic import BaseModel, Field

from app.openai_api import OpenAIErrorResponse
from app.registry import LoadedModel, Registry, get_registry
from app.schemas import ERROR_DESCRIPTIONS, MODEL_NAME_LENGTH, MODEL_NAME_PATTERN

router = APIRouter(tags=["system"])
v1_router = APIRouter(prefix="/v1", tags=["system"],
                      responses={401: {"model": OpenAIErrorResponse, "description": ERROR_DESCRIPTIONS[401]}})


class Health(BaseModel):
    status: Literal["ok"] = "ok"


class CheckpointState(BaseModel):
    id: str
    status: Literal["loaded", "refused"]
    reason: str | None = None
    outdated: str | None = Field(None, description="Set when a default checkpoint was trained by an earlier recipe "
                                 "than today's: why, and the command that trains it again. It still serves.")


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


# These routes are async although they never wait, as the dependencies are (app.inference): FastAPI runs a
# plain ``def`` route in a worker thread and validates its reply in another, two hops that cost more than the
# route (measured in-process, CPU per request: /health 633 -> 201 us, /v1/models 1058 -> 515 us), and a probe
# answered by the event loop does not queue behind the threads.
@router.get("/health", response_model=Health, summary="The process is alive")
async def health() -> Health:
    return Health()


@router.get("/ready", response_model=Readiness, summary="Ready once at least one model is loaded",
            responses={503: {"model": Readiness, "description": "No model is loaded"}})
async def ready(registry: Registry = Depends(get_registry)) -> JSONResponse:
    body = readiness(registry)
    return JSONResponse(status_code=200 if body.ready else 503, content=body.model_dump())


def readiness(registry: Registry) -> Readiness:
    return Readiness(
        ready=bool(registry.models),
        checkpoints=[CheckpointState(id=s.id, status=s.status, reason=s.reason, outdated=s.outdated)
                     for s in registry.statuses.values()],
    )


@v1_router.get("/models", response_model=ModelList, summary="Loaded models, in the OpenAI list shape")
async def list_models(registry: Registry = Depends(get_registry)) -> ModelList:
    return ModelList(data=[_card(m) for m in registry.models])


@v1_router.get("/models/{model}", response_model=ModelCard, summary="One loaded model, by id or short name",
                responses={400: {"model": OpenAIErrorResponse, "description": "A malformed name, or a short name "
                                                                              "several models have"},
                           404: {"model": OpenAIErrorResponse, "description": "No model of that name"},
                           503: {"model": OpenAIErrorResponse, "description": ERROR_DESCRIPTIONS[503]}})
async def retrieve_model(model: Annotated[str, Path(min_length=1, max_length=MODEL_NAME_LENGTH,
                                                    pattern=MODEL_NAME_PATTERN,
                                                    description="A checkpoint id, or a short name.")],
                         registry: Registry = Depends(get_registry)) -> ModelCard:
    return _card(registry.find(model))


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
