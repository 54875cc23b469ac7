"""Dynamic batching: batched answers equal one-at-a-time answers, and every request gets its own."""

from __future__ import annotations

import asyncio
import dataclasses
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest
import torch
from prometheus_client.parser import text_string_to_metric_families

from app.batching import Batcher
from app.inference import InferencePool, InferenceTimeout, OverCapacity
from models import seq2seq
from models.bert import BertConfig, BertForPreTraining
from models.classifier import ARCHITECTURES, SubwordEncoder, WordEncoder, build_model, build_vocab
from models.pipelines import FillMask, TextClassifier, Translator
from models.pipelines.translation import TranslationOptions, default_max_length, split_sentences
from training.bert import train_tokenizer

from .conftest import ROUNDED_TO_4_PLACES, Service, assert_same_answer, run_training

LINES = [f"line {i} of the play, with words such as love and death and {w}" for i, w in
         enumerate(["king", "queen", "lord", "lady", "fool", "sword", "crown", "night"] * 8)]
# Different lengths, so that batching pads most of them.
TEXTS = ["love and death", "the king and the queen of the play, and the fool with his crown at night",
         "sword", "lady lord lady lord lady lord lady", "words such as love in verona"]  # verona: unknown


@pytest.fixture(scope="module")
def tokenizer():
    return train_tokenizer(LINES, vocab_size=300)


@pytest.fixture(scope="module")
def fill(tokenizer) -> FillMask:
    config = BertConfig(vocab_size=tokenizer.get_vocab_size(), max_position=32, dim=32, n_layers=2, n_heads=2,
                        ffn_dim=64)
    torch.manual_seed(0)
    return FillMask(BertForPreTraining(config), tokenizer, torch.device("cpu"))


# ---- the batched model entry points --------------------------------------------------------------


def test_batched_fill_mask_equals_each_input_alone(fill: FillMask):
    queries = [("love and [MASK]", 5, None),
               ("the [MASK] and the queen of the play, and the fool with his [MASK] at night", 3, None),
               ("[MASK]", 1, None),
               ("lady lord [MASK] lord lady", 2, ["lady", "lord", "king"])]
    batched = fill.fill_mask_encoded([fill.encode(*q) for q in queries])
    for answer, query in zip(batched, queries, strict=True):
        assert_same_answer(answer, fill.fill_mask(*query))


def test_fill_mask_scores_are_the_full_mlm_heads_probabilities(fill: FillMask):
    query = fill.encode("the [MASK] and the [MASK] of the play", top_k=3)
    with torch.inference_mode():
        mlm_logits, _, _ = fill.model(torch.tensor([query.ids]))
    probs = mlm_logits[0, query.masks].softmax(dim=-1)
    for row, items in enumerate(fill.fill_mask_encoded([query])[0]):
        expected, token_ids = probs[row].topk(3)
        assert [item["token"] for item in items] == token_ids.tolist()
        assert [item["score"] for item in items] == pytest.approx(expected.tolist(), abs=1e-6)


# character n-grams are for the word-level classifiers; BERT reads word pieces
CLASSIFIER_INPUTS = [*((arch, ngrams) for arch in ARCHITECTURES for ngrams in ((), (3, 5))), ("bert", ())]


@pytest.mark.parametrize(("arch", "char_ngrams"), CLASSIFIER_INPUTS,
                         ids=[f"{arch}-{'char-ngrams' if ngrams else 'words'}" for arch, ngrams in CLASSIFIER_INPUTS])
