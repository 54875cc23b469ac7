"""Connection-level limits, against a real server with a short READ_TIMEOUT and a small MAX_CONNECTIONS:
oversized request heads, requests that never arrive in full, and more connections than the limit."""

from __future__ import annotations

import socket
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from .conftest import Service

READ_TIMEOUT = 2.0
MAX_CONNECTIONS = 6
BATCH_WAIT_S = 2 * READ_TIMEOUT  # every fill-mask answer then takes longer than the read timeout
HEALTH = b"GET /health HTTP/1.1\r\nHost: test\r\n\r\n"


@pytest.fixture(scope="module")
def guarded(checkpoint_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Service]:
    """The service with tight connection limits, and fill-mask slowed down by a long batching window."""
    server = Service(checkpoint_dir, tmp_path_factory.mktemp("logs") / "guarded.log", READ_TIMEOUT=str(READ_TIMEOUT),
                    MAX_CONNECTIONS=str(MAX_CONNECTIONS), MAX_HEADER_BYTES="16384",
                    BATCH_WAIT_MS=str(BATCH_WAIT_S * 1000))
    yield server
    server.stop()


def connect(server: Service) -> socket.socket:
    return socket.create_connection(("127.0.0.1", server.port), timeout=READ_TIMEOUT + 10)


def read_response(sock: socket.socket) -> bytes:
    """One whole response (head and a Content-Length body), or what came before the server closed."""
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(65536)
        if not chunk:
            return data
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    length = next(int(line.split(b":")[1]) for line in head.lower().split(b"\r\n")
                  if line.startswith(b"content-length:"))
    while len(body) < length:
        body += sock.recv(65536)
    return head + b"\r\n\r\n" + body


def read_until_closed(sock: socket.socket) -> tuple[bytes, float]:
    """Everything the server sends until it closes the connection, and how long that took."""
    started = time.monotonic()
    data = b""
    while chunk := sock.recv(65536):
        data += chunk
    return data, time.monotonic() - started


def resident_kib(server: Service) -> int:
    status = Path(f"/proc/{server.process.pid}/status").read_text()
    return int(next(line.split()[1] for line in status.splitlines() if line.startswith("VmRSS:")))


def test_a_64_mib_request_head_gets_431_without_being_buffered(guarded: Service):
    """The client sends its whole head before reading, as a simple client does: the server keeps reading and
    dropping it for a while after answering, so that the client is not reset before it reads the 431."""
    before = resident_kib(guarded)
    with connect(guarded) as sock:
        sock.sendall(b"GET /health HTTP/1.1\r\nHost: test\r\nX-Big: ")
        for _ in range(64):
            sock.sendall(b"a" * (1 << 20))
        sock.sendall(b"\r\n\r\n")
        reply, _ = read_until_closed(sock)
    assert reply.startswith(b"HTTP/1.1 431 "), reply[:200]
    assert b"MAX_HEADER_BYTES=16384" in reply
    assert resident_kib(guarded) - before < 16 * 1024, "the server buffered the head"


def test_a_connection_that_sends_nothing_is_closed_after_the_read_timeout(guarded: Service):
    with connect(guarded) as sock:
        reply, waited = read_until_closed(sock)
    assert READ_TIMEOUT - 0.2 < waited < READ_TIMEOUT + 3
    assert reply.startswith(b"HTTP/1.1 408 "), reply


def trickle(sock: socket.socket, data: bytes) -> tuple[bytes, float]:
    """Send ``data`` one byte every 0.1 s (each alone well within the read timeout) until the server cuts the
    connection; what it answered, and the seconds from the first byte until it closed."""
    started = time.monotonic()
    try:
        for byte in data:
            sock.send(bytes([byte]))
            time.sleep(0.1)
    except OSError:
        pass
    reply, _ = read_until_closed(sock)
    return reply, time.monotonic() - started


def test_a_trickled_request_head_is_cut_at_the_read_timeout(guarded: Service):
    with connect(guarded) as sock:
        reply, waited = trickle(sock, HEALTH[:-2])
    assert waited < READ_TIMEOUT + 3
    assert reply.startswith(b"HTTP/1.1 408 "), reply


def test_a_trickled_request_body_is_cut_at_the_read_timeout(guarded: Service):
    body = b'{"word_a": "king", "word_b": "queen"}'
    head = (b"POST /v1/word2vec/similarity HTTP/1.1\r\nHost: test\r\nContent-Type: application/json\r\n"
            b"Content-Length: %d\r\n\r\n" % len(body))
    with connect(guarded) as sock:
        sock.sendall(head)
        reply, waited = trickle(sock, body)
    assert waited < READ_TIMEOUT + 3
    assert reply == b"", reply  # the app had the request: the connection is cut, not answered


def test_a_slow_request_within_the_read_timeout_is_answered(guarded: Service):
    with connect(guarded) as sock:
        for part in (HEALTH[:10], HEALTH[10:25], HEALTH[25:]):
            sock.sendall(part)
            time.sleep(READ_TIMEOUT / 4)
        assert read_response(sock).startswith(b"HTTP/1.1 200 ")


def test_an_answer_slower_than_the_read_timeout_is_not_cut(guarded: Service):
    """The read timeout bounds receiving a request, not answering it."""
    body = b'{"text": "to be or not to [MASK]"}'
    with connect(guarded) as sock:
        started = time.monotonic()
        sock.sendall(b"POST /v1/fill-mask HTTP/1.1\r\nHost: test\r\nContent-Type: application/json\r\n"
                     b"Content-Length: %d\r\n\r\n%s" % (len(body), body))
        reply = read_response(sock)
        assert time.monotonic() - started > READ_TIMEOUT
    assert reply.startswith(b"HTTP/1.1 200 "), reply[:300]


def test_an_idle_keep_alive_connection_outlives_the_read_timeout(guarded: Service):
    with connect(guarded) as sock:
        sock.sendall(HEALTH)
        assert read_response(sock).startswith(b"HTTP/1.1 200 ")
        time.sleep(READ_TIMEOUT + 1)  # idle between requests: KEEP_ALIVE_TIMEOUT (75 s) applies, not READ_TIMEOUT
        sock.sendall(HEALTH)
        assert read_response(sock).startswith(b"HTTP/1.1 200 ")


def test_connections_past_the_limit_get_429_with_retry_after(guarded: Service):
    held = [connect(guarded) for _ in range(MAX_CONNECTIONS)]
    try:
        for sock in held:  # each one answered, then idle on keep-alive
            sock.sendall(HEALTH)
            assert read_response(sock).startswith(b"HTTP/1.1 200 ")
        with connect(guarded) as extra:
            extra.sendall(HEALTH)
            reply, _ = read_until_closed(extra)
        head = reply.split(b"\r\n\r\n")[0].lower()
        assert reply.startswith(b"HTTP/1.1 429 "), reply
        assert b"retry-after: 1" in head and b"connection: close" in head
        assert b"too many open connections" in reply
        held.pop().close()
        time.sleep(0.2)  # the server notices the close
        with connect(guarded) as again:
            again.sendall(HEALTH)
            assert read_response(again).startswith(b"HTTP/1.1 200 ")
    finally:
        for sock in held:
            sock.close()
