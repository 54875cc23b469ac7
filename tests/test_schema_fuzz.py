"""Property-based fuzzing of every documented operation against the live server (schemathesis).

Three kinds of request reach each operation: schema-valid ones, most of them steered to reach a model (a
loaded model of the route's kind, vocabulary words for word2vec; fill-mask's schema already asks for a
``[MASK]``); schema-invalid ones; and the hostile bodies of ``tests/hostile.py`` (NaN, ±Infinity, lone
surrogates, sizes at and past every limit, deep nesting, undecodable bytes). Whatever is sent, the service
answers without a 5xx, with a documented status, content type and body, refuses every schema-invalid request
(400, 401, 413 or 422), and accepts every schema-valid one, or refuses it only for a reason the schema cannot
state (a sentence, not a field error: a reply over MAX_RESPONSE_BYTES, more tokens than the model's
positions). The server runs with a short REQUEST_TIMEOUT, so the largest generations end in a documented 504.

The random seed changes from run to run and is printed with any failure; ``FUZZ_SEED=<n>`` repeats a run.
"""

from __future__ import annotations

import json
import os
import random
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import schemathesis
from hypothesis import HealthCheck, given, seed, settings
from hypothesis import strategies as st
from schemathesis import GenerationMode
from schemathesis.checks import not_a_server_error
from schemathesis.config import NotAServerErrorConfig, PositiveDataAcceptanceConfig
from schemathesis.config._checks import NegativeDataRejectionConfig
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    negative_data_rejection,
    positive_data_acceptance,
    response_schema_conformance,
    status_code_conformance,
)

from app.main import create_app

from .hostile import ROUTES, hostile_body

SEED = int(os.environ.get("FUZZ_SEED") or random.SystemRandom().randrange(2**32))
EXAMPLES_PER_OPERATION = 70  # operations without a body have few distinct inputs and stop early
AT_LEAST = 50  # cases each operation with a body must have run; 14 of them: over 700 cases in all

SCHEMA = schemathesis.openapi.from_dict(create_app().openapi())
# Past this server's half-second REQUEST_TIMEOUT an inference is answered 504, as documented: the one 5xx
# it may give (the property test in test_hostile_clients.py allows none, at the usual timeout).
SCHEMA.config.checks.not_a_server_error = NotAServerErrorConfig(expected_statuses=["2xx", "3xx", "4xx", "504"])
SCHEMA.config.checks.positive_data_acceptance = PositiveDataAcceptanceConfig(
    expected_statuses=["2xx", "400", "404", "422", "504"])  # 400/422: see refused_only_for_what_the_schema_cannot_say
SCHEMA.config.checks.negative_data_rejection = NegativeDataRejectionConfig(
    expected_statuses=["400", "401", "413", "422"])
OPERATIONS = {op.label: op for op in (result.ok() for result in SCHEMA.get_all_operations())}

# route -> the loaded models a schema-valid request is steered to (short names and ids)
FITTING = {
    "/v1/word2vec/similarity": ["sg", "cbow", "word2vec-sg"],
    "/v1/word2vec/most-similar": ["sg", "cbow", "word2vec-cbow"],
    "/v1/translate": ["zh-en", "en-zh", "seq2seq-zh-en"],
    "/v1/translate/attention.png": ["zh-en", "en-zh", "seq2seq-en-zh"],
    "/v1/fill-mask": ["bert"],
    "/v1/next-sentence": ["bert"],
    "/v1/classify": ["mlp", "cnn", "rnn", "lstm", "gru", "bert", "clf-gru"],
    "/v1/generate": ["gpt", "rnn", "lstm", "gru", "lm-gru"],
    "/v1/completions": ["gpt", "rnn", "lstm", "gru", "lm-lstm"],
    "/v1/chat/completions": ["gpt", "lstm", "lm-gru"],
    "/tokenize": ["gpt", "rnn"],
    "/detokenize": ["gpt", "gru"],
    "/v1/embeddings": ["sg", "cbow", "bert", "word2vec-sg"],
    "/v1/word2vec/n-similarity": ["sg", "cbow"],
    "/v1/word2vec/doesnt-match": ["sg", "word2vec-cbow"],
    "/v1/word2vec/vectors": ["sg", "cbow"],
    "/v1/attention": ["bert", "gpt", "zh-en"],
    "/v1/attention.png": ["bert", "gpt", "seq2seq-en-zh"],
}


