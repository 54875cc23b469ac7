"""Limits at the connection level, which the app cannot set for itself: uvicorn's h11 protocol with
a bound on the request head, a deadline for receiving each request, and a bound on open connections.

uvicorn's default parser (httptools) buffers a request head of any size and has no deadline for the rest
of a request (measured: a 64 MiB header was answered 200, and a connection that sent nothing, or one
byte of its head or body every half second, was still open after the 12 s we watched). h11 refuses a
head over its buffer limit; the class below adds the rest:

- a request head over ``max_header_bytes`` gets 431 and the connection is closed;
- a request not received in full within ``read_timeout`` of its first byte (of the connection's opening,
  for its first request) is cut: 408 while its head is incomplete, a bare close once the app has it;
- a connection that would exceed ``max_connections`` open ones gets 429 with ``Retry-After`` to its
  first request and is closed, without the app seeing the request.

Idle time between the requests of a keep-alive connection is not a read: ``KEEP_ALIVE_TIMEOUT`` governs it.
"""

from __future__ import annotations

import asyncio
import json
import logging
from dataclasses import dataclass
from typing import Any

import h11
from starlette.types import Receive, Scope, Send
from uvicorn.config import Config
from uvicorn.protocols.http.h11_impl import H11Protocol
from uvicorn.server import ServerState

from app.settings import Settings, get_settings

log = logging.getLogger("app.connections")

RETRY_AFTER_SECONDS = 1  # the same hint as the inference pool's 429
# How long a refused connection is still read (and what it sends dropped) after its answer: closing a socket
# with unread data resets it, and the reset can reach the client before it has read the answer (measured:
# a client still sending a 64 MiB head got ECONNRESET instead of the 431).
LINGER_SECONDS = 2.0


@dataclass(frozen=True)
class ConnectionLimits:
    max_header_bytes: int
    read_timeout: float
    max_connections: int

    @classmethod
    def from_settings(cls, settings: Settings) -> ConnectionLimits:
        return cls(settings.max_header_bytes, settings.read_timeout, settings.max_connections)


def _json_response(status: int, reason: bytes, detail: str) -> bytes:
    """A whole HTTP/1.1 response that closes the connection, for answers given before h11 has a request."""
    body = json.dumps({"detail": detail}).encode()
    return (b"HTTP/1.1 %d %s\r\ncontent-type: application/json\r\ncontent-length: %d\r\nconnection: close\r\n\r\n%s"
            % (status, reason, len(body), body))


async def _too_many_connections(scope: Scope, receive: Receive, send: Send) -> None:
    """The ASGI app an over-limit connection gets instead of the service: it reads the request body first,
    so that closing the connection does not reset it before the client reads the answer."""
    while (await receive()).get("more_body"):
        pass
    body = json.dumps({"detail": "too many open connections; retry later"}).encode()
    await send({"type": "http.response.start", "status": 429,
                "headers": [(b"content-type", b"application/json"), (b"content-length", b"%d" % len(body)),
                            (b"retry-after", b"%d" % RETRY_AFTER_SECONDS), (b"connection", b"close")]})
    await send({"type": "http.response.body", "body": body})


class GuardedH11Protocol(H11Protocol):
    """uvicorn's h11 protocol with the limits above. ``limits`` defaults to the environment's settings, so
    ``uvicorn app.main:app --http app.connections:GuardedH11Protocol`` applies them as ``python -m app`` does."""

    def __init__(self, config: Config, server_state: ServerState, app_state: dict[str, Any],
                 _loop: asyncio.AbstractEventLoop | None = None, *, limits: ConnectionLimits | None = None) -> None:
        super().__init__(config, server_state, app_state, _loop)
        self.limits = limits or ConnectionLimits.from_settings(get_settings())
        self.conn = h11.Connection(h11.SERVER, max_incomplete_event_size=self.limits.max_header_bytes)
        self.read_deadline: asyncio.TimerHandle | None = None
        self.lingering = False

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)  # counts this connection in self.connections
        if len(self.connections) > self.limits.max_connections:
            log.warning("connection %d over MAX_CONNECTIONS=%d: its request gets 429",
                        len(self.connections), self.limits.max_connections)
            self.app = _too_many_connections
        self._arm_read_deadline()  # the first request's clock starts when the connection opens

    def data_received(self, data: bytes) -> None:
        if self.lingering:
            return
        if self.read_deadline is None:
            self._arm_read_deadline()  # the first byte of the next request on a keep-alive connection
        super().data_received(data)
        if not self._awaiting_request_bytes():
            self._cancel_read_deadline()

    def on_response_complete(self) -> None:
        super().on_response_complete()  # arms the keep-alive timeout; may parse a pipelined request
        if not self._awaiting_request_bytes():
            self._cancel_read_deadline()
        elif self.read_deadline is None:
            self._arm_read_deadline()  # a pipelined request partly in the buffer

    def connection_lost(self, exc: Exception | None) -> None:
        self._cancel_read_deadline()
        super().connection_lost(exc)

    def send_400_response(self, msg: str) -> None:
        """uvicorn answers every parse error with 400; a head over the limit (h11 keeps it buffered) gets 431."""
        if len(self.conn.trailing_data[0]) > self.limits.max_header_bytes:
            detail = f"request head larger than MAX_HEADER_BYTES={self.limits.max_header_bytes} bytes"
            self._answer_and_close(_json_response(431, b"Request Header Fields Too Large", detail))
        else:
            super().send_400_response(msg)

    def _awaiting_request_bytes(self) -> bool:
        """Whether a request is only partly in: nothing yet on a new connection, a head begun, a body unfinished.

        Not between the requests of a keep-alive connection, nor while a whole request is being answered."""
        state = self.conn.their_state
        if state is h11.SEND_BODY:
            return True
        return state is h11.IDLE and (self.cycle is None or bool(self.conn.trailing_data[0]))

    def _arm_read_deadline(self) -> None:
        self._cancel_read_deadline()
        self.read_deadline = self.loop.call_later(self.limits.read_timeout, self._read_timed_out)

    def _cancel_read_deadline(self) -> None:
        if self.read_deadline is not None:
            self.read_deadline.cancel()
            self.read_deadline = None

    def _read_timed_out(self) -> None:
        self.read_deadline = None
        if self.transport.is_closing() or not self._awaiting_request_bytes():
            return
        if self.conn.their_state is h11.IDLE:
            log.info("closed a connection whose request head was incomplete after READ_TIMEOUT=%g s",
                     self.limits.read_timeout)
            detail = f"request not received within READ_TIMEOUT={self.limits.read_timeout:g} s"
            self._answer_and_close(_json_response(408, b"Request Timeout", detail))
        else:  # the app holds the request: closing makes its next read a disconnect
            log.info("closed a connection whose request body was incomplete after READ_TIMEOUT=%g s",
                     self.limits.read_timeout)
            self.transport.close()

    def _answer_and_close(self, response: bytes) -> None:
        """Send a final answer and end the connection: our side at once, the socket once the client has had
        LINGER_SECONDS to stop sending (the parser is done with this connection: what arrives is dropped)."""
        self._cancel_read_deadline()
        self.transport.write(response)
        if self.transport.can_write_eof():
            self.transport.write_eof()
        self.lingering = True
        self.loop.call_later(LINGER_SECONDS, self.transport.close)
