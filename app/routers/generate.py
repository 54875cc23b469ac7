"""Text generation: this project's ``/v1/generate`` and OpenAI's ``/v1/completions``.

Both run the same generator (``models.sampling.TextGenerator``, which the GPT checkpoints load as)
token by token in the inference pool. Between tokens the handler looks again: a client that has
gone away, streamed or not, stops the work after the current token instead of costing the rest.

``/v1/completions`` speaks OpenAI's wire format, errors included (``{"error": {message, type,
param, code}}`` instead of ``{"detail": ...}``), so the official ``openai`` client pointed at
``<base>/v1`` works unchanged; ``top_k`` and ``repetition_penalty`` ride along as extra fields.
"""

from __future__ import annotations

import json
import logging
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from typing import Annotated, Any, Literal

import anyio
from fastapi import APIRouter, Depends, HTTPException, Request, Response
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, StreamingResponse
from fastapi.routing import APIRoute
from pydantic import BaseModel, ConfigDict, Field, field_validator

from app.inference import InferencePool, InferenceTimeout, OverCapacity, get_pool
from app.observability import note_model
from app.registry import LoadedModel, ModelNotLoaded, Registry, UnknownModel, get_registry
from models.catalog import CATALOG
from models.sampling import Completion, Piece, SamplingParams, TextGenerator

log = logging.getLogger("app.generate")

router = APIRouter(prefix="/v1", tags=["generate"])

# Families whose checkpoints load as a TextGenerator: what a missing language model may be.
LANGUAGE_FAMILIES = ("gpt", "lm")
MAX_STOP_SEQUENCES = 4
MAX_SAMPLES = 8
# How long one pull from the generator may run before the handler checks on the client again.
PULL_SECONDS = 0.05


# ---- request fields both endpoints share ------------------------------------------------------------


class Sampling(BaseModel):
    """The sampling controls; defaults sample from the model's own distribution."""

    n: int = Field(1, ge=1, le=MAX_SAMPLES, description="Samples to generate from the one prompt.")
    temperature: float = Field(1.0, ge=0.0, le=2.0, description="0 is greedy; higher is more varied.")
    top_k: int = Field(0, ge=0, description="Sample among the k most likely tokens only (0: no limit).")
    top_p: float = Field(1.0, gt=0.0, le=1.0, description="Nucleus sampling: the smallest set reaching p.")
    repetition_penalty: float = Field(1.0, ge=0.01, le=10.0,
                                      description="Above 1 discourages tokens already in prompt or output.")
    stop: list[Annotated[str, Field(min_length=1, max_length=64)]] | str | None = Field(
        None, description=f"Up to {MAX_STOP_SEQUENCES} strings; generation ends before the first one.")
    seed: int | None = Field(None, ge=0, le=2**63 - 1, description="Same seed and request, same text.")
    stream: bool = Field(False, description="Send text as Server-Sent Events while it is generated.")

    @field_validator("stop")
    @classmethod
    def _stop_list(cls, value: list[str] | str | None) -> list[str]:
        stops = [value] if isinstance(value, str) else list(value or [])
        if len(stops) > MAX_STOP_SEQUENCES:
            raise ValueError(f"at most {MAX_STOP_SEQUENCES} stop sequences")
        if any(not s for s in stops):
            raise ValueError("stop sequences must not be empty")
        return stops

    def params(self, max_new_tokens: int) -> SamplingParams:
        return SamplingParams(max_new_tokens=max_new_tokens, temperature=self.temperature, top_k=self.top_k,
                              top_p=self.top_p, repetition_penalty=self.repetition_penalty,
                              stop=tuple(self.stop or ()), seed=self.seed, n=self.n)


class Usage(BaseModel):
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int

    @classmethod
    def of(cls, prompt_tokens: int, completion_tokens: int) -> Usage:
        return cls(prompt_tokens=prompt_tokens, completion_tokens=completion_tokens,
                   total_tokens=prompt_tokens + completion_tokens)


FinishReason = Literal["stop", "length"]


# ---- running a generation -----------------------------------------------------------------------------