def test_batched_classification_equals_each_text_alone(arch: str, char_ngrams: tuple[int, ...], tokenizer):
    torch.manual_seed(0)
    if arch == "bert":
        # 8 positions, 3 windows: the longest text is read as three windows, the others as one
        hyper = {"vocab_size": tokenizer.get_vocab_size(), "max_position": 8, "dim": 32, "n_layers": 2,
                 "n_heads": 2, "ffn_dim": 64, "num_classes": 3}
        encoder: WordEncoder | SubwordEncoder = SubwordEncoder(tokenizer, max_len=8, windows=3)
    else:
        vocab = build_vocab(LINES, min_count=1)
        hyper = {"vocab_size": len(vocab.itos), "num_classes": 3, "embed_dim": 16, "dropout": 0.0,
                 "char_ngrams": char_ngrams, "ngram_buckets": 100 if char_ngrams else 0}
        hyper |= {"mlp": {"hidden_sizes": (8,)}, "cnn": {"kernel_counts": (4, 4, 4)}}.get(arch, {"hidden_size": 12})
        encoder = WordEncoder(vocab, max_len=64, char_ngrams=char_ngrams, ngram_buckets=hyper["ngram_buckets"])
    model = build_model(arch, hyper)
    if char_ngrams:
        torch.nn.init.normal_(model.embedding.ngrams.weight)  # trained n-gram vectors are not zero
    classifier = TextClassifier(model, encoder, ["comedy", "history", "tragedy"], torch.device("cpu"))
    batched = classifier.classify(TEXTS)
    for answer, text in zip(batched, TEXTS, strict=True):
        assert_same_answer(answer, classifier.classify([text])[0])


PAIRS = [("我爱你。", "I love you."), ("他是学生。", "He is a student."), ("我们明天见。", "See you tomorrow."),
         ("今天很冷。", "It's cold today."), ("她喜欢喝茶。", "She likes drinking tea."),
         ("我不知道。", "I don't know.")]


def test_translations_of_many_requests_decoded_together_equal_each_alone():
    source_vocab = seq2seq.build_vocab(seq2seq.tokenize(zh, "zh") for zh, _ in PAIRS)
    target_vocab = seq2seq.build_vocab(seq2seq.tokenize(en, "en") for _, en in PAIRS)
    torch.manual_seed(0)
    model = seq2seq.Seq2Seq(seq2seq.Seq2SeqConfig(len(source_vocab), len(target_vocab), embedding_dim=8, hidden_dim=16,
                                  dropout=0.0)).eval()
    translator = Translator(model, source_vocab, target_vocab, "zh-en", torch.device("cpu"))
    options = [(1, None, 0.6), (1, 3, 0.6), (1, 12, 0.6), (3, None, 0.6), (1, 5, 0.6), (3, 4, 1.0), (1, None, 0.6),
               (1, None, 0.6), (3, None, 0.6)]
    texts = [zh for zh, _ in PAIRS + PAIRS[:1]] + [PAIRS[0][0] + PAIRS[2][0]] * 2  # the last two: two sentences
    queries = [translator.query(zh, TranslationOptions(beam, limit, penalty))
               for zh, (beam, limit, penalty) in zip(texts, options, strict=True)]
    together = translator.translate_queries(queries)
    for query, translation in zip(queries, together, strict=True):
        [alone] = translator.translate([query.text], query.options)
        assert_same_answer(dataclasses.asdict(translation), dataclasses.asdict(alone))
        # This untrained model never ends a sentence: each stops at its text's limit, not at the batch's longest.
        longest = max(len(sentence.source_tokens) for sentence in translation.sentences)
        limit = query.options.max_length or default_max_length(longest)
        assert [len(sentence.target_tokens) for sentence in translation.sentences] == [limit] * len(
            split_sentences(query.text))


# ---- the batcher ---------------------------------------------------------------------------------


def upper(items: list[str]) -> list[str]:
    return [item.upper() for item in items]


def inputs(*texts: str, prepare: Callable[[str], str] = str) -> list[Callable[[], str]]:
    """A request's inputs as the batcher takes them: each a function that prepares it."""
    return [lambda text=text: prepare(text) for text in texts]


def check_released(pool: InferencePool) -> None:
    assert pool.admitted == 0 and pool.riding == 0 and pool.limiter.borrowed_tokens == 0


@pytest.mark.parametrize("max_size, sizes", [(8, [8, 8, 4]), (1, [1] * 20)])
def test_concurrent_requests_share_passes_of_at_most_max_size(max_size: int, sizes: list[int]):
    async def scenario() -> None:
        pool = InferencePool(max_concurrent=1, max_queued=32, timeout=5)
        calls: list[list[str]] = []
        observed: list[int] = []

        def predict(items: list[str]) -> list[str]:
            calls.append(items)
            return upper(items)

        batcher = Batcher(predict, pool, max_size=max_size, wait=0.05, observe=observed.append)
        answers = await asyncio.gather(*(batcher.submit(inputs(f"a{i}", f"b{i}")) for i in range(20)))
        assert answers == [[f"A{i}", f"B{i}"] for i in range(20)]
        assert observed == sizes and [len(c) for c in calls] == [2 * s for s in sizes]
        check_released(pool)

    asyncio.run(scenario())


