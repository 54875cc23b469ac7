"""Every error the service answers, in one of two shapes, decided by the route.

The project's own routes answer FastAPI's ``{"detail": ...}``; the OpenAI-compatible routes
(``OPENAI_ROUTES``) answer OpenAI's ``{"error": {message, type, param, code}}`` with OpenAI's statuses
(400 where the project's routes say 422), so OpenAI clients raise their usual exceptions. The middleware
(401, 413), the request validation (malformed bodies), the pipelines (``InvalidInput``) and the routes
(``HTTPException``) all answer through ``error_response``, so no error escapes in the wrong shape.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from models.pipelines.errors import InvalidInput

log = logging.getLogger("app")

# The routes that speak OpenAI's dialect (vLLM's, for tokenize and detokenize), errors included.
OPENAI_ROUTES = frozenset({"/v1/completions", "/v1/chat/completions", "/v1/embeddings", "/v1/models", "/tokenize",
                           "/detokenize"})

# OpenAI's error type and code for each status it answers. A 400 from the request schema itself says which
# rule with its code ("unknown_parameter", "invalid_value"); one the schema cannot state has none.
OPENAI_KINDS: dict[int, tuple[str, str | None]] = {
    400: ("invalid_request_error", None),
    401: ("authentication_error", "invalid_api_key"),
    404: ("invalid_request_error", "model_not_found"),
    413: ("invalid_request_error", "request_too_large"),
    429: ("rate_limit_error", "rate_limit_exceeded"),
    503: ("server_error", "model_not_loaded"),
    504: ("server_error", "timeout"),
}


class ErrorJSON(JSONResponse):
    """A JSON error body that always encodes: non-ASCII escaped, so no character can break it."""

    def render(self, content: Any) -> bytes:
        return json.dumps(content, ensure_ascii=True, separators=(",", ":")).encode("ascii")


def is_openai(path: str) -> bool:
    return path in OPENAI_ROUTES or path.startswith("/v1/models/")


def openai_error(status: int, message: str, param: str | None = None, code: str | None = None,
                 headers: dict[str, str] | None = None) -> JSONResponse:
    status = 400 if status == 422 else status
    kind, default_code = OPENAI_KINDS.get(status, ("server_error" if status >= 500 else "invalid_request_error", None))
    return ErrorJSON({"error": {"message": message, "type": kind, "param": param, "code": code or default_code}},
                     status_code=status, headers=headers)


def error_response(path: str, status: int, detail: str | list[dict[str, Any]], *, param: str | None = None,
                   headers: dict[str, str] | None = None) -> JSONResponse:
    """The error in the shape of the route at ``path``."""
    if not is_openai(path):
        return ErrorJSON({"detail": detail}, status_code=status, headers=headers)
    if isinstance(detail, str):
        return openai_error(status, detail, param, headers=headers)
    unknown = detail[0]["type"] == "extra_forbidden"
    return openai_error(status, "; ".join(_describe(e) for e in detail), param,
                        "unknown_parameter" if unknown else "invalid_value", headers)


def field_errors(errors: Sequence[Any]) -> list[dict[str, Any]]:
    """Validation errors as ``{type, loc, msg}``: the offending input is not echoed (it may be a megabyte,
    a NaN or a lone surrogate, none of which belongs in a reply)."""
    out = []
    for error in errors:
        message = error.get("msg", "invalid")
        if error.get("type") == "json_invalid":  # the decoder's own reason, e.g. where the body stops being UTF-8
            message = f"{message}: {error.get('ctx', {}).get('error', '')}"
        out.append({"type": str(error.get("type", "value_error")), "loc": [_part(p) for p in error.get("loc", ())],
                    "msg": str(message)})
    return out


def _part(part: Any) -> str | int:
    return part if isinstance(part, int) else str(part)


def _field(error: dict[str, Any]) -> str | None:
    names = [str(p) for p in error["loc"] if p != "body" and not isinstance(p, int)]
    return names[0] if names else None


def _describe(error: dict[str, Any]) -> str:
    if error["type"] == "extra_forbidden":  # OpenAI's wording for a field outside its schema
        return f"Unrecognized request argument supplied: {_field(error)}"
    where = ".".join(str(p) for p in error["loc"] if p != "body")
    return f"{where}: {error['msg']}" if where else error["msg"]


def install(app: FastAPI) -> None:
    """One handler per kind of error; each answers in the route's shape."""

    @app.exception_handler(RequestValidationError)
    async def malformed(request: Request, exc: RequestValidationError) -> JSONResponse:
        errors = field_errors(exc.errors())
        return error_response(request.url.path, 422, errors, param=_field(errors[0]) if errors else None)

    @app.exception_handler(InvalidInput)
    async def unanswerable(request: Request, exc: InvalidInput) -> JSONResponse:
        return error_response(request.url.path, 422, str(exc))

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        return error_response(request.url.path, exc.status_code, str(exc.detail), param=getattr(exc, "param", None),
                              headers=exc.headers)

    @app.exception_handler(Exception)
    async def unexpected(request: Request, exc: Exception) -> JSONResponse:
        log.exception("unhandled error on %s %s", request.method, request.url.path)
        return error_response(request.url.path, 500, "internal error")
