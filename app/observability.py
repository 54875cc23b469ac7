"""Prometheus metrics and JSON logs, both carrying what a request was about (route, model, id)."""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable
from contextvars import ContextVar
from dataclasses import dataclass

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from app.middleware import request_id

# The model a request used, filled in by the registry's lookup; a dict so a lookup made in a
# worker thread (which runs in a copy of the context) still reaches the request's own record.
request_labels: ContextVar[dict[str, str] | None] = ContextVar("request_labels", default=None)

access_log = logging.getLogger("app.access")


@dataclass(frozen=True)
class GenerationMetrics:
    """Where a language model's decode loop reports: seconds from a request's admission to its first token,
    seconds between its tokens, and the rows (samples) each decode step advanced."""

    first_token: Callable[[float], None]
    between_tokens: Callable[[float], None]
    step_rows: Callable[[float], None]


class Metrics:
    """One set of collectors per app, so several apps in one process (tests) do not collide."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.requests = Counter("lineage_requests", "HTTP requests answered", ["route", "method", "status", "model"],
                                registry=self.registry)
        self.errors = Counter("lineage_errors", "HTTP requests answered with a 4xx or 5xx status",
                              ["route", "status", "model"], registry=self.registry)
        self.latency = Histogram("lineage_request_seconds", "Time to answer a request", ["route", "model"],
                                 buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60),
                                 registry=self.registry)
        self.generated_tokens = Counter("lineage_generated_tokens", "Tokens produced by text generation",
                                        ["model"], registry=self.registry)
        self.queue_depth = Gauge("lineage_inference_queue_depth", "Inferences waiting for a worker slot",
                                 registry=self.registry)
        self.in_flight = Gauge("lineage_inferences_admitted", "Inferences running or waiting",
                               registry=self.registry)
        self.loaded_models = Gauge("lineage_loaded_models", "Models loaded and served", registry=self.registry)
        self.batch_size = Histogram("lineage_batch_size", "Requests answered together by one batched forward pass",
                                    ["model"], buckets=(1, 2, 4, 8, 16, 32, 64, 128), registry=self.registry)
        self.time_to_first_token = Histogram(
            "lineage_time_to_first_token_seconds", "From a generation's admission to its first token", ["model"],
            buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60), registry=self.registry)
        self.time_between_tokens = Histogram(
            "lineage_time_between_tokens_seconds", "Between consecutive tokens of one generation", ["model"],
            buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5), registry=self.registry)

        self.decode_rows = Histogram("lineage_decode_rows", "Rows (samples of all requests) one decode step advanced",
                                     ["model"], buckets=(1, 2, 4, 8, 16, 32, 64, 128), registry=self.registry)

    def generation(self, model_id: str) -> GenerationMetrics:
        return GenerationMetrics(self.time_to_first_token.labels(model_id).observe,
                                 self.time_between_tokens.labels(model_id).observe,
                                 self.decode_rows.labels(model_id).observe)


def note_model(model_id: str) -> None:
    """Record which model the current request uses (for its metrics and log line)."""
    labels = request_labels.get()
    if labels is not None:
        labels.setdefault("model", model_id)


class ObservabilityMiddleware:
    """Count, time and log every HTTP request by route template, status and model."""

    def __init__(self, app: ASGIApp, metrics: Metrics):
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        labels: dict[str, str] = {}
        token = request_labels.set(labels)
        status = 500
        started = time.perf_counter()

        async def record_status(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, record_status)
        finally:
            seconds = time.perf_counter() - started
            route = getattr(scope.get("route"), "path", "unmatched")
            model = labels.get("model", "")
            self.metrics.requests.labels(route, scope["method"], str(status), model).inc()
            self.metrics.latency.labels(route, model).observe(seconds)
            if status >= 400:
                self.metrics.errors.labels(route, str(status), model).inc()
            access_log.info("%s %s %d", scope["method"], scope["path"], status,
                            extra={"route": route, "status": status, "model": model,
                                   "duration_ms": round(seconds * 1000, 2)})
            request_labels.reset(token)


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time, level, logger, message, request id and any extra fields."""

    EXTRA_FIELDS = ("route", "status", "model", "duration_ms")

    def format(self, record: logging.LogRecord) -> str:
        entry = {
            "time": self.formatTime(record, "%Y-%m-%dT%H:%M:%S"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
            "request_id": request_id.get(),
        }
        entry.update({k: getattr(record, k) for k in self.EXTRA_FIELDS if hasattr(record, k)})
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return json.dumps(entry, ensure_ascii=False)


def configure_logging(json_logs: bool) -> None:
    handler = logging.StreamHandler()
    handler.setFormatter(JsonFormatter() if json_logs else
                         logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(logging.INFO)
