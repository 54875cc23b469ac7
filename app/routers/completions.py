"""OpenAI's ``/v1/completions``, so the official ``openai`` client pointed at ``<base>/v1`` works unchanged.

It speaks OpenAI's wire format and follows OpenAI's rules: every field of OpenAI's completions request is
accepted, those this service cannot honour (``logprobs``, ``suffix``, ``best_of`` other than ``n``, the
presence and frequency penalties, ``logit_bias``) only at their neutral value; any other field, or an
invalid value, is a 400 in OpenAI's ``{"error": {...}}`` shape naming it (``app.errors``). ``top_k`` and
``repetition_penalty`` ride along as extra fields, as vLLM takes them. Generation itself is
``/v1/generate``'s (``app.routers.generate``).
"""

from __future__ import annotations

import time
import uuid
from collections.abc import AsyncIterator
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Depends, HTTPException, Request, Response
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field, ValidationInfo, field_validator

from app.inference import InferencePool, get_pool
from app.registry import Registry, get_registry
from app.routers.generate import (
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
from app.schemas import LIMITS, ModelName, RequestModel
from app.streaming import Deadline, EventStream, pieces
from models.pipelines import TextGenerator
from models.sampling import SamplingParams

router = APIRouter(prefix="/v1", tags=["generate"], route_class=JSONRoute)

# OpenAI fields this service does not implement, and the values that ask for nothing.
NEUTRAL: dict[str, tuple[Any, ...]] = {
    "logprobs": (None,),
    "suffix": (None, ""),
    "presence_penalty": (None, 0),
    "frequency_penalty": (None, 0),
    "logit_bias": (None, {}),
}


class FieldRefused(HTTPException):
    """400 naming the field, for a value the schema allows but the rest of the request does not."""

    def __init__(self, param: str, message: str):
        super().__init__(status_code=400, detail=message)
        self.param = param


class StreamOptions(RequestModel):
    include_usage: bool | None = Field(None, description="Send a last chunk with usage and no choices.")


class CompletionRequest(Sampling):
    model: Annotated[ModelName, Field(description="A language model: its id (see /v1/models) or short name.")] = "gpt"
    prompt: Prompt | Annotated[list[Prompt], Field(min_length=1, max_length=LIMITS.max_prompts)] = Field(
        description=f"Text to continue, or a list of up to {LIMITS.max_prompts} texts (each gets n choices).")
    max_tokens: int | None = Field(None, ge=1, le=LIMITS.max_new_tokens,
                                   description="Most tokens to generate per choice (default 16).")
    echo: bool | None = Field(None, description="Put the prompt in front of each choice's text.")
    stream_options: StreamOptions | None = None
    user: str | None = Field(None, max_length=LIMITS.max_text_length, description="Accepted and ignored.")
    best_of: int | None = Field(None, ge=1, le=LIMITS.max_samples, description="Must equal n when given.")
    logprobs: None = Field(None, description="Not supported; must be null.")
    suffix: Literal[""] | None = Field(None, description="Not supported; must be null or empty.")
    presence_penalty: float | None = Field(None, ge=0.0, le=0.0, description="Not supported (use "
                                                                             "repetition_penalty); must be 0.")
    frequency_penalty: float | None = Field(None, ge=0.0, le=0.0, description="Not supported (use "
                                                                              "repetition_penalty); must be 0.")
    logit_bias: dict[str, float] | None = Field(None, max_length=0, description="Not supported; must be empty.")

    model_config = ConfigDict(json_schema_extra={"examples": [
        {"model": "gpt", "prompt": "ROMEO:\n", "max_tokens": 40, "temperature": 0.8, "seed": 7},
        {"model": "gpt", "prompt": "JULIET:\n", "max_tokens": 60, "n": 2, "stop": ["\n\n"], "stream": True},
    ]})

    @field_validator(*NEUTRAL, mode="before")
    @classmethod
    def _neutral_only(cls, value: Any, info: ValidationInfo) -> Any:
        neutral = NEUTRAL[info.field_name or ""]
        if not any(value == n and type(value) is not bool for n in neutral) and value is not None:
            raise ValueError(f"{info.field_name} is not supported by this service; leave it out")
        return value

    def check_consistent(self) -> None:
        """What OpenAI's schema cannot state: each is a 400 naming its field."""
        if self.best_of is not None and self.best_of != self.samples:
            raise FieldRefused("best_of", "best_of is not supported by this service: leave it out, or make it equal n")
        if self.stream_options is not None and not self.stream:
            raise FieldRefused("stream_options", "stream_options needs stream: true")

    @property
    def prompts(self) -> list[str]:
        return [self.prompt] if isinstance(self.prompt, str) else self.prompt


class Choice(BaseModel):
    text: str
    index: int
    logprobs: None = None
    finish_reason: FinishReason | None


class CompletionResponse(BaseModel):
    id: str
    object: Literal["text_completion"] = "text_completion"
    created: int
    model: str
    choices: list[Choice]
    usage: Usage | None = None


class OpenAIError(BaseModel):
    message: str
    type: str
    param: str | None
    code: str | None


class OpenAIErrorResponse(BaseModel):
    error: OpenAIError


ERRORS = {status: {"model": OpenAIErrorResponse, "description": text} for status, text in (
    (400, "Invalid request: a field outside OpenAI's schema, an unsupported one not at its neutral value, an "
          "invalid value, a model that is not a language model, or a reply larger than MAX_RESPONSE_BYTES"),
    (401, "Missing or wrong API key (only when the service runs with API_KEY)"),
    (404, "No language model of that name"), (413, "Request body over MAX_BODY_BYTES"), (429, "At capacity"),
    (503, "The model is not loaded; the message names the training command"),
    (504, "Not answered within REQUEST_TIMEOUT"))}


@router.post("/completions", response_model=CompletionResponse, responses={**STREAMED, **ERRORS},
             summary="OpenAI-compatible text completions (streamed with stream=true)")
async def completions(body: CompletionRequest, request: Request, registry: Annotated[Registry, Depends(get_registry)],
                      pool: Annotated[InferencePool, Depends(get_pool)]) -> Response:
    body.check_consistent()
    served = registry.get(TextGenerator, body.model)
    generator = served.pipeline
    prompts = body.prompts
    prompt_ids = [generator.encode_prompt(p) for p in prompts]
    params = body.params(body.max_tokens or 16)
    head = {"id": f"cmpl-{uuid.uuid4().hex}", "object": "text_completion", "created": int(time.time()),
            "model": served.id}
    if body.stream:
        admission = pool.admit()
        return EventStream(_chunks(request, pool, served.id, generator, body, prompt_ids, params, head), admission,
                           lambda message, kind: {"error": {"message": message, "type": kind, "param": None,
                                                            "code": None}})
    echoed = sum(map(len, prompts)) * params.n if body.echo else 0
    check_samples_fit(generator, len(prompts) * params.n, params.max_new_tokens, echoed)
    choices: list[Choice] = []
    completion_tokens = 0
    async with pool.slot():
        deadline = Deadline(pool.timeout)
        for p, (prompt, ids) in enumerate(zip(prompts, prompt_ids, strict=True)):
            for i, result in enumerate(await complete(request, pool, generator, ids, params, deadline)):
                text = prompt + result.text if body.echo else result.text
                choices.append(Choice(text=text, index=p * params.n + i, finish_reason=result.finish_reason))
                completion_tokens += result.tokens
    count_tokens(request, served.id, completion_tokens)
    usage = Usage.of(sum(map(len, prompt_ids)), completion_tokens)
    return JSONResponse(CompletionResponse(**head, choices=choices, usage=usage).model_dump())


async def _chunks(request: Request, pool: InferencePool, model_id: str, generator: TextGenerator,
                  body: CompletionRequest, prompt_ids: list[list[int]], params: SamplingParams,
                  head: dict[str, Any]) -> AsyncIterator[dict[str, Any]]:
    def chunk(index: int, text: str, finish_reason: str | None = None) -> dict[str, Any]:
        return {**head, "choices": [{"text": text, "index": index, "logprobs": None, "finish_reason": finish_reason}]}

    deadline = Deadline(pool.timeout)
    completion_tokens = 0
    for p, (prompt, ids) in enumerate(zip(body.prompts, prompt_ids, strict=True)):
        if body.echo:
            for i in range(params.n):
                yield chunk(p * params.n + i, prompt)
        async for piece in pieces(request, pool, generator, ids, params, deadline):
            if piece.text or piece.finish_reason:
                yield chunk(p * params.n + piece.index, piece.text, piece.finish_reason)
            if piece.finish_reason is not None:
                completion_tokens += piece.tokens
                count_tokens(request, model_id, piece.tokens)
    if body.stream_options is not None and body.stream_options.include_usage:
        usage = Usage.of(sum(map(len, prompt_ids)), completion_tokens)
        yield {**head, "choices": [], "usage": usage.model_dump()}
