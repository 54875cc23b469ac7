"""The word2vec endpoints and the service's shared behaviour, against the live server."""

from __future__ import annotations

from pathlib import Path

import httpx
import pytest

from . import reference


def test_health_and_ready_list_every_checkpoint(client: httpx.Client):
    assert client.get("/health").json() == {"status": "ok"}
    ready = client.get("/ready")
    assert ready.status_code == 200
    states = {c["id"]: c["status"] for c in ready.json()["checkpoints"]}
    assert states["word2vec-sg"] == "loaded" and states["word2vec-cbow"] == "loaded"


def test_models_list_has_the_openai_shape_with_our_fields(client: httpx.Client):
    body = client.get("/v1/models").json()
    assert body["object"] == "list"
    card = next(m for m in body["data"] if m["id"] == "word2vec-sg")
    assert card["object"] == "model" and card["owned_by"]
    assert card["family"] == "word2vec" and card["name"] == "sg" and card["architecture"] == "skip-gram"
    assert card["parameters"] == 2 * card["vocab_size"] * 32
    assert card["training_data"]["licence"] == "MIT"
    assert "wordsim353" in card["metrics"]


def test_request_id_is_echoed_or_made(client: httpx.Client):
    assert client.get("/health", headers={"X-Request-ID": "abc-123"}).headers["x-request-id"] == "abc-123"
    assert len(client.get("/health").headers["x-request-id"]) == 32


@pytest.mark.parametrize("model", ["sg", "cbow"])
def test_similarity_is_a_cosine(client: httpx.Client, model: str):
    same = client.post("/v1/word2vec/similarity", json={"word_a": "king", "word_b": "King", "model": model})
    assert same.status_code == 200
    assert same.json() == {"similarity": pytest.approx(1.0, abs=1e-5), "model": f"word2vec-{model}"}
    other = client.post("/v1/word2vec/similarity", json={"word_a": "king", "word_b": "queen", "model": model}).json()
    assert -1.0 <= other["similarity"] <= 1.0


@pytest.mark.parametrize("model", ["sg", "cbow"])
def test_similarity_is_the_cosine_of_the_checkpoints_vectors(client: httpx.Client, checkpoint_dir: Path, model: str):
    vectors = reference.word_vectors(checkpoint_dir, f"word2vec-{model}")
    pairs = [("king", "queen"), ("love", "death"), ("lord", "lady"), ("man", "sword")]
    expected = [reference.cosine(vectors, a, b) for a, b in pairs]
    assert len({round(e, 4) for e in expected}) == len(pairs)  # distinct values: a constant answer cannot pass
    for (a, b), cosine in zip(pairs, expected, strict=True):
        body = client.post("/v1/word2vec/similarity", json={"word_a": a, "word_b": b, "model": model}).json()
        assert body == {"similarity": pytest.approx(cosine, abs=1e-5), "model": f"word2vec-{model}"}, (a, b)


@pytest.mark.parametrize(("model", "positive", "negative"), [
    ("sg", ["love"], []),
    ("cbow", ["king"], []),
    ("sg", ["king", "woman"], ["man"]),
    ("cbow", ["lord"], ["lady", "night"]),
])
def test_most_similar_is_the_brute_force_nearest_neighbours(client: httpx.Client, checkpoint_dir: Path, model: str,
                                                             positive: list[str], negative: list[str]):
    vectors = reference.word_vectors(checkpoint_dir, f"word2vec-{model}")
    expected = reference.nearest(vectors, positive, negative, topn=10)
    body = client.post("/v1/word2vec/most-similar",
                       json={"positive": positive, "negative": negative, "topn": 10, "model": model}).json()
    served = [(r["word"], r["score"]) for r in body["results"]]
    # Position by position the scores agree; each served word has the score the brute force gives it (so two
    # words whose scores tie within float rounding may come in either order).
    assert [s for _, s in served] == pytest.approx([s for _, s in expected], abs=1e-5)
    everyone = dict(reference.nearest(vectors, positive, negative, topn=len(vectors.words)))
    for word, score in served:
        assert everyone[word] == pytest.approx(score, abs=1e-5), word


def test_most_similar_excludes_query_words_and_sorts(client: httpx.Client):
    response = client.post("/v1/word2vec/most-similar", json={"positive": ["king", "woman"], "negative": ["man"],
                                                              "topn": 7})
    assert response.status_code == 200
    results = response.json()["results"]
    assert len(results) == 7
    words = [r["word"] for r in results]
    assert not {"king", "woman", "man"} & set(words)
    scores = [r["score"] for r in results]
    assert scores == sorted(scores, reverse=True)


def test_unknown_words_are_404_naming_them(client: httpx.Client):
    response = client.post("/v1/word2vec/most-similar", json={"positive": ["king", "qwertyuiop"]})
    assert response.status_code == 404
    assert "qwertyuiop" in response.json()["detail"] and "king" not in response.json()["detail"]
    response = client.post("/v1/word2vec/similarity", json={"word_a": "zzzzq", "word_b": "king"})
    assert response.status_code == 404 and "zzzzq" in response.json()["detail"]


@pytest.mark.parametrize("body", [
    {},
    {"word_a": "king"},
    {"word_a": "", "word_b": "king"},
    {"word_a": "   ", "word_b": "king"},
    {"word_a": "two words", "word_b": "king"},
    {"word_a": "k" * 65, "word_b": "king"},
    {"word_a": 5, "word_b": "king"},
])
def test_malformed_similarity_requests_are_422(client: httpx.Client, body: dict):
    response = client.post("/v1/word2vec/similarity", json=body)
    assert response.status_code == 422
    assert response.json()["detail"]


@pytest.mark.parametrize("body", [
    {},
    {"positive": [], "negative": []},
    {"positive": ["king"], "topn": 0},
    {"positive": ["king"], "topn": 101},
    {"positive": ["king"] * 21},
    {"positive": "king"},
])
def test_malformed_most_similar_requests_are_422(client: httpx.Client, body: dict):
    assert client.post("/v1/word2vec/most-similar", json=body).status_code == 422


def test_non_json_body_is_422(client: httpx.Client):
    response = client.post("/v1/word2vec/similarity", content=b"not json", headers={"Content-Type": "application/json"})
    assert response.status_code == 422


def test_oversized_body_is_413(client: httpx.Client):
    response = client.post("/v1/word2vec/most-similar", json={"positive": ["king"], "pad": "x" * 2_000_000})
    assert response.status_code == 413


def test_nothing_loaded_means_not_ready_and_503_naming_the_command(empty_client: httpx.Client):
    assert empty_client.get("/health").status_code == 200
    ready = empty_client.get("/ready")
    assert ready.status_code == 503 and ready.json() == {"ready": False, "checkpoints": []}
    response = empty_client.post("/v1/word2vec/similarity", json={"word_a": "a", "word_b": "b", "model": "cbow"})
    assert response.status_code == 503
    assert "python -m training word2vec --mode cbow" in response.json()["detail"]
