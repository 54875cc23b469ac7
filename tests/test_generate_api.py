"""/v1/generate and the OpenAI-compatible /v1/completions against the live server (tiny GPT checkpoint)."""

from __future__ import annotations

import json
from pathlib import Path

import httpx
import openai
import pytest

from . import reference

PROMPT = "ROMEO:\n"
LANGUAGE_MODELS = {"gpt": "gpt", "lstm": "lm-lstm"}  # a transformer and a recurrent model: name -> checkpoint


def events(response: httpx.Response) -> list[dict | str]:
    """The data of each Server-Sent Event: parsed JSON, or the string ``[DONE]``."""
    out: list[dict | str] = []
    for line in response.iter_lines():
        if line.startswith("data: "):
            data = line.removeprefix("data: ")
            out.append(data if data == "[DONE]" else json.loads(data))
    return out


def generate(client: httpx.Client, **body: object) -> dict:
    response = client.post("/v1/generate", json={"prompt": PROMPT, **body})
    assert response.status_code == 200, response.text
    return response.json()


# ---- /v1/generate ------------------------------------------------------------------------------------


def test_generate_returns_text_finish_reason_and_usage(client: httpx.Client) -> None:
    body = generate(client, max_new_tokens=12, seed=1)
    assert body["model"] == "gpt"
    [result] = body["results"]
    assert isinstance(result["text"], str) and result["text"]
    assert result["finish_reason"] in ("stop", "length")
    usage = body["usage"]
    assert usage["prompt_tokens"] > 0 and 0 < usage["completion_tokens"] <= 12
    assert usage["total_tokens"] == usage["prompt_tokens"] + usage["completion_tokens"]


def test_n_samples_come_back_as_separate_results(client: httpx.Client) -> None:
    body = generate(client, max_new_tokens=10, n=3, seed=2, temperature=1.2)
    assert len(body["results"]) == 3
    assert len({r["text"] for r in body["results"]}) > 1  # sampled independently
    assert body["usage"]["completion_tokens"] <= 30


def test_same_seed_same_text_other_seed_other_text(client: httpx.Client) -> None:
    first = generate(client, max_new_tokens=20, seed=11, n=2)
    again = generate(client, max_new_tokens=20, seed=11, n=2)
    other = generate(client, max_new_tokens=20, seed=12, n=2)
    assert first["results"] == again["results"]
    assert first["results"] != other["results"]


def test_greedy_decoding_ignores_the_seed(client: httpx.Client) -> None:
    a = generate(client, max_new_tokens=15, temperature=0, seed=1)
    b = generate(client, max_new_tokens=15, temperature=0, seed=2)
    assert a["results"] == b["results"]