# The recurrent language models also answer to their cell's name: model "lstm" is checkpoint lm-lstm.
MODEL_ALIASES = {cell: f"lm-{cell}" for cell in ("rnn", "lstm", "gru")}


def language_model(registry: Registry, name: str) -> LoadedModel:
    """The loaded language model called ``name``: its checkpoint id (``gpt``, ``lm-lstm``) or short name
    (``lstm``). One the project knows but has not loaded is a 503 naming its training command; any
    other name is a 404 listing the known ones."""
    generators = [m for m in registry.models if isinstance(m.model, TextGenerator)]
    found = [m for m in generators if m.id == name] or [m for m in generators if m.name == name]
    if len(found) > 1:
        raise HTTPException(status_code=422, detail=f"'{name}' is ambiguous; use one of "
                                                    f"{', '.join(m.id for m in found)}")
    if found:
        note_model(found[0].id)
        return found[0]
    if any(m.id == name for m in registry.models):
        raise HTTPException(status_code=422, detail=f"model '{name}' is not a language model")
    catalog = [e for e in CATALOG if e.family in LANGUAGE_FAMILIES]
    known = [e for e in catalog if e.id == name] or [e for e in catalog if e.name == name]
    if known:
        raise ModelNotLoaded(known[0].id, known[0].train_command)
    if name.startswith("gpt-"):  # a GPT trained with --name, which the catalog cannot list
        raise ModelNotLoaded(name, f"python -m training gpt --name {name.removeprefix('gpt-')}")
    raise UnknownModel("language", name, sorted({e.id for e in catalog} | {m.id for m in generators}))


def check_request(request: Request, prompts: list[str], max_new_tokens: int) -> None:
    settings = request.app.state.settings
    if max_new_tokens > settings.max_new_tokens:
        raise HTTPException(status_code=422, detail=f"at most {settings.max_new_tokens} new tokens per "
                                                    f"request; {max_new_tokens} asked for")
    for prompt in prompts:
        if len(prompt) > settings.max_text_length:
            raise HTTPException(status_code=422, detail=f"the prompt has {len(prompt)} characters; at most "
                                                        f"{settings.max_text_length} are accepted")


def encode_prompt(generator: TextGenerator, prompt: str) -> list[int]:
    try:
        return generator.encode_prompt(prompt)
    except ValueError as e:
        raise HTTPException(status_code=422, detail=str(e)) from e


def _pull(stream: Iterator[Piece], seconds: float) -> tuple[list[Piece], bool]:
    """Pieces from the generator for up to ``seconds`` (at least one); True once it is exhausted."""
    deadline = time.monotonic() + seconds
    pieces: list[Piece] = []
    for piece in stream:
        pieces.append(piece)
        if time.monotonic() >= deadline:
            return pieces, False
    return pieces, True


async def run_pieces(request: Request, pool: InferencePool, generator: TextGenerator, prompt_ids: list[int],
                     params: SamplingParams, seconds: float) -> AsyncIterator[Piece]:
    """The generator's pieces, computed in the pool a pull at a time, until done or the client leaves.

    Streamed responses are cancelled by Starlette when the client disconnects (the pull in flight
    finishes its token and nothing asks for another); a plain request is checked between pulls.
    """
    stream = generator.stream(prompt_ids, params)
    async with pool.slot():
        try:
            while True:
                pieces, done = await pool.call(_pull, stream, seconds)
                for piece in pieces:
                    yield piece
                if done:
                    return
                if seconds and await request.is_disconnected():
                    log.info("client disconnected; generation stopped")
                    return
        except anyio.get_cancelled_exc_class():
            log.info("stream cancelled (client disconnected); generation stopped")
            raise


async def generate_all(request: Request, pool: InferencePool, loaded: LoadedModel, prompt_ids: list[int],
                       params: SamplingParams) -> list[Completion]:
    """Every sample in full (not streamed), within the service's request timeout."""
    texts = [""] * params.n
    results: dict[int, Completion] = {}
    try:
        with anyio.fail_after(pool.timeout):
            async for piece in run_pieces(request, pool, loaded.model, prompt_ids, params, PULL_SECONDS):
                texts[piece.index] += piece.text
                if piece.finish_reason is not None:
                    results[piece.index] = Completion(texts[piece.index], piece.finish_reason, piece.tokens)
    except TimeoutError as e:
        raise InferenceTimeout(pool.timeout) from e
    count_tokens(request, loaded, sum(r.tokens for r in results.values()))
    return [results[i] for i in sorted(results)]


