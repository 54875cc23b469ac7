"""/v1/embeddings against the live server: OpenAI's shape, word2vec's mean word vector, BERT's mean-pooled last
layer, token-id inputs, and the official openai client."""

from __future__ import annotations

import base64
import json
from pathlib import Path

import httpx
import numpy as np
import pytest
import torch

from models.bert import load as load_bert
from models.bert import load_tokenizer
from models.checkpoint import load_checkpoint


def embed(client: httpx.Client, **body: object) -> dict:
    response = client.post("/v1/embeddings", json=body)
    assert response.status_code == 200, response.text
    return response.json()


def vectors(reply: dict) -> np.ndarray:
    return np.array([item["embedding"] for item in reply["data"]], dtype=np.float32)


def test_the_reply_has_openai_shape_one_unit_vector_per_input_in_order(client: httpx.Client):
    reply = embed(client, model="sg", input=["the king is dead", "long live the queen", "my lord"])
    assert reply["object"] == "list" and reply["model"] == "word2vec-sg"
    assert [(d["object"], d["index"]) for d in reply["data"]] == [("embedding", 0), ("embedding", 1), ("embedding", 2)]
    found = vectors(reply)
    assert found.shape[0] == 3 and np.allclose(np.linalg.norm(found, axis=1), 1, atol=1e-5)
    assert reply["usage"]["prompt_tokens"] == reply["usage"]["total_tokens"] > 0


def test_a_word2vec_embedding_is_the_mean_of_the_words_unit_vectors(client: httpx.Client):
    words = ["the", "king", "is", "dead"]
    unit = np.array([v["vector"] for v in client.post("/v1/word2vec/vectors", json={
        "words": words, "norm": True, "model": "cbow"}).json()["results"]])
    expected = unit.mean(axis=0) / np.linalg.norm(unit.mean(axis=0))
    [found] = vectors(embed(client, model="cbow", input="The KING is dead!"))
    np.testing.assert_allclose(found, expected, atol=1e-5)


def test_unknown_words_are_skipped_and_a_text_of_none_is_refused(client: httpx.Client):
    known, with_unknown = vectors(embed(client, model="sg", input=["the king", "the xyzzyq king plugh"]))
    np.testing.assert_allclose(known, with_unknown, atol=1e-6)
    reply = embed(client, model="sg", input="the xyzzyq king")
    assert reply["usage"]["prompt_tokens"] == 2  # only the words read count
    response = client.post("/v1/embeddings", json={"model": "sg", "input": ["the king", "xyzzyq plugh"]})
    assert response.status_code == 400, response.text
    error = response.json()["error"]
    assert error["param"] == "input" and "no word of the text is in the vocabulary" in error["message"]


def test_word_ids_are_rows_of_the_vocabulary(client: httpx.Client, checkpoint_dir: Path):
    itos = json.loads((checkpoint_dir / "word2vec-sg" / "vocab.json").read_text())["itos"]
    ids = [itos.index("king"), itos.index("queen")]
    by_text, by_ids, by_nested = (vectors(embed(client, model="sg", input=value))[0]
                                  for value in ("king queen", ids, [ids]))
    np.testing.assert_allclose(by_text, by_ids, atol=1e-6)
    np.testing.assert_allclose(by_text, by_nested, atol=1e-6)
    response = client.post("/v1/embeddings", json={"model": "sg", "input": [len(itos)]})
    assert response.status_code == 400 and response.json()["error"]["param"] == "input"


def test_a_bert_embedding_is_the_mean_pooled_last_layer(client: httpx.Client, checkpoint_dir: Path):
    checkpoint = load_checkpoint(checkpoint_dir / "bert")
    model, tokenizer = load_bert(checkpoint, torch.device("cpu")), load_tokenizer(checkpoint)
    text = "Good night, good night! Parting is such sweet sorrow."
    ids = tokenizer.encode(text).ids
    with torch.no_grad():
        hidden, _ = model.bert(torch.tensor([ids]))
    mean = hidden[0].mean(dim=0).numpy()
    [found] = vectors(embed(client, model="bert", input=text))
    np.testing.assert_allclose(found, mean / np.linalg.norm(mean), atol=1e-5)
    # WordPiece ids without [CLS] and [SEP] give the same, and a batch with a longer input changes nothing
    [by_ids] = vectors(embed(client, model="bert", input=[ids[1:-1]]))
    np.testing.assert_allclose(by_ids, found, atol=1e-5)
    batched = vectors(embed(client, model="bert", input=[text, text + " " + text, "Adieu"]))
    np.testing.assert_allclose(batched[0], found, atol=1e-5)


def test_bert_refuses_an_input_longer_than_its_positions(client: httpx.Client, checkpoint_dir: Path):
    positions = json.loads((checkpoint_dir / "bert" / "config.json").read_text())["model"]["max_position"]
    response = client.post("/v1/embeddings", json={"model": "bert", "input": "word " * positions})
    assert response.status_code == 400 and response.json()["error"]["param"] == "input"
    assert f"at most {positions} tokens" in response.json()["error"]["message"]


def test_base64_carries_the_same_float32_values(client: httpx.Client):
    text = ["to be or not to be", "that is the question"]
    floats = vectors(embed(client, model="bert", input=text))
    reply = embed(client, model="bert", input=text, encoding_format="base64")
    decoded = np.array([np.frombuffer(base64.b64decode(d["embedding"]), dtype="<f4") for d in reply["data"]])
    np.testing.assert_array_equal(decoded, floats)


@pytest.mark.parametrize("change, param", [
    ({"dimensions": 7}, "dimensions"), ({"encoding_format": "int8"}, "encoding_format"), ({"input": []}, "input"),
    ({"input": ""}, "input"), ({"input": [[]]}, "input"), ({"input": [-1]}, "input"), ({"model": "gpt"}, "model"),
    ({"unknown": 1}, "unknown"), ({"input": ["a"] * 65}, "input")])
def test_invalid_requests_are_400_naming_the_field(client: httpx.Client, change: dict, param: str):
    response = client.post("/v1/embeddings", json={"model": "sg", "input": "the king", **change})
    assert response.status_code == 400, response.text
    assert response.json()["error"]["param"] == param, response.text


def test_dimensions_is_accepted_at_the_models_own_size(client: httpx.Client):
    size = len(embed(client, model="sg", input="king")["data"][0]["embedding"])
    assert len(embed(client, model="sg", input="king", dimensions=size, user="someone")["data"][0]["embedding"]) == size


def test_an_unknown_model_is_404_and_one_not_loaded_503_in_openai_shape(client: httpx.Client,
                                                                         empty_client: httpx.Client):
    response = client.post("/v1/embeddings", json={"model": "nope", "input": "king"})
    assert response.status_code == 404 and response.json()["error"]["code"] == "model_not_found"
    response = empty_client.post("/v1/embeddings", json={"model": "bert", "input": "king"})
    assert response.status_code == 503 and "python -m training bert" in response.json()["error"]["message"]


def test_the_openai_client_embeds_with_its_default_base64(openai_client, client: httpx.Client):  # noqa: ANN001
    texts = ["Now is the winter of our discontent", "made glorious summer by this sun of York"]
    for model in ("sg", "bert"):
        result = openai_client.embeddings.create(model=model, input=texts)
        found = np.array([d.embedding for d in result.data], dtype=np.float32)
        np.testing.assert_allclose(found, vectors(embed(client, model=model, input=texts)), atol=1e-6)
        assert result.model == ("word2vec-sg" if model == "sg" else "bert") and result.usage.total_tokens > 0
