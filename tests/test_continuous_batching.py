"""Continuous batching: rows at their own positions, generations joining and leaving a running batch, and
the same text for a seeded request alone or in company (model, batch, scheduler and live service)."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest
import torch
from prometheus_client.parser import text_string_to_metric_families

from app.inference import InferencePool, InferenceTimeout
from app.observability import GenerationMetrics
from app.scheduler import DecodeLoop, Sequence, each_piece
from models.gpt import GPT, GPTConfig
from models.pipelines.text_generation import Collector, DecodeBatch, TextGenerator
from models.rnn import RNNLanguageModel, RNNLanguageModelConfig
from models.sampling import DecodingSession, SamplingParams
from models.tokenizers import CharTokenizer

from .conftest import Service

TEXT = ("ROMEO:\nBut soft, what light through yonder window breaks?\nIt is the east, and Juliet is the sun.\n\n"
        "JULIET:\nO Romeo, Romeo, wherefore art thou Romeo?\nDeny thy father and refuse thy name.\n\n")
TOKENIZER = CharTokenizer.train([TEXT])


@pytest.fixture(autouse=True, scope="module")
def one_thread() -> Iterator[None]:
    """These models are tiny: a second thread only adds synchronisation, badly so on a busy machine."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def gpt(position: str = "learned", block_size: int = 64) -> GPT:
    torch.manual_seed(0)
    return GPT(GPTConfig(vocab_size=TOKENIZER.vocab_size, block_size=block_size, n_layer=2, n_head=2, n_embd=32,
                         position=position)).eval()


def rnn(cell: str) -> RNNLanguageModel:
    torch.manual_seed(0)
    config = RNNLanguageModelConfig(vocab_size=TOKENIZER.vocab_size, cell=cell, embed_dim=16, hidden_size=24,
                                    num_layers=2, dropout=0.0)
    return RNNLanguageModel(config).eval()


MODELS: dict[str, Callable[[], GPT | RNNLanguageModel]] = {
    "gpt": gpt, "gpt-sinusoidal": lambda: gpt("sinusoidal"), "rnn": lambda: rnn("rnn"), "lstm": lambda: rnn("lstm"),
    "gru": lambda: rnn("gru")}
PROMPTS = [TOKENIZER.encode(p) for p in ("ROMEO:\n", "JULIET:\nO Romeo, Romeo", "B", "It is the east, and Juliet")]


# ---- the model: rows at their own positions ------------------------------------------------------------


def joined(model: GPT | RNNLanguageModel, prompts: list[list[int]]) -> tuple[DecodingSession, torch.Tensor]:
    """One session holding every prompt's row, as a batch takes them in."""
    session, logits = model.start(prompts[0])
    for prompt in prompts[1:]:
        other, more = model.start(prompt)
        session.extend(other)
        logits = torch.cat([logits, more])
    return session, logits


@pytest.mark.parametrize("name", MODELS)
def test_rows_of_different_prompts_decode_together_as_each_alone(name: str) -> None:
    model = MODELS[name]()
    alone = [model.start(prompt) for prompt in PROMPTS]
    session, logits = joined(model, PROMPTS)
    for step in range(12):
        tokens = torch.tensor([(7 * step + row) % TOKENIZER.vocab_size for row in range(len(alone))])
        expected = torch.cat([one_logits for _, one_logits in alone])
        assert torch.allclose(logits, expected, atol=1e-5), f"step {step}"
        if step == 6:  # the second prompt's row leaves; the others go on
            session.keep(torch.tensor([0, 2, 3]))
            alone.pop(1)
            tokens = tokens[[0, 2, 3]]
        logits = session.step(tokens)
        alone = [(one, one.step(token[None])) for (one, _), token in zip(alone, tokens, strict=True)]