def test_stop_sequence_cuts_the_text_before_it(client: httpx.Client) -> None:
    free = generate(client, max_new_tokens=40, seed=5)["results"][0]["text"]
    assert len(free) > 10
    stop = free[len(free) // 2:len(free) // 2 + 2]
    expected = free[:free.find(stop)]
    cut = generate(client, max_new_tokens=40, seed=5, stop=[stop, "@@@"])["results"][0]
    assert cut == {"text": expected, "finish_reason": "stop"}


@pytest.fixture(scope="module")
def recomputed(checkpoint_dir: Path) -> dict[str, reference.LanguageModel]:
    return {name: reference.language_model(checkpoint_dir, checkpoint) for name, checkpoint in LANGUAGE_MODELS.items()}


@pytest.mark.parametrize("model", LANGUAGE_MODELS)
def test_greedy_text_is_greedy_decoding_recomputed_from_the_checkpoint(client: httpx.Client, recomputed: dict,
                                                                       model: str) -> None:
    text, tokens, finish_reason = reference.greedy_continuation(recomputed[model], PROMPT, 40)
    body = generate(client, model=model, max_new_tokens=40, temperature=0)
    assert body["results"] == [{"text": text, "finish_reason": finish_reason}]
    assert body["usage"]["completion_tokens"] == tokens


@pytest.mark.parametrize("narrow", [{"top_k": 1}, {"top_p": 1e-6}])
@pytest.mark.parametrize("model", LANGUAGE_MODELS)
def test_top_k_1_or_a_tiny_top_p_at_temperature_1_gives_the_greedy_text_for_any_seed(
        client: httpx.Client, recomputed: dict, model: str, narrow: dict) -> None:
    text, _, finish_reason = reference.greedy_continuation(recomputed[model], PROMPT, 30)
    sampled = {generate(client, model=model, max_new_tokens=30, temperature=1.0, seed=seed)["results"][0]["text"]
               for seed in (1, 2, 3)}
    assert len(sampled) > 1  # unfiltered, these seeds give different texts
    for seed in (1, 2, 3):
        body = generate(client, model=model, max_new_tokens=30, temperature=1.0, seed=seed, **narrow)
        assert body["results"] == [{"text": text, "finish_reason": finish_reason}], seed


@pytest.mark.parametrize("model", LANGUAGE_MODELS)
def test_a_repetition_penalty_changes_the_text_as_recomputed(client: httpx.Client, recomputed: dict,
                                                            model: str) -> None:
    plain, _, _ = reference.greedy_continuation(recomputed[model], PROMPT, 40)
    text, tokens, finish_reason = reference.greedy_continuation(recomputed[model], PROMPT, 40, repetition_penalty=1.8)
    assert text != plain
    body = generate(client, model=model, max_new_tokens=40, temperature=0, repetition_penalty=1.8)
    assert body["results"] == [{"text": text, "finish_reason": finish_reason}]
    assert body["usage"]["completion_tokens"] == tokens


def test_stream_sends_pieces_then_finish_and_usage_then_done(client: httpx.Client) -> None:
    whole = generate(client, max_new_tokens=25, seed=9)
    with client.stream("POST", "/v1/generate",
                       json={"prompt": PROMPT, "max_new_tokens": 25, "seed": 9, "stream": True}) as response:
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/event-stream")
        data = events(response)
    assert data[-1] == "[DONE]"
    pieces, final = data[:-2], data[-2]
    assert pieces and all(set(p) == {"text"} for p in pieces)
    assert "".join(p["text"] for p in pieces) == whole["results"][0]["text"]
    assert final == {"finish_reason": whole["results"][0]["finish_reason"], "usage": whole["usage"]}


@pytest.mark.parametrize("change", [
    {"prompt": ""},
    {"max_new_tokens": 513},
    {"max_new_tokens": 0},
    {"temperature": -0.1},
    {"temperature": 2.5},
    {"top_p": 0},
    {"top_p": 1.5},
    {"top_k": -1},
    {"repetition_penalty": 0},
    {"n": 0},
    {"n": 9},
    {"stop": ["a", "b", "c", "d", "e"]},
    {"stop": [""]},
    {"seed": -1},
    {"stream": True, "n": 2},
    {"prompt": "x" * 2001},
    {"prompt": 42},
])
def test_invalid_requests_are_422(client: httpx.Client, change: dict) -> None:
    response = client.post("/v1/generate", json={"prompt": PROMPT, **change})
    assert response.status_code == 422, response.text
    assert "detail" in response.json()


def test_a_gpt_not_loaded_is_503_naming_the_training_command(empty_client: httpx.Client) -> None:
    response = empty_client.post("/v1/generate", json={"prompt": PROMPT})
    assert response.status_code == 503
    assert "`python -m training gpt`" in response.json()["detail"]


def test_an_unknown_model_is_404_listing_the_known_ones(client: httpx.Client) -> None:
    response = client.post("/v1/generate", json={"prompt": PROMPT, "model": "nope"})
    assert response.status_code == 404
    assert "gpt" in response.json()["detail"]


def test_a_model_that_is_not_a_language_model_is_422(client: httpx.Client) -> None:
    response = client.post("/v1/generate", json={"prompt": PROMPT, "model": "word2vec-sg"})
    assert response.status_code == 422
    assert "not a language model" in response.json()["detail"]


# ---- /v1/completions with the official openai client ------------------------------------------------


def test_openai_client_completion(openai_client: openai.OpenAI) -> None:
    completion = openai_client.completions.create(model="gpt", prompt=PROMPT, max_tokens=12, n=2, seed=3,
                                                  temperature=0.9, top_p=0.95, stop=["\n\n"])
    assert completion.object == "text_completion" and completion.model == "gpt"
    assert [c.index for c in completion.choices] == [0, 1]
    assert all(c.finish_reason in ("stop", "length") for c in completion.choices)
    assert completion.usage.total_tokens == completion.usage.prompt_tokens + completion.usage.completion_tokens
    again = openai_client.completions.create(model="gpt", prompt=PROMPT, max_tokens=12, n=2, seed=3,
                                             temperature=0.9, top_p=0.95, stop=["\n\n"])
    assert [c.text for c in again.choices] == [c.text for c in completion.choices]


def test_openai_client_stream_matches_the_plain_completion(openai_client: openai.OpenAI) -> None:
    plain = openai_client.completions.create(model="gpt", prompt=PROMPT, max_tokens=20, seed=4)
    chunks = list(openai_client.completions.create(model="gpt", prompt=PROMPT, max_tokens=20, seed=4, stream=True,
                                                   stream_options={"include_usage": True}))
    text = "".join(c.choices[0].text for c in chunks if c.choices)
    assert text == plain.choices[0].text
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == plain.choices[0].finish_reason
    assert chunks[-1].usage.completion_tokens == plain.usage.completion_tokens
    assert len({c.id for c in chunks}) == 1


def test_openai_client_extra_fields_and_echo(openai_client: openai.OpenAI) -> None:
    completion = openai_client.completions.create(model="gpt", prompt=[PROMPT, "JULIET:\n"], max_tokens=5,
                                                  echo=True, extra_body={"top_k": 5, "repetition_penalty": 1.2})
    assert [c.index for c in completion.choices] == [0, 1]
    assert completion.choices[0].text.startswith(PROMPT) and completion.choices[1].text.startswith("JULIET:\n")


def test_openai_client_raises_its_own_errors(openai_client: openai.OpenAI) -> None:
    with pytest.raises(openai.BadRequestError) as bad:
        openai_client.completions.create(model="gpt", prompt=PROMPT, max_tokens=10_000)
    assert "512" in bad.value.body["message"] and bad.value.body["param"] == "max_tokens"
    with pytest.raises(openai.NotFoundError) as unknown:
        openai_client.completions.create(model="nope", prompt=PROMPT)
    assert unknown.value.body["code"] == "model_not_found"


@pytest.mark.parametrize("change", [
    {"prompt": ""}, {"prompt": []}, {"max_tokens": 600}, {"temperature": 3}, {"top_p": 0}, {"n": 0},
    {"logprobs": 6}, {"presence_penalty": 0.5}, {"best_of": 3}, {"suffix": "x"}, {"unknown_field": 1},
])
def test_completions_errors_have_the_openai_shape(client: httpx.Client, change: dict) -> None:
    response = client.post("/v1/completions", json={"model": "gpt", "prompt": PROMPT, **change})
    assert response.status_code == 400, response.text
    error = response.json()["error"]
    assert error["type"] == "invalid_request_error" and error["message"]
    assert set(error) == {"message", "type", "param", "code"}


def test_completions_missing_model_is_503_in_openai_shape(empty_client: httpx.Client) -> None:
    response = empty_client.post("/v1/completions", json={"model": "gpt", "prompt": PROMPT})
    assert response.status_code == 503
    assert response.json()["error"]["code"] == "model_not_loaded"
    assert "python -m training gpt" in response.json()["error"]["message"]