@schemathesis.check
def refused_only_for_what_the_schema_cannot_say(ctx: Any, response: Any, case: Any) -> bool | None:
    """A schema-valid request may be refused (400/422) only with a reason, never with field errors: the
    schema the service publishes and the validation it runs agree."""
    if case.meta is None or not case.meta.generation.mode.is_positive or response.status_code not in (400, 422):
        return None
    body = json.loads(response.content)
    if "error" in body:  # OpenAI's shape: field errors carry a code
        assert body["error"]["code"] is None, f"schema-valid request refused as invalid: {body}"
    else:
        assert isinstance(body["detail"], str), f"schema-valid request refused as invalid: {body}"
    return None


CHECKS = [not_a_server_error, status_code_conformance, content_type_conformance, response_schema_conformance,
          negative_data_rejection, positive_data_acceptance, refused_only_for_what_the_schema_cannot_say]


@pytest.fixture(scope="module")
def vocabulary(checkpoint_dir: Path) -> list[str]:
    """Words both word2vec models know."""
    words = [set(json.loads((checkpoint_dir / f"word2vec-{m}" / "vocab.json").read_text())["itos"])
             for m in ("sg", "cbow")]
    return sorted(words[0] & words[1])[:500]


def reaching(operation: Any, vocabulary: list[str]) -> st.SearchStrategy[Any]:
    """Schema-valid cases of ``operation``, steered to a loaded model of its kind and to known words."""
    fitting = FITTING.get(operation.path)

    @st.composite
    def steer(draw: st.DrawFn) -> Any:
        case = draw(operation.as_strategy(GenerationMode.POSITIVE))
        if fitting is None or not isinstance(case.body, dict):
            return case
        body = dict(case.body)
        body["model"] = draw(st.sampled_from(fitting))
        if operation.path.startswith("/v1/translate") and body["model"] in ("zh-en", "en-zh"):
            body["direction"] = body["model"]
        words = st.sampled_from(vocabulary)
        for name in ("word_a", "word_b"):
            if name in body:
                body[name] = draw(words)
        for name in ("positive", "negative", "ws1", "ws2", "words"):
            if body.get(name):
                body[name] = draw(st.lists(words, min_size=len(body[name]), max_size=len(body[name])))
        case.body = body
        return case

    return steer()


def hostile(operation: Any) -> list[st.SearchStrategy[Any]]:
    """The shared hostile bodies, as cases of ``operation``."""
    return [hostile_body(route).map(lambda request: operation.Case(body=request[0], media_type="application/json"))
            for route in ROUTES if route.path == operation.path and operation.method.upper() == "POST"]


@pytest.mark.parametrize("label", sorted(OPERATIONS))
def test_no_server_error_and_documented_responses(label: str, short_timeout_server: str, vocabulary: list[str]):
    operation = OPERATIONS[label]
    cases = st.one_of(operation.as_strategy(GenerationMode.POSITIVE), reaching(operation, vocabulary),
                      operation.as_strategy(GenerationMode.NEGATIVE), *hostile(operation))
    ran: list[Callable[[], None]] = []

    @seed(SEED)
    @given(case=cases)
    @settings(max_examples=EXAMPLES_PER_OPERATION, deadline=None, database=None,
              suppress_health_check=list(HealthCheck))
    def check(case: Any) -> None:
        ran.append(case)
        case.call_and_validate(base_url=short_timeout_server, timeout=60, checks=CHECKS)

    try:
        check()
    except Exception as failure:
        raise AssertionError(f"{label} failed; FUZZ_SEED={SEED} repeats this run") from failure
    has_body = "requestBody" in SCHEMA.raw_schema["paths"][operation.path][operation.method.lower()]
    assert len(ran) >= (AT_LEAST if has_body else 1), f"only {len(ran)} cases ran for {label}"
