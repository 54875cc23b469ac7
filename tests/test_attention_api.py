"""/v1/attention and /v1/attention.png on the live server: BERT's, GPT's and the Transformer translator's
every layer and head, the filters, the limits, and the models that have no self-attention."""

from __future__ import annotations

import json
import re
import struct
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from .conftest import Service

TRANSLATOR = "zh-en"
TEXT = "To be, or not to be."


def attention(client: httpx.Client, **body: object) -> dict:
    response = client.post("/v1/attention", json=body)
    assert response.status_code == 200, response.text
    return response.json()


def assert_distributions(maps: list, queries: int, keys: int) -> None:
    """Every layer's every head is queries × keys, each row a distribution (to the reply's 4 places)."""
    for layer in maps:
        for head in layer:
            assert len(head) == queries
            for row in head:
                assert len(row) == keys
                assert min(row) >= 0.0
                assert sum(row) == pytest.approx(1.0, abs=1e-3)


def test_bert_answers_every_layer_and_head_over_both_segments(client):
    body = attention(client, model="bert", text=TEXT, text_b="That is the question.")
    tokens, segments = body["tokens"], body["segment_ids"]
    assert body["model"] == "bert"
    assert tokens[0] == "[CLS]" and tokens.count("[SEP]") == 2 and tokens[-1] == "[SEP]"
    first_sep = tokens.index("[SEP]")
    assert segments == [0] * (first_sep + 1) + [1] * (len(tokens) - first_sep - 1)
    assert body["layers"] == [0, 1] and body["heads"] == [0, 1]  # the tiny profile's BERT: 2 layers of 2 heads
    assert len(body["attention"]) == 2 and all(len(layer) == 2 for layer in body["attention"])
    assert_distributions(body["attention"], len(tokens), len(tokens))
    assert body["translation"] is None and body["cross_attention"] is None


def test_gpt_attends_only_to_itself_and_the_past(client):
    body = attention(client, model="gpt", text="ROMEO:\nBut soft, what light")
    n = len(body["tokens"])
    assert body["segment_ids"] is None
    assert_distributions(body["attention"], n, n)
    for layer in body["attention"]:
        for head in layer:
            for query, row in enumerate(head):
                assert all(w == 0 for w in row[query + 1:]), (query, row)
            assert head[0][0] == 1.0  # the first token can only look at itself


def test_the_translator_answers_encoder_decoder_and_cross_attention_as_translate_does(client):
    body = attention(client, model=TRANSLATOR, text="我们明天见。")
    source, target, read = body["tokens"], body["target_tokens"], body["decoder_tokens"]
    assert source == ["我", "们", "明", "天", "见", "。"]
    assert target and read == ["<bos>", *target[:-1]]
    assert_distributions(body["attention"], len(source), len(source))
    assert_distributions(body["decoder_attention"], len(target), len(target))
    assert_distributions(body["cross_attention"], len(target), len(source))
    for layer in body["decoder_attention"]:
        for head in layer:
            assert all(w == 0 for query, row in enumerate(head) for w in row[query + 1:])
    translated = client.post("/v1/translate", json={"text": "我们明天见。", "model": TRANSLATOR,
                                                    "attention_heads": True}).json()["results"][0]
    assert translated["target_tokens"] == target
    assert translated["translation"] == body["translation"]
    # The same rows that step-by-step decoding computed, rounded alike.
    for ours, theirs in zip(body["cross_attention"], translated["attention_heads"], strict=True):
        for head, other in zip(ours, theirs, strict=True):
            assert [w for row in head for w in row] == pytest.approx([w for row in other for w in row], abs=2e-4)


def test_layers_and_heads_filter_the_maps_in_the_order_asked(client):
    full = attention(client, model="bert", text=TEXT)
    some = attention(client, model="bert", text=TEXT, layers=[1], heads=[1, 0])
    assert some["layers"] == [1] and some["heads"] == [1, 0]
    assert some["attention"] == [[full["attention"][1][1], full["attention"][1][0]]]
    translator = attention(client, model=TRANSLATOR, text="你好。", heads=[1])
    assert all(len(layer) == 1 for key in ("attention", "decoder_attention", "cross_attention")
               for layer in translator[key])


