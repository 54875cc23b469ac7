"""/v1/chat/completions: a conversation rendered as a play scene, the reply the model's next speech, with the
official openai client, plain and streamed; OpenAI's chat fields at their neutral values."""

from __future__ import annotations

import httpx
import pytest

from models.pipelines.chat import Message, render
from models.script import scene
from training.data import Play, Speech

from .test_generate_api import events

SCENE = [{"role": "system", "content": "Verona. A public place."},
         {"role": "user", "name": "SAMPSON", "content": "Gregory, on my word,\n\nwe'll not carry coals."},
         {"role": "assistant", "name": "GREGORY", "content": "No, for then we should be colliers."},
         {"role": "user", "content": [{"type": "text", "text": "I mean, an we be in choler,"},
                                      {"type": "text", "text": "we'll draw."}]}]


def chat(client: httpx.Client, **body: object) -> dict:
    response = client.post("/v1/chat/completions", json={"model": "gpt", **body})
    assert response.status_code == 200, response.text
    return response.json()


# ---- the script ---------------------------------------------------------------------------------------------


def test_a_conversation_renders_as_the_plays_are_rendered_for_training():
    messages = [Message("user", "Who's there?", "BERNARDO"),
                Message("assistant", "Nay, answer me:\nstand!", "FRANCISCO")]
    play = Play("hamlet", "Hamlet", "tragedy", (Speech("BERNARDO", ("Who's there?",)),
                                                Speech("FRANCISCO", ("Nay, answer me:", "stand!"))))
    assert render(messages, reply=False) + "\n" == play.render()
    assert render(messages) == play.render() + "\nFRANCISCO:\n"  # the reply: the last assistant speaker's


def test_default_speakers_stand_in_for_roles_and_blank_lines_cannot_end_a_speech_early():
    prompt = render([Message(m["role"], m["content"] if isinstance(m["content"], str) else "\n".join(
        p["text"] for p in m["content"]), m.get("name")) for m in SCENE])
    assert prompt == scene([("Chorus", ["Verona. A public place."]),
                            ("SAMPSON", ["Gregory, on my word,", "we'll not carry coals."]),
                            ("GREGORY", ["No, for then we should be colliers."]),
                            ("HAMLET", ["I mean, an we be in choler,", "we'll draw."]),
                            ("GREGORY", [])])
    assert render([Message("user", "Speak.")]).endswith("HAMLET:\nSpeak.\n\nHORATIO:\n")


# ---- the reply ----------------------------------------------------------------------------------------------


def test_the_reply_is_the_next_speech_ending_where_the_next_speaker_begins(client: httpx.Client):
    prompt = client.post("/detokenize", json={"tokens": client.post("/tokenize", json={"messages": SCENE}).json()[
        "tokens"]}).json()["prompt"]
    cut = 0
    for seed in range(1, 21):
        completion = client.post("/v1/completions", json={"model": "gpt", "prompt": prompt, "max_tokens": 60,
                                                          "seed": seed, "temperature": 0.9}).json()["choices"][0]
        text = completion["text"]
        reply = chat(client, messages=SCENE, max_tokens=60, seed=seed, temperature=0.9)
        choice = reply["choices"][0]
        if "\n\n" in text:
            cut += 1
            assert choice["message"]["content"] == text[:text.index("\n\n")] and choice["finish_reason"] == "stop"
        else:
            # the token limit, or the end of text
            assert choice["message"]["content"] == text and choice["finish_reason"] == completion["finish_reason"]
        assert choice["message"]["role"] == "assistant" and reply["object"] == "chat.completion"
    assert cut, "no sample reached the next speaker; the test proved nothing"


def test_n_replies_usage_and_the_model_id(client: httpx.Client):
    reply = chat(client, model="lm-gru", messages=SCENE[:2], n=3, max_completion_tokens=5, seed=1)
    assert reply["model"] == "lm-gru" and [c["index"] for c in reply["choices"]] == [0, 1, 2]
    usage = reply["usage"]
    assert usage["total_tokens"] == usage["prompt_tokens"] + usage["completion_tokens"]
    assert usage["completion_tokens"] <= 15


def test_stop_sequences_of_the_request_apply_as_well(client: httpx.Client):
    for seed in range(1, 6):
        content = chat(client, messages=SCENE, max_tokens=40, seed=seed, stop=["e"])["choices"][0]["message"]["content"]
        assert "e" not in content and "\n\n" not in content


def test_a_stream_sends_the_role_then_the_speech_then_finish_and_usage(client: httpx.Client):
    plain = chat(client, messages=SCENE, max_tokens=30, seed=7)["choices"][0]
    with client.stream("POST", "/v1/chat/completions", json={"model": "gpt", "messages": SCENE, "max_tokens": 30,
                                                             "seed": 7, "stream": True,
                                                             "stream_options": {"include_usage": True}}) as response:
        assert response.headers["content-type"].startswith("text/event-stream")
        data = events(response)
    assert data[-1] == "[DONE]"
    chunks = data[:-1]
    assert all(c["object"] == "chat.completion.chunk" for c in chunks)
    assert chunks[0]["choices"][0]["delta"] == {"role": "assistant", "content": ""}
    text = "".join(c["choices"][0]["delta"].get("content", "") for c in chunks if c["choices"])
    assert text == plain["message"]["content"]
    assert [c["choices"][0]["finish_reason"] for c in chunks if c["choices"]][-1] == plain["finish_reason"]
    assert chunks[-1]["choices"] == [] and chunks[-1]["usage"]["completion_tokens"] > 0


