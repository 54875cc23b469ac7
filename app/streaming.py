"""Running a text generation for a route: in the pool, within the request timeout, for a client still there.

The pipeline's own stream (``TextGenerator.stream``) is pulled in the inference pool a few tokens at a
time. Between pulls the route looks again: past ``REQUEST_TIMEOUT`` the generation ends (504, or an error
event in a stream), and a client that has gone away stops it after the current pull instead of costing
the rest. A stream is admitted before its 200 is sent (429 otherwise), holds its place until its last
event, and always ends with ``data: [DONE]``, after an error event if something failed on the way (the text
decoded before a fault is sent first).
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass
from typing import Any

import anyio
from fastapi import HTTPException, Request
from fastapi.responses import StreamingResponse
from starlette.types import Receive, Scope, Send

from app.inference import Admission, InferencePool, InferenceTimeout
from models.pipelines.text_generation import Piece, TextGenerator
from models.sampling import SamplingParams

log = logging.getLogger("app.generate")

# How long one pull from the generator may run before the route checks on the client again.
PULL_SECONDS = 0.05

# An error event's data, from its message and OpenAI's error type.
ErrorEvent = Callable[[str, str], dict[str, Any]]


class Deadline:
    """When a request's time is up: REQUEST_TIMEOUT after it was admitted."""

    def __init__(self, seconds: float):
        self.seconds = seconds
        self.at = time.monotonic() + seconds

    def remaining(self) -> float:
        left = self.at - time.monotonic()
        if left <= 0:
            raise InferenceTimeout(self.seconds)
        return left


@dataclass
class Pull:
    """What one pull got: its pieces, whether the generator is exhausted, and the fault that ended it, if any."""

    pieces: list[Piece]
    done: bool
    fault: Exception | None = None


def _pull(stream: Iterator[Piece], seconds: float) -> Pull:
    """Pieces from the generator for up to ``seconds`` (at least one, unless it fails first)."""
    until = time.monotonic() + seconds
    pieces: list[Piece] = []
    try:
        for piece in stream:
            pieces.append(piece)
            if time.monotonic() >= until:
                return Pull(pieces, done=False)
    except Exception as e:  # the pieces decoded before a fault are still sent, then the fault
        return Pull(pieces, done=True, fault=e)
    return Pull(pieces, done=True)


async def pieces(request: Request, pool: InferencePool, generator: TextGenerator, prompt_ids: list[int],
                 params: SamplingParams, deadline: Deadline) -> AsyncIterator[Piece]:
    """The pipeline's pieces, computed in the pool a pull at a time, until done, past the deadline (504) or
    the client leaves. The caller holds the request's admission."""
    stream = generator.stream(prompt_ids, params)
    while True:
        pulled = await pool.call(lambda: _pull(stream, PULL_SECONDS), timeout=deadline.remaining())
        for piece in pulled.pieces:
            yield piece
        if pulled.fault is not None:
            raise pulled.fault
        if pulled.done:
            return
        if await request.is_disconnected():
            log.info("client disconnected; generation stopped")
            return


def sse(data: dict[str, Any] | str) -> bytes:
    text = data if isinstance(data, str) else json.dumps(data, ensure_ascii=False, allow_nan=False)
    return f"data: {text}\n\n".encode()


async def _events(events: AsyncIterator[dict[str, Any]], error: ErrorEvent) -> AsyncIterator[bytes]:
    """Each event as SSE; once the 200 is sent a failure can only be an event, and [DONE] always ends it."""
    try:
        async for event in events:
            yield sse(event)
    except HTTPException as e:  # the timeout, mid-stream
        yield sse(error(str(e.detail), "server_error" if e.status_code >= 500 else "invalid_request_error"))
    except anyio.get_cancelled_exc_class():
        log.info("stream cancelled (client disconnected); generation stopped")
        raise
    except Exception:  # a fault in model code must end the stream with a message, not a reset connection
        log.exception("generation failed mid-stream")
        yield sse(error("generation failed", "server_error"))
    yield sse("[DONE]")


class EventStream(StreamingResponse):
    """Server-Sent Events of one admitted generation; its place in the pool is given back when the
    response ends, however it ends."""

    def __init__(self, events: AsyncIterator[dict[str, Any]], admission: Admission, error: ErrorEvent):
        super().__init__(_events(events, error), media_type="text/event-stream",
                         headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})
        self.admission = admission

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            self.admission.release()
