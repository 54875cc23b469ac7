"""Hostile and careless clients against the live server: never a 5xx, a clear 4xx in the route's own error
shape, in bounded time; and each way such clients once got a 5xx, a hang or a silent cut, one by one (those
of generations past the request timeout and of streams that fail midway are in tests/test_limits.py)."""

from __future__ import annotations

import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from app.settings import get_settings
from models.sampling import TextAssembler
from models.tokenizers import CharTokenizer

from .conftest import API_KEY, Service
from .hostile import RAW_BODIES, ROUTES, Route, encode, hostile_body

LIMITS = get_settings()
EXAMPLES_PER_ROUTE = 25  # 22 routes: 550 hostile requests, plus 40 to the routes that take no body
SECONDS_PER_REQUEST = 30  # generous: the machine is shared; a request that hangs takes far longer
PROJECT_ROUTES = [r for r in ROUTES if not r.openai and not r.body.get("stream")]


def data_lines(response: httpx.Response) -> list[str]:
    return [line.removeprefix("data: ") for line in response.text.splitlines() if line.startswith("data: ")]


def assert_error_shape(route: Route, response: httpx.Response) -> None:
    body = response.json()
    if route.openai:
        assert set(body) == {"error"} and set(body["error"]) == {"message", "type", "param", "code"}, body
        assert body["error"]["message"] and body["error"]["type"] in ("invalid_request_error", "authentication_error",
                                                                     "rate_limit_error")
    else:
        assert set(body) == {"detail"}, body
        detail = body["detail"]
        assert isinstance(detail, str) and detail or all(set(e) == {"type", "loc", "msg"} for e in detail), body


def assert_answered(route: Route, response: httpx.Response) -> None:
    """A 2xx of the route's kind, or a 4xx in its error shape; never a 5xx."""
    assert response.status_code < 500, response.text[:500]
    if response.status_code >= 400:
        assert_error_shape(route, response)
    elif response.headers["content-type"].startswith("text/event-stream"):
        assert data_lines(response)[-1] == "[DONE]"
    elif route.path.endswith(".png"):
        assert response.content.startswith(b"\x89PNG")
    else:
        assert isinstance(response.json(), dict)


@pytest.fixture(scope="module")
def http(server: str) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=server, timeout=SECONDS_PER_REQUEST * 2) as client:
        yield client


# ---- every route, whatever is sent ---------------------------------------------------------------------


@pytest.mark.parametrize("route", ROUTES, ids=[r.label for r in ROUTES])
def test_hostile_bodies_get_a_4xx_in_the_routes_shape_in_bounded_time(route: Route, http: httpx.Client):
    @given(request=hostile_body(route))
    @settings(max_examples=EXAMPLES_PER_ROUTE, deadline=None, database=None,
              suppress_health_check=list(HealthCheck))
    def check(request: tuple[bytes, str]) -> None:
        body, content_type = request
        started = time.monotonic()
        response = http.post(route.path, content=body, headers={"Content-Type": content_type})
        assert time.monotonic() - started < SECONDS_PER_REQUEST
        assert_answered(route, response)

    check()


@pytest.mark.parametrize("method, path", [("GET", "/"), ("GET", "/health"), ("GET", "/ready"), ("GET", "/metrics"),
                                          ("GET", "/v1/models"), ("GET", "/openapi.json"),
                                          ("POST", "/v1/admin/reload"), ("DELETE", "/v1/translate")])
def test_routes_that_take_no_body_shrug_off_hostile_ones(method: str, path: str, http: httpx.Client):
    examples = 2 if path == "/v1/admin/reload" else 5  # a reload reads every checkpoint again

    @given(body=RAW_BODIES | st.binary(max_size=64))
    @settings(max_examples=examples, deadline=None, database=None, suppress_health_check=list(HealthCheck))
    def check(body: bytes) -> None:
        response = http.request(method, path, content=body, headers={"Content-Type": "application/json"})
        assert response.status_code < 500, response.text[:300]
        if response.status_code >= 400:
            assert "detail" in response.json()

    check()


# ---- 1. non-finite numbers and lone surrogates ---------------------------------------------------------


NUMBER_FIELDS = {"/v1/word2vec/most-similar": "topn", "/v1/translate": "beam_size", "/v1/fill-mask": "top_k",
                 "/v1/generate": "temperature", "/v1/completions": "top_p"}
TEXT_FIELDS = {"/v1/word2vec/similarity": "word_a", "/v1/translate": "texts", "/v1/translate/attention.png": "text",
               "/v1/fill-mask": "text", "/v1/next-sentence": "text_b", "/v1/classify": "texts",
               "/v1/generate": "prompt", "/v1/completions": "prompt", "/v1/attention": "text_b"}


@pytest.mark.parametrize("route", [r for r in ROUTES if r.path in NUMBER_FIELDS and not r.body.get("stream")],
                         ids=lambda r: r.path)
