"""Fixtures: checkpoints trained with the tiny profile, and the real server started on them.

The server is uvicorn in a subprocess on a free loopback port, started once per test session.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest

ROOT = Path(__file__).resolve().parent.parent


def run_training(*args: str, timeout: float = 900) -> subprocess.CompletedProcess:
    """``python -m training ...`` in a subprocess, failing the test with its output on error."""
    env = {**os.environ, "PROGRESS": "0"}
    result = subprocess.run([sys.executable, "-m", "training", *args], cwd=ROOT, env=env,
                            capture_output=True, text=True, timeout=timeout)
    if result.returncode != 0:
        pytest.fail(f"python -m training {' '.join(args)} failed:\n{result.stdout}\n{result.stderr}")
    return result


class Interrupted(Exception):
    """Raised in place of a kill, right after the training loop has saved its state."""


@contextmanager
def interrupted_after_saving(monkeypatch: pytest.MonkeyPatch, when: Callable[[dict[str, Any]], bool]) -> Iterator[None]:
    """Inside the block, a training run stops right after saving a state for which ``when`` is true."""
    from training import loop

    save_state = loop.save_state

    def save_then_stop(directory: Path, dist: Any, state: dict[str, Any]) -> None:
        save_state(directory, dist, state)
        if when(state):
            raise Interrupted

    monkeypatch.setattr(loop, "save_state", save_then_stop)
    with pytest.raises(Interrupted):
        yield
    monkeypatch.setattr(loop, "save_state", save_state)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    """The service in a subprocess serving ``checkpoint_dir`` on a free loopback port; stopped with SIGTERM.

    ``command`` defaults to ``python -m app``; the Docker entrypoint script is started the same way.
    """

    def __init__(self, checkpoint_dir: Path, log_path: Path, command: list[str] | None = None, **env: str):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log_path = log_path
        environment = {**os.environ, "CHECKPOINT_DIR": str(checkpoint_dir), "HOST": "127.0.0.1",
                       "PORT": str(self.port), **env}
        self.log = open(log_path, "w")
        self.process = subprocess.Popen(command or [sys.executable, "-m", "app"], cwd=ROOT, env=environment,
                                        stdout=self.log, stderr=subprocess.STDOUT)
        self._wait_until_up()

    def _wait_until_up(self, timeout: float = 120) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"server exited with {self.process.returncode}:\n{self.log_path.read_text()}")
            try:
                if httpx.get(self.url + "/health", timeout=1).status_code == 200:
                    return
            except httpx.TransportError:
                pass
            time.sleep(0.2)
        self.stop()
        raise RuntimeError(f"server did not come up in {timeout} s:\n{self.log_path.read_text()}")

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.process.kill()
        self.log.close()


@pytest.fixture(scope="session")
def checkpoint_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Every default checkpoint, trained with the tiny profile.

    ``TEST_CHECKPOINT_DIR`` points at a directory trained earlier with ``python -m training all
    --profile tiny --out DIR`` to skip the training while iterating on tests.
    """
    if os.environ.get("TEST_CHECKPOINT_DIR"):
        return Path(os.environ["TEST_CHECKPOINT_DIR"])
    root = tmp_path_factory.mktemp("checkpoints")
    run_training("all", "--profile", "tiny", "--out", str(root))
    return root


@pytest.fixture(scope="session")
def server(checkpoint_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """Base URL of the real service with every tiny checkpoint loaded."""
    srv = Server(checkpoint_dir, tmp_path_factory.mktemp("logs") / "server.log")
    yield srv.url
    srv.stop()


@pytest.fixture(scope="session")
def client(server: str) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=server, timeout=60) as c:
        yield c


@pytest.fixture(scope="session")
def empty_client(tmp_path_factory: pytest.TempPathFactory) -> Iterator[httpx.Client]:
    """The service started on an empty checkpoint directory: nothing is loaded."""
    empty = tmp_path_factory.mktemp("no-checkpoints")
    srv = Server(empty, tmp_path_factory.mktemp("logs") / "empty-server.log")
    with httpx.Client(base_url=srv.url, timeout=30) as c:
        yield c
    srv.stop()


@pytest.fixture(scope="session")
def short_timeout_server(checkpoint_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """The service with REQUEST_TIMEOUT of half a second: long generations reach it."""
    srv = Server(checkpoint_dir, tmp_path_factory.mktemp("logs") / "short-timeout-server.log", REQUEST_TIMEOUT="0.5")
    yield srv.url
    srv.stop()


API_KEY = "s3cret-key"


@pytest.fixture(scope="session")
def keyed_server(checkpoint_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """The service with API_KEY set (to ``API_KEY``)."""
    srv = Server(checkpoint_dir, tmp_path_factory.mktemp("logs") / "keyed-server.log", API_KEY=API_KEY)
    yield srv.url
    srv.stop()
