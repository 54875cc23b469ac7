"""The app factory: settings, lifespan (load every checkpoint), middleware, routers."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import torch
from fastapi import Depends, FastAPI, Request
from fastapi.middleware.cors import CORSMiddleware
from fastapi.responses import FileResponse, JSONResponse, Response
from fastapi.staticfiles import StaticFiles
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from app.batching import Batching
from app.inference import InferencePool
from app.middleware import BodySizeLimitMiddleware, RequestIdMiddleware
from app.observability import Metrics, ObservabilityMiddleware
from app.registry import Registry, get_registry
from app.routers import classify, fill_mask, generate, system, translate, word2vec
from app.security import require_api_key
from app.settings import Settings, get_settings

log = logging.getLogger("app")

STATIC = Path(__file__).parent / "static"  # the playground: plain HTML, CSS and JS, no build step

DESCRIPTION = """
The classic lineage of neural language models — word2vec, seq2seq with attention, BERT, GPT, and the
MLP/CNN/RNN/LSTM/GRU models before them — each trained from scratch by this project's `training`
package and served here. Errors come as `{"detail": ...}`: 422 for malformed input, 404 for unknown
words, 429 when the service is at capacity, 503 for a model that is not loaded (the message names the
command that trains it).
"""


def create_app(settings: Settings | None = None) -> FastAPI:
    settings = settings or get_settings()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
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
                                          settings.request_timeout)
    app.state.metrics = metrics = Metrics()
    metrics.queue_depth.set_function(lambda: pool.queued)
    metrics.in_flight.set_function(lambda: pool.admitted)
    app.state.batching = Batching(pool, settings.max_batch_size, settings.batch_wait_ms,
                                  metrics.batch_size)

    app.add_middleware(BodySizeLimitMiddleware, max_bytes=settings.max_body_bytes)
    if settings.cors_origins:
        app.add_middleware(CORSMiddleware, allow_origins=settings.cors_origins, allow_methods=["GET", "POST"],
                           allow_headers=["Authorization", "Content-Type", "X-Request-ID"])
    app.add_middleware(ObservabilityMiddleware, metrics=metrics)
    app.add_middleware(RequestIdMiddleware)  # outermost, so every log line carries the id

    @app.exception_handler(Exception)
    async def unexpected_error(request: Request, exc: Exception) -> JSONResponse:
        log.exception("unhandled error on %s %s", request.method, request.url.path)
        return JSONResponse(status_code=500, content={"detail": "internal error"})

    @app.get("/metrics", tags=["system"], summary="Prometheus metrics", response_class=Response,
             responses={200: {"content": {CONTENT_TYPE_LATEST: {}}}})
    def prometheus_metrics() -> Response:
        return Response(generate_latest(metrics.registry), media_type=CONTENT_TYPE_LATEST)

    @app.post("/v1/admin/reload", tags=["system"], response_model=system.Readiness,
              dependencies=[Depends(require_api_key)],
              summary="Reload checkpoints from CHECKPOINT_DIR without a restart")
    async def reload(registry: Registry = Depends(get_registry)) -> system.Readiness:
        await pool.run(registry.load_all)
        return system.readiness(registry)

    # The playground page stays open like /docs; the /v1 calls it makes carry the key the user types in.
    @app.get("/", include_in_schema=False)
    def playground() -> FileResponse:
        return FileResponse(STATIC / "index.html")

    app.mount("/static", StaticFiles(directory=STATIC), name="static")

    protected = [Depends(require_api_key)]
    app.include_router(system.router)
    app.include_router(system.v1_router, dependencies=protected)
    app.include_router(word2vec.router, dependencies=protected)
    app.include_router(generate.router, dependencies=protected)
    app.include_router(fill_mask.router, dependencies=protected)
    app.include_router(translate.router, dependencies=protected)
    app.include_router(classify.router, dependencies=protected)
    return app


def __getattr__(name: str) -> FastAPI:
    """``app.main:app``, as ``uvicorn app.main:app`` asks for it: the app built from the environment's settings.

    Built on first access, so importing this module builds nothing (models load at startup in any case)."""
    if name != "app":
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    app = globals()["app"] = create_app()
    return app
