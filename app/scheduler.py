"""Continuous batching: concurrent generations from one language model share each decode step.

Each loaded language model gets a ``DecodeLoop`` when a request first asks it for text. The loop owns one
``DecodeBatch`` (``models.pipelines.text_generation``) and, while anything is generating, one worker slot of
the inference pool; it runs one decode step at a time in a worker thread. Between steps, on the event
loop, it hands each request its new pieces, drops the requests that were cancelled (their client left or
their time ran out) and admits waiting ones, whose prompts are read just before the next step. So a
request joins a running batch within a step, leaves it at the next one, and a batch holds whatever is
generating at the moment. A request draws from its own random stream with its own options, so a seeded
request gives the same text alone or in company.

``Scheduler.submit`` is the whole interface: it returns a ``Sequence`` per prompt of a request, whose pieces
``each_piece`` hands out as they come and whose ``cancel`` gives up its rows. ``app.streaming.pieces``
drives a request's sequences for a route, within the request's deadline and for a client still there.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass

import anyio.to_thread
from fastapi import Request

from app.inference import InferencePool, InferenceTimeout
from app.observability import GenerationMetrics
from models.pipelines.text_generation import Generation, Piece, TextGenerator, joined
from models.sampling import SamplingParams

log = logging.getLogger("app.scheduler")


# Longest a decode loop runs steps in one trip to a worker thread: each trip costs a thread hop, and each
# piece of text sent costs a Server-Sent Event, so a trip of several steps sends each stream one event with
# their text. Shorter than a reader notices; a trip ends early whenever a request joins or leaves.
TRIP_SECONDS = 0.02


@dataclass(frozen=True)
class Step:
    """One decode step of a batch: the rows it advanced, each generation's new pieces, and when it ended."""

    rows: int
    results: list[tuple[Generation, list[Piece]]]
    at: float  # time.monotonic()


class Sequence:
    """One generation as the event loop sees it: pieces as they come, and a way to give up.

    The generations of one request (one per prompt) share the event ``ready``, set whenever any of them has
    news: pieces, its end or its failure."""

    def __init__(self, generation: Generation, ready: asyncio.Event):
        self.generation = generation
        self.ready = ready
        self.submitted = time.monotonic()
        self.last_token: float | None = None
        self.cancelled = False
        self.timer: asyncio.TimerHandle | None = None  # its deadline
        self.done = False
        self.error: Exception | None = None  # what ended it, when it failed
        self._pieces: list[Piece] = []

    def take(self) -> list[Piece]:
        """The pieces decoded since the last call (perhaps none, while text is held back)."""
        pieces, self._pieces = self._pieces, []
        return pieces

    def cancel(self) -> None:
        """Give up: the rows leave the batch before its next step."""
        self.cancelled = True
        if self.timer is not None:
            self.timer.cancel()

    def expire(self, seconds: float) -> None:
        """Its time is up: 504 to whoever waits, and its rows leave the batch."""
        if not self.done:
            self.fail(InferenceTimeout(seconds))
        self.cancel()

    def deliver(self, pieces: list[Piece]) -> None:
        if self.done:  # it failed meanwhile (its time ran out)
            return
        self._pieces += pieces
        if self.generation.finished:
            self.done = True
            self.error = self.generation.error
        self.ready.set()

    def fail(self, error: Exception) -> None:
        self.error = error
        self.done = True
        self.ready.set()


async def each_piece(sequences: list[Sequence]) -> AsyncIterator[tuple[int, Piece]]:
    """The pieces of one request's sequences as they come, each with its sequence's index, until all are done;
    a sequence's failure is raised once the pieces it decoded before it are out. No timer per wait: each
    sequence's deadline is set once (``expire``)."""
    ready = sequences[0].ready
    while True:
        ready.clear()
        finished = all(s.done for s in sequences)  # looked at before taking, so no piece that comes later is missed
        for index, sequence in enumerate(sequences):
            for piece in sequence.take():
                yield index, piece
            if sequence.error is not None:
                raise sequence.error
        if finished:
            return
        await ready.wait()


