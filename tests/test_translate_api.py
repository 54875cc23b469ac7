"""The translation routes on the live server (tiny seq2seq checkpoints in both directions)."""

from __future__ import annotations

import io
from pathlib import Path

import pytest
import torch

from models.pipelines.translation import BEAM_SIZE, LENGTH_PENALTY, TranslationOptions
from training.data import load_hsk_pairs

from . import reference


def assert_alignment(result: dict) -> None:
    attention = result["attention"]
    assert len(attention) == len(result["target_tokens"])
    for row in attention:
        assert len(row) == len(result["source_tokens"])
        assert sum(row) == pytest.approx(1.0, abs=1e-3)
        assert min(row) >= 0.0


def test_translates_chinese_to_english_with_one_attention_row_per_output_token(client):
    response = client.post("/v1/translate", json={"text": "我们明天见。", "direction": "zh-en"})
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["model"] == "seq2seq-zh-en" and body["direction"] == "zh-en"
    [result] = body["results"]
    assert result["source_tokens"] == ["我", "们", "明", "天", "见", "。"]
    assert isinstance(result["translation"], str)
    assert_alignment(result)


def test_translates_english_to_chinese_in_a_batch_with_beam_search(client):
    texts = ["I like tea.", "See you tomorrow."]
    response = client.post("/v1/translate", json={"texts": texts, "direction": "en-zh", "beam_size": 3})
    assert response.status_code == 200, response.text
    results = response.json()["results"]
    assert len(results) == 2
    assert results[0]["source_tokens"] == ["i", "like", "tea", "."]
    for result in results:
        assert_alignment(result)


BATCHES = [("zh-en", ["我们明天见。", "他是我的老师。", "你好", "我爱龘。"]),
           ("en-zh", ["I like tea.", "See you tomorrow, my teacher.", "Thank you."])]


def translated_by_the_recurrent_model(client, direction: str, texts: list[str], **options) -> list[dict]:
    response = client.post("/v1/translate", json={"texts": texts, "direction": direction, "max_length": 12,
                                                  "model": f"{direction}-recurrent", **options})
    assert response.status_code == 200, response.text
    return response.json()["results"]


@pytest.mark.parametrize(("direction", "texts"), BATCHES)
def test_each_translation_in_a_batch_is_the_models_own_greedy_decoding_of_it_alone(
        client, checkpoint_dir: Path, direction: str, texts: list[str]):
    model = reference.translator(checkpoint_dir, f"seq2seq-{direction}-recurrent")
    results = translated_by_the_recurrent_model(client, direction, texts, beam_size=1)
    for text, result in zip(texts, results, strict=True):
        tokens, attention = reference.greedy_translation(model, text, max_length=12)
        assert result["target_tokens"] == tokens, text
        torch.testing.assert_close(torch.tensor(result["attention"]), attention, atol=1e-4, rtol=0, msg=text)


@pytest.mark.parametrize(("direction", "texts"), BATCHES)
def test_by_default_each_translation_in_a_batch_is_the_models_own_beam_search_of_it_alone(
        client, checkpoint_dir: Path, direction: str, texts: list[str]):
    model = reference.translator(checkpoint_dir, f"seq2seq-{direction}-recurrent")
    results = translated_by_the_recurrent_model(client, direction, texts)
    for text, result in zip(texts, results, strict=True):
        assert result["target_tokens"] == reference.beam_translation(model, text, BEAM_SIZE, 12, LENGTH_PENALTY), text


def beam_beats_greedy(model, texts: list[str], beam_size: int, max_length: int) -> tuple[str, list[str], list[str]]:
    """The first text whose beam search output differs from its greedy one and scores higher, with both outputs."""
    for text in texts:
        greedy, _ = reference.greedy_translation(model, text, max_length)
        beam = reference.beam_translation(model, text, beam_size, max_length, length_penalty=0.6)
        if beam != greedy:
            scores = [reference.translation_score(model, text, out, len(out) < max_length, length_penalty=0.6)
                      for out in (beam, greedy)]
            if scores[0] > scores[1]:
                return text, beam, greedy
    raise AssertionError("beam search agrees with greedy decoding on every candidate")


@pytest.mark.parametrize("direction", ["zh-en", "en-zh"])
def test_beam_search_finds_a_better_translation_than_greedy_where_they_differ(client, checkpoint_dir: Path,
                                                                                direction: str):
    model = reference.translator(checkpoint_dir, f"seq2seq-{direction}-recurrent")
    candidates = [zh if direction == "zh-en" else en for zh, en in load_hsk_pairs()[:50]]
    text, beam, greedy = beam_beats_greedy(model, candidates, beam_size=4, max_length=12)
    request = {"text": text, "direction": direction, "max_length": 12, "length_penalty": 0.6,
               "model": f"{direction}-recurrent"}
    served_beam = client.post("/v1/translate", json={**request, "beam_size": 4}).json()["results"][0]
    served_greedy = client.post("/v1/translate", json={**request, "beam_size": 1}).json()["results"][0]
    assert served_greedy["target_tokens"] == greedy
    assert served_beam["target_tokens"] == beam != greedy


