"""Fixtures: checkpoints trained with the tiny profile, and the real server started on them.

The server is the real service in a subprocess on a free loopback port (``bench/service.py``, as the
benchmarks start it), started once per test session.
"""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

# The test-only dependencies (the `dev` extra) are all needed: a missing one stops the run, saying so.
if missing := [name for name in ("httpx", "playwright", "schemathesis", "openai")
               if importlib.util.find_spec(name) is None]:
    raise pytest.UsageError(f"the tests need {', '.join(missing)}: install them with `pip install -e '.[dev]'` "
                            "(or run `make test`)")

import httpx  # noqa: E402 - after the check above
import openai  # noqa: E402
import torch  # noqa: E402
from safetensors.torch import load_file, save_file  # noqa: E402

from bench.service import Service  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent


def run_training(*args: str, timeout: float = 900) -> subprocess.CompletedProcess:
    """``python -m training ...`` in a subprocess, failing the test with its output on error."""
    env = {**os.environ, "PROGRESS": "0"}
    result = subprocess.run([sys.executable, "-m", "training", *args], cwd=ROOT, env=env,
                            capture_output=True, text=True, timeout=timeout)
    if result.returncode != 0:
        pytest.fail(f"python -m training {' '.join(args)} failed:\n{result.stdout}\n{result.stderr}")
    return result


def copy_checkpoint(source: Path, root: Path, checkpoint_id: str, *, name: str | None = None,
                    config: Callable[[dict], dict] | None = None,
                    weights: Callable[[dict[str, torch.Tensor]], dict[str, torch.Tensor]] | None = None) -> Path:
    """The checkpoint at ``source`` copied to ``root/checkpoint_id`` under that id (and ``name``), its config
    and weights passed through ``config`` and ``weights`` when given."""
    target = root / checkpoint_id
    shutil.copytree(source, target)
    config_path = target / "config.json"
    values = {**json.loads(config_path.read_text()), "id": checkpoint_id}
    if name is not None:
        values["name"] = name
    config_path.write_text(json.dumps(config(values) if config else values))
    if weights:
        path = target / "model.safetensors"
        save_file({k: v.contiguous() for k, v in weights(load_file(path)).items()}, path)
    return target


# A translation's attention weights are rounded to 4 places: a padded pass may move one by a unit of the last.
ROUNDED_TO_4_PLACES = 1.01e-4


def assert_same_answer(batched: Any, alone: Any, tolerance: float = 1e-5) -> None:
    """Equal structures, floats within ``tolerance`` (a padded pass may round differently)."""
    if isinstance(alone, float):
        assert batched == pytest.approx(alone, abs=tolerance)
    elif isinstance(alone, dict):
        assert batched.keys() == alone.keys()
        for key in alone:
            assert_same_answer(batched[key], alone[key], tolerance)
    elif isinstance(alone, list):
        assert len(batched) == len(alone)
        for b, a in zip(batched, alone, strict=True):
            assert_same_answer(b, a, tolerance)
    else:
        assert batched == alone


def wait_until(condition: Callable[[], bool], message: str, timeout: float = 60) -> None:
    """Return once ``condition()`` holds; fail with ``message`` if it still does not after ``timeout`` seconds.

    The deadline is generous on purpose: two shared cores can stall any step for seconds, and a test that
    waits on a condition costs only the time the condition takes.
    """
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            pytest.fail(f"after {timeout:g} s: {message}")
        time.sleep(0.05)


def gauge(base_url: str, name: str) -> float:
    """The value of an unlabelled gauge on the service's /metrics."""
    for line in httpx.get(base_url + "/metrics", timeout=30).text.splitlines():
        if line.startswith(name + " "):
            return float(line.split()[1])
    raise AssertionError(f"{name} missing from /metrics")


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