class DecodeLoop:
    """One model's batch of running generations, stepped while any generation runs or waits to join."""

    def __init__(self, generator: TextGenerator, pool: InferencePool, max_rows: int, metrics: GenerationMetrics):
        self.generator = generator
        self.pool = pool
        self.max_rows = max_rows  # rows (samples) one step advances; more requests wait to join
        self.metrics = metrics
        self.batch = generator.batch()
        self.waiting: deque[Sequence] = deque()
        self.running: dict[Generation, Sequence] = {}
        self._task: asyncio.Task[None] | None = None
        self._riding = 0  # this loop's share of pool.riding: its requests beyond the one slot it holds

    def submit(self, prompts: list[list[int]], params: SamplingParams) -> list[Sequence]:
        """A generation for each prompt, waiting to join in this order."""
        ready = asyncio.Event()
        sequences = [Sequence(self.generator.generation(prompt_ids, params), ready) for prompt_ids in prompts]
        self.waiting.extend(sequences)
        if self._task is None:  # it ends whenever nothing runs or waits
            self._task = asyncio.create_task(self._run())
        return sequences

    async def _run(self) -> None:
        worker = object()  # the loop's claim on one worker slot, held while it has work
        try:
            await self.pool.limiter.acquire_on_behalf_of(worker)
            try:
                while self.waiting or self.running:
                    joining, leaving = self._changes()
                    steps = await anyio.to_thread.run_sync(self._trip, joining, leaving)
                    self._deliver(steps)
                    self._ride()
            finally:
                self.pool.limiter.release_on_behalf_of(worker)
        except Exception as e:  # a fault outside any one request (the model's step): each request hears of it
            log.exception("decode step failed")
            for sequence in [*self.running.values(), *self.waiting]:
                sequence.fail(e)
            self.running.clear()
            self.waiting.clear()
            self.batch = self.generator.batch()
        finally:
            self._task = None
            self._ride(stopped=True)

    def _changes(self) -> tuple[list[Sequence], list[Sequence]]:
        """Who joins before the next step (oldest first, while their rows fit) and who leaves (cancelled)."""
        leaving = [s for s in self.running.values() if s.cancelled]
        for sequence in leaving:
            del self.running[sequence.generation]
        rows = sum(s.generation.rows for s in self.running.values())
        joining: list[Sequence] = []
        while self.waiting:
            sequence = self.waiting[0]
            if sequence.cancelled:
                self.waiting.popleft()
                continue
            if rows and rows + sequence.generation.rows > self.max_rows:
                break
            self.waiting.popleft()
            joining.append(sequence)
            rows += sequence.generation.rows
            self.running[sequence.generation] = sequence
        return joining, leaving

    def _trip(self, joining: list[Sequence], leaving: list[Sequence]) -> list[Step]:
        """In a worker thread: the leavers leave, the joiners' prompts are read, then steps for all, until
        ``TRIP_SECONDS`` have passed or something changes: a request waits that would fit, a running one is
        cancelled.
        A trip that admitted someone ends after one step, so that their first token goes out at once."""
        for sequence in leaving:
            self.batch.leave(sequence.generation)
        for sequence in joining:
            try:
                self.batch.join(sequence.generation)
            except Exception as e:  # a prompt the model cannot read fails its own request only
                sequence.generation.fail(e)
        until = time.monotonic() + TRIP_SECONDS
        steps: list[Step] = []
        while True:
            rows = self.batch.rows
            steps.append(Step(rows, self.batch.step(), time.monotonic()))
            if (joining or not self.batch.generations or time.monotonic() >= until or self._room_for_next()
                    or any(s.cancelled for s in self.running.values())):
                return steps

    def _room_for_next(self) -> bool:
        """Whether the oldest waiting request would fit in the batch now (those that would not wait for rows
        to leave, which ending a trip does not hasten)."""
        waiting = self.waiting
        return bool(waiting) and self.batch.rows + waiting[0].generation.rows <= self.max_rows

    def _deliver(self, steps: list[Step]) -> None:
        """Each request's pieces of a trip, joined into one piece per sample, and its token timings."""
        pieces: dict[Generation, list[Piece]] = {}
        for step in steps:
            if step.rows:
                self.metrics.step_rows(step.rows)
            for generation, new in step.results:
                sequence = self.running.get(generation)
                if sequence is None:
                    continue
                if generation.error is None:
                    since = sequence.submitted if sequence.last_token is None else sequence.last_token
                    (self.metrics.first_token if sequence.last_token is None
                     else self.metrics.between_tokens)(step.at - since)
                    sequence.last_token = step.at
                pieces.setdefault(generation, []).extend(new)
        for generation, new in pieces.items():
            sequence = self.running[generation]
            sequence.deliver(joined(new))
            if sequence.done:
                del self.running[generation]
        for generation in [g for g in self.running if g.finished]:  # a prompt that failed to join
            self.running.pop(generation).deliver([])

    def _ride(self, stopped: bool = False) -> None:
        """Requests in the batch are running, not queued: all but one ride on the loop's worker slot."""
        riding = 0 if stopped else max(0, len(self.running) - 1)
        self.pool.riding += riding - self._riding
        self._riding = riding


class Scheduler:
    """One decode loop per loaded language model, made on first use and anew when the model is reloaded."""

    def __init__(self, pool: InferencePool, max_rows: int, metrics: Callable[[str], GenerationMetrics]):
        self.pool = pool
        self.max_rows = max_rows
        self.metrics = metrics  # a model id's observers
        self._loops: dict[str, DecodeLoop] = {}

    def submit(self, model_id: str, generator: TextGenerator, prompts: list[list[int]], params: SamplingParams,
               seconds: float) -> list[Sequence]:
        """Start generating from each prompt; each returned ``Sequence`` yields its pieces (``each_piece``), and
        fails with 504 after ``seconds``. A reloaded model gets a new loop, and the old one finishes the
        generations it has."""
        loop = self._loops.get(model_id)
        if loop is None or loop.generator is not generator:
            loop = self._loops[model_id] = DecodeLoop(generator, self.pool, self.max_rows, self.metrics(model_id))
        sequences = loop.submit(prompts, params)
        for sequence in sequences:
            sequence.timer = asyncio.get_running_loop().call_later(seconds, sequence.expire, self.pool.timeout)
        return sequences


async def get_scheduler(request: Request) -> Scheduler:  # async: see app.inference.get_pool
    return request.app.state.scheduler
