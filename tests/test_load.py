"""A bounded load test on loopback: many clients at once get the answer each request gets alone.

Within capacity every request succeeds, with the body it gets when it is the only one, streamed or not, and
memory stays flat from one round of the same requests to the next; at twice the capacity the excess is
turned away with 429, never a 5xx, a hang or another request's answer. Throughout, the service never
admits more inferences than its capacity.
"""

from __future__ import annotations

import asyncio
import itertools
import json
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pytest

from .conftest import ROUNDED_TO_4_PLACES, Service, assert_same_answer

CAPACITY = 32  # MAX_CONCURRENT_INFERENCES + MAX_QUEUED_INFERENCES below
REQUESTS_PER_CLIENT = 8

# Deterministic requests of every capability, several per batched model so that a batch mixes them up
# if it can; the last is streamed.
REQUESTS: list[tuple[str, dict]] = [
    ("/v1/word2vec/similarity", {"word_a": "king", "word_b": "queen"}),
    ("/v1/word2vec/similarity", {"word_a": "love", "word_b": "death", "model": "cbow"}),
    ("/v1/word2vec/most-similar", {"positive": ["king", "woman"], "negative": ["man"], "topn": 5}),
    ("/v1/word2vec/most-similar", {"positive": ["night"], "topn": 3, "model": "cbow"}),
    ("/v1/fill-mask", {"text": "to be or not to [MASK]", "top_k": 3}),
    ("/v1/fill-mask", {"text": "the [MASK] is dead, long live the [MASK]", "top_k": 2}),
    ("/v1/fill-mask", {"text": "[MASK] and death", "targets": ["love", "life", "war"]}),
    ("/v1/classify", {"text": "my lord, the king is dead, and all his soldiers fled", "model": "cnn"}),
    ("/v1/classify", {"texts": ["a fool, a fool", "O Romeo, Romeo, wherefore art thou Romeo?"], "model": "cnn"}),
    ("/v1/classify", {"texts": ["Good mistress, wed him", "murder most foul", "the crown"], "model": "lstm"}),
    ("/v1/translate", {"text": "我爱你", "direction": "zh-en", "max_length": 12}),
    ("/v1/translate", {"text": "See you tomorrow.", "direction": "en-zh", "max_length": 12}),
    ("/v1/generate", {"prompt": "ROMEO:", "max_new_tokens": 8, "seed": 1}),
    ("/v1/generate", {"prompt": "JULIET:", "model": "lstm", "max_new_tokens": 12, "seed": 2}),
    ("/v1/generate", {"prompt": "HAMLET:", "max_new_tokens": 24, "seed": 3, "stream": True}),
]


def schedule(clients: int) -> Iterator[list[tuple[str, dict]]]:
    """Each client's requests: the list, started at a different place for each."""
    for offset in range(clients):
        yield list(itertools.islice(itertools.cycle(REQUESTS), offset, offset + REQUESTS_PER_CLIENT))


async def answer(client: httpx.AsyncClient, path: str, body: dict) -> tuple[int, object]:
    """Status and body; a stream's body is its list of events."""
    if not body.get("stream"):
        response = await client.post(path, json=body)
        return response.status_code, response.json()
    async with client.stream("POST", path, json=body) as response:
        if response.status_code != 200:
            return response.status_code, json.loads(await response.aread())
        events = [line.removeprefix("data: ") async for line in response.aiter_lines() if line.startswith("data: ")]
        return 200, [e if e == "[DONE]" else json.loads(e) for e in events]


def as_compared(body: dict, got: object) -> object:
    """An answer as it must equal the one alone: a stream as its whole text and its other events, since how
    the text is cut into events depends on timing (a stream gets the text of each decode trip at once)."""
    if not body.get("stream") or not isinstance(got, list):
        return got
    text = [e for e in got if isinstance(e, dict) and set(e) == {"text"}]
    return {"text": "".join(e["text"] for e in text), "events": [e for e in got if e not in text]}


@dataclass
class Round:
    statuses: Counter = field(default_factory=Counter)
    failures: list[str] = field(default_factory=list)  # connection errors, timeouts, wrong answers
    most_admitted: float = 0.0