@pytest.fixture(scope="session")
def checkpoint_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Every checkpoint of the catalog, the extras included, trained with the tiny profile.

    ``TEST_CHECKPOINT_DIR`` points at a directory trained earlier with ``python -m training all
    --profile tiny --extras --out DIR`` to skip the training while iterating on tests.
    """
    if os.environ.get("TEST_CHECKPOINT_DIR"):
        return Path(os.environ["TEST_CHECKPOINT_DIR"])
    root = tmp_path_factory.mktemp("checkpoints")
    run_training("all", "--profile", "tiny", "--extras", "--out", str(root))
    return root


@pytest.fixture(scope="session")
def live_server(checkpoint_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Service]:
    """The real service with every tiny checkpoint loaded (its log is read by some tests)."""
    srv = Service(checkpoint_dir, tmp_path_factory.mktemp("logs") / "server.log")
    yield srv
    srv.stop()


@pytest.fixture(scope="session")
def server(live_server: Service) -> str:
    """Base URL of the real service with every tiny checkpoint loaded."""
    return live_server.url


@pytest.fixture(scope="session")
def openai_client(server: str) -> openai.OpenAI:
    """OpenAI's own client, pointed at the real service."""
    return openai.OpenAI(base_url=server + "/v1", api_key="unused", max_retries=0)


@pytest.fixture(scope="session")
def client(server: str) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=server, timeout=60) as c:
        yield c


@pytest.fixture(scope="session")
def empty_client(tmp_path_factory: pytest.TempPathFactory) -> Iterator[httpx.Client]:
    """The service started on an empty checkpoint directory: nothing is loaded."""
    empty = tmp_path_factory.mktemp("no-checkpoints")
    srv = Service(empty, tmp_path_factory.mktemp("logs") / "empty-server.log")
    with httpx.Client(base_url=srv.url, timeout=30) as c:
        yield c
    srv.stop()


@pytest.fixture(scope="session")
def strict_server(checkpoint_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Service]:
    """The service with tight limits: a 1 s REQUEST_TIMEOUT, one inference at a time and none waiting, CORS
    for one origin, and up to 8,192 new tokens, 256 prompts a completion and replies of 8 MB, so that one request
    can ask for far more than a second's work (8 samples of 8,192 tokens take the tiny GPT about 8 s of one idle
    core). Decode steps advance at most 8 samples (MAX_DECODE_BATCH), so that the prompts of a completion finish
    a few at a time well within the timeout even on a busy machine, rather than all in one long batch.

    It serves the GPT, the LSTM language model, word2vec-sg, and ``gpt-faulty``: the GPT with its position
    embeddings made NaN from position 16 on, so that sampling fails part-way through a text.
    """
    root = tmp_path_factory.mktemp("strict-checkpoints")
    for name in ("gpt", "lm-lstm", "word2vec-sg"):
        (root / name).symlink_to(checkpoint_dir / name)

    def nan_from_16(tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        tensors["wpe.weight"][16:] = float("nan")
        return tensors

    copy_checkpoint(checkpoint_dir / "gpt", root, "gpt-faulty", name="faulty", weights=nan_from_16)
    srv = Service(root, tmp_path_factory.mktemp("logs") / "strict-server.log", REQUEST_TIMEOUT="1",
                 MAX_CONCURRENT_INFERENCES="1", MAX_QUEUED_INFERENCES="0", MAX_NEW_TOKENS="8192", MAX_PROMPTS="256",
                 MAX_DECODE_BATCH="8",
                 MAX_RESPONSE_BYTES="8000000",
                 CORS_ORIGINS='["http://playground.example"]')
    yield srv
    srv.stop()


@pytest.fixture(scope="session")
def short_timeout_server(checkpoint_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """The service with REQUEST_TIMEOUT of half a second: long generations reach it."""
    srv = Service(checkpoint_dir, tmp_path_factory.mktemp("logs") / "short-timeout-server.log", REQUEST_TIMEOUT="0.5")
    yield srv.url
    srv.stop()


API_KEY = "s3cret-key"


@pytest.fixture(scope="session")
def keyed_server(checkpoint_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """The service with API_KEY set (to ``API_KEY``)."""
    srv = Service(checkpoint_dir, tmp_path_factory.mktemp("logs") / "keyed-server.log", API_KEY=API_KEY)
    yield srv.url
    srv.stop()