def test_a_row_that_fills_its_context_is_read_again_while_the_others_decode_on() -> None:
    model = gpt(block_size=16)
    prompts = [list(range(1, 15)), [3, 4]]  # the first fills the context in two steps
    alone = [model.start(prompt) for prompt in prompts]
    session, logits = joined(model, prompts)
    for step in range(30):
        expected = torch.cat([one_logits for _, one_logits in alone])
        assert torch.allclose(logits, expected, atol=1e-5), f"step {step}"
        assert max(session.cache.lengths) <= 16
        tokens = torch.argmax(logits, dim=-1)
        logits = session.step(tokens)
        alone = [(one, one.step(token[None])) for (one, _), token in zip(alone, tokens, strict=True)]
    assert len(set(session.cache.lengths)) == 2  # they sat at different positions


def test_a_joined_batch_repeats_one_prompt_for_n_samples() -> None:
    model = gpt()
    session, logits = model.start(PROMPTS[1], rows=3)
    assert session.cache.lengths == [len(PROMPTS[1])] * 3 and logits.shape[0] == 3
    other, _ = model.start(PROMPTS[2], rows=2)
    session.extend(other)
    assert session.cache.lengths == [len(PROMPTS[1])] * 3 + [len(PROMPTS[2])] * 2


# ---- the batch: generations that join and leave ------------------------------------------------------------


def requests() -> list[tuple[list[int], SamplingParams]]:
    """Requests with every option that travels per request: seed, n, temperature, top-k/p, penalty, stop."""
    return [
        (PROMPTS[0], SamplingParams(max_new_tokens=30, seed=1)),
        (PROMPTS[1], SamplingParams(max_new_tokens=20, seed=2, n=3, temperature=1.3, top_k=10)),
        (PROMPTS[2], SamplingParams(max_new_tokens=40, temperature=0.0)),
        (PROMPTS[3], SamplingParams(max_new_tokens=25, seed=4, top_p=0.8, repetition_penalty=1.5, stop=("e",))),
        (PROMPTS[0], SamplingParams(max_new_tokens=35, seed=5, n=2, stop=("o", "\n"))),
        (PROMPTS[1], SamplingParams(max_new_tokens=8, seed=6)),
    ]


def texts(collector: Collector) -> list[tuple[str, str, int]]:
    return [(c.text, c.finish_reason, c.tokens) for c in collector.completions()]


def run_staggered(model: GPT | RNNLanguageModel, every: int) -> tuple[list[Collector], list[int]]:
    """Every request joins one batch, one every ``every`` steps: each one's pieces, and the rows of each step."""
    generator = TextGenerator(model, TOKENIZER)
    batch = DecodeBatch(model)
    waiting = [(generator.generation(ids, params), Collector(params.n)) for ids, params in requests()]
    owners = dict(waiting)
    rows: list[int] = []
    step = 0
    while waiting or batch.generations:
        if waiting and step % every == 0:
            batch.join(waiting.pop(0)[0])
        rows.append(batch.rows)
        for generation, pieces in batch.step():
            for piece in pieces:
                owners[generation].add(piece)
        step += 1
    return list(owners.values()), rows


@pytest.mark.parametrize("name", MODELS)
def test_seeded_generations_give_the_same_text_alone_and_in_a_batch(name: str) -> None:
    model = MODELS[name]()
    generator = TextGenerator(model, TOKENIZER)
    alone = []
    for ids, params in requests():
        collector = Collector(params.n)
        for piece in generator.stream(ids, params):
            collector.add(piece)
        alone.append(texts(collector))
    for every in (1, 3):
        together, _ = run_staggered(model, every)
        assert [texts(c) for c in together] == alone


def test_generations_join_a_running_batch_and_leave_it_when_done() -> None:
    _, rows = run_staggered(gpt(), every=4)
    assert max(rows) > 3  # several generations were decoding at once
    assert rows[4] > rows[0]  # the second one joined while the first ran
    shrinking = [i for i in range(1, len(rows)) if rows[i] < rows[i - 1]]
    assert shrinking and shrinking[0] < len(rows) - 1  # one left while others went on
    assert rows[-1] > 0


