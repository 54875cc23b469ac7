"""The ``model`` field on every route that takes one: bounded names, and the answer for each kind of name.

A loaded model of the route's kind is found by checkpoint id or short name. A name the catalog lists, or a
checkpoint in CHECKPOINT_DIR, that is not loaded: 503 naming the training command. A loaded model of
another kind: 422 naming the models that fit. Anything else: 404.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from .conftest import Service

LOADED = ("word2vec-sg", "gpt", "lm-lstm", "bert", "seq2seq-zh-en", "clf-cnn")

# route -> (a body without model, a loaded model by short name and by id, a catalog model not loaded, its command)
ROUTES = {
    "/v1/word2vec/similarity": ({"word_a": "king", "word_b": "queen"}, ("sg", "word2vec-sg"), "cbow",
                                "python -m training word2vec --mode cbow"),
    "/v1/word2vec/most-similar": ({"positive": ["king"]}, ("sg", "word2vec-sg"), "word2vec-cbow",
                                  "python -m training word2vec --mode cbow"),
    "/v1/translate": ({"text": "你好。"}, ("zh-en", "seq2seq-zh-en"), "en-zh",
                      "python -m training seq2seq --direction en-zh"),
    "/v1/translate/attention.png": ({"text": "你好。", "direction": "en-zh"}, None, "seq2seq-en-zh",
                                    "python -m training seq2seq --direction en-zh"),
    "/v1/fill-mask": ({"text": "to be or not to [MASK]"}, ("bert", "bert"), None, None),
    "/v1/next-sentence": ({"text_a": "to be", "text_b": "or not"}, ("bert", "bert"), None, None),
    "/v1/classify": ({"text": "KING: my lord"}, ("cnn", "clf-cnn"), "gru", "python -m training classifier --arch gru"),
    "/v1/generate": ({"prompt": "ROMEO:", "max_new_tokens": 3}, ("lstm", "lm-lstm"), "rnn",
                     "python -m training lm --cell rnn"),
    "/v1/completions": ({"prompt": "ROMEO:", "max_tokens": 3}, ("gpt", "gpt"), "lm-gru",
                        "python -m training lm --cell gru"),
}


def detail(response: httpx.Response) -> str:
    body = response.json()
    return body["error"]["message"] if "error" in body else body["detail"]


def status(path: str, status: int) -> int:
    """OpenAI's status for the OpenAI route (400 where the project's routes say 422)."""
    return 400 if path == "/v1/completions" and status == 422 else status


@pytest.fixture(scope="module")
def names_server(checkpoint_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, Path]]:
    """The service on some checkpoints, plus one GPT trained under its own name whose weights are broken."""
    root = tmp_path_factory.mktemp("some-checkpoints")
    for name in LOADED:
        (root / name).symlink_to(checkpoint_dir / name)
    spare = root / "gpt-spare"
    shutil.copytree(checkpoint_dir / "gpt", spare)
    config = json.loads((spare / "config.json").read_text())
    (spare / "config.json").write_text(json.dumps({**config, "id": "gpt-spare", "name": "spare"}))
    (spare / "model.safetensors").write_bytes(b"broken")
    server = Service(root, tmp_path_factory.mktemp("logs") / "names-server.log")
    yield server.url, root
    server.stop()


@pytest.fixture(scope="module")
def client(names_server: tuple[str, Path]) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=names_server[0], timeout=60) as c:
        yield c


@pytest.mark.parametrize("path", ROUTES)
@pytest.mark.parametrize("name", ["x" * 65, "gpt-" + "x" * 10_000, "../gpt", ".hidden", "gpt evil", "gpt/x", "",
                                  "ﬁne", "gpt\n"])
def test_names_are_bounded_in_length_and_characters(client: httpx.Client, path: str, name: str):
    body, *_ = ROUTES[path]
    response = client.post(path, json={**body, "model": name})
    assert response.status_code == status(path, 422), response.text
    assert "model" in response.text and len(response.content) < 2000  # the name is not echoed back


@pytest.mark.parametrize("path", [p for p, (_, loaded, _, _) in ROUTES.items() if loaded])
def test_a_loaded_model_answers_by_short_name_or_checkpoint_id(client: httpx.Client, path: str):
    body, (short, checkpoint_id), *_ = ROUTES[path]
    for name in (short, checkpoint_id):
        response = client.post(path, json={**body, "model": name})
        assert response.status_code == 200, response.text
        assert response.json()["model"] == checkpoint_id


@pytest.mark.parametrize("path", [p for p, (_, _, missing, _) in ROUTES.items() if missing])
def test_a_catalog_model_not_loaded_is_503_naming_the_training_command(client: httpx.Client, path: str):
    body, _, missing, command = ROUTES[path]
    response = client.post(path, json={**body, "model": missing})
    assert response.status_code == 503, response.text
    assert f"`{command}`" in detail(response)


@pytest.mark.parametrize("name", ["spare", "gpt-spare"])
def test_a_checkpoint_in_the_directory_that_did_not_load_is_503_saying_why(client: httpx.Client, name: str):
    response = client.post("/v1/generate", json={"prompt": "ROMEO:", "model": name})
    assert response.status_code == 503, response.text
    message = detail(response)
    assert "`python -m training gpt --name spare`" in message and "refused" in message


def test_a_checkpoint_added_since_the_last_load_is_503_until_reloaded(client: httpx.Client,
                                                                       names_server: tuple[str, Path],
                                                                       checkpoint_dir: Path):
    _, root = names_server
    added = root / "gpt-later"
    shutil.copytree(checkpoint_dir / "gpt", added)
    try:
        response = client.post("/v1/completions", json={"prompt": "ROMEO:", "model": "later"})
        assert response.status_code == 503 and response.json()["error"]["code"] == "model_not_loaded"
        assert "python -m training gpt --name later" in detail(response)
    finally:
        shutil.rmtree(added)


@pytest.mark.parametrize("path, other", [("/v1/generate", "sg"), ("/v1/completions", "word2vec-sg"),
                                         ("/v1/classify", "gpt"), ("/v1/fill-mask", "zh-en"),
                                         ("/v1/next-sentence", "cnn"), ("/v1/translate", "bert"),
                                         ("/v1/word2vec/similarity", "lstm")])
def test_a_loaded_model_of_another_kind_is_422_naming_the_models_that_fit(client: httpx.Client, path: str,
                                                                           other: str):
    body, loaded, *_ = ROUTES[path]
    response = client.post(path, json={**body, "model": other})
    assert response.status_code == status(path, 422), response.text
    message = detail(response)
    assert f"'{other}' is not a" in message and "models that fit: " in message
    assert loaded[1] in message.split("models that fit: ")[1]
    if path == "/v1/completions":
        assert response.json()["error"]["param"] == "model"


@pytest.mark.parametrize("path", ROUTES)
@pytest.mark.parametrize("name", ["gpt-evil", "nope", "clf-transformer", "zh-fr"])
def test_any_other_name_is_404(client: httpx.Client, path: str, name: str):
    body, *_ = ROUTES[path]
    response = client.post(path, json={**body, "model": name})
    assert response.status_code == 404, response.text
    assert f"'{name}'" in detail(response)
    if path == "/v1/completions":
        assert response.json()["error"]["code"] == "model_not_found"
