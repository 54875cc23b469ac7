"""Running a text generation for a route: batched with others, within the request timeout, for a client still there.

A generation joins its model's running batch (``app.scheduler``) and its pieces come back as each decode
step ends. Between them the route looks again: past ``REQUEST_TIMEOUT`` the generation ends (504, or an
error event in a stream), and a client that has gone away ends it; either way its rows leave the batch
before the next step. A stream is admitted before its 200 is sent (429 otherwise), holds its place until
its last event, and always ends with ``data: [DONE]``, after an error event if something failed on the way
(the text decoded before a fault is sent first).

``pieces`` is what a route calls to generate: one request's ``Piece``s, from any language model, for one
prompt or several.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import AsyncIterator, Callable
from contextlib import aclosing
from typing import Any

import anyio
from fastapi import HTTPException, Request
from fastapi.responses import StreamingResponse
from starlette.types import Receive, Scope, Send

from app.inference import Admission, InferenceTimeout
from app.registry import Served
from app.scheduler import Scheduler, each_piece
from models.pipelines.text_generation import Piece, TextGenerator
from models.sampling import SamplingParams

log = logging.getLogger("app.generate")

# How often, at most, a plain generation asks whether its client is still there, when a step's pieces arrive
# (a look costs the event loop some microseconds; steps come every few milliseconds). A stream's disconnect
# cancels it at once instead (Starlette listens for it).
CHECK_SECONDS = 0.05

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


async def pieces(request: Request | None, scheduler: Scheduler, served: Served[TextGenerator],
                 prompts: list[list[int]], params: SamplingParams,
                 deadline: Deadline) -> AsyncIterator[tuple[int, Piece]]:
    """The pieces of one request's generations, one per prompt, decoded together in its model's batch: each
    with its prompt's index, as they come, until all are done, past the deadline (504) or the client leaves.
    The caller holds the request's admission. A plain reply passes its ``request``, whose client is looked for
    now and then; a stream passes None: Starlette listens for its client leaving and cancels it (a look here
    could take that news from Starlette's listener)."""
    sequences = scheduler.submit(served.id, served.pipeline, prompts, params, deadline.remaining())
    checked = time.monotonic()
    try:
        async with aclosing(each_piece(sequences)) as decoded:
            async for index, piece in decoded:
                yield index, piece
                if request is not None and time.monotonic() - checked >= CHECK_SECONDS:
                    checked = time.monotonic()
                    if await request.is_disconnected():
                        log.info("client disconnected; generation stopped")
                        return
    finally:
        for sequence in sequences:
            sequence.cancel()


def sse(data: dict[str, Any] | str) -> bytes:
    text = data if isinstance(data, str) else json.dumps(data, ensure_ascii=False, allow_nan=False)
    return f"data: {text}\n\n".encode()


async def _events(events: AsyncIterator[dict[str, Any]], error: ErrorEvent, admission: Admission
                  ) -> AsyncIterator[bytes]:
    """Each event as SSE; once the 200 is sent a failure can only be an event, and [DONE] always ends it.

    The place in the pool is given back once [DONE] is sent, before the response's last (empty) chunk: a
    client that sends its next request as soon as this response ends finds the place free (measured: with
    the place given back after the last chunk, 16 clients streaming back to back were now and then over
    their 20 places, and got 429)."""
    try:
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
    finally:
        admission.release()


class EventStream(StreamingResponse):
    """Server-Sent Events of one admitted generation; its place in the pool is given back when the
    response ends, however it ends."""

    def __init__(self, events: AsyncIterator[dict[str, Any]], admission: Admission, error: ErrorEvent):
        super().__init__(_events(events, error, admission), media_type="text/event-stream",
                         headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})
        self.admission = admission

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            self.admission.release()