def test_a_generation_dropped_mid_way_leaves_the_others_unchanged() -> None:
    model = gpt()
    generator = TextGenerator(model, TOKENIZER)
    params = SamplingParams(max_new_tokens=30, seed=9)
    [expected] = generator.generate("ROMEO:\n", params).results
    batch = DecodeBatch(model)
    kept, dropped = generator.generation(PROMPTS[0], params), generator.generation(PROMPTS[1], params)
    batch.join(dropped)
    batch.join(kept)
    collector = Collector(1)
    for step in range(30):
        if step == 5:
            batch.leave(dropped)
            assert batch.rows == 1
        for generation, pieces in batch.step():
            assert generation is kept or step < 5
            for piece in pieces:
                if generation is kept:
                    collector.add(piece)
    assert collector.completions()[0].text == expected.text and not batch.generations


# ---- the scheduler: one decode loop per model ---------------------------------------------------------------


class Counted:
    """A language model that records how many rows each decode step advanced, and may refuse a prompt."""

    def __init__(self, model: GPT | RNNLanguageModel, refuse: list[int] | None = None):
        self.model, self.refuse, self.steps = model, refuse, []

    def start(self, prompt: list[int], rows: int) -> tuple[DecodingSession, torch.Tensor]:
        if prompt == self.refuse:
            raise ValueError("this prompt is refused")
        session, logits = self.model.start(prompt, rows)
        return CountedSession(session, self.steps), logits


class CountedSession:
    def __init__(self, session: DecodingSession, steps: list[int]):
        self.session, self.steps = session, steps

    def step(self, tokens: torch.Tensor) -> torch.Tensor:
        self.steps.append(len(tokens))
        return self.session.step(tokens)

    def keep(self, rows: torch.Tensor) -> None:
        self.session.keep(rows)

    def extend(self, other: CountedSession) -> None:
        self.session.extend(other.session)


class Recorded:
    """What a decode loop reports to the metrics, kept in lists."""

    def __init__(self) -> None:
        self.first: list[float] = []
        self.between: list[float] = []
        self.rows: list[float] = []

    def metrics(self) -> GenerationMetrics:
        return GenerationMetrics(self.first.append, self.between.append, self.rows.append)


def decode_loop(model: Counted, max_rows: int = 32) -> tuple[DecodeLoop, InferencePool, Recorded]:
    pool = InferencePool(max_concurrent=2, max_queued=16, timeout=30)
    recorded = Recorded()
    return DecodeLoop(TextGenerator(model, TOKENIZER), pool, max_rows, recorded.metrics()), pool, recorded


async def collect_sequence(sequence: Sequence, n: int) -> list[tuple[str, str, int]]:
    collector = Collector(n)
    async for _, piece in each_piece([sequence]):
        collector.add(piece)
    return texts(collector)


