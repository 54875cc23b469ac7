"""OpenAI's ``/v1/completions``, so the official ``openai`` client pointed at ``<base>/v1`` works unchanged.

It speaks OpenAI's wire format and follows OpenAI's rules (``app.openai_api``): every field of OpenAI's
completions request is accepted, those this service cannot honour (``suffix``, ``best_of`` other than
``n``, the presence and frequency penalties, ``logit_bias``) only at their neutral value. ``top_k`` and
``repetition_penalty`` ride along as extra fields, as vLLM takes them. A prompt is text or token ids (a
list of ints), or a list of several. Generation itself is ``/v1/generate``'s (``app.routers.generate``).

``logprobs`` (0 to 5) scores each choice once it is generated, with one forward pass over prompt and
choice (``TextGenerator.score``): the model's own log-probabilities, before temperature and the other
sampling controls, of the choice's text as the tokenizer encodes it. With ``echo`` the prompt's tokens are
scored too; ``max_tokens: 0`` with ``echo`` scores the prompt alone, as lm-evaluation-harness's
loglikelihood requests ask.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import asdict
from typing import Annotated, Any, ClassVar, Literal

from fastapi import APIRouter, Depends, Request, Response
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field

from app.inference import InferencePool, get_pool
from app.openai_api import FieldRefused, OpenAIRequest, StreamOptions, openai_errors
from app.registry import Registry, get_registry
from app.routers.generate import (
    BYTES_PER_CHARACTER,
    STREAMED,
    FinishReason,
    Prompt,
    Sampling,
    Usage,
    check_samples_fit,
    complete,
    count_tokens,
)
from app.routing import JSONRoute
from app.schemas import LIMITS, ModelName, TokenIds, texts_or_ids
from app.streaming import Deadline, EventStream, pieces
from models.pipelines import TextGenerator
from models.pipelines.errors import InvalidInput
from models.pipelines.text_generation import Completion
from models.sampling import SamplingParams

router = APIRouter(prefix="/v1", tags=["generate"], route_class=JSONRoute)

MAX_LOGPROBS = 5  # OpenAI's own limit
BYTES_PER_NUMBER = 25  # a log-probability or an offset in a reply, with its separator


class CompletionRequest(OpenAIRequest, Sampling):
    NEUTRAL: ClassVar[dict[str, tuple[Any, ...]]] = {
        "suffix": ("",), "presence_penalty": (0,), "frequency_penalty": (0,), "logit_bias": ({},)}

    model: Annotated[ModelName, Field(description="A language model: its id (see /v1/models) or short name.")] = "gpt"
    prompt: Prompt | Annotated[list[Prompt], Field(min_length=1, max_length=LIMITS.max_prompts)] | TokenIds | \
        Annotated[list[TokenIds], Field(min_length=1, max_length=LIMITS.max_prompts)] = Field(
            description=f"Text to continue, or its token ids (see /tokenize), or a list of up to "
                        f"{LIMITS.max_prompts} such prompts (each gets n choices).")
    max_tokens: int | None = Field(None, ge=0, le=LIMITS.max_new_tokens,
                                   description="Most tokens to generate per choice (default 16); 0, with echo, "
                                               "scores the prompt alone.")
    echo: bool | None = Field(None, description="Put the prompt in front of each choice's text (and its tokens in "
                                                "front of its logprobs).")
    logprobs: int | None = Field(None, ge=0, le=MAX_LOGPROBS,
                                 description="Score each choice's tokens: their log-probabilities and those of the "
                                             "this-many likeliest tokens at each position.")
    stream_options: StreamOptions | None = None
    user: str | None = Field(None, max_length=LIMITS.max_text_length, description="Accepted and ignored.")
    best_of: int | None = Field(None, ge=1, le=LIMITS.max_samples, description="Must equal n when given.")
    suffix: Literal[""] | None = Field(None, description="Not supported; must be null or empty.")
    presence_penalty: float | None = Field(None, ge=0.0, le=0.0, description="Not supported (use "
                                                                             "repetition_penalty); must be 0.")
    frequency_penalty: float | None = Field(None, ge=0.0, le=0.0, description="Not supported (use "
                                                                              "repetition_penalty); must be 0.")
    logit_bias: dict[str, float] | None = Field(None, max_length=0, description="Not supported; must be empty.")

    model_config = ConfigDict(json_schema_extra={"examples": [
        {"model": "gpt", "prompt": "ROMEO:\n", "max_tokens": 40, "temperature": 0.8, "seed": 7},
        {"model": "gpt", "prompt": "JULIET:\n", "max_tokens": 60, "n": 2, "stop": ["\n\n"], "stream": True},
        {"model": "gpt", "prompt": "ROMEO:\nBut soft, what light", "max_tokens": 0, "echo": True, "logprobs": 1},
    ]})

    def check_consistent(self) -> None:
        """What OpenAI's schema cannot state: each is a 400 naming its field."""
        if self.best_of is not None and self.best_of != self.samples:
            raise FieldRefused("best_of", "best_of is not supported by this service: leave it out, or make it equal n")
        if self.stream_options is not None and not self.stream:
            raise FieldRefused("stream_options", "stream_options needs stream: true")
        if self.max_tokens == 0 and not self.echo:
            raise FieldRefused("max_tokens", "max_tokens 0 generates nothing; with echo: true it scores the prompt")
        if self.logprobs is not None and self.stream:
            raise FieldRefused("logprobs", "logprobs is not supported with stream: true; leave one of them out")

    @property
    def tokens(self) -> int:
        return 16 if self.max_tokens is None else self.max_tokens

    @property
    def prompts(self) -> list[str | list[int]]:
        """Every prompt: a text or its token ids."""
        return texts_or_ids(self.prompt)