def test_the_openai_client_chats_plain_and_streamed(openai_client):  # noqa: ANN001
    messages = [{"role": "user", "name": "ROMEO", "content": "But soft, what light through yonder window breaks?"}]
    plain = openai_client.chat.completions.create(model="gpt", messages=messages, max_tokens=24, seed=11)
    assert plain.object == "chat.completion" and plain.choices[0].message.role == "assistant"
    assert plain.choices[0].finish_reason in ("stop", "length") and plain.usage.prompt_tokens > 0
    stream = openai_client.chat.completions.create(model="gpt", messages=messages, max_tokens=24, seed=11, stream=True)
    chunks = list(stream)
    assert "".join(c.choices[0].delta.content or "" for c in chunks) == plain.choices[0].message.content
    assert chunks[-1].choices[0].finish_reason == plain.choices[0].finish_reason


# ---- OpenAI's fields ---------------------------------------------------------------------------------------------


NEUTRAL = {"audio": None, "frequency_penalty": 0, "presence_penalty": 0.0, "function_call": "none", "functions": [],
           "logit_bias": {}, "logprobs": False, "top_logprobs": 0, "metadata": {}, "modalities": ["text"],
           "moderation": None, "parallel_tool_calls": True, "prediction": None, "prompt_cache_key": "k",
           "prompt_cache_options": None, "prompt_cache_retention": None, "reasoning_effort": "none",
           "response_format": {"type": "text"}, "safety_identifier": "s", "service_tier": "auto", "store": False,
           "tool_choice": "auto", "tools": [], "user": "someone", "verbosity": "medium", "web_search_options": None,
           "stream": False, "stream_options": None, "n": 1, "seed": 1, "stop": None, "temperature": 1, "top_p": 1,
           "max_tokens": 3, "max_completion_tokens": 3}

REFUSED = [("audio", {"voice": "alloy", "format": "mp3"}), ("frequency_penalty", 0.5), ("function_call", {"name": "f"}),
           ("functions", [{"name": "f"}]), ("logit_bias", {"5": 10}), ("logprobs", True), ("top_logprobs", 2),
           ("metadata", {"k": "v"}), ("modalities", ["text", "audio"]), ("prediction", {"type": "content"}),
           ("reasoning_effort", "high"), ("response_format", {"type": "json_object"}), ("service_tier", "flex"),
           ("store", True), ("tool_choice", "required"), ("tools", [{"type": "function"}]), ("verbosity", "low"),
           ("web_search_options", {}), ("max_tokens", 4), ("stream_options", {"include_usage": True}),
           ("temprature", 1), ("max_completion_tokens", 0), ("messages", [{"role": "tool", "content": "x",
                                                                           "tool_call_id": "1"}]),
           ("messages", [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "x"}}]}]),
           ("messages", [{"role": "user", "name": "A:B", "content": "x"}]),
           ("messages", [{"role": "assistant", "content": "x", "tool_calls": [{"id": "1"}]}]),
           ("messages", [{"role": "user", "content": " \n "}]), ("messages", [])]


def test_every_openai_chat_field_is_taken_at_its_neutral_value(client: httpx.Client):
    messages = [{"role": "developer", "content": "x", "name": "Chorus"},
                {"role": "assistant", "content": "y", "refusal": None, "tool_calls": [], "audio": None,
                 "function_call": None},
                {"role": "user", "content": [{"type": "text", "text": "z", "prompt_cache_breakpoint": None}]}]
    assert chat(client, messages=messages, **NEUTRAL)["choices"][0]["finish_reason"] in ("stop", "length")


@pytest.mark.parametrize("name, value", REFUSED, ids=[f"{n}-{i}" for i, (n, _) in enumerate(REFUSED)])
def test_any_other_value_is_400_naming_the_field(client: httpx.Client, name: str, value: object):
    response = client.post("/v1/chat/completions", json={**NEUTRAL, "messages": SCENE, "model": "gpt", name: value})
    assert response.status_code == 400, response.text
    error = response.json()["error"]
    assert error["param"] == name and error["type"] == "invalid_request_error", error


def test_a_model_that_is_not_a_language_model_or_unknown_or_not_loaded(client: httpx.Client,
                                                                       empty_client: httpx.Client):
    body = {"messages": SCENE[:1], "max_tokens": 2}
    response = client.post("/v1/chat/completions", json={**body, "model": "bert"})
    assert response.status_code == 400 and response.json()["error"]["param"] == "model"
    response = client.post("/v1/chat/completions", json={**body, "model": "nope"})
    assert response.status_code == 404 and response.json()["error"]["code"] == "model_not_found"
    response = empty_client.post("/v1/chat/completions", json={**body, "model": "lstm"})
    assert response.status_code == 503 and "python -m training lm --cell lstm" in response.json()["error"]["message"]
