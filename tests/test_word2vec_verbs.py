"""gensim's verbs over HTTP (n_similarity, doesnt_match, the vectors of words) and the binary word2vec export,
each checked against gensim's KeyedVectors reading the exported file."""

from __future__ import annotations

from pathlib import Path

import httpx
import numpy as np
import pytest
from gensim.models import KeyedVectors

from .conftest import run_training

WORDS = ["king", "queen", "lord", "lady", "love", "death", "night", "sword"]


@pytest.fixture(scope="module", params=["sg", "cbow"])
def exported(request: pytest.FixtureRequest, checkpoint_dir: Path,
             tmp_path_factory: pytest.TempPathFactory) -> tuple[str, KeyedVectors]:
    """Each word2vec checkpoint exported in the binary format by the command line, as gensim reads it."""
    path = tmp_path_factory.mktemp("export") / f"{request.param}.bin"
    run_training("export", "word2vec", "--mode", request.param, "--format", "binary", "--output", str(path),
                 "--out", str(checkpoint_dir))
    return request.param, KeyedVectors.load_word2vec_format(str(path), binary=True)


def post(client: httpx.Client, path: str, **body: object) -> dict:
    response = client.post(f"/v1/word2vec/{path}", json=body)
    assert response.status_code == 200, response.text
    return response.json()


def test_the_binary_export_holds_every_vector_gensim_reads_in_vocabulary_order(exported: tuple[str, KeyedVectors],
                                                                                 client: httpx.Client):
    mode, vectors = exported
    card = client.get(f"/v1/models/word2vec-{mode}").json()
    assert len(vectors) == card["vocab_size"]
    reply = post(client, "vectors", words=WORDS, model=mode)
    assert [r["word"] for r in reply["results"]] == WORDS and reply["model"] == f"word2vec-{mode}"
    for result in reply["results"]:
        np.testing.assert_array_equal(np.array(result["vector"], dtype=np.float32), vectors[result["word"]])


def test_unit_vectors_as_gensim_normalises_them(exported: tuple[str, KeyedVectors], client: httpx.Client):
    mode, vectors = exported
    for result in post(client, "vectors", words=WORDS[:3], norm=True, model=mode)["results"]:
        np.testing.assert_allclose(result["vector"], vectors.get_vector(result["word"], norm=True), atol=1e-6)


def test_n_similarity_is_gensims(exported: tuple[str, KeyedVectors], client: httpx.Client):
    mode, vectors = exported
    for ws1, ws2 in ((["king", "queen"], ["lord", "lady"]), (["love"], ["death", "night", "sword"])):
        reply = post(client, "n-similarity", ws1=ws1, ws2=ws2, model=mode)
        assert reply["similarity"] == pytest.approx(float(vectors.n_similarity(ws1, ws2)), abs=1e-5)


def test_doesnt_match_is_gensims(exported: tuple[str, KeyedVectors], client: httpx.Client):
    mode, vectors = exported
    for words in (WORDS[:4], WORDS[3:], ["king", "queen", "sword"], WORDS):
        assert post(client, "doesnt-match", words=words, model=mode)["word"] == vectors.doesnt_match(words)


def test_the_text_export_still_reads_the_same(checkpoint_dir: Path, tmp_path: Path,
                                              exported: tuple[str, KeyedVectors]):
    mode, binary = exported
    path = tmp_path / "vectors.txt"
    run_training("export", "word2vec", "--mode", mode, "--output", str(path), "--out", str(checkpoint_dir))
    text = KeyedVectors.load_word2vec_format(str(path), binary=False)
    assert text.index_to_key == binary.index_to_key
    np.testing.assert_allclose(text.vectors, binary.vectors, atol=1e-6)


@pytest.mark.parametrize("path, body", [
    ("n-similarity", {"ws1": ["king", "xyzzyq"], "ws2": ["queen"]}), ("doesnt-match", {"words": ["king", "xyzzyq"]}),
    ("vectors", {"words": ["xyzzyq"]})])
def test_a_word_outside_the_vocabulary_is_404_naming_it(client: httpx.Client, path: str, body: dict):
    response = client.post(f"/v1/word2vec/{path}", json=body)
    assert response.status_code == 404 and "xyzzyq" in response.json()["detail"]


@pytest.mark.parametrize("path, body", [
    ("n-similarity", {"ws1": [], "ws2": ["queen"]}), ("doesnt-match", {"words": ["king"]}), ("vectors", {"words": []}),
    ("vectors", {"words": ["king"] * 21}), ("vectors", {"words": ["king queen"]}), ("vectors", {"words": ["king"],
                                                                                               "norm": 1})])
def test_malformed_requests_are_422(client: httpx.Client, path: str, body: dict):
    assert client.post(f"/v1/word2vec/{path}", json=body).status_code == 422
