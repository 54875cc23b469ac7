"""The RNN, LSTM and GRU language models through /v1/generate and /v1/completions (live server)."""

from __future__ import annotations

import json

import httpx
import pytest

CELLS = ["rnn", "lstm", "gru"]
PROMPT = "ROMEO:\n"


def generate(client: httpx.Client, **body: object) -> dict:
    response = client.post("/v1/generate", json={"prompt": PROMPT, **body})
    assert response.status_code == 200, response.text
    return response.json()


@pytest.mark.parametrize("cell", CELLS)
def test_each_recurrent_model_generates_by_its_cell_name(client: httpx.Client, cell: str) -> None:
    body = generate(client, model=cell, max_new_tokens=30, seed=3)
    assert body["model"] == f"lm-{cell}"
    [result] = body["results"]
    assert result["finish_reason"] == "length"  # a character model has no end-of-text token
    assert 0 < len(result["text"]) <= 30  # one token per character (held back if it were U+FFFD)
    assert body["usage"] == {"prompt_tokens": len(PROMPT), "completion_tokens": 30, "total_tokens": len(PROMPT) + 30}


@pytest.mark.parametrize("cell", CELLS)
def test_checkpoint_id_works_too(client: httpx.Client, cell: str) -> None:
    assert generate(client, model=f"lm-{cell}", max_new_tokens=5)["model"] == f"lm-{cell}"


def test_same_seed_same_text_and_samples_differ(client: httpx.Client) -> None:
    first = generate(client, model="lstm", max_new_tokens=40, seed=5, n=3, temperature=1.2)
    again = generate(client, model="lstm", max_new_tokens=40, seed=5, n=3, temperature=1.2)
    assert first["results"] == again["results"]
    assert len({r["text"] for r in first["results"]}) > 1


def test_sampling_controls_and_stop_sequences(client: httpx.Client) -> None:
    greedy = generate(client, model="gru", max_new_tokens=25, temperature=0)
    assert greedy == generate(client, model="gru", max_new_tokens=25, temperature=0, seed=99)
    body = generate(client, model="rnn", max_new_tokens=60, top_k=5, top_p=0.9, repetition_penalty=1.3,
                    stop=["e"], seed=1)
    [result] = body["results"]
    assert "e" not in result["text"]
    assert result["finish_reason"] in ("stop", "length")


def test_streaming_from_a_recurrent_model(client: httpx.Client) -> None:
    with client.stream("POST", "/v1/generate", json={"prompt": PROMPT, "model": "lstm", "max_new_tokens": 20,
                                                     "stream": True, "seed": 4}) as response:
        assert response.status_code == 200
        data = [line.removeprefix("data: ") for line in response.iter_lines() if line.startswith("data: ")]
    assert data[-1] == "[DONE]"
    events = [json.loads(d) for d in data[:-1]]
    text = "".join(e.get("text", "") for e in events)
    assert events[-1]["finish_reason"] == "length"
    assert text == generate(client, model="lstm", max_new_tokens=20, seed=4)["results"][0]["text"]


def test_openai_completions_with_a_recurrent_model(client: httpx.Client) -> None:
    response = client.post("/v1/completions", json={"model": "gru", "prompt": PROMPT, "max_tokens": 10, "n": 2,
                                                    "seed": 1})
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["model"] == "lm-gru" and len(body["choices"]) == 2
    assert all(c["text"] and c["finish_reason"] == "length" for c in body["choices"])


def test_language_model_metrics_carry_validation_bits_per_character_and_the_checks_during_training(
        client: httpx.Client) -> None:
    cards = {m["id"]: m for m in client.get("/v1/models").json()["data"]}
    for cell in CELLS:
        metrics = cards[f"lm-{cell}"]["metrics"]
        assert 0.0 < metrics["val_bpc"] < 10.0 and metrics["val_loss"] > 0
        (check,) = metrics["evaluations"]  # the tiny profile checks once, half-way, on a few windows
        assert check["step"] == 20 and check["seconds"] > 0 and check["val_loss"] > 0


def test_out_of_range_sampling_is_422(client: httpx.Client) -> None:
    response = client.post("/v1/generate", json={"prompt": PROMPT, "model": "lstm", "temperature": 3})
    assert response.status_code == 422


def test_a_recurrent_model_that_is_not_loaded_is_503_naming_the_command(empty_client: httpx.Client) -> None:
    response = empty_client.post("/v1/generate", json={"prompt": PROMPT, "model": "gru"})
    assert response.status_code == 503
    assert "python -m training lm --cell gru" in response.json()["detail"]
