"""The app factory: settings, lifespan (load every checkpoint), middleware, error handlers, routers."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import torch
from fastapi import Depends, FastAPI
from fastapi.middleware.cors import CORSMiddleware
from fastapi.responses import FileResponse, Response
from fastapi.security import HTTPBearer
from fastapi.staticfiles import StaticFiles
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from app import errors, memory
from app.batching import Batching
from app.inference import InferencePool
from app.middleware import ApiKeyMiddleware, BodySizeLimitMiddleware, RequestIdMiddleware
from app.observability import Metrics, ObservabilityMiddleware
from app.registry import Registry, get_registry
from app.routers import (
    attention,
    chat,
    classify,
    completions,
    embeddings,
    fill_mask,
    generate,
    system,
    tokenize,
    translate,
    word2vec,
)
from app.scheduler import Scheduler
from app.schemas import ERROR_DESCRIPTIONS, Error
from app.settings import Settings, get_settings

log = logging.getLogger("app")

STATIC = Path(__file__).parent / "static"  # the playground: plain HTML, CSS and JS, no build step

DESCRIPTION = """
The classic lineage of neural language models — word2vec, seq2seq with attention, BERT, GPT, and the
MLP/CNN/RNN/LSTM/GRU models before them — each trained from scratch by this project's `training`
package and served here. Errors come as `{"detail": ...}`: 422 for malformed input (the message names the
field or the limit), 404 for unknown words or models, 413 for a body too large, 429 when the service is at
capacity, 503 for a model that is not loaded (the message names the command that trains it), 504 past the
request timeout. The OpenAI-compatible routes (`/v1/completions`, `/v1/chat/completions`, `/v1/embeddings`,
`/v1/models`, and vLLM's `/tokenize` and `/detokenize`) answer OpenAI's `{"error": {...}}` instead, with
OpenAI's statuses.
"""

# Declares the bearer scheme in the OpenAPI document of a service with API_KEY, so /docs offers to send the
# key; the key itself is checked by ApiKeyMiddleware, before the body is read.
bearer = HTTPBearer(auto_error=False, description="The service's API_KEY.")


def create_app(settings: Settings | None = None) -> FastAPI:
    settings = settings or get_settings()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        memory.limit_arenas()
        if settings.torch_threads:
            torch.set_num_threads(settings.torch_threads)
        registry = Registry(settings.checkpoint_dir, torch.device(settings.device))
        registry.load_all()
        app.state.registry = registry
        metrics.loaded_models.set_function(lambda: len(registry.models))
        log.info("%d models loaded from %s", len(registry.models), settings.checkpoint_dir)
        yield

    app = FastAPI(title="Lineage", version="0.1.0", description=DESCRIPTION, lifespan=lifespan)
    app.state.settings = settings
    app.state.pool = pool = InferencePool(settings.max_concurrent_inferences, settings.max_queued_inferences,
                                          settings.request_timeout, on_idle=memory.IdleTrimmer())
    app.state.metrics = metrics = Metrics()
    metrics.queue_depth.set_function(lambda: pool.queued)
    metrics.in_flight.set_function(lambda: pool.admitted)
    app.state.batching = Batching(pool, settings.max_batch_size, settings.batch_wait_ms, metrics.batch_size)
    app.state.scheduler = Scheduler(pool, settings.max_decode_batch, metrics.generation)

    # Added innermost first: a request meets the id, the metrics, CORS, the key, then the body limit.
    app.add_middleware(BodySizeLimitMiddleware, max_bytes=settings.max_body_bytes)
    if settings.api_key:
        app.add_middleware(ApiKeyMiddleware, api_key=settings.api_key)
    if settings.cors_origins:
        app.add_middleware(CORSMiddleware, allow_origins=settings.cors_origins, allow_methods=["GET", "POST"],
                           allow_headers=["Authorization", "Content-Type", "X-Request-ID"])
    app.add_middleware(ObservabilityMiddleware, metrics=metrics)
    app.add_middleware(RequestIdMiddleware)  # outermost, so every log line carries the id
    errors.install(app)

    @app.get("/metrics", tags=["system"], summary="Prometheus metrics", response_class=Response,
             responses={200: {"content": {CONTENT_TYPE_LATEST: {}}}})
    def prometheus_metrics() -> Response:
        return Response(generate_latest(metrics.registry), media_type=CONTENT_TYPE_LATEST)

    protected = [Depends(bearer)] if settings.api_key else []

    @app.post("/v1/admin/reload", tags=["system"], response_model=system.Readiness, dependencies=protected,
              responses={401: {"model": Error, "description": ERROR_DESCRIPTIONS[401]},
                         429: {"model": Error, "description": ERROR_DESCRIPTIONS[429]},
                         504: {"model": Error, "description": ERROR_DESCRIPTIONS[504]}},
              summary="Reload checkpoints from CHECKPOINT_DIR without a restart")
    async def reload(registry: Registry = Depends(get_registry)) -> system.Readiness:
        await pool.run(registry.load_all)
        return system.readiness(registry)

    # The playground page stays open like /docs; the /v1 calls it makes carry the key the user types in.
    @app.get("/", include_in_schema=False)
    def playground() -> FileResponse:
        return FileResponse(STATIC / "index.html")

    app.mount("/static", StaticFiles(directory=STATIC), name="static")

    app.include_router(system.router)
    for router in (system.v1_router, word2vec.router, generate.router, completions.router, chat.router,
                   tokenize.router, embeddings.router, fill_mask.router, translate.router, classify.router,
                   attention.router):
        app.include_router(router, dependencies=protected)
    return app


def __getattr__(name: str) -> FastAPI:
    """``app.main:app``, as ``uvicorn app.main:app`` asks for it: the app built from the environment's settings.

    Built on first access, so importing this module builds nothing (models load at startup in any case)."""
    if name != "app":
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    app = globals()["app"] = create_app()
    return app