def test_a_failing_input_fails_only_its_own_request():
    def prepare(text: str) -> str:
        if text == "refused":
            raise ValueError("the model cannot take this")
        return text

    def predict(items: list[str]) -> list[str]:
        if "poison" in items:
            raise RuntimeError("the pass broke")
        return upper(items)

    async def scenario() -> None:
        pool = InferencePool(max_concurrent=1, max_queued=8, timeout=5)
        batcher = Batcher(predict, pool, max_size=8, wait=0.05, observe=lambda n: None)
        answers = await asyncio.gather(batcher.submit(inputs("a", prepare=prepare)),
                                       batcher.submit(inputs("b", "refused", prepare=prepare)),
                                       batcher.submit(inputs("poison", prepare=prepare)),
                                       batcher.submit(inputs("c", "d", prepare=prepare)),
                                       return_exceptions=True)
        assert answers[0] == ["A"] and answers[3] == ["C", "D"]
        assert isinstance(answers[1], ValueError) and isinstance(answers[2], RuntimeError)
        check_released(pool)

    asyncio.run(scenario())


async def eventually(condition: Callable[[], bool], timeout: float = 60) -> None:
    """Return once ``condition()`` holds; a generous deadline, as two shared cores can stall for seconds."""
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "the condition did not come true in time"
        await asyncio.sleep(0.01)


class Gate:
    """Holds each batched pass that contains a "slow" item until the test lets one through."""

    def __init__(self) -> None:
        self.calls: list[list[str]] = []
        self.passes = threading.Semaphore(0)

    def predict(self, items: list[str]) -> list[str]:
        self.calls.append(items)
        if "slow" in items:
            assert self.passes.acquire(timeout=60), "the test never let the pass through"
        return upper(items)

    def let_one_through(self) -> None:
        self.passes.release()


def test_requests_that_give_up_leave_the_batch_and_capacity_intact():
    gate = Gate()

    async def scenario() -> None:
        pool = InferencePool(max_concurrent=1, max_queued=8, timeout=5)
        batcher = Batcher(gate.predict, pool, max_size=8, wait=0, observe=lambda n: None)
        # Cancelled while waiting for the busy worker: it is left out of the next batch.
        slow = asyncio.create_task(batcher.submit(inputs("slow")))
        await eventually(lambda: len(gate.calls) == 1)
        gives_up, stays = (asyncio.create_task(batcher.submit(inputs(text))) for text in ("gives up", "stays"))
        await eventually(lambda: pool.admitted == 3)  # both wait behind the slow pass
        gives_up.cancel()
        await eventually(gives_up.done)
        gate.let_one_through()
        assert await slow == ["SLOW"] and await stays == ["STAYS"]
        assert gate.calls == [["slow"], ["stays"]]
        # Cancelled while its batch runs: the others of the batch still get their answers.
        leaves, gets = (asyncio.create_task(batcher.submit(inputs(text))) for text in ("slow", "gets"))
        await eventually(lambda: len(gate.calls) == 3)
        leaves.cancel()
        await eventually(leaves.done)
        gate.let_one_through()
        assert await gets == ["GETS"] and leaves.cancelled()
        assert gate.calls[2] == ["slow", "gets"]
        check_released(pool)
        # Past the timeout: 504, and the worker slot is back once the pass ends.
        pool.timeout = 0.1
        with pytest.raises(InferenceTimeout):
            await batcher.submit(inputs("slow"))
        assert pool.limiter.borrowed_tokens == 1  # the pass is still held at the gate
        gate.let_one_through()
        await eventually(lambda: pool.limiter.borrowed_tokens == 0)
        check_released(pool)

    asyncio.run(scenario())


def test_requests_past_capacity_are_429_while_a_batch_runs():
    gate = Gate()

    async def scenario() -> None:
        pool = InferencePool(max_concurrent=1, max_queued=1, timeout=5)
        batcher = Batcher(gate.predict, pool, max_size=8, wait=0.05, observe=lambda n: None)
        first, second, third = (asyncio.create_task(batcher.submit(inputs(t))) for t in ("slow", "b", "c"))
        await eventually(third.done)
        assert isinstance(third.exception(), OverCapacity)
        gate.let_one_through()
        assert await first == ["SLOW"] and await second == ["B"]
        check_released(pool)

    asyncio.run(scenario())


