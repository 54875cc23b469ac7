"""Scoring with /v1/completions: logprobs, echo with max_tokens 0 or 1 (lm-evaluation-harness's loglikelihood
requests), prompts given as token ids; vLLM's /tokenize and /detokenize; and the one forward pass behind them."""

from __future__ import annotations

import math
from pathlib import Path

import httpx
import pytest
import torch

from models.checkpoint import load_checkpoint
from models.gpt import GPT, GPTConfig, GPTSession
from models.pipelines import text_generation
from models.rnn import RNNLanguageModel, RNNLanguageModelConfig
from models.tokenizers import load_text_tokenizer

from .conftest import API_KEY

PROMPT = "ROMEO:\nBut soft, what light through yonder window breaks?"


def complete(client: httpx.Client, **body: object) -> dict:
    response = client.post("/v1/completions", json={"model": "gpt", **body})
    assert response.status_code == 200, response.text
    return response.json()


def tokenize(client: httpx.Client, **body: object) -> dict:
    response = client.post("/tokenize", json={"model": "gpt", **body})
    assert response.status_code == 200, response.text
    return response.json()


# ---- the forward pass: every position's next-token logits ---------------------------------------------------


def test_a_gpt_scores_past_its_context_with_the_contexts_decoding_gives_each_token():
    torch.manual_seed(0)
    model = GPT(GPTConfig(vocab_size=40, block_size=8, n_layer=2, n_head=2, n_embd=16)).eval()
    tokens = torch.randint(0, 40, (30,)).tolist()
    session = GPTSession(model, torch.tensor([tokens[:1]]))
    stepped = [session.logits[0]] + [session.step(torch.tensor([t]))[0] for t in tokens[1:]]
    torch.testing.assert_close(model.next_token_logits(tokens), torch.stack(stepped), atol=1e-5, rtol=1e-5)


def test_a_recurrent_model_scores_as_it_steps():
    torch.manual_seed(0)
    model = RNNLanguageModel(RNNLanguageModelConfig(vocab_size=30, cell="gru", embed_dim=8, hidden_size=12)).eval()
    tokens = torch.randint(0, 30, (20,)).tolist()
    session, first = model.start(tokens[:1])
    stepped = [first[0]] + [session.step(torch.tensor([t]))[0] for t in tokens[1:]]
    torch.testing.assert_close(model.next_token_logits(tokens), torch.stack(stepped), atol=1e-5, rtol=1e-5)


# ---- logprobs ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("model", ["gpt", "lstm"])
def test_echo_with_max_tokens_0_scores_the_prompt_with_the_models_own_log_probabilities(
        client: httpx.Client, checkpoint_dir: Path, model: str):
    choice = complete(client, model=model, prompt=PROMPT, max_tokens=0, echo=True, logprobs=3)["choices"][0]
    assert choice["text"] == PROMPT and choice["finish_reason"] == "length"
    logprobs = choice["logprobs"]
    checkpoint = load_checkpoint(checkpoint_dir / ("gpt" if model == "gpt" else "lm-lstm"))
    network = text_generation.LANGUAGE_MODELS[checkpoint.family](checkpoint, torch.device("cpu"))
    tokenizer = load_text_tokenizer(checkpoint, network.config.vocab_size)
    ids = tokenizer.encode(PROMPT)
    expected = torch.log_softmax(network.next_token_logits(ids).float(), dim=-1)
    assert logprobs["tokens"] == [tokenizer.decode([i]) for i in ids]
    assert logprobs["token_logprobs"][0] is None and logprobs["top_logprobs"][0] is None
    for t in range(1, len(ids)):
        assert math.isclose(logprobs["token_logprobs"][t], expected[t - 1, ids[t]].item(), abs_tol=1e-4)
        top = logprobs["top_logprobs"][t]
        best = expected[t - 1].topk(3)
        for value, token_id in zip(best.values.tolist(), best.indices.tolist(), strict=True):
            assert math.isclose(top[tokenizer.decode([token_id])], value, abs_tol=1e-4)
        assert logprobs["tokens"][t] in top and 3 <= len(top) <= 4  # the token itself is always there


def test_text_offsets_locate_each_token_in_the_text(client: httpx.Client):
    logprobs = complete(client, prompt=PROMPT, max_tokens=0, echo=True, logprobs=0)["choices"][0]["logprobs"]
    offsets, tokens = logprobs["text_offset"], logprobs["tokens"]
    assert offsets[0] == 0 and all(PROMPT[o:o + len(t)] == t for o, t in zip(offsets, tokens, strict=True))
    assert all(len(top) == 1 for top in logprobs["top_logprobs"][1:])  # logprobs 0: the token alone


