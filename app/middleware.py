"""ASGI middleware: request ids, the API key, and the request-body size limit.

The key and the size are checked here, before any route reads the body: a request without the key is
answered 401 whatever its body, and a body over the limit 413 before the route starts an answer of its
own, with a Content-Length or chunked.
"""

from __future__ import annotations

import secrets
import uuid
from contextvars import ContextVar

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from app.errors import error_response

request_id: ContextVar[str] = ContextVar("request_id", default="-")


class RequestIdMiddleware:
    """Accept ``X-Request-ID`` (or make one), expose it to logs, echo it on the response."""

    def __init__(self, app: ASGIApp):
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        given = dict(scope["headers"]).get(b"x-request-id", b"").decode("latin-1")
        rid = given if 0 < len(given) <= 128 and given.isprintable() else uuid.uuid4().hex
        token = request_id.set(rid)

        async def send_with_id(message: Message) -> None:
            if message["type"] == "http.response.start":
                message.setdefault("headers", [])
                message["headers"] = [*message["headers"], (b"x-request-id", rid.encode("latin-1"))]
            await send(message)

        try:
            await self.app(scope, receive, send_with_id)
        finally:
            request_id.reset(token)


# Routes outside /v1 that the key guards like every /v1 route: vLLM's names for them have no /v1.
KEYED_PATHS = frozenset({"/tokenize", "/detokenize"})


class ApiKeyMiddleware:
    """401 for a /v1 request (or ``KEYED_PATHS``) without ``Authorization: Bearer <API_KEY>``, before its
    body is read.

    The probes, /metrics, the manual (/docs, /openapi.json) and the playground page stay open.
    """

    def __init__(self, app: ASGIApp, api_key: str):
        self.app = app
        self.expected = api_key.encode()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        keyed = scope.get("path", "").startswith("/v1/") or scope.get("path") in KEYED_PATHS
        if scope["type"] != "http" or not keyed or scope["method"] == "OPTIONS":
            await self.app(scope, receive, send)
            return
        scheme, _, credentials = dict(scope["headers"]).get(b"authorization", b"").partition(b" ")
        if scheme.lower() == b"bearer" and secrets.compare_digest(credentials.strip(), self.expected):
            await self.app(scope, receive, send)
            return
        response = error_response(scope["path"], 401, "missing or wrong API key (Authorization: Bearer <key>)",
                                  headers={"WWW-Authenticate": "Bearer"})
        await response(scope, receive, send)


class BodySizeLimitMiddleware:
    """413 for a body over ``max_bytes``, by its Content-Length or by counting a chunked body.

    The body is read in full here, up to the limit, and handed on to the route as it arrived; a body over
    the limit is answered before the route runs, so no route ever starts an answer it cannot finish.
    """

    def __init__(self, app: ASGIApp, max_bytes: int):
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        length = dict(scope["headers"]).get(b"content-length")
        if length is not None and length.isdigit() and int(length) > self.max_bytes:
            await self._reject(scope, receive, send)
            return
        chunks: list[bytes] = []
        received = 0
        while True:
            message = await receive()
            if message["type"] != "http.request":  # the client left before its body was complete
                return
            chunk = message.get("body", b"")
            received += len(chunk)
            if received > self.max_bytes:
                await self._reject(scope, receive, send)
                return
            chunks.append(chunk)
            if not message.get("more_body", False):
                break
        body = b"".join(chunks)
        replayed = False

        async def replay() -> Message:
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()  # after the body: the disconnect, when it comes

        await self.app(scope, replay, send)

    async def _reject(self, scope: Scope, receive: Receive, send: Send) -> None:
        response = error_response(scope["path"], 413, f"request body is larger than {self.max_bytes} bytes "
                                                      "(MAX_BODY_BYTES)")
        await response(scope, receive, send)
