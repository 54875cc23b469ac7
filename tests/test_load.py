"""A bounded load test on loopback: steady load within capacity, then twice the capacity.

Within capacity every request succeeds (no 5xx, no connection error) and memory stays flat; at twice
the capacity the excess is turned away with 429 — never a 5xx, never a hang.
"""

from __future__ import annotations

import asyncio
import itertools
import time
from collections import Counter
from pathlib import Path

import httpx
import pytest

from .conftest import Server

CAPACITY = 32  # MAX_CONCURRENT_INFERENCES + MAX_QUEUED_INFERENCES below
STEADY_SECONDS = 30
OVERLOAD_SECONDS = 10

# One small request per capability; those whose route the app does not have are left out.
REQUESTS = [
    ("/v1/word2vec/similarity", {"word_a": "king", "word_b": "queen"}),
    ("/v1/word2vec/most-similar", {"positive": ["king", "woman"], "negative": ["man"], "topn": 5}),
    ("/v1/fill-mask", {"text": "to be or not to [MASK]", "top_k": 3}),
    ("/v1/classify", {"text": "my lord, the king is dead, and all his soldiers fled", "model": "cnn"}),
    ("/v1/translate", {"text": "我爱你", "direction": "zh-en", "max_length": 12}),
    ("/v1/generate", {"prompt": "ROMEO:", "max_new_tokens": 8, "seed": 1}),
]


def rss_bytes(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError("no VmRSS")


async def hammer(url: str, clients: int, seconds: float, requests: list[tuple[str, dict]]) -> tuple[Counter, list]:
    """``clients`` loops, each sending one request after another until ``seconds`` have passed."""
    statuses: Counter = Counter()
    failures: list[str] = []
    deadline = time.monotonic() + seconds
    limits = httpx.Limits(max_connections=clients, max_keepalive_connections=clients)
    async with httpx.AsyncClient(base_url=url, timeout=90, limits=limits) as client:

        async def one_client(offset: int) -> None:
            for path, body in itertools.islice(itertools.cycle(requests), offset, None):
                if time.monotonic() >= deadline:
                    return
                try:
                    response = await client.post(path, json=body)
                    statuses[response.status_code] += 1
                    if response.status_code == 429:
                        await asyncio.sleep(float(response.headers["retry-after"]) / 10)
                except httpx.HTTPError as e:  # connection errors and timeouts both count as failures
                    failures.append(f"{path}: {type(e).__name__} {e}")

        await asyncio.gather(*(one_client(i) for i in range(clients)))
    return statuses, failures


@pytest.fixture(scope="module")
def loaded_server(checkpoint_dir: Path, tmp_path_factory: pytest.TempPathFactory):
    server = Server(checkpoint_dir, tmp_path_factory.mktemp("load") / "server.log",
                    MAX_CONCURRENT_INFERENCES="4", MAX_QUEUED_INFERENCES=str(CAPACITY - 4), REQUEST_TIMEOUT="60",
                    LOG_FORMAT="text")
    paths = httpx.get(server.url + "/openapi.json", timeout=30).json()["paths"]
    requests = [(p, b) for p, b in REQUESTS if p in paths]
    for path, body in requests:  # warm every model once, and make sure each request is a valid one
        assert httpx.post(server.url + path, json=body, timeout=60).status_code == 200, path
    yield server, requests
    server.stop()


def test_within_capacity_every_request_succeeds_and_memory_stays_flat(loaded_server):
    server, requests = loaded_server
    asyncio.run(hammer(server.url, CAPACITY, 5, requests))  # settle allocator pools before measuring
    before = rss_bytes(server.process.pid)
    statuses, failures = asyncio.run(hammer(server.url, CAPACITY, STEADY_SECONDS, requests))
    after = rss_bytes(server.process.pid)
    assert not failures, failures[:5]
    assert set(statuses) == {200}, statuses
    assert sum(statuses.values()) > CAPACITY
    assert after - before < 64 * 2**20, f"RSS grew from {before / 2**20:.0f} to {after / 2**20:.0f} MiB"


def test_twice_the_capacity_gets_only_200s_and_429s(loaded_server):
    server, requests = loaded_server
    statuses, failures = asyncio.run(hammer(server.url, 2 * CAPACITY, OVERLOAD_SECONDS, requests))
    assert not failures, failures[:5]
    assert set(statuses) <= {200, 429}, statuses
    assert statuses[200] > 0 and statuses[429] > 0, statuses
    assert httpx.get(server.url + "/health", timeout=10).status_code == 200
