"""GET /v1/models/{model}: one model's card, by checkpoint id or short name, in OpenAI's shapes."""

from __future__ import annotations

import httpx
import openai
import pytest


@pytest.mark.parametrize("name, checkpoint_id", [("word2vec-sg", "word2vec-sg"), ("sg", "word2vec-sg"),
                                                 ("gpt", "gpt"), ("bert", "bert"), ("zh-en", "seq2seq-zh-en"),
                                                 ("cnn", "clf-cnn"), ("lm-lstm", "lm-lstm")])
def test_a_model_is_found_by_id_or_short_name_with_the_card_the_list_has(client: httpx.Client, name: str,
                                                                         checkpoint_id: str):
    response = client.get(f"/v1/models/{name}")
    assert response.status_code == 200, response.text
    listed = {m["id"]: m for m in client.get("/v1/models").json()["data"]}
    assert response.json() == listed[checkpoint_id] and response.json()["object"] == "model"


def test_a_short_name_several_models_have_asks_for_an_id(client: httpx.Client):
    response = client.get("/v1/models/lstm")
    assert response.status_code == 400
    error = response.json()["error"]
    assert error["param"] == "model" and "clf-lstm" in error["message"] and "lm-lstm" in error["message"]


@pytest.mark.parametrize("name, status", [("nope", 404), ("gpt-nope", 404), ("x" * 65, 400), (".hidden", 400)])
def test_other_names_get_openai_errors(client: httpx.Client, name: str, status: int):
    response = client.get(f"/v1/models/{name}")
    assert response.status_code == status, response.text
    assert set(response.json()["error"]) == {"message", "type", "param", "code"}
    if status == 404:
        assert response.json()["error"]["code"] == "model_not_found"


def test_a_catalog_model_not_loaded_is_503_naming_its_training_command(empty_client: httpx.Client):
    response = empty_client.get("/v1/models/cbow")
    assert response.status_code == 503
    assert "python -m training word2vec --mode cbow" in response.json()["error"]["message"]


def test_the_openai_client_lists_and_retrieves_models(openai_client: openai.OpenAI):
    ids = [m.id for m in openai_client.models.list()]
    assert "gpt" in ids and openai_client.models.retrieve("gpt").id == "gpt"
    with pytest.raises(openai.NotFoundError):
        openai_client.models.retrieve("nope")