@pytest.mark.parametrize(("body", "says"), [
    ({"model": "bert", "text": TEXT, "layers": [2]}, "layer 2 does not exist: this model has 2 layers (0 to 1)"),
    ({"model": "gpt", "text": TEXT, "heads": [0, 5]}, "head 5 does not exist: this model has 2 heads (0 to 1)"),
    ({"model": "gpt", "text": TEXT, "text_b": "Again."}, "text_b is BERT's second segment"),
    ({"model": "bert", "text": " ".join(["word"] * 40)}, "this model reads at most 32 tokens"),
])
def test_what_a_model_cannot_answer_is_a_422_that_says_why(client, body, says):
    response = client.post("/v1/attention", json=body)
    assert response.status_code == 422, response.text
    assert says in response.json()["detail"]


@pytest.mark.parametrize("body", [
    {"model": "bert", "text": TEXT, "layers": [0, 0]},
    {"model": "bert", "text": TEXT, "layers": []},
    {"model": "bert", "text": TEXT, "heads": [-1]},
    {"model": "bert", "text": TEXT, "layer": 0},
    {"text": TEXT},
])
def test_malformed_filters_are_refused_by_the_schema(client, body):
    assert client.post("/v1/attention", json=body).status_code == 422


@pytest.mark.parametrize("model", ["zh-en-recurrent", "sg", "lm-lstm"])
def test_a_model_without_self_attention_is_a_422_naming_the_models_with_it(client, model):
    for route in ("/v1/attention", "/v1/attention.png"):
        response = client.post(route, json={"model": model, "text": "你好。"})
        assert response.status_code == 422, response.text
        detail = response.json()["detail"]
        assert "is not a model with self-attention" in detail
        fitting = detail.split("models that fit: ")[1].split(", ")
        assert {"bert", "gpt", f"seq2seq-{TRANSLATOR}"} <= set(fitting)
        assert f"seq2seq-{model}" not in fitting and model not in fitting


def png_size(data: bytes) -> tuple[int, int]:
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    return struct.unpack(">II", data[16:24])


def test_the_png_draws_one_layers_heads_or_every_layer_and_head(client):
    one = client.post("/v1/attention.png", json={"model": "bert", "text": TEXT, "layers": [1]})
    sheet = client.post("/v1/attention.png", json={"model": "bert", "text": TEXT})
    for response in (one, sheet):
        assert response.status_code == 200, response.text
        assert response.headers["content-type"] == "image/png"
    (one_width, one_height), (sheet_width, sheet_height) = png_size(one.content), png_size(sheet.content)
    assert one_width > one_height  # two labelled heads side by side
    assert sheet_height > 0.8 * sheet_width  # two rows of two thumbnails
    for kind in ("encoder", "decoder", "cross"):
        response = client.post("/v1/attention.png", json={"model": TRANSLATOR, "text": "我们明天见。", "kind": kind})
        assert response.status_code == 200, response.text
        png_size(response.content)


def test_the_png_refuses_a_kind_the_model_lacks(client):
    response = client.post("/v1/attention.png", json={"model": "bert", "text": TEXT, "kind": "cross"})
    assert response.status_code == 422
    assert response.json()["detail"] == "model 'bert' has no cross attention; it has: self"
    response = client.post("/v1/attention.png", json={"model": TRANSLATOR, "text": "你好。", "kind": "self"})
    assert response.status_code == 422


@pytest.fixture(scope="module")
def small_replies(checkpoint_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[httpx.Client]:
    """The service with BERT alone and MAX_RESPONSE_BYTES of 3000: a few of its maps fill a reply."""
    root = tmp_path_factory.mktemp("bert-only")
    (root / "bert").symlink_to(checkpoint_dir / "bert", target_is_directory=True)
    server = Service(root, tmp_path_factory.mktemp("logs") / "small-replies.log", MAX_RESPONSE_BYTES="3000")
    with httpx.Client(base_url=server.url, timeout=60) as client:
        yield client
    server.stop()


def test_a_reply_over_max_response_bytes_is_a_422_naming_filters_that_fit(small_replies):
    response = small_replies.post("/v1/attention", json={"model": "bert", "text": TEXT})
    assert response.status_code == 422, response.text
    detail = response.json()["detail"]
    assert "MAX_RESPONSE_BYTES (3000)" in detail
    filters = json.loads(re.search(r"e\.g\. (\{.*\})$", detail).group(1))
    answer = small_replies.post("/v1/attention", json={"model": "bert", "text": TEXT, **filters})
    assert answer.status_code == 200, answer.text
    assert len(answer.content) <= 3000
    long = small_replies.post("/v1/attention", json={"model": "bert", "text": " ".join(["word"] * 25)})
    assert long.status_code == 422
    assert long.json()["detail"].endswith("send a shorter text")
