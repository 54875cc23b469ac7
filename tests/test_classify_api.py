"""/v1/classify against the live server: every classifier, batches, and every error case."""

from __future__ import annotations

import httpx
import pytest

from models.catalog import CATALOG

PASSAGE = ("KING HENRY: Once more unto the breach, dear friends, once more; or close the wall up with our "
           "English dead. In peace there's nothing so becomes a man as modest stillness and humility.")
GENRES = {"comedy", "history", "tragedy"}
WORD_MODELS = ["mlp", "cnn", "rnn", "lstm", "gru"]


def trained_classifiers() -> list[str]:
    """The classifiers `python -m training all` trains (BERT's only when it is a default checkpoint)."""
    return [e.name for e in CATALOG if e.family == "classifier" and e.default]


def test_every_word_level_classifier_is_trained_by_default() -> None:
    assert set(WORD_MODELS) <= set(trained_classifiers())


@pytest.mark.parametrize("model", trained_classifiers())
def test_classify_one_text_gives_a_label_and_genre_probabilities(client: httpx.Client, model: str) -> None:
    response = client.post("/v1/classify", json={"text": PASSAGE, "model": model})
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["model"] == f"clf-{model}"
    [result] = body["results"]
    probabilities = result["probabilities"]
    assert set(probabilities) == GENRES
    assert sum(probabilities.values()) == pytest.approx(1.0, abs=1e-4)
    assert result["label"] == max(probabilities, key=probabilities.get)


def test_classify_many_texts_answers_each_in_order(client: httpx.Client) -> None:
    texts = [PASSAGE, "ROSALIND: All the world's a stage", PASSAGE]
    body = client.post("/v1/classify", json={"texts": texts, "model": "lstm"}).json()
    assert len(body["results"]) == 3
    assert body["results"][0] == body["results"][2]  # same text, same answer (no dropout at inference)


def test_batched_and_single_answers_agree(client: httpx.Client) -> None:
    short = "FOOL: Nuncle, a fool"
    alone = client.post("/v1/classify", json={"text": short, "model": "cnn"}).json()["results"][0]
    batched = client.post("/v1/classify", json={"texts": [PASSAGE, short], "model": "cnn"}).json()["results"][1]
    assert batched["label"] == alone["label"]
    for genre in GENRES:
        assert batched["probabilities"][genre] == pytest.approx(alone["probabilities"][genre], abs=1e-5)


def test_text_without_known_words_still_gets_an_answer(client: httpx.Client) -> None:
    response = client.post("/v1/classify", json={"text": "!!! ??? 123", "model": "mlp"})
    assert response.status_code == 200
    assert set(response.json()["results"][0]["probabilities"]) == GENRES


def test_metrics_carry_test_accuracy_and_macro_f1(client: httpx.Client) -> None:
    cards = {m["id"]: m for m in client.get("/v1/models").json()["data"]}
    for model in trained_classifiers():
        metrics = cards[f"clf-{model}"]["metrics"]
        assert 0.0 <= metrics["test_accuracy"] <= 1.0 and 0.0 <= metrics["test_macro_f1"] <= 1.0


@pytest.mark.parametrize("body", [
    {"model": "cnn"},                                        # neither text nor texts
    {"text": PASSAGE, "texts": [PASSAGE], "model": "cnn"},   # both
    {"text": "   ", "model": "cnn"},                         # blank
    {"text": "", "model": "cnn"},                            # empty
    {"texts": [], "model": "cnn"},                           # empty list
    {"texts": [PASSAGE, " "], "model": "cnn"},               # one blank in the list
    {"texts": [PASSAGE] * 65, "model": "cnn"},               # too many
    {"text": "a" * 5001, "model": "cnn"},                    # too long
    {"text": 42, "model": "cnn"},                            # not a string
])
def test_malformed_requests_are_422(client: httpx.Client, body: dict) -> None:
    response = client.post("/v1/classify", json=body)
    assert response.status_code == 422, response.text
    assert "detail" in response.json()


def test_a_classifier_that_is_not_loaded_is_503_naming_the_command(empty_client: httpx.Client) -> None:
    response = empty_client.post("/v1/classify", json={"text": PASSAGE, "model": "gru"})
    assert response.status_code == 503
    assert "python -m training classifier --arch gru" in response.json()["detail"]