def test_the_logprobs_of_a_choice_follow_the_prompt_and_greedy_tokens_are_the_likeliest(client: httpx.Client):
    echoed = complete(client, prompt=PROMPT, max_tokens=0, echo=True, logprobs=1)["choices"][0]["logprobs"]
    choice = complete(client, prompt=PROMPT, max_tokens=12, temperature=0, logprobs=1)["choices"][0]
    logprobs = choice["logprobs"]
    assert "".join(logprobs["tokens"]) == choice["text"]
    assert logprobs["text_offset"][0] == len(PROMPT) and logprobs["token_logprobs"][0] is not None
    for token, top in zip(logprobs["tokens"], logprobs["top_logprobs"], strict=True):
        assert max(top, key=top.get) == token  # greedy: each token was the most likely
    # echo puts the prompt's own scores in front, unchanged
    both = complete(client, prompt=PROMPT, max_tokens=12, temperature=0, logprobs=1, echo=True)["choices"][0]
    assert both["logprobs"]["tokens"] == echoed["tokens"] + logprobs["tokens"]
    assert both["logprobs"]["token_logprobs"][:len(echoed["tokens"])] == pytest.approx(echoed["token_logprobs"])


def test_a_loglikelihood_request_as_lm_evaluation_harness_sends_it(client: httpx.Client):
    """Context and continuation as token ids, echo, max_tokens 1, logprobs 1, temperature 0: the continuation's
    log-likelihood is the sum of token_logprobs after the context, and it is greedy when each is the top one."""
    context = tokenize(client, prompt="ROMEO:\nBut soft, what light")["tokens"]
    continuation = tokenize(client, prompt=" through yonder window")["tokens"]
    reply = complete(client, prompt=[context + continuation, context], max_tokens=1, echo=True, logprobs=1,
                     temperature=0, seed=1234)
    whole, alone = (c["logprobs"] for c in reply["choices"])
    assert len(whole["tokens"]) == len(context) + len(continuation) + 1  # and the one generated token
    scored = whole["token_logprobs"][len(context):-1]
    assert len(scored) == len(continuation) and all(v <= 0 for v in scored)
    assert alone["token_logprobs"][:-1] == pytest.approx(whole["token_logprobs"][:len(context)], abs=1e-4)
    assert reply["usage"]["prompt_tokens"] == 2 * len(context) + len(continuation)


def test_a_prompt_of_token_ids_continues_as_its_text_does(client: httpx.Client):
    ids = tokenize(client, prompt=PROMPT)["tokens"]
    by_text = complete(client, prompt=PROMPT, max_tokens=8, seed=5)["choices"][0]["text"]
    by_ids = complete(client, prompt=ids, max_tokens=8, seed=5)["choices"][0]["text"]
    assert by_ids == by_text
    as_floats = complete(client, prompt=[float(i) for i in ids], max_tokens=8, seed=5)["choices"][0]["text"]
    assert as_floats == by_text  # JSON has one kind of number: 7.0 is the token id 7
    echoed = complete(client, prompt=[ids, ids[:3]], max_tokens=0, echo=True)["choices"]
    start = client.post("/detokenize", json={"tokens": ids[:3]}).json()["prompt"]
    assert [c["text"] for c in echoed] == [PROMPT, start]


@pytest.mark.parametrize("change, param", [
    ({"max_tokens": 0}, "max_tokens"), ({"logprobs": 6}, "logprobs"), ({"logprobs": -1}, "logprobs"),
    ({"logprobs": 2, "stream": True}, "logprobs"), ({"prompt": [1, 2, 10**6]}, "prompt"),
    ({"prompt": [1, -2]}, "prompt"),
    ({"prompt": [[1], "x"]}, "prompt"), ({"prompt": [[]]}, "prompt"), ({"prompt": [True]}, "prompt")])
def test_scoring_requests_it_cannot_answer_are_400_naming_the_field(client: httpx.Client, change: dict, param: str):
    response = client.post("/v1/completions", json={"model": "gpt", "prompt": PROMPT, **change})
    assert response.status_code == 400, response.text
    assert response.json()["error"]["param"] == param, response.text


def test_a_reply_whose_logprobs_could_be_too_large_is_refused_before_any_inference(client: httpx.Client):
    response = client.post("/v1/completions", json={"model": "gpt", "prompt": [PROMPT] * 8, "n": 8, "max_tokens": 512,
                                                    "logprobs": 5, "echo": True})
    assert response.status_code == 400 and "MAX_RESPONSE_BYTES" in response.json()["error"]["message"]