def test_both_translate_routes_search_4_beams_ranked_by_the_measured_length_penalty_by_default(client):
    schemas = client.get("/openapi.json").json()["components"]["schemas"]
    defaults = {name: (schema["properties"]["beam_size"]["default"], schema["properties"]["length_penalty"]["default"])
                for name, schema in schemas.items() if "length_penalty" in schema.get("properties", {})}
    assert len(defaults) == 2 and set(defaults.values()) == {(BEAM_SIZE, LENGTH_PENALTY)} and BEAM_SIZE == 4
    assert TranslationOptions().length_penalty == LENGTH_PENALTY


def test_direction_defaults_to_chinese_to_english(client):
    response = client.post("/v1/translate", json={"text": "你好。"})
    assert response.status_code == 200
    assert response.json()["model"] == "seq2seq-zh-en"


def test_model_picks_a_checkpoint_by_name_or_id(client):
    for model in ("en-zh", "seq2seq-en-zh"):
        response = client.post("/v1/translate", json={"text": "Thank you.", "direction": "en-zh", "model": model})
        assert response.status_code == 200, response.text
        assert response.json()["model"] == "seq2seq-en-zh"


def test_unseen_characters_are_read_as_unknown_and_listed(client):
    response = client.post("/v1/translate", json={"text": "我爱龘。"})
    assert response.status_code == 200
    result = response.json()["results"][0]
    assert result["unknown_tokens"] == ["龘"]
    assert "龘" in result["source_tokens"]


def test_max_length_caps_the_output(client):
    response = client.post("/v1/translate", json={"text": "我们明天见。", "max_length": 2})
    assert response.status_code == 200
    assert len(response.json()["results"][0]["target_tokens"]) <= 2


def test_attention_png_is_a_decodable_image(client):
    from matplotlib import image

    response = client.post("/v1/translate/attention.png", json={"text": "他是学生。", "direction": "zh-en"})
    assert response.status_code == 200, response.text
    assert response.headers["content-type"] == "image/png"
    pixels = image.imread(io.BytesIO(response.content))
    assert pixels.ndim == 3 and pixels.shape[0] > 100 and pixels.shape[1] > 100


@pytest.mark.parametrize(("route", "body", "message"), [
    ("/v1/translate", {"text": ""}, "at least 1 character"),
    ("/v1/translate", {"text": "   "}, "empty"),
    ("/v1/translate", {"text": "好" * 201}, "at most 200 characters"),
    ("/v1/translate", {"text": "你好", "direction": "zh-fr"}, "zh-en"),
    ("/v1/translate", {"text": "你好", "texts": ["你好"]}, "exactly one of"),
    ("/v1/translate", {}, "exactly one of"),
    ("/v1/translate", {"texts": []}, "at least 1 item"),
    ("/v1/translate", {"text": "你好", "beam_size": 0}, "greater than or equal to 1"),
    ("/v1/translate", {"text": "你好", "direction": "zh-en", "model": "en-zh"}, "translates en-zh"),
    ("/v1/translate/attention.png", {"texts": ["你好"]}, "not `texts`"),
    ("/v1/translate/attention.png", {"text": ""}, "at least 1 character"),
])
def test_malformed_requests_are_422_with_a_clear_message(client, route, body, message):
    response = client.post(route, json=body)
    assert response.status_code == 422, response.text
    assert message in str(response.json()["detail"])


def test_an_unknown_model_name_is_404_listing_the_known_ones(client):
    response = client.post("/v1/translate", json={"text": "你好", "model": "zh-en-never-trained"})
    assert response.status_code == 404
    assert "zh-en" in response.json()["detail"]


@pytest.mark.parametrize(("direction", "route"), [("zh-en", "/v1/translate"), ("en-zh", "/v1/translate/attention.png")])
def test_a_model_that_is_not_trained_is_503_naming_the_training_command(empty_client, direction, route):
    response = empty_client.post(route, json={"text": "你好", "direction": direction})
    assert response.status_code == 503
    assert f"python -m training seq2seq --direction {direction}" in response.json()["detail"]


# ---- the Transformer, every head, sentences, the direction read from the script ----------------------------