# ---- the live service ----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def batching_server(checkpoint_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """The service on the BERT and three classifier checkpoints (one with character n-grams, whose requests
    carry spelled tokens), one worker and a long window: concurrent requests are sure to meet in batches."""
    root = tmp_path_factory.mktemp("batching-checkpoints")
    for name in ("bert", "clf-cnn", "clf-lstm", "seq2seq-zh-en", "seq2seq-en-zh"):
        (root / name).symlink_to(checkpoint_dir / name)
    run_training("classifier", "--arch", "cnn", "--profile", "tiny", "--char-ngrams", "3-5", "--ngram-buckets", "500",
                 "--name", "cnn-ngrams", "--out", str(root))
    server = Service(root, tmp_path_factory.mktemp("logs") / "batching-server.log", BATCH_WAIT_MS="100",
                    MAX_BATCH_SIZE="8", MAX_CONCURRENT_INFERENCES="1", MAX_QUEUED_INFERENCES="64")
    yield server.url
    server.stop()


def batch_sizes(metrics_text: str, model: str) -> tuple[float, float]:
    """(batches, batches of one request) of ``model`` from the Prometheus text."""
    samples = {(s.name, s.labels.get("le")): s.value for family in text_string_to_metric_families(metrics_text)
               if family.name == "lineage_batch_size" for s in family.samples if s.labels["model"] == model}
    return samples[("lineage_batch_size_count", None)], samples[("lineage_batch_size_bucket", "1.0")]


def test_concurrent_requests_are_batched_and_answered_as_if_alone(batching_server: str):
    requests = [("/v1/fill-mask", {"text": f"{text} [MASK]", "top_k": k}) for k, text in enumerate(TEXTS, 1)]
    requests += [("/v1/fill-mask", {"text": "[MASK] and [MASK]", "targets": ["love", "death"]})]
    requests += [("/v1/classify", {"texts": TEXTS[: i + 1], "model": model})
                 for i in range(len(TEXTS)) for model in ("cnn", "lstm", "clf-cnn-ngrams")]
    requests += [("/v1/translate", {"texts": [zh for zh, _ in PAIRS[i:i + 2]], "max_length": 3 + 2 * i})
                 for i in range(len(PAIRS))]
    requests += [("/v1/translate", {"text": zh, "beam_size": 2}) for zh, _ in PAIRS[:3]]
    requests += [("/v1/translate", {"text": en, "direction": "en-zh"}) for _, en in PAIRS]
    with httpx.Client(base_url=batching_server, timeout=60) as client:
        alone = [client.post(path, json=body) for path, body in requests]

    async def together() -> list[httpx.Response]:
        async with httpx.AsyncClient(base_url=batching_server, timeout=60) as client:
            return await asyncio.gather(*(client.post(path, json=body) for path, body in requests))

    for (path, _), batched, single in zip(requests, asyncio.run(together()), alone, strict=True):
        assert batched.status_code == single.status_code == 200
        assert_same_answer(batched.json(), single.json(), ROUNDED_TO_4_PLACES if path == "/v1/translate" else 1e-5)
    metrics = httpx.get(batching_server + "/metrics").text
    for model in ("bert", "clf-cnn", "clf-lstm", "clf-cnn-ngrams", "seq2seq-zh-en", "seq2seq-en-zh"):
        batches, of_one = batch_sizes(metrics, model)
        assert of_one < batches  # some batch answered more than one request


def test_refused_input_in_a_batch_is_422_and_the_others_are_answered(batching_server: str):
    # a target of several word pieces is refused by the pipeline as the batch is prepared, not by the schema
    bodies = [{"text": "to be or not to [MASK]"}, {"text": "the [MASK]", "targets": ["xqzjvwk"]},
              {"text": "[MASK] of the king"}]

    async def together() -> list[httpx.Response]:
        async with httpx.AsyncClient(base_url=batching_server, timeout=60) as client:
            return await asyncio.gather(*(client.post("/v1/fill-mask", json=body) for body in bodies))

    statuses = [response.status_code for response in asyncio.run(together())]
    assert statuses == [200, 422, 200]
