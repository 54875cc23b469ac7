"""The BERT endpoints, /v1/fill-mask and /v1/next-sentence, against the live server."""

from __future__ import annotations

from pathlib import Path

import httpx
import pytest

from models.checkpoint import read_config

from . import reference


@pytest.fixture(scope="module")
def max_position(checkpoint_dir: Path) -> int:
    return read_config(checkpoint_dir / "bert")["model"]["max_position"]


def _fill(client: httpx.Client, **body) -> httpx.Response:
    return client.post("/v1/fill-mask", json=body)


def _check_items(items: list[dict], k: int) -> None:
    assert len(items) == k
    for item in items:
        assert set(item) == {"score", "token", "token_str", "sequence"}
        assert 0.0 <= item["score"] <= 1.0 and isinstance(item["token"], int) and item["token_str"]
    scores = [item["score"] for item in items]
    assert scores == sorted(scores, reverse=True)


def test_one_mask_gives_top_k_predictions_in_the_pipeline_shape(client: httpx.Client):
    response = _fill(client, text="To be, or not to be, that is the [MASK].")
    assert response.status_code == 200
    body = response.json()
    assert body["model"] == "bert" and len(body["predictions"]) == 1
    items = body["predictions"][0]
    _check_items(items, 5)  # top_k defaults to 5
    for item in items:
        assert "[MASK]" not in item["sequence"] and item["sequence"].startswith("to be, or not to be")
    assert len({item["token"] for item in items}) == 5


def test_several_masks_give_one_list_each_in_order(client: httpx.Client):
    response = _fill(client, text="My [MASK] is as boundless as the [MASK], my love as [MASK].", top_k=3)
    assert response.status_code == 200
    predictions = response.json()["predictions"]
    assert len(predictions) == 3
    for items in predictions:
        _check_items(items, 3)
        for item in items:
            assert item["sequence"].count("[MASK]") == 2  # only this mask is filled in


@pytest.mark.parametrize("top_k", [1, 50])
def test_top_k_bounds_are_accepted(client: httpx.Client, top_k: int):
    response = _fill(client, text="the [MASK] of the king", top_k=top_k)
    assert response.status_code == 200
    _check_items(response.json()["predictions"][0], top_k)


def test_targets_restrict_the_candidates(client: httpx.Client):
    response = _fill(client, text="O Romeo, Romeo, wherefore art [MASK] Romeo?",
                     targets=["thou", "The", "and"])
    assert response.status_code == 200
    items = response.json()["predictions"][0]
    _check_items(items, 3)
    assert {item["token_str"] for item in items} == {"thou", "the", "and"}  # lower-cased like the vocabulary
    fewer = _fill(client, text="O Romeo, Romeo, wherefore art [MASK] Romeo?", targets=["thou", "the", "and"],
                  top_k=1).json()
    assert len(fewer["predictions"][0]) == 1
    assert fewer["predictions"][0][0]["token_str"] == items[0]["token_str"]


def test_a_target_that_is_not_one_vocabulary_token_is_422_naming_it(client: httpx.Client):
    response = _fill(client, text="wherefore art [MASK] Romeo?",
                     targets=["thou", "antidisestablishmentarianism"])
    assert response.status_code == 422
    detail = response.json()["detail"]
    assert "antidisestablishmentarianism" in detail and "single vocabulary token" in detail
    assert "'thou'" not in detail


def test_next_sentence_gives_a_probability(client: httpx.Client):
    response = client.post("/v1/next-sentence", json={"text_a": "But, soft! what light breaks?",
                                                      "text_b": "It is the east."})
    assert response.status_code == 200
    body = response.json()
    assert body["model"] == "bert" and 0.0 <= body["is_next_probability"] <= 1.0


