"""Model code runs off the event loop, in a bounded pool.

At most ``max_concurrent_inferences`` run at once and ``max_queued_inferences`` wait; a request past
that is answered 429 with ``Retry-After`` at once rather than queued without bound, and one that
waits and runs longer than ``request_timeout`` is answered 504.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import TypeVar

import anyio
import anyio.to_thread
from fastapi import HTTPException, Request

T = TypeVar("T")


class OverCapacity(HTTPException):
    def __init__(self, retry_after: int = 1):
        super().__init__(status_code=429, detail="the service is at capacity; retry shortly",
                         headers={"Retry-After": str(retry_after)})


class InferenceTimeout(HTTPException):
    def __init__(self, seconds: float):
        super().__init__(status_code=504, detail=f"inference did not finish within {seconds:g} s")


class Admission:
    """One request's place in the pool, held for all its work (a stream holds it until its last event)."""

    def __init__(self, pool: InferencePool):
        self.pool = pool
        self.released = False

    def release(self) -> None:
        if not self.released:
            self.released = True
            self.pool.admitted -= 1
            if self.pool.admitted == 0 and self.pool.on_idle is not None:
                self.pool.on_idle()


class InferencePool:
    def __init__(self, max_concurrent: int, max_queued: int, timeout: float,
                 on_idle: Callable[[], None] | None = None):
        self.limiter = anyio.CapacityLimiter(max_concurrent)
        self.on_idle = on_idle  # called whenever the last admitted request is done
        self.capacity = max_concurrent + max_queued
        self.timeout = timeout
        self.admitted = 0  # running + waiting; only touched from the event loop
        self.riding = 0  # requests running in a batch besides the one slot the batch holds (app.batching)

    @property
    def queued(self) -> int:
        return max(0, self.admitted - int(self.limiter.borrowed_tokens) - self.riding)

    def admit(self) -> Admission:
        """A place for one request, or 429 past capacity. Decided at once: nothing is awaited between the
        check and the count, so two requests cannot both take the last place."""
        if self.admitted >= self.capacity:
            raise OverCapacity()
        self.admitted += 1
        return Admission(self)

    @asynccontextmanager
    async def slot(self) -> AsyncIterator[None]:
        """Admission for one request (429 past capacity) for the duration of the block."""
        admission = self.admit()
        try:
            yield
        finally:
            admission.release()

    async def call(self, fn: Callable[[], T], timeout: float | None = None) -> T:
        """Run ``fn()`` in a worker thread within the concurrency limit and the timeout (default: the
        service's); past it, 504."""
        seconds = self.timeout if timeout is None else timeout
        try:
            with anyio.fail_after(seconds):
                return await anyio.to_thread.run_sync(fn, limiter=self.limiter, abandon_on_cancel=True)
        except TimeoutError as e:
            raise InferenceTimeout(self.timeout) from e

    async def run(self, fn: Callable[[], T]) -> T:
        """Admit, then run: what a route handler calls for one inference."""
        async with self.slot():
            return await self.call(fn)


# Dependencies are async although they never wait: FastAPI runs a plain ``def`` dependency in a worker
# thread, a hop per dependency per request that costs more than the lookup itself.
async def get_pool(request: Request) -> InferencePool:
    return request.app.state.pool