def test_echo_with_max_tokens_0_streams_the_prompt_and_finishes(client: httpx.Client):
    with client.stream("POST", "/v1/completions", json={"model": "gpt", "prompt": PROMPT, "max_tokens": 0,
                                                        "echo": True, "stream": True}) as response:
        lines = [line.removeprefix("data: ") for line in response.iter_lines() if line.startswith("data: ")]
    assert lines[-1] == "[DONE]" and len(lines) == 2
    assert '"finish_reason": "length"' in lines[0] and '"text": "ROMEO:\\nBut soft' in lines[0]


def test_the_openai_client_reads_logprobs(openai_client):  # noqa: ANN001
    completion = openai_client.completions.create(model="gpt", prompt=PROMPT, max_tokens=0, echo=True, logprobs=2)
    logprobs = completion.choices[0].logprobs
    assert completion.choices[0].text == PROMPT and logprobs.token_logprobs[0] is None
    assert len(logprobs.tokens) == len(logprobs.token_logprobs) == len(logprobs.top_logprobs)
    assert all(value < 0 for value in logprobs.token_logprobs[1:])
    generated = openai_client.completions.create(model="lstm", prompt=PROMPT, max_tokens=5, logprobs=5, seed=2)
    assert "".join(generated.choices[0].logprobs.tokens) == generated.choices[0].text


# ---- /tokenize and /detokenize ---------------------------------------------------------------------------------


@pytest.mark.parametrize("model, context", [("gpt", "block_size"), ("lstm", None)])
def test_tokenize_counts_and_detokenize_restores_the_text(client: httpx.Client, checkpoint_dir: Path, model: str,
                                                         context: str | None):
    reply = tokenize(client, model=model, prompt=PROMPT, return_token_strs=True, add_special_tokens=True)
    assert reply["count"] == len(reply["tokens"]) == len(reply["token_strs"]) and "".join(reply["token_strs"]) == PROMPT
    checkpoint = load_checkpoint(checkpoint_dir / ("gpt" if model == "gpt" else "lm-lstm"))
    assert reply["max_model_len"] == (checkpoint.config["model"][context] if context else None)
    restored = client.post("/detokenize", json={"model": model, "tokens": reply["tokens"]})
    assert restored.status_code == 200 and restored.json() == {"prompt": PROMPT}
    assert tokenize(client, model=model, prompt=PROMPT)["token_strs"] is None


def test_tokenize_renders_messages_as_chat_does(client: httpx.Client):
    messages = [{"role": "user", "name": "ROMEO", "content": "Is she not down so late?"}]
    rendered = tokenize(client, messages=messages)
    text = client.post("/detokenize", json={"tokens": rendered["tokens"]}).json()["prompt"]
    assert text == "ROMEO:\nIs she not down so late?\n\nHORATIO:\n"
    bare = tokenize(client, messages=messages, add_generation_prompt=False)
    assert client.post("/detokenize", json={"tokens": bare["tokens"]}).json()["prompt"] == messages[0]["name"] + \
        ":\n" + messages[0]["content"]
    chat = client.post("/v1/chat/completions", json={"model": "gpt", "messages": messages, "max_tokens": 1})
    assert chat.json()["usage"]["prompt_tokens"] == rendered["count"]


@pytest.mark.parametrize("path, body, param", [
    ("/tokenize", {}, None), ("/tokenize", {"prompt": "x", "messages": [{"role": "user", "content": "x"}]}, None),
    ("/tokenize", {"prompt": "x", "model": "sg"}, "model"), ("/detokenize", {"tokens": [10**6]}, "tokens"),
    ("/detokenize", {"tokens": []}, "tokens"), ("/tokenize", {"prompt": "x", "extra": 1}, "extra")])
def test_tokenize_errors_are_400_in_openai_shape(client: httpx.Client, path: str, body: dict, param: str | None):
    response = client.post(path, json=body)
    assert response.status_code == 400, response.text
    assert set(response.json()["error"]) == {"message", "type", "param", "code"}
    assert response.json()["error"]["param"] == param


def test_tokenize_and_detokenize_need_the_key_like_every_v1_route(keyed_server: str):
    with httpx.Client(base_url=keyed_server, timeout=60) as client:
        for path, body in (("/tokenize", {"prompt": "x"}), ("/detokenize", {"tokens": [1]})):
            response = client.post(path, json=body)
            assert response.status_code == 401 and response.json()["error"]["type"] == "authentication_error"
            keyed = client.post(path, json=body, headers={"Authorization": f"Bearer {API_KEY}"})
            assert keyed.status_code == 200, keyed.text