class Logprobs(BaseModel):
    tokens: list[str] = Field(description="Each token as text.")
    token_logprobs: list[float | None] = Field(description="log P(token | the tokens before it); null for a "
                                                           "prompt's first token.")
    top_logprobs: list[dict[str, float] | None] = Field(description="The likeliest tokens at each position, and "
                                                                    "the token itself, with theirs.")
    text_offset: list[int] = Field(description="Where each token begins, in characters from the prompt's start.")


class Choice(BaseModel):
    text: str
    index: int
    logprobs: Logprobs | None = None
    finish_reason: FinishReason | None


class CompletionResponse(BaseModel):
    id: str
    object: Literal["text_completion"] = "text_completion"
    created: int
    model: str
    choices: list[Choice]
    usage: Usage | None = None


ERRORS = openai_errors({
    400: "Invalid request: a field outside OpenAI's schema, an unsupported one not at its neutral value, an "
         "invalid value, a token id outside the vocabulary, a model that is not a language model, or a reply "
         "larger than MAX_RESPONSE_BYTES",
    404: "No language model of that name", 503: "The model is not loaded; the message names the training command"})


def encode_prompts(generator: TextGenerator, prompts: list[str | list[int]]) -> list[list[int]]:
    try:
        return [generator.encode_prompt(p) for p in prompts]
    except InvalidInput as e:
        raise FieldRefused("prompt", str(e)) from e


def logprobs_bytes(generator: TextGenerator, tokens: int, top: int) -> int:
    """The worst case of one choice's logprobs: each token's text in ``tokens`` and in its ``top + 1``
    ``top_logprobs`` entries, its number in ``token_logprobs`` and in each entry, and its offset."""
    per_entry = BYTES_PER_CHARACTER * generator.longest_token + BYTES_PER_NUMBER
    return tokens * ((top + 2) * per_entry + BYTES_PER_NUMBER)


@router.post("/completions", response_model=CompletionResponse, responses={**STREAMED, **ERRORS},
             summary="OpenAI-compatible text completions (streamed with stream=true), and prompt scoring")