def count_tokens(request: Request, loaded: LoadedModel, tokens: int) -> None:
    request.app.state.metrics.generated_tokens.labels(model=loaded.id).inc(tokens)


def sse(data: dict[str, Any] | str) -> str:
    return f"data: {data if isinstance(data, str) else json.dumps(data, ensure_ascii=False)}\n\n"


def event_stream(pool: InferencePool, body: AsyncIterator[str]) -> StreamingResponse:
    """An SSE response; admission (429) is decided now, before the 200 status line is sent."""
    if pool.admitted >= pool.capacity:
        raise OverCapacity()
    return StreamingResponse(body, media_type="text/event-stream",
                             headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})


async def guarded(events: AsyncIterator[str], error: Callable[[str, str], dict[str, Any]]) -> AsyncIterator[str]:
    """Once the 200 is sent an error can only be an event: capacity, timeout or a fault ends the stream."""
    try:
        async for event in events:
            yield event
    except HTTPException as e:
        yield sse(error(str(e.detail), "server_error" if e.status_code >= 500 else "rate_limit_error"))
    except Exception:  # a fault in model code must end the stream with a message, not a reset connection
        log.exception("generation failed mid-stream")
        yield sse(error("generation failed", "server_error"))


RegistryDep = Annotated[Registry, Depends(get_registry)]
PoolDep = Annotated[InferencePool, Depends(get_pool)]


# ---- POST /v1/generate -----------------------------------------------------------------------------------


class GenerateRequest(Sampling):
    prompt: str = Field(min_length=1, description="Text to continue.")
    model: str = Field("gpt", description="A loaded language model: its id (see /v1/models) or short name.")
    max_new_tokens: int = Field(64, ge=1, description="Most tokens to generate per sample (capped by the service).")

    model_config = ConfigDict(json_schema_extra={"examples": [
        {"prompt": "ROMEO:\n", "max_new_tokens": 60, "temperature": 0.8, "top_k": 40, "seed": 1},
        {"prompt": "HAMLET:\nTo be, or not to be", "n": 3, "top_p": 0.9, "stop": ["\n\n"]},
        {"prompt": "JULIET:\n", "stream": True, "max_new_tokens": 100},
    ]})


class Result(BaseModel):
    text: str = Field(description="The generated text, without the prompt or the stop sequence.")
    finish_reason: FinishReason = Field(description="stop: a stop sequence or end of text; length: the limit.")


class GenerateResponse(BaseModel):
    model: str
    results: list[Result] = Field(description="One per sample, in order.")
    usage: Usage


# With stream=true the 200 answer is Server-Sent Events rather than one JSON object.
STREAMED = {200: {"content": {"text/event-stream": {"example": 'data: {"text": " my lord"}\n\ndata: [DONE]\n\n'}}}}

GENERATE_ERRORS = {**STREAMED, 422: {"description": "Empty or oversized prompt, out-of-range sampling values, "
                                        "max_new_tokens above the cap, or stream with n > 1"},
                   429: {"description": "At capacity"},
                   404: {"description": "No language model of that name exists"},
                   503: {"description": "The model is not loaded; the message names the training command"}}


@router.post("/generate", response_model=GenerateResponse, responses=GENERATE_ERRORS,
             summary="Continue a prompt; stream=true sends Server-Sent Events")
async def generate(body: GenerateRequest, request: Request, registry: RegistryDep, pool: PoolDep) -> Response:
    check_request(request, [body.prompt], body.max_new_tokens)
    if body.stream and body.n > 1:
        raise HTTPException(status_code=422, detail="stream=true needs n = 1")
    loaded = language_model(registry, body.model)
    prompt_ids = encode_prompt(loaded.model, body.prompt)
    params = body.params(body.max_new_tokens)
    if body.stream:
        return event_stream(pool, guarded(_generate_events(request, pool, loaded, prompt_ids, params),
                                                   lambda message, kind: {"error": message}))
    completions = await generate_all(request, pool, loaded, prompt_ids, params)
    results = [Result(text=c.text, finish_reason=c.finish_reason) for c in completions]
    usage = Usage.of(len(prompt_ids), sum(c.tokens for c in completions))
    return JSONResponse(GenerateResponse(model=loaded.id, results=results, usage=usage).model_dump())