async def run_round(url: str, clients: int, alone: dict[str, object]) -> Round:
    """Every client sends its requests one after another, all clients at once, while /metrics is watched."""
    result = Round()
    done = asyncio.Event()
    limits = httpx.Limits(max_connections=clients + 1, max_keepalive_connections=clients + 1)
    async with httpx.AsyncClient(base_url=url, timeout=120, limits=limits) as client:

        async def watch() -> None:
            while not done.is_set():
                for line in (await client.get("/metrics")).text.splitlines():
                    if line.startswith("lineage_inferences_admitted "):
                        result.most_admitted = max(result.most_admitted, float(line.split()[1]))
                await asyncio.sleep(0.01)

        async def one_client(requests: list[tuple[str, dict]]) -> None:
            for path, body in requests:
                key = json.dumps([path, body])
                try:
                    status, got = await answer(client, path, body)
                except httpx.HTTPError as e:
                    result.failures.append(f"{path}: {type(e).__name__} {e}")
                    continue
                result.statuses[status] += 1
                if status == 429:
                    continue
                if status == 200 and body.get("stream") and got[-1] == {"error": "the service is at capacity; "
                                                                                  "retry shortly"}:
                    continue  # admitted for its 200, then out of capacity when it started: said in the stream
                try:
                    assert status == 200
                    assert_same_answer(as_compared(body, got), as_compared(body, alone[key]),
                                       ROUNDED_TO_4_PLACES if path == "/v1/translate" else 1e-5)
                except AssertionError:
                    result.failures.append(f"{path} {body}: {status} {got} instead of {alone[key]}")

        watcher = asyncio.create_task(watch())
        await asyncio.gather(*(one_client(requests) for requests in schedule(clients)))
        done.set()
        await watcher
    return result


def rss_bytes(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError("no VmRSS")


@pytest.fixture(scope="module")
def loaded_server(checkpoint_dir: Path, tmp_path_factory: pytest.TempPathFactory):
    """The service with a capacity of 32, and the answer each request gets when it is the only one."""
    server = Service(checkpoint_dir, tmp_path_factory.mktemp("load") / "server.log",
                    MAX_CONCURRENT_INFERENCES="4", MAX_QUEUED_INFERENCES=str(CAPACITY - 4), REQUEST_TIMEOUT="60",
                    LOG_FORMAT="text")

    async def alone() -> dict[str, object]:
        answers = {}
        async with httpx.AsyncClient(base_url=server.url, timeout=60) as client:
            for path, body in REQUESTS:
                status, got = await answer(client, path, body)
                assert status == 200, (path, got)
                answers[json.dumps([path, body])] = got
        return answers

    yield server, asyncio.run(alone())
    server.stop()


def test_within_capacity_every_answer_is_the_one_it_gets_alone_and_memory_stays_flat(loaded_server):
    server, alone = loaded_server
    first = asyncio.run(run_round(server.url, CAPACITY, alone))  # also settles the allocators' pools
    before = rss_bytes(server.process.pid)
    second = asyncio.run(run_round(server.url, CAPACITY, alone))
    after = rss_bytes(server.process.pid)
    for result in (first, second):
        assert not result.failures, result.failures[:3]
        assert result.statuses == {200: CAPACITY * REQUESTS_PER_CLIENT}, result.statuses
        assert result.most_admitted <= CAPACITY
    # The same requests again: a leak would grow with them.
    assert after - before < 32 * 2**20, f"RSS grew from {before / 2**20:.0f} to {after / 2**20:.0f} MiB"


def test_twice_the_capacity_gets_its_own_answers_or_429_and_never_more_than_capacity_admitted(loaded_server):
    server, alone = loaded_server
    result = asyncio.run(run_round(server.url, 2 * CAPACITY, alone))
    assert not result.failures, result.failures[:3]
    assert set(result.statuses) <= {200, 429}, result.statuses
    assert result.statuses[200] > 0 and result.statuses[429] > 0, result.statuses
    assert result.most_admitted <= CAPACITY
    assert httpx.get(server.url + "/health", timeout=10).status_code == 200
