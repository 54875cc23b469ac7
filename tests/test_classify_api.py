"""/v1/classify against the live server: every classifier, batches, and every error case."""

from __future__ import annotations

import json
from pathlib import Path

import httpx
import pytest

from models.catalog import CATALOG

from . import reference

PASSAGE = ("KING HENRY: Once more unto the breach, dear friends, once more; or close the wall up with our "
           "English dead. In peace there's nothing so becomes a man as modest stillness and humility.")
GENRES = {"comedy", "history", "tragedy"}
WORD_MODELS = ["mlp", "cnn", "rnn", "lstm", "gru"]
CANDIDATES = [
    PASSAGE,
    "ROSALIND: All the world's a stage, and all the men and women merely players.",
    "HAMLET: To be, or not to be, that is the question.",
    "FOOL: Nuncle, a fool",
    "my lord, the king is dead, and all his soldiers fled",
    "O Romeo, Romeo, wherefore art thou Romeo? Deny thy father and refuse thy name.",
    "Good mistress, wed him, and be merry with the jest and the song.",
    "The crown, the crown! My kingdom for a horse, and the field of battle.",
    "Murder most foul, the ghost of my father, and the poison, and the grave.",
]


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


def test_batched_and_single_answers_agree(client: httpx.Client) -> None:
    short = "FOOL: Nuncle, a fool"
    alone = client.post("/v1/classify", json={"text": short, "model": "cnn"}).json()["results"][0]
    batched = client.post("/v1/classify", json={"texts": [PASSAGE, short], "model": "cnn"}).json()["results"][1]
    assert batched["label"] == alone["label"]
    for genre in GENRES:
        assert batched["probabilities"][genre] == pytest.approx(alone["probabilities"][genre], abs=1e-5)


def three_different_answers(expected: dict[str, dict[str, float]]) -> list[str]:
    """Three candidate texts whose answers differ: as many different labels as the model gives, then texts
    whose probabilities differ from those already chosen."""
    chosen: list[str] = []
    for text in CANDIDATES:  # first one text per label
        label = max(expected[text], key=expected[text].get)
        if all(max(expected[c], key=expected[c].get) != label for c in chosen):
            chosen.append(text)
    for text in CANDIDATES:
        far = all(max(abs(expected[text][g] - expected[c][g]) for g in GENRES) > 1e-3 for c in chosen)
        if len(chosen) < 3 and far:
            chosen.append(text)
    assert len(chosen) == 3, "the candidates gave fewer than three different answers"
    return chosen[:3]


@pytest.mark.parametrize("model", trained_classifiers())
def test_a_batch_answers_each_position_as_that_text_alone_and_as_the_checkpoint_does(
        client: httpx.Client, checkpoint_dir: Path, model: str) -> None:
    local = reference.text_classifier(checkpoint_dir, f"clf-{model}")
    expected = {text: reference.class_probabilities(local, text) for text in CANDIDATES}
    texts = three_different_answers(expected)
    batch = client.post("/v1/classify", json={"texts": texts, "model": model}).json()["results"]
    for text, result in zip(texts, batch, strict=True):
        alone = client.post("/v1/classify", json={"text": text, "model": model}).json()["results"][0]
        assert result["label"] == alone["label"] == max(expected[text], key=expected[text].get)
        assert result["probabilities"] == pytest.approx(expected[text], abs=1e-5)
        assert alone["probabilities"] == pytest.approx(expected[text], abs=1e-5)


def test_bert_reads_the_words_of_fewer_than_two_training_plays_alike(client: httpx.Client, checkpoint_dir: Path
                                                                    ) -> None:
    known = set(json.loads((checkpoint_dir / "clf-bert" / "known_words.json").read_text(encoding="utf-8")))
    assert {"king", "lord", "the"} <= known and "zqxj" not in known
    answers = [client.post("/v1/classify", json={"text": f"{name}: the king is dead, my lord", "model": "bert"}
                           ).json()["results"][0]["probabilities"] for name in ("Zqxj", "Vbnm")]
    assert answers[0] == pytest.approx(answers[1], abs=1e-6)  # both [MASK], though their WordPieces differ


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