@pytest.mark.parametrize("number", ["NaN", "Infinity", "-Infinity"])
def test_non_finite_numbers_are_refused_naming_the_field(route: Route, number: str, server: str):
    name = NUMBER_FIELDS[route.path]
    text = encode({**route.body, name: 0.5}).decode().replace(f'"{name}": 0.5', f'"{name}": {number}')
    with httpx.Client(base_url=server, timeout=60) as client:
        response = client.post(route.path, content=text, headers={"Content-Type": "application/json"})
        assert response.status_code == (400 if route.openai else 422), response.text
        body = response.json()
        if route.openai:
            assert body["error"]["param"] == name and "finite" in body["error"]["message"]
        else:
            [error] = body["detail"]
            assert error["loc"] == ["body", name] and error["type"] in ("finite_number", "int_type")
        assert response.headers.get("connection") != "close"
        assert client.get("/health").status_code == 200  # on the same connection


@pytest.mark.parametrize("route", [r for r in ROUTES if r.path in TEXT_FIELDS and not r.body.get("stream")],
                         ids=lambda r: r.path)
def test_lone_surrogates_are_refused_naming_the_field(route: Route, http: httpx.Client):
    name = TEXT_FIELDS[route.path]
    value = ["我们\ud800"] if isinstance(route.body.get(name), list) else "king\udc00 [MASK]"
    response = http.post(route.path, content=encode({**route.body, name: value}),
                         headers={"Content-Type": "application/json"})
    assert response.status_code == (400 if route.openai else 422), response.text
    assert name in response.text and "surrogate" in response.text


# ---- 2. stop strings ------------------------------------------------------------------------------------


def test_a_long_stop_string_is_refused_naming_its_limit(http: httpx.Client):
    response = http.post("/v1/generate", json={"prompt": "ROMEO:", "stop": "x" * 500_000})
    assert response.status_code == 422 and "stop" in response.text
    assert f"at most {LIMITS.max_stop_length} characters" in response.text
    response = http.post("/v1/completions", json={"prompt": "ROMEO:", "stop": ["ab"] * (LIMITS.max_stop_sequences + 1)})
    assert response.status_code == 400 and response.json()["error"]["param"] == "stop"


def test_stop_checking_is_linear_in_the_text():
    """The worst case for a naive check: text that keeps almost matching a long stop sequence."""
    tokenizer = CharTokenizer.train(["ab"])
    stop = "a" * 2000 + "b"
    a = tokenizer.encode("a")[0]
    assembler = TextAssembler(tokenizer, stop=(stop, "a" * 1999 + "c"))
    started = time.perf_counter()
    shown = "".join(assembler.push(a) for _ in range(20_000))
    assert time.perf_counter() - started < 2.0  # about 0.1 s; checking each prefix at each token takes minutes
    assert shown == "a" * (20_000 - 2000)  # the tail that could still begin a stop sequence is held back
    assert assembler.push(tokenizer.encode("b")[0]) == "" and assembler.stopped
    assert assembler.text == "a" * (20_000 - 2000)


# ---- 3. replies too large to send -----------------------------------------------------------------------


def test_a_reply_over_max_response_bytes_is_refused_before_any_inference(http: httpx.Client):
    texts = ["我们明天在学校见面吧" * 20] * LIMITS.max_translate_texts
    started = time.monotonic()
    response = http.post("/v1/translate", json={"texts": texts, "max_length": LIMITS.max_translation_length})
    assert response.status_code == 422 and "MAX_RESPONSE_BYTES" in response.json()["detail"]
    response = http.post("/v1/fill-mask", json={"text": "[MASK] " * 200, "top_k": LIMITS.max_top_k})
    assert response.status_code == 422 and "MAX_RESPONSE_BYTES" in response.json()["detail"]
    assert time.monotonic() - started < 5  # no decoding of 32 sentences, no forward pass
    fewer = http.post("/v1/translate", json={"texts": texts[:4], "max_length": LIMITS.max_translation_length})
    assert fewer.status_code == 200 and len(fewer.content) < LIMITS.max_response_bytes


# ---- 5, 6, 7. bodies too large, undecodable, and errors raised below the routes ----------------------------


def chunks(total: int, size: int = 65_536) -> Iterator[bytes]:
    for start in range(0, total, size):
        yield b"x" * min(size, total - start)


@pytest.mark.parametrize("method, path", [("POST", "/v1/generate"), ("POST", "/v1/completions"), ("GET", "/")])
def test_a_chunked_body_over_the_limit_is_413(method: str, path: str, server: str):
    with httpx.Client(base_url=server, timeout=60) as client:
        response = client.request(method, path, content=chunks(LIMITS.max_body_bytes + 1),
                                  headers={"Content-Type": "application/json"})
        assert "content-length" not in response.request.headers  # sent chunked
        assert response.status_code == 413, response.text
        message = response.json()["error"]["message"] if path == "/v1/completions" else response.json()["detail"]
        assert "MAX_BODY_BYTES" in message
    with httpx.Client(base_url=server, timeout=60) as client:  # and the service is none the worse
        assert client.get("/").status_code == 200