async def _generate_events(request: Request, pool: InferencePool, loaded: LoadedModel, prompt_ids: list[int],
                           params: SamplingParams) -> AsyncIterator[str]:
    async for piece in run_pieces(request, pool, loaded.model, prompt_ids, params, 0.0):
        if piece.text:
            yield sse({"text": piece.text})
        if piece.finish_reason is not None:
            count_tokens(request, loaded, piece.tokens)
            usage = Usage.of(len(prompt_ids), piece.tokens)
            yield sse({"finish_reason": piece.finish_reason, "usage": usage.model_dump()})
    yield sse("[DONE]")


# ---- POST /v1/completions (OpenAI) ----------------------------------------------------------------------


def openai_error(status: int, message: str, param: str | None = None,
                 headers: dict[str, str] | None = None) -> JSONResponse:
    kinds = {401: ("authentication_error", "invalid_api_key"), 404: ("invalid_request_error", "model_not_found"),
             429: ("rate_limit_error", "rate_limit_exceeded"),
             503: ("server_error", "model_not_loaded"), 504: ("server_error", "timeout")}
    kind, code = kinds.get(status, ("invalid_request_error", "invalid_value" if status == 422 else None))
    return JSONResponse(status_code=status, headers=headers,
                        content={"error": {"message": message, "type": kind, "param": param, "code": code}})


class OpenAIErrorRoute(APIRoute):
    """A route whose errors come in OpenAI's shape, which OpenAI clients parse into their exceptions."""

    def get_route_handler(self) -> Callable[[Request], Awaitable[Response]]:
        handler = super().get_route_handler()

        async def route(request: Request) -> Response:
            try:
                return await handler(request)
            except RequestValidationError as e:
                first = e.errors()[0]
                location = [str(part) for part in first.get("loc", ()) if part != "body"]
                message = "; ".join(f"{'.'.join(str(p) for p in err.get('loc', ()) if p != 'body')}: {err['msg']}"
                                    for err in e.errors())
                return openai_error(422, message, param=location[0] if location else None)
            except HTTPException as e:
                return openai_error(e.status_code, str(e.detail), headers=e.headers)

        return route


openai_router = APIRouter(tags=["generate"], route_class=OpenAIErrorRoute)  # included in router, under /v1


class StreamOptions(BaseModel):
    include_usage: bool = Field(False, description="Send a last chunk with usage and no choices.")


class CompletionRequest(Sampling):
    model: str = Field("gpt", description="A loaded language model: its id (see /v1/models) or short name.")
    prompt: str | list[Annotated[str, Field(min_length=1)]] = Field(
        description="Text to continue, or a list of texts (each gets n choices).")
    max_tokens: int = Field(16, ge=1, description="Most tokens to generate per choice (capped by the service).")
    echo: bool = Field(False, description="Put the prompt in front of each choice's text.")
    stream_options: StreamOptions | None = None
    user: str | None = Field(None, description="Accepted and ignored.")
    # OpenAI fields this server does not implement: accepted at their neutral values only.
    logprobs: None = Field(None, description="Not supported; must be null.")
    suffix: None = Field(None, description="Not supported; must be null.")
    best_of: int | None = Field(None, description="Must equal n when given.")
    presence_penalty: float = Field(0.0, ge=0.0, le=0.0, description="Not supported (use repetition_penalty).")
    frequency_penalty: float = Field(0.0, ge=0.0, le=0.0, description="Not supported (use repetition_penalty).")
    logit_bias: dict[str, float] | None = Field(None, max_length=0, description="Not supported; must be empty.")

    model_config = ConfigDict(extra="forbid", json_schema_extra={"examples": [
        {"model": "gpt", "prompt": "ROMEO:\n", "max_tokens": 40, "temperature": 0.8, "seed": 7},
        {"model": "gpt", "prompt": "JULIET:\n", "max_tokens": 60, "n": 2, "stop": ["\n\n"], "stream": True},
    ]})

    @field_validator("prompt")
    @classmethod
    def _prompts(cls, value: str | list[str]) -> list[str]:
        prompts = [value] if isinstance(value, str) else value
        if not prompts or any(not p for p in prompts):
            raise ValueError("the prompt must not be empty")
        if len(prompts) > MAX_SAMPLES:
            raise ValueError(f"at most {MAX_SAMPLES} prompts per request")
        return prompts


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