def test_next_sentence_is_the_nsp_heads_probability_for_the_pair_in_its_order(client: httpx.Client,
                                                                              checkpoint_dir: Path):
    model = reference.fill_mask_model(checkpoint_dir)
    first, second = "But, soft! what light breaks?", "It is the east."
    expected = {(a, b): reference.is_next_probability(model, a, b) for a, b in ((first, second), (second, first))}
    assert abs(expected[first, second] - expected[second, first]) > 1e-3  # the order matters to the model
    for (a, b), probability in expected.items():
        body = client.post("/v1/next-sentence", json={"text_a": a, "text_b": b}).json()
        assert body == {"is_next_probability": pytest.approx(probability, abs=1e-5), "model": "bert"}


def test_fill_mask_scores_are_the_mlm_heads_probabilities(client: httpx.Client, checkpoint_dir: Path):
    model = reference.fill_mask_model(checkpoint_dir)
    text = "My [MASK] is as boundless as the [MASK]."
    expected = reference.mask_probabilities(model, text)
    body = client.post("/v1/fill-mask", json={"text": text, "top_k": 4}).json()
    assert len(body["predictions"]) == len(expected) == 2
    for items, probabilities in zip(body["predictions"], expected, strict=True):
        best = probabilities.topk(4)
        assert [item["token"] for item in items] == best.indices.tolist()
        assert [item["score"] for item in items] == pytest.approx(best.values.tolist(), abs=1e-5)


def test_text_without_a_mask_is_422_saying_so(client: httpx.Client):
    response = _fill(client, text="To be, or not to be, that is the question.")
    assert response.status_code == 422
    assert "[MASK]" in str(response.json()["detail"])


def test_text_without_a_mask_is_malformed_whatever_the_model(client: httpx.Client, empty_client: httpx.Client):
    """The schema's pattern is checked with the rest of the body, before the model is looked up."""
    for served_by, model in ((client, "no-such-model"), (empty_client, "bert")):
        response = served_by.post("/v1/fill-mask", json={"text": "no mask here", "model": model})
        assert response.status_code == 422
        assert "[MASK]" in str(response.json()["detail"])


def test_input_longer_than_the_positions_is_422_naming_the_limit(client: httpx.Client, max_position: int):
    long_text = " ".join(["love"] * max_position) + " [MASK]"
    response = _fill(client, text=long_text)
    assert response.status_code == 422
    assert f"at most {max_position} tokens" in response.json()["detail"]
    response = client.post("/v1/next-sentence", json={"text_a": long_text, "text_b": "and death"})
    assert response.status_code == 422
    assert f"at most {max_position} tokens" in response.json()["detail"]


@pytest.mark.parametrize("body", [
    {"text": "the [MASK]", "top_k": 0},
    {"text": "the [MASK]", "top_k": 51},
    {"text": "the [MASK]", "top_k": "five"},
    {},
    {"text": ""},
    {"text": "   "},
    {"text": "x" * 2001 + " [MASK]"},
    {"text": "the [MASK]", "targets": []},
    {"text": "the [MASK]", "targets": [""]},
    {"text": "the [MASK]", "targets": "thou"},
    {"text": "the [MASK]", "model": "gpt"},
])
def test_malformed_fill_mask_requests_are_422(client: httpx.Client, body: dict):
    response = _fill(client, **body)
    assert response.status_code == 422
    assert response.json()["detail"]


@pytest.mark.parametrize("body", [
    {"text_a": "to be"},
    {"text_a": "", "text_b": "or not to be"},
    {"text_a": "to be", "text_b": "  "},
    {"text_a": "to be", "text_b": "or not", "model": "gpt"},
])
def test_malformed_next_sentence_requests_are_422(client: httpx.Client, body: dict):
    response = client.post("/v1/next-sentence", json=body)
    assert response.status_code == 422
    assert response.json()["detail"]


def test_model_not_loaded_is_503_naming_the_training_command(empty_client: httpx.Client):
    for path, body in (("/v1/fill-mask", {"text": "the [MASK]"}),
                       ("/v1/next-sentence", {"text_a": "to be", "text_b": "or not to be"})):
        response = empty_client.post(path, json=body)
        assert response.status_code == 503
        assert "python -m training bert" in response.json()["detail"]