async def eventually(condition: Callable[[], bool], timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "the condition did not come true in time"
        await asyncio.sleep(0.01)


def released(loop: DecodeLoop, pool: InferencePool) -> bool:
    return not loop.running and not loop.waiting and pool.riding == 0 and pool.limiter.borrowed_tokens == 0


@pytest.mark.parametrize("name", ["gpt", "lstm"])
def test_concurrent_requests_share_decode_steps_and_get_their_own_text(name: str) -> None:
    model = MODELS[name]()
    generator = TextGenerator(model, TOKENIZER)
    alone = [[(c.text, c.finish_reason, c.tokens) for c in generator.generate(TOKENIZER.decode(ids), p).results]
             for ids, p in requests()]

    async def scenario() -> None:
        counted = Counted(model)
        loop, pool, recorded = decode_loop(counted)
        sequences = [loop.submit([ids], params)[0] for ids, params in requests()]
        together = await asyncio.gather(*(collect_sequence(s, p.n) for s, (_, p) in zip(sequences, requests(),
                                                                                           strict=True)))
        assert together == alone
        assert max(counted.steps) >= 2 + 3 + 1  # requests decoded in one step
        await eventually(lambda: released(loop, pool))
        assert len(recorded.first) == len(sequences) and recorded.between and min(recorded.between) >= 0
        # A step samples every row (all of them, the first time: they joined together); the model then
        # advances those that go on.
        assert max(recorded.rows) == sum(p.n for _, p in requests()) >= max(counted.steps)
        assert len(recorded.rows) >= len(counted.steps)

    asyncio.run(scenario())


def test_requests_past_the_row_limit_wait_to_join() -> None:
    async def scenario() -> None:
        counted = Counted(gpt())
        loop, pool, _ = decode_loop(counted, max_rows=3)
        params = SamplingParams(max_new_tokens=10, seed=1, n=2)
        sequences = [loop.submit([PROMPTS[i % 4]], params)[0] for i in range(4)]
        results = await asyncio.gather(*(collect_sequence(s, 2) for s in sequences))
        assert all(len(r) == 2 for r in results)
        assert max(counted.steps) <= 3  # one request of two rows at a time (two would be four)
        await eventually(lambda: released(loop, pool))

    asyncio.run(scenario())


def test_a_cancelled_request_leaves_the_batch_and_frees_its_place() -> None:
    async def scenario() -> None:
        counted = Counted(gpt(block_size=256))
        loop, pool, _ = decode_loop(counted)
        [long] = loop.submit([PROMPTS[0]], SamplingParams(max_new_tokens=200, seed=1, n=4))
        [short] = loop.submit([PROMPTS[1]], SamplingParams(max_new_tokens=40, seed=2))
        await eventually(lambda: len(counted.steps) >= 3)
        assert pool.riding == 1  # two requests ride on the loop's one worker slot
        long.cancel()
        await eventually(lambda: counted.steps[-1] == 1)  # the four rows left; the short one goes on
        assert len(await collect_sequence(short, 1)) == 1
        await eventually(lambda: released(loop, pool))
        assert len(counted.steps) < 200  # the long one stopped

    asyncio.run(scenario())


def test_a_request_past_its_deadline_fails_with_504_and_leaves() -> None:
    async def scenario() -> None:
        counted = Counted(gpt(block_size=512))
        loop, pool, _ = decode_loop(counted)
        [sequence] = loop.submit([PROMPTS[0]], SamplingParams(max_new_tokens=500, seed=1, n=8))
        sequence.timer = asyncio.get_running_loop().call_later(0.2, sequence.expire, 0.2)
        with pytest.raises(InferenceTimeout):
            await collect_sequence(sequence, 8)
        await eventually(lambda: released(loop, pool))
        assert len(counted.steps) < 500

    asyncio.run(scenario())


def test_a_generation_that_fails_part_way_hands_out_its_text_before_its_error() -> None:
    model = gpt()
    with torch.no_grad():
        model.wpe.weight[12:] = float("nan")  # the logits turn NaN once a row reaches position 12

    async def scenario() -> None:
        loop, pool, _ = decode_loop(Counted(model))
        [sequence] = loop.submit([PROMPTS[0]], SamplingParams(max_new_tokens=30, seed=1))  # 7 prompt tokens
        received: list[str] = []
        with pytest.raises(ValueError, match="not finite"):
            async for _, piece in each_piece([sequence]):
                received.append(piece.text)
        # One character a token, for the tokens that take positions 7 to 12: those after them read NaN.
        assert len("".join(received)) == 12 - len(PROMPTS[0]) + 1
        await eventually(lambda: released(loop, pool))

    asyncio.run(scenario())


def test_a_prompt_the_model_refuses_fails_only_its_own_request() -> None:
    async def scenario() -> None:
        counted = Counted(gpt(), refuse=PROMPTS[2])
        loop, pool, _ = decode_loop(counted)
        params = SamplingParams(max_new_tokens=10, seed=3)
        [good], [bad] = loop.submit([PROMPTS[0]], params), loop.submit([PROMPTS[2]], params)
        results = await asyncio.gather(collect_sequence(good, 1), collect_sequence(bad, 1), return_exceptions=True)
        assert isinstance(results[1], ValueError) and len(results[0]) == 1
        await eventually(lambda: released(loop, pool))

    asyncio.run(scenario())


# ---- the live service --------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def generation_server(checkpoint_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """The service on the language models alone, with room for every concurrent request of these tests."""
    root = tmp_path_factory.mktemp("lm-checkpoints")
    for name in ("gpt", "lm-lstm"):
        (root / name).symlink_to(checkpoint_dir / name)
    server = Service(root, tmp_path_factory.mktemp("logs") / "generation-server.log", MAX_QUEUED_INFERENCES="64")
    yield server.url
    server.stop()


def streamed_text(events: list[str]) -> str:
    """The text of a generation's Server-Sent Events (their data lines)."""
    assert events[-1] == "[DONE]"
    return "".join(json.loads(e).get("text", "") for e in events[:-1])


def histogram_counts(metrics: str, name: str) -> dict[str, float]:
    return {s.labels["model"]: s.value for family in text_string_to_metric_families(metrics) if family.name == name
            for s in family.samples if s.name == f"{name}_count"}


@pytest.mark.parametrize("model", ["gpt", "lstm"])
def test_a_seeded_request_gives_the_same_text_alone_and_among_concurrent_streams(generation_server: str,
                                                                                 model: str) -> None:
    body = {"prompt": "ROMEO:\n", "model": model, "max_new_tokens": 40, "seed": 7, "temperature": 1.2}
    with httpx.Client(base_url=generation_server, timeout=60) as client:
        alone = client.post("/v1/generate", json=body).json()["results"][0]["text"]
    # Others of other seeds and lengths, joining before and after it.
    others = [{**body, "seed": seed, "max_new_tokens": 20 + 3 * seed, "prompt": "JULIET:\n" * seed}
              for seed in range(1, 12)]

    async def together() -> list[str]:
        async with httpx.AsyncClient(base_url=generation_server, timeout=60) as client:
            async def one(request: dict) -> str:
                async with client.stream("POST", "/v1/generate", json={**request, "stream": True}) as response:
                    assert response.status_code == 200
                    return streamed_text([line.removeprefix("data: ") async for line in response.aiter_lines()
                                          if line.startswith("data: ")])

            return await asyncio.gather(*(one(request) for request in [*others[:6], body, *others[6:]]))

    assert asyncio.run(together())[6] == alone
    metrics = httpx.get(generation_server + "/metrics").text
    model_id = "gpt" if model == "gpt" else f"lm-{model}"
    assert histogram_counts(metrics, "lineage_decode_rows")[model_id] > 0
    rows = {s.labels["le"]: s.value for f in text_string_to_metric_families(metrics) if f.name == "lineage_decode_rows"
            for s in f.samples if s.name.endswith("_bucket") and s.labels["model"] == model_id}
    assert rows["1.0"] < rows["+Inf"]  # some step advanced several streams at once


def decode_rows(url: str, model_id: str) -> tuple[float, float]:
    """(decode steps, steps that advanced a single row) of ``model_id`` so far."""
    metrics = text_string_to_metric_families(httpx.get(url + "/metrics").text)
    samples = {(s.name, s.labels.get("le")): s.value for f in metrics if f.name == "lineage_decode_rows"
               for s in f.samples if s.labels["model"] == model_id}
    return samples.get(("lineage_decode_rows_count", None), 0.0), samples.get(("lineage_decode_rows_bucket", "1.0"),
                                                                              0.0)


def test_chat_and_completions_share_decode_steps_and_answer_seeded_requests_as_if_alone(generation_server: str) -> None:
    chats = [{"model": "gpt", "messages": [{"role": "user", "content": "Who's there?" * seed}], "max_tokens": 12 + seed,
              "seed": seed, "temperature": 1.2} for seed in range(1, 7)]
    completions = [{"model": "gpt", "prompt": ["ROMEO:\n", "JULIET:\n"], "max_tokens": 10 + seed, "n": 2,
                    "seed": seed, "temperature": 1.2} for seed in range(1, 4)]

    def texts(path: str, reply: dict) -> list[str]:
        if path == "/v1/chat/completions":
            return [c["message"]["content"] for c in reply["choices"]]
        return [c["text"] for c in reply["choices"]]

    requests = [("/v1/chat/completions", body) for body in chats] + [("/v1/completions", b) for b in completions]
    with httpx.Client(base_url=generation_server, timeout=60) as client:
        alone = [texts(path, client.post(path, json=body).json()) for path, body in requests]

    async def together(batch: list[tuple[str, dict]]) -> list[list[str]]:
        async with httpx.AsyncClient(base_url=generation_server, timeout=60) as client:
            replies = await asyncio.gather(*(client.post(path, json=body) for path, body in batch))
        return [texts(path, reply.json()) for (path, _), reply in zip(batch, replies, strict=True)]

    steps, single = decode_rows(generation_server, "gpt")
    assert asyncio.run(together(requests[:len(chats)])) == alone[:len(chats)]
    steps_after, single_after = decode_rows(generation_server, "gpt")
    assert single_after - single < steps_after - steps  # chats alone (one row each) shared some steps
    assert asyncio.run(together(requests)) == alone


def test_time_to_first_token_and_between_tokens_are_histograms_per_model(generation_server: str) -> None:
    with httpx.Client(base_url=generation_server, timeout=60) as client:
        assert client.post("/v1/generate", json={"prompt": "JULIET:\n", "max_new_tokens": 5}).status_code == 200
        metrics = client.get("/metrics").text
    assert histogram_counts(metrics, "lineage_time_to_first_token_seconds")["gpt"] >= 1
    assert histogram_counts(metrics, "lineage_time_between_tokens_seconds")["gpt"] >= 1
    assert "# TYPE lineage_time_to_first_token_seconds histogram" in metrics
    assert "# TYPE lineage_time_between_tokens_seconds histogram" in metrics


def admitted(url: str) -> float:
    for line in httpx.get(url + "/metrics").text.splitlines():
        if line.startswith("lineage_inferences_admitted "):
            return float(line.split()[1])
    raise AssertionError("lineage_inferences_admitted missing from /metrics")


def test_a_client_that_leaves_a_plain_generation_frees_its_place(generation_server: str) -> None:
    body = {"prompt": "ROMEO:\n", "n": 8, "max_new_tokens": 512}  # far more than the client waits for
    with pytest.raises(httpx.ReadTimeout), httpx.Client(base_url=generation_server, timeout=0.5) as client:
        client.post("/v1/generate", json=body)
    deadline = time.monotonic() + 30
    while admitted(generation_server) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert admitted(generation_server) == 0


def test_a_client_streaming_back_to_back_always_finds_its_place(checkpoint_dir: Path,
                                                                 tmp_path_factory: pytest.TempPathFactory) -> None:
    """The place a stream holds is free again by the time its client can send the next request."""
    root = tmp_path_factory.mktemp("gpt-only")
    (root / "gpt").symlink_to(checkpoint_dir / "gpt")
    server = Service(root, tmp_path_factory.mktemp("logs") / "one-place-server.log", MAX_CONCURRENT_INFERENCES="1",
                    MAX_QUEUED_INFERENCES="0")
    try:
        with httpx.Client(base_url=server.url, timeout=60) as client:
            statuses = []
            for seed in range(60):
                with client.stream("POST", "/v1/generate", json={"prompt": "ROMEO:\n", "max_new_tokens": 2,
                                                                 "seed": seed, "stream": True}) as response:
                    response.read()
                    statuses.append(response.status_code)
        assert statuses == [200] * 60
    finally:
        server.stop()