COMPLETION_ERRORS = {code: {"description": text, "content": {"application/json": {"example": {"error": {
    "message": text, "type": "invalid_request_error", "param": None, "code": None}}}}}
    for code, text in ((404, "No language model of that name"), (422, "Invalid request (OpenAI error shape)"),
                       (429, "At capacity"),
                       (503, "The model is not loaded; the message names the training command"))} | STREAMED


@openai_router.post("/completions", response_model=CompletionResponse, responses=COMPLETION_ERRORS,
                    summary="OpenAI-compatible text completions (streamed with stream=true)")
async def completions(body: CompletionRequest, request: Request, registry: RegistryDep, pool: PoolDep) -> Response:
    prompts: list[str] = body.prompt  # normalised to a list by the validator
    check_request(request, prompts, body.max_tokens)
    if body.best_of not in (None, body.n):
        raise HTTPException(status_code=422, detail="best_of is not supported (it must equal n)")
    loaded = language_model(registry, body.model)
    prompt_ids = [encode_prompt(loaded.model, p) for p in prompts]
    params = body.params(body.max_tokens)
    head = {"id": f"cmpl-{uuid.uuid4().hex}", "object": "text_completion", "created": int(time.time()),
            "model": loaded.id}
    if body.stream:
        events = _completion_events(request, pool, loaded, prompts, prompt_ids, params, body, head)
        return event_stream(pool, guarded(events, lambda message, kind: {
            "error": {"message": message, "type": kind, "param": None, "code": None}}))
    choices: list[Choice] = []
    completion_tokens = 0
    for p, (prompt, ids) in enumerate(zip(prompts, prompt_ids, strict=True)):
        for i, result in enumerate(await generate_all(request, pool, loaded, ids, params)):
            text = prompt + result.text if body.echo else result.text
            choices.append(Choice(text=text, index=p * body.n + i, finish_reason=result.finish_reason))
            completion_tokens += result.tokens
    usage = Usage.of(sum(map(len, prompt_ids)), completion_tokens)
    return JSONResponse(CompletionResponse(**head, choices=choices, usage=usage).model_dump())


async def _completion_events(request: Request, pool: InferencePool, loaded: LoadedModel, prompts: list[str],
                             prompt_ids: list[list[int]], params: SamplingParams, body: CompletionRequest,
                             head: dict[str, Any]) -> AsyncIterator[str]:
    def chunk(index: int, text: str, finish_reason: str | None = None) -> str:
        return sse({**head, "choices": [{"text": text, "index": index, "logprobs": None,
                                         "finish_reason": finish_reason}]})

    completion_tokens = 0
    for p, (prompt, ids) in enumerate(zip(prompts, prompt_ids, strict=True)):
        if body.echo:
            for i in range(params.n):
                yield chunk(p * params.n + i, prompt)
        async for piece in run_pieces(request, pool, loaded.model, ids, params, 0.0):
            if piece.text or piece.finish_reason:
                yield chunk(p * params.n + piece.index, piece.text, piece.finish_reason)
            if piece.finish_reason is not None:
                completion_tokens += piece.tokens
                count_tokens(request, loaded, piece.tokens)
    if body.stream_options and body.stream_options.include_usage:
        usage = Usage.of(sum(map(len, prompt_ids)), completion_tokens)
        yield sse({**head, "choices": [], "usage": usage.model_dump()})
    yield sse("[DONE]")


router.include_router(openai_router)