@pytest.mark.parametrize("body, content_type, reason", [
    ('{"prompt": "café"}'.encode("latin-1"), "application/json; charset=latin-1", "not UTF-8"),
    (b"\xff\xfe{\x00}\x00", "application/json", "not UTF-8"),
    (b"[" * 100_000 + b"]" * 100_000, "application/json", "nested too deeply"),
    (b'{"prompt": "ROMEO:", "seed": ' + b"7" * 5000 + b"}", "application/json", "4300 digits"),
    (b'{"prompt": "ROMEO:",}', "application/json", "JSON decode error"),
])
def test_undecodable_bodies_are_422_saying_why(body: bytes, content_type: str, reason: str, http: httpx.Client):
    response = http.post("/v1/generate", content=body, headers={"Content-Type": content_type})
    assert response.status_code == 422, response.text
    assert reason in response.json()["detail"][0]["msg"]
    response = http.post("/v1/completions", content=body, headers={"Content-Type": content_type})
    assert response.status_code == 400 and reason in response.json()["error"]["message"]


def test_errors_raised_below_the_openai_route_come_in_openai_shape(http: httpx.Client):
    for response in (http.get("/v1/completions"),
                     http.post("/v1/completions", content=b"{", headers={"Content-Type": "application/json"}),
                     http.post("/v1/completions", content=b"x" * (LIMITS.max_body_bytes + 1))):
        assert 400 <= response.status_code < 500
        assert set(response.json()) == {"error"}, response.text


# ---- 10. unknown fields --------------------------------------------------------------------------------------


@pytest.mark.parametrize("route", PROJECT_ROUTES, ids=lambda r: r.path)
def test_unknown_fields_on_the_projects_routes_are_422_naming_them(route: Route, http: httpx.Client):
    response = http.post(route.path, json={**route.body, "temprature": 0})
    assert response.status_code == 422
    [error] = response.json()["detail"]
    assert error["loc"] == ["body", "temprature"] and error["type"] == "extra_forbidden"


def test_the_openai_route_takes_every_openai_field_at_a_neutral_value_and_refuses_others(http: httpx.Client):
    neutral = {"model": "gpt", "prompt": "ROMEO:", "best_of": 1, "echo": False, "frequency_penalty": 0,
               "logit_bias": {}, "logprobs": None, "max_tokens": 4, "n": 1, "presence_penalty": 0, "seed": 3,
               "stop": None, "stream": False, "stream_options": None, "suffix": None, "temperature": 1, "top_p": 1,
               "user": "someone"}
    assert http.post("/v1/completions", json=neutral).status_code == 200
    for name, value in (("logprobs", 6), ("suffix", "x"), ("best_of", 2), ("presence_penalty", 0.5),
                        ("frequency_penalty", -1), ("logit_bias", {"50256": -100}), ("max_tokens", 0),
                        ("stream_options", {"include_usage": True}), ("temprature", 1)):
        response = http.post("/v1/completions", json={**neutral, name: value})
        assert response.status_code == 400, (name, response.text)
        assert response.json()["error"]["param"] == name, response.text


# ---- 11. the key before the body ------------------------------------------------------------------------------


@pytest.mark.parametrize("path", ["/v1/generate", "/v1/completions", "/v1/translate", "/v1/admin/reload"])
def test_without_the_key_any_body_is_401(keyed_server: str, path: str):
    with httpx.Client(base_url=keyed_server, timeout=60) as client:
        for body in (b"{bad json", b"\xff\xfe", b"[" * 100_000):
            response = client.post(path, content=body, headers={"Content-Type": "application/json"})
            assert response.status_code == 401, response.text
            assert response.headers["www-authenticate"] == "Bearer"
        response = client.post(path, content=chunks(LIMITS.max_body_bytes + 1))
        assert response.status_code == 401
        keyed = client.post(path, content=b"{bad json", headers={"Content-Type": "application/json",
                                                                  "Authorization": f"Bearer {API_KEY}"})
        assert keyed.status_code in (200, 400, 422)  # the reload takes no body; the others refuse this one


def test_limits_given_as_flags_reach_the_request_schemas(checkpoint_dir: Path, tmp_path: Path):
    root = tmp_path / "checkpoints"
    root.mkdir()
    (root / "gpt").symlink_to(checkpoint_dir / "gpt")
    server = Service(root, tmp_path / "server.log", command=[sys.executable, "-m", "app", "--max-text-length", "12"])
    try:
        with httpx.Client(base_url=server.url, timeout=60) as client:
            assert client.post("/v1/generate", json={"prompt": "x" * 12, "max_new_tokens": 1}).status_code == 200
            response = client.post("/v1/generate", json={"prompt": "x" * 13, "max_new_tokens": 1})
            assert response.status_code == 422 and "at most 12 characters" in response.text
            schema = client.get("/openapi.json").json()["components"]["schemas"]["GenerateRequest"]
            assert schema["properties"]["prompt"]["maxLength"] == 12
    finally:
        server.stop()