def test_the_default_is_the_transformer_whose_attention_is_its_last_layers_heads_averaged(client):
    response = client.post("/v1/translate", json={"text": "他是学生。", "attention_heads": True})
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["model"] == "seq2seq-zh-en"
    [result] = body["results"]
    assert_alignment(result)
    heads = result["attention_heads"]
    model = client.get("/v1/models").json()
    config = next(m for m in model["data"] if m["id"] == "seq2seq-zh-en")
    assert config["architecture"].startswith("Transformer")
    assert len(heads[0]) >= 1 and all(len(layer) == len(heads[0]) for layer in heads)
    for layer in heads:
        for head in layer:
            assert len(head) == len(result["target_tokens"])
            for row in head:
                assert len(row) == len(result["source_tokens"]) and sum(row) == pytest.approx(1.0, abs=1e-3)
    last = heads[-1]
    for t, row in enumerate(result["attention"]):
        for s, weight in enumerate(row):
            assert weight == pytest.approx(sum(head[t][s] for head in last) / len(last), abs=1e-3)


def test_attention_heads_are_left_out_unless_asked_and_a_recurrent_model_has_one_head(client):
    plain = client.post("/v1/translate", json={"text": "他是学生。"}).json()
    assert plain["results"][0]["attention_heads"] is None
    recurrent = client.post("/v1/translate", json={"text": "他是学生。", "model": "zh-en-recurrent",
                                                   "attention_heads": True}).json()
    [result] = recurrent["results"]
    assert recurrent["model"] == "seq2seq-zh-en-recurrent"
    assert result["attention_heads"] == [[result["attention"]]]


def test_a_text_of_several_sentences_gets_one_result_translated_sentence_by_sentence(client):
    response = client.post("/v1/translate", json={"texts": ["你好！我是学生。", "今天很冷。"]})
    assert response.status_code == 200, response.text
    first, second = response.json()["results"]
    assert [s["text"] for s in first["sentences"]] == ["你好！", "我是学生。"]
    assert [s["text"] for s in second["sentences"]] == ["今天很冷。"]
    assert_alignment(first)
    alone = client.post("/v1/translate", json={"texts": ["你好！", "我是学生。"]}).json()
    for sentence, result in zip(first["sentences"], alone["results"], strict=True):
        assert sentence["translation"] == result["translation"]
        assert sentence["target_tokens"] == result["target_tokens"]
        assert sentence["attention"] == result["attention"]
    assert first["translation"] == " ".join(r["translation"] for r in alone["results"])
    assert first["source_tokens"] == [t for r in alone["results"] for t in r["source_tokens"]]
    # The text's matrix is block-diagonal: the first sentence's target tokens give the second's source nothing.
    t, s = (len(alone["results"][0][k]) for k in ("target_tokens", "source_tokens"))
    assert all(w == 0 for row in first["attention"][:t] for w in row[s:])
    assert all(w == 0 for row in first["attention"][t:] for w in row[:s])


@pytest.mark.parametrize(("texts", "direction", "model"), [
    (["我们明天见。"], "zh-en", "seq2seq-zh-en"),
    (["See you tomorrow."], "en-zh", "seq2seq-en-zh"),
    (["I like 北京 a lot."], "zh-en", "seq2seq-zh-en"),
])
def test_direction_auto_reads_the_script_of_the_text_and_says_which_it_chose(client, texts, direction, model):
    response = client.post("/v1/translate", json={"texts": texts, "direction": "auto"})
    assert response.status_code == 200, response.text
    assert (response.json()["direction"], response.json()["model"]) == (direction, model)


def test_direction_auto_draws_the_attention_of_an_english_text(client):
    response = client.post("/v1/translate/attention.png", json={"text": "See you tomorrow.", "direction": "auto"})
    assert response.status_code == 200, response.text
    assert response.headers["content-type"] == "image/png"


@pytest.mark.parametrize(("body", "message"), [
    ({"texts": ["你好。", "Hello."], "direction": "auto"}, "some texts have CJK ideographs and some do not"),
    ({"text": "Hello.", "direction": "auto", "model": "zh-en"}, "translates zh-en, not en-zh"),
    ({"text": "你好", "direction": "Auto"}, "'auto'"),
    ({"text": "你好", "attention_heads": "yes"}, "valid boolean"),
    ({"text": "你好", "attention_heads": None}, "valid boolean"),
])
def test_bad_direction_and_attention_heads_requests_are_422(client, body, message):
    response = client.post("/v1/translate", json=body)
    assert response.status_code == 422, response.text
    assert message in str(response.json()["detail"])


def test_attention_heads_that_could_exceed_the_reply_limit_are_422_naming_it_before_any_inference(client):
    texts = ["我" * 200] * 8
    body = {"texts": texts, "attention_heads": True}
    response = client.post("/v1/translate", json=body)
    assert response.status_code == 422, response.text
    detail = response.json()["detail"]
    assert "MAX_RESPONSE_BYTES" in detail and "attention_heads" in detail
    without = client.post("/v1/translate", json={**body, "attention_heads": False})
    assert without.status_code == 200, without.text
