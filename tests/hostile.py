"""Hostile and careless requests as hypothesis strategies, shared by the property test and the schema fuzz.

Each route has a body that reaches its model; the strategies take it and put the values careless or
hostile clients send into its fields (non-finite numbers, lone surrogates, NUL and control characters,
strings and lists at and past their limits, deep nesting, wrong types, unknown fields), or replace the
body with bytes no JSON decoder should accept quietly (not UTF-8, nested 100,000 deep, a number of
5,000 digits, a latin-1 charset).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

from hypothesis import strategies as st

from app.settings import get_settings

LIMITS = get_settings()


@dataclass(frozen=True)
class Route:
    path: str
    body: dict[str, Any]  # a request that reaches the route's model
    limits: dict[str, int] = field(default_factory=dict)  # field -> its size limit (characters or items)
    openai: bool = False  # answers errors in OpenAI's {"error": {...}} shape

    @property
    def label(self) -> str:
        return f"POST {self.path}" + (" stream" if self.body.get("stream") else "")


ROUTES = [
    Route("/v1/word2vec/similarity", {"word_a": "king", "word_b": "queen", "model": "sg"},
          {"word_a": LIMITS.max_word_length}),
    Route("/v1/word2vec/most-similar", {"positive": ["king", "woman"], "negative": ["man"], "topn": 5},
          {"positive": LIMITS.max_query_words, "topn": LIMITS.max_topn}),
    Route("/v1/translate", {"texts": ["我们明天见。", "他是学生。"], "beam_size": 2, "max_length": 12,
                            "length_penalty": 0.6},
          {"texts": LIMITS.max_translate_texts, "beam_size": LIMITS.max_beam_size,
           "max_length": LIMITS.max_translation_length}),
    Route("/v1/translate/attention.png", {"text": "他是学生。", "direction": "zh-en"},
          {"text": LIMITS.max_translate_text_length}),
    Route("/v1/fill-mask", {"text": "to be or not to [MASK]", "top_k": 3, "targets": ["be", "the"]},
          {"text": LIMITS.max_text_length, "top_k": LIMITS.max_top_k, "targets": LIMITS.max_targets}),
    Route("/v1/next-sentence", {"text_a": "to be or not to be", "text_b": "that is the question"},
          {"text_a": LIMITS.max_text_length}),
    Route("/v1/attention", {"model": "bert", "text": "to be or not to be", "text_b": "that is the question",
                            "layers": [1, 0], "heads": [0]},
          {"text": LIMITS.max_text_length}),
    Route("/v1/attention.png", {"model": "gpt", "text": "ROMEO:\n", "layers": [0], "kind": "self"},
          {"text": LIMITS.max_text_length}),
    Route("/v1/classify", {"texts": ["KING: my lord, the French are come", "FOOL: nuncle"], "model": "cnn"},
          {"texts": LIMITS.max_classify_texts}),
    Route("/v1/generate", {"prompt": "ROMEO:\n", "max_new_tokens": 6, "seed": 1, "stop": ["\n\n"], "temperature": 0.8,
                           "top_p": 0.9, "repetition_penalty": 1.2},
          {"prompt": LIMITS.max_text_length, "stop": LIMITS.max_stop_sequences, "n": LIMITS.max_samples}),
    Route("/v1/generate", {"prompt": "ROMEO:\n", "max_new_tokens": 6, "stream": True, "model": "lstm"},
          {"prompt": LIMITS.max_text_length}),
    Route("/v1/completions", {"model": "gpt", "prompt": ["ROMEO:\n", "JULIET:"], "max_tokens": 6, "n": 2,
                              "temperature": 0.7, "presence_penalty": 0, "top_k": 5},
          {"prompt": LIMITS.max_prompts, "n": LIMITS.max_samples, "stop": LIMITS.max_stop_sequences},
          openai=True),
    Route("/v1/completions", {"model": "gru", "prompt": "ROMEO:\n", "max_tokens": 6, "stream": True, "echo": True},
          {"prompt": LIMITS.max_text_length}, openai=True),
    Route("/v1/completions", {"model": "gpt", "prompt": [[5, 6, 7], [8, 9]], "max_tokens": 1, "echo": True,
                              "logprobs": 2, "temperature": 0},
          {"prompt": LIMITS.max_prompts, "logprobs": 5}, openai=True),
    Route("/v1/chat/completions", {"model": "gpt", "messages": [{"role": "system", "content": "A street."},
                                                                {"role": "user", "name": "ROMEO", "content": "Hark!"}],
                                   "max_completion_tokens": 6, "n": 2, "seed": 1, "tool_choice": "none"},
          {"messages": LIMITS.max_messages, "n": LIMITS.max_samples, "stop": LIMITS.max_stop_sequences}, openai=True),
    Route("/v1/chat/completions", {"model": "lstm", "messages": [{"role": "user", "content": "Who's there?"}],
                                   "max_tokens": 6, "stream": True, "stream_options": {"include_usage": True}},
          {"messages": LIMITS.max_messages}, openai=True),
    Route("/v1/embeddings", {"model": "bert", "input": ["to be or not to be", "the king"], "encoding_format": "base64"},
          {"input": LIMITS.max_embedding_inputs}, openai=True),
    Route("/v1/embeddings", {"model": "sg", "input": "the king is dead"}, {"input": LIMITS.max_text_length},
          openai=True),
    Route("/tokenize", {"model": "gpt", "prompt": "ROMEO:\nBut soft!", "return_token_strs": True},
          {"prompt": LIMITS.max_text_length}, openai=True),
    Route("/detokenize", {"model": "lstm", "tokens": [10, 11, 12]}, {"tokens": LIMITS.max_prompt_tokens}, openai=True),
    Route("/v1/word2vec/n-similarity", {"ws1": ["king", "queen"], "ws2": ["lord"], "model": "cbow"},
          {"ws1": LIMITS.max_query_words}),
    Route("/v1/word2vec/doesnt-match", {"words": ["king", "queen", "lord", "love"]}, {"words": LIMITS.max_query_words}),
    Route("/v1/word2vec/vectors", {"words": ["king", "queen"], "norm": True}, {"words": LIMITS.max_query_words}),
]

NON_FINITE = st.sampled_from([float("nan"), float("inf"), float("-inf")])
LONE_SURROGATE = st.sampled_from(["\ud800", "\udfff", "a\udc00b", "[MASK] \ud83d", "king\udbff"])
CONTROL = st.text(st.characters(codec="utf-8", max_codepoint=0x9f, categories=["Cc"]), min_size=1, max_size=8)
ODD_TEXT = st.one_of(CONTROL, st.just("\x00"), st.just("[MASK]\x00"), st.just("\u2028\ufeff\u200b"),
                     st.text(min_size=1, max_size=8))
WRONG_TYPE = st.one_of(st.none(), st.booleans(), st.integers(-2**70, 2**70), st.floats(allow_nan=False),
                       st.lists(st.integers(), max_size=3), st.dictionaries(st.text(max_size=4), st.integers(),
                                                                             max_size=2))


def nested(depth: int) -> Any:
    value: Any = "king"
    for _ in range(depth):
        value = [value]
    return value


def sized(limit: int) -> st.SearchStrategy[int]:
    """Sizes at and just past a limit, and far past it."""
    return st.sampled_from([limit - 1, limit, limit + 1, 10 * limit + 7])


def huge(limit: int) -> st.SearchStrategy[Any]:
    """A string or a list of about ``limit`` characters or items, on either side of it."""
    strings = st.builds(lambda n, c: c * n, sized(limit), st.sampled_from(["a", "中", " ", "[MASK] "]))
    lists = st.builds(lambda n, item: [item] * n, sized(limit), st.sampled_from(["king", "我", 1, ""]))
    return st.one_of(strings, lists)


def hostile_value(limit: int) -> st.SearchStrategy[Any]:
    return st.one_of(NON_FINITE, LONE_SURROGATE, ODD_TEXT, huge(limit), WRONG_TYPE,
                     st.builds(nested, st.integers(2, 300)), st.lists(LONE_SURROGATE | NON_FINITE, min_size=1,
                                                                      max_size=3))


@st.composite
def hostile_json(draw: st.DrawFn, route: Route) -> Any:
    """The route's body with one to three fields replaced, added or dropped."""
    body = dict(route.body)
    for _ in range(draw(st.integers(1, 3))):
        name = draw(st.one_of(st.sampled_from(sorted(set(body) | set(route.limits))),
                              st.sampled_from(["temprature", "max_tokens", "texts", "model", "__proto__", "",
                                               "\ud800"]),
                              st.text(min_size=1, max_size=12)))
        if draw(st.booleans()) and name in body and len(body) > 1:
            del body[name]
        else:
            body[name] = draw(hostile_value(route.limits.get(name, LIMITS.max_text_length)))
    return body


def encode(value: Any) -> bytes:
    """JSON as a careless client writes it: NaN and Infinity as bare words, lone surrogates as escapes."""
    return json.dumps(value, allow_nan=True).encode()


RAW_BODIES = st.sampled_from([
    b"",
    b"not json",
    b"\xff\xfe{}",
    '{"text": "caf\u00e9"}'.encode("latin-1"),
    b"[" * 100_000 + b"]" * 100_000,
    b'{"a": ' + b"[" * 5_000 + b"]" * 5_000 + b"}",
    b'{"seed": ' + b"9" * 5_000 + b"}",
    b'{"top_k": 1e999}',
    b"NaN",
    b'"\\ud800"',
    b"[]",
    b"null",
    b'{"text": "\\ud800\\udc00\\ud800"}',
])


@st.composite
def hostile_body(draw: st.DrawFn, route: Route) -> tuple[bytes, str]:
    """(body, Content-Type) of one hostile request to ``route``."""
    content_type = draw(st.sampled_from(["application/json", "application/json", "application/json; charset=latin-1",
                                         "text/plain"]))
    if draw(st.integers(0, 4)) == 0:
        return draw(RAW_BODIES), content_type
    return encode(draw(hostile_json(route))), content_type