async def completions(body: CompletionRequest, request: Request, registry: Annotated[Registry, Depends(get_registry)],
                      pool: Annotated[InferencePool, Depends(get_pool)]) -> Response:
    body.check_consistent()
    served = registry.get(TextGenerator, body.model)
    generator = served.pipeline
    prompt_ids = encode_prompts(generator, body.prompts)
    texts = [p if isinstance(p, str) else generator.tokenizer.decode(p) for p in body.prompts]
    params = body.params(body.tokens) if body.tokens else None
    head = {"id": f"cmpl-{uuid.uuid4().hex}", "object": "text_completion", "created": int(time.time()),
            "model": served.id}
    if body.stream:
        admission = pool.admit()
        return EventStream(_chunks(request, pool, served.id, generator, body, texts, prompt_ids, params, head),
                           admission, lambda message, kind: {"error": {"message": message, "type": kind, "param": None,
                                                                       "code": None}})
    n = body.samples
    echoed = sum(map(len, texts)) * n if body.echo else 0
    scored = 0
    if body.logprobs is not None:
        scored = sum(logprobs_bytes(generator, (len(ids) if body.echo else 0) + body.tokens, body.logprobs) * n
                     for ids in prompt_ids)
    check_samples_fit(generator, len(prompt_ids) * n, body.tokens, echoed, scored)
    choices: list[Choice] = []
    completion_tokens = 0
    async with pool.slot():
        deadline = Deadline(pool.timeout)
        for p, (text, ids) in enumerate(zip(texts, prompt_ids, strict=True)):
            results = await complete(request, pool, generator, ids, params, deadline) if params else \
                [Completion("", "length", 0)] * n
            for i, result in enumerate(results):
                logprobs = None
                if body.logprobs is not None:
                    logprobs = await _score(pool, generator, ids, result.text, body.logprobs, bool(body.echo),
                                            deadline)
                choices.append(Choice(text=text + result.text if body.echo else result.text, index=p * n + i,
                                      logprobs=logprobs, finish_reason=result.finish_reason))
                completion_tokens += result.tokens
    count_tokens(request, served.id, completion_tokens)
    usage = Usage.of(sum(map(len, prompt_ids)), completion_tokens)
    return JSONResponse(CompletionResponse(**head, choices=choices, usage=usage).model_dump())


async def _score(pool: InferencePool, generator: TextGenerator, prompt_ids: list[int], text: str, top: int,
                 echo: bool, deadline: Deadline) -> Logprobs:
    """The logprobs of one choice: its text's tokens after the prompt, the prompt's own first with ``echo``."""
    ids = prompt_ids + (generator.tokenizer.encode(text) if text else [])
    scores = await pool.call(lambda: generator.score(ids, top), timeout=deadline.remaining())
    return Logprobs(**asdict(scores.since(0 if echo else len(prompt_ids))))


async def _chunks(request: Request, pool: InferencePool, model_id: str, generator: TextGenerator,
                  body: CompletionRequest, texts: list[str], prompt_ids: list[list[int]], params: SamplingParams | None,
                  head: dict[str, Any]) -> AsyncIterator[dict[str, Any]]:
    def chunk(index: int, text: str, finish_reason: str | None = None) -> dict[str, Any]:
        return {**head, "choices": [{"text": text, "index": index, "logprobs": None, "finish_reason": finish_reason}]}

    deadline = Deadline(pool.timeout)
    n = body.samples
    completion_tokens = 0
    for p, (text, ids) in enumerate(zip(texts, prompt_ids, strict=True)):
        if body.echo:
            for i in range(n):
                yield chunk(p * n + i, text, None if params else "length")
        if params is None:
            continue
        async for piece in pieces(request, pool, generator, ids, params, deadline):
            if piece.text or piece.finish_reason:
                yield chunk(p * n + piece.index, piece.text, piece.finish_reason)
            if piece.finish_reason is not None:
                completion_tokens += piece.tokens
                count_tokens(request, model_id, piece.tokens)
    if body.stream_options is not None and body.stream_options.include_usage:
        usage = Usage.of(sum(map(len, prompt_ids)), completion_tokens)
        yield {**head, "choices": [], "usage": usage.model_dump()}
