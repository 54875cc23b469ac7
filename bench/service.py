"""The real service in a subprocess, as the benchmarks and the integration tests start it: ``python -m app`` on a
free loopback port, the CPU time it spends, and a lean client for it."""

from __future__ import annotations

import asyncio
import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parent.parent


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Service:
    """The service in a subprocess serving ``checkpoint_dir`` on a free loopback port with the settings in
    ``env``, its output in ``log``; stopped with SIGTERM.

    ``command`` defaults to ``python -m app``; the Docker entrypoint script, or a bare ``uvicorn app.main:app``
    command line (which reads its port from UVICORN_PORT), are started the same way.
    """

    def __init__(self, checkpoint_dir: Path, log: Path, command: list[str] | None = None, **env: str):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = log
        environment = {**os.environ, "CHECKPOINT_DIR": str(checkpoint_dir), "HOST": "127.0.0.1",
                       "PORT": str(self.port), "UVICORN_PORT": str(self.port), **env}
        with open(log, "w") as out:
            self.process = subprocess.Popen(command or [sys.executable, "-m", "app"], cwd=ROOT, env=environment,
                                            stdout=out, stderr=subprocess.STDOUT)
        self._wait_until_up()

    def _wait_until_up(self, timeout: float = 120) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"server exited with {self.process.returncode}:\n{self.log.read_text()}")
            try:
                if httpx.get(self.url + "/health", timeout=1).status_code == 200:
                    return
            except httpx.TransportError:
                pass
            time.sleep(0.2)
        self.stop()
        raise RuntimeError(f"server did not come up in {timeout} s:\n{self.log.read_text()}")

    def cpu_seconds(self) -> float:
        """User and system CPU time the server process has used so far, all its threads together."""
        fields = Path(f"/proc/{self.process.pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")  # utime, stime

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.process.kill()


class Connection:
    """One keep-alive HTTP/1.1 connection sending JSON requests, as lean as a client can be.

    A load generator on the service's own cores takes CPU from it: httpx spends about 1.4 ms of CPU per
    request, more than the service spends on a batched fill-mask; this spends a tenth of that, so the
    figures measure the service rather than its client.
    """

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, host: str):
        self.reader, self.writer, self.host = reader, writer, host

    @classmethod
    async def open(cls, url: str) -> Connection:
        host, port = url.removeprefix("http://").split(":")
        reader, writer = await asyncio.open_connection(host, int(port))
        return cls(reader, writer, f"{host}:{port}")

    def request(self, path: str, body: dict) -> bytes:
        """The bytes of a POST of ``body`` as JSON (encode once, send many times)."""
        data = json.dumps(body).encode()
        return (f"POST {path} HTTP/1.1\r\nHost: {self.host}\r\nContent-Type: application/json\r\n"
                f"Content-Length: {len(data)}\r\n\r\n").encode() + data

    async def send(self, request: bytes) -> tuple[int, bytes]:
        """The status and body of the answer to one request made by ``request``."""
        self.writer.write(request)
        head = await self.reader.readuntil(b"\r\n\r\n")
        status = int(head[9:12])
        length = 0
        for line in head.split(b"\r\n")[1:]:
            name, _, value = line.partition(b":")
            if name.strip().lower() == b"content-length":
                length = int(value)
        return status, await self.reader.readexactly(length)

    async def close(self) -> None:
        self.writer.close()
        await self.writer.wait_closed()
