"""Dynamic batching: concurrent requests for one model share one padded forward pass.

Each model operation runs one batch at a time. While it runs, the requests that arrive wait and form the
next batch, which starts as soon as the running one ends (up to ``max_size`` requests): batches grow with the
load, and a request that finds the model idle starts at once, after ``batch_wait_ms`` at most (0 by default)
for company. A batch runs as one inference in the pool, holding one worker slot; each request is still
admitted on its own (429 past capacity) and answered 504 past its own timeout, and a request that gives up
is dropped from a batch not yet started. Each input arrives as a function that prepares it (tokenizes and
checks it) and is prepared on its own, so input a model refuses fails its own request only; should the
batched pass itself fail, each request of the batch is run alone.

One batch at a time per operation, because a batch already spreads over the cores through torch's own
threads: two batches side by side only split them, each amortising less (measured: bench/batching.py).
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Generic, TypeVar

import anyio
import anyio.to_thread
from fastapi import Request
from prometheus_client import Histogram

from app.inference import InferencePool, InferenceTimeout

P = TypeVar("P")  # an input prepared for the model (e.g. token ids)
R = TypeVar("R")  # the answer to one input
# One input of a request: a function that prepares it, run in the worker thread with the batch.
Input = Callable[[], P]


@dataclass
class _Waiting(Generic[P, R]):
    inputs: list[Input[P]]
    future: asyncio.Future[list[R]]
    since: float = field(default_factory=lambda: asyncio.get_running_loop().time())


def _attempt(fn: Callable[[], R]) -> R | Exception:
    """``fn()``, or the exception it raised: one request's failure is its own answer."""
    try:
        return fn()
    except Exception as e:  # any failure of one request's work must not fail the batch's others
        return e


class Batcher(Generic[P, R]):
    """Answers one model operation: prepare each input, then ``predict`` a whole batch of them."""

    def __init__(self, predict: Callable[[list[P]], list[R]], pool: InferencePool, max_size: int, wait: float,
                 observe: Callable[[int], None]):
        self.predict = predict
        self.pool = pool
        self.max_size = max_size
        self.wait = wait  # seconds
        self.observe = observe  # records each batch's size
        self._waiting: deque[_Waiting[P, R]] = deque()
        self._full = asyncio.Event()
        self._collector: asyncio.Task[None] | None = None

    async def submit(self, inputs: list[Input[P]]) -> list[R]:
        """The answers to one request's ``inputs``, in order."""
        async with self.pool.slot():
            waiting: _Waiting[P, R] = _Waiting(inputs, asyncio.get_running_loop().create_future())
            self._waiting.append(waiting)
            if len(self._waiting) >= self.max_size:
                self._full.set()
            if self._collector is None:  # it ends whenever nothing waits
                self._collector = asyncio.create_task(self._collect())
            try:
                with anyio.fail_after(self.pool.timeout):
                    return await waiting.future  # cancelling this (timeout, disconnect) cancels the future
            except TimeoutError as e:
                raise InferenceTimeout(self.pool.timeout) from e

    async def _collect(self) -> None:
        """Run batches while requests wait, one after another: the next forms while one runs."""
        loop = asyncio.get_running_loop()
        try:
            while self._waiting:
                window = self._waiting[0].since + self.wait - loop.time()
                if window > 0 and not self._full.is_set():
                    try:
                        await asyncio.wait_for(self._full.wait(), window)
                    except TimeoutError:
                        pass
                worker = object()  # the batch's claim on one worker slot, released once it is answered
                await self.pool.limiter.acquire_on_behalf_of(worker)
                batch = self._take()
                if batch:
                    await self._run(batch, worker)
                else:
                    self.pool.limiter.release_on_behalf_of(worker)
        finally:
            self._collector = None

    def _take(self) -> list[_Waiting[P, R]]:
        """Up to ``max_size`` waiting requests, oldest first, skipping those that gave up."""
        batch: list[_Waiting[P, R]] = []
        while self._waiting and len(batch) < self.max_size:
            waiting = self._waiting.popleft()
            if not waiting.future.done():
                batch.append(waiting)
        if len(self._waiting) < self.max_size:
            self._full.clear()
        return batch

    async def _run(self, batch: list[_Waiting[P, R]], worker: object) -> None:
        self.observe(len(batch))
        self.pool.riding += len(batch) - 1
        try:
            answers = await anyio.to_thread.run_sync(self._answer, [w.inputs for w in batch])
        except Exception as e:  # a fault outside any one request's work: each request hears of it
            answers = [e] * len(batch)
        finally:
            self.pool.riding -= len(batch) - 1
            self.pool.limiter.release_on_behalf_of(worker)
        for waiting, answer in zip(batch, answers, strict=True):
            if waiting.future.done():  # it gave up meanwhile
                continue
            if isinstance(answer, Exception):
                waiting.future.set_exception(answer)
            else:
                waiting.future.set_result(answer)

    def _answer(self, requests: list[list[Input[P]]]) -> list[list[R] | Exception]:
        """In a worker thread: each request's answers, or the error that is its own."""
        prepared = [_attempt(lambda inputs=inputs: [prepare() for prepare in inputs]) for inputs in requests]
        ready = [p for p in prepared if not isinstance(p, Exception)]
        if len(ready) > 1:
            outputs = _attempt(lambda: self.predict([item for p in ready for item in p]))
            if not isinstance(outputs, Exception):
                answers = iter(outputs)
                return [p if isinstance(p, Exception) else [next(answers) for _ in p] for p in prepared]
            # Something in the batch broke the batched pass: run each request alone, so only its own fails.
        return [p if isinstance(p, Exception) else _attempt(lambda p=p: self.predict(p)) for p in prepared]


class Batching:
    """One batcher per model and operation, made on first use and made anew when the model is reloaded."""

    def __init__(self, pool: InferencePool, max_size: int, wait_ms: float, sizes: Histogram):
        self.pool = pool
        self.max_size = max_size
        self.wait = wait_ms / 1000
        self.sizes = sizes  # batch sizes, labelled by model
        self._batchers: dict[tuple[str, str], Batcher] = {}

    async def submit(self, model_id: str, predict: Callable[[list[P]], list[R]], inputs: list[Input[P]]) -> list[R]:
        """``predict`` of every prepared input, batched with concurrent requests for the same operation.

        ``predict`` is a bound method of the loaded pipeline: a reloaded model brings a new one, and with it
        a new batcher.
        """
        key = (model_id, predict.__name__)
        batcher = self._batchers.get(key)
        if batcher is None or batcher.predict != predict:
            batcher = Batcher(predict, self.pool, self.max_size, self.wait, self.sizes.labels(model_id).observe)
            self._batchers[key] = batcher
        return await batcher.submit(inputs)


async def get_batching(request: Request) -> Batching:  # async: see app.inference.get_pool
    return request.app.state.batching
