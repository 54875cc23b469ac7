"""Text generation from GPT and the RNN/LSTM/GRU language models: ``/v1/generate``.

One generator (``models.pipelines.text_generation.TextGenerator``) serves every language model; the
route runs it through ``app.streaming`` (the pool, the request timeout, the client's disconnect, and
Server-Sent Events with ``stream: true``). ``Sampling`` holds the sampling controls this route shares
with the OpenAI-compatible ``/v1/completions`` (``app.routers.completions``).
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Depends, HTTPException, Request, Response
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field

from app.inference import InferencePool, get_pool
from app.registry import Registry, get_registry
from app.routing import JSONRoute
from app.schemas import LIMITS, ModelName, RequestModel, Text, check_reply_size, documented_errors
from app.streaming import Deadline, EventStream, pieces
from models.pipelines import TextGenerator
from models.pipelines.text_generation import Collector, Completion
from models.sampling import (
    MAX_REPETITION_PENALTY,
    MAX_SEED,
    MAX_TEMPERATURE,
    MAX_TOP_K,
    MIN_REPETITION_PENALTY,
    SamplingParams,
)

router = APIRouter(prefix="/v1", tags=["generate"], route_class=JSONRoute)

DEFAULTS = SamplingParams()
StopSequence = Annotated[str, Field(min_length=1, max_length=LIMITS.max_stop_length)]
# A reply's worst case per character of generated text (a control character is written \u00XX), and per sample.
BYTES_PER_CHARACTER = 6
BYTES_PER_SAMPLE = 200


# ---- request fields both generation routes share -----------------------------------------------------


class Sampling(RequestModel):
    """The sampling controls; left out (or null), each takes the value that samples from the model's own
    distribution."""

    n: int | None = Field(None, ge=1, le=LIMITS.max_samples, description="Samples to generate from the one "
                                                                          "prompt (default 1).")
    temperature: float | None = Field(None, ge=0.0, le=MAX_TEMPERATURE,
                                      description="0 is greedy; higher is more varied (default 1).")
    top_k: int | None = Field(None, ge=0, le=MAX_TOP_K,
                              description="Sample among the k most likely tokens only (default 0: no limit).")
    top_p: float | None = Field(None, gt=0.0, le=1.0,
                                description="Nucleus sampling: the smallest set reaching p (default 1).")
    repetition_penalty: float | None = Field(
        None, ge=MIN_REPETITION_PENALTY, le=MAX_REPETITION_PENALTY,
        description="Above 1 discourages tokens already in prompt or output (default 1).")
    stop: StopSequence | Annotated[list[StopSequence], Field(max_length=LIMITS.max_stop_sequences)] | None = Field(
        None, description=f"Up to {LIMITS.max_stop_sequences} strings of at most {LIMITS.max_stop_length} "
                          "characters; generation ends before the first one.")
    seed: int | None = Field(None, ge=0, le=MAX_SEED, description="Same seed and request, same text.")
    stream: bool | None = Field(None, description="Send text as Server-Sent Events while it is generated.")

    @property
    def samples(self) -> int:
        return self.n or DEFAULTS.n

    def params(self, max_new_tokens: int) -> SamplingParams:
        stop = [self.stop] if isinstance(self.stop, str) else self.stop or []
        return SamplingParams(
            max_new_tokens=max_new_tokens, n=self.samples, seed=self.seed, stop=tuple(stop),
            temperature=DEFAULTS.temperature if self.temperature is None else self.temperature,
            top_k=DEFAULTS.top_k if self.top_k is None else self.top_k,
            top_p=DEFAULTS.top_p if self.top_p is None else self.top_p,
            repetition_penalty=(DEFAULTS.repetition_penalty if self.repetition_penalty is None
                                else self.repetition_penalty))


class Usage(BaseModel):
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int

    @classmethod
    def of(cls, prompt_tokens: int, completion_tokens: int) -> Usage:
        return cls(prompt_tokens=prompt_tokens, completion_tokens=completion_tokens,
                   total_tokens=prompt_tokens + completion_tokens)


FinishReason = Literal["stop", "length"]


def check_samples_fit(generator: TextGenerator, samples: int, max_new_tokens: int, echoed: int = 0,
                      extra: int = 0) -> None:
    """``samples`` samples of ``max_new_tokens`` tokens, each the longest the tokenizer has, ``echoed``
    characters of prompt and ``extra`` bytes more (logprobs) must fit in a reply (a stream is not held
    whole, so only plain replies are measured)."""
    per_sample = BYTES_PER_SAMPLE + BYTES_PER_CHARACTER * max_new_tokens * generator.longest_token
    check_reply_size(samples * per_sample + BYTES_PER_CHARACTER * echoed + extra,
                     "ask for fewer samples, tokens or logprobs, or stream")


def count_tokens(request: Request, model_id: str, tokens: int) -> None:
    request.app.state.metrics.generated_tokens.labels(model=model_id).inc(tokens)


async def complete(request: Request, pool: InferencePool, generator: TextGenerator, prompt_ids: list[int],
                   params: SamplingParams, deadline: Deadline) -> list[Completion]:
    """Every sample in full (not streamed), collected as the pipeline collects them."""
    collector = Collector(params.n)
    async for piece in pieces(request, pool, generator, prompt_ids, params, deadline):
        collector.add(piece)
    return collector.completions()


# ---- POST /v1/generate -----------------------------------------------------------------------------------


Prompt = Text(LIMITS.max_text_length)


class GenerateRequest(Sampling):
    prompt: Prompt = Field(description="Text to continue.")
    model: Annotated[ModelName, Field(description="A language model: its id (see /v1/models) or short name "
                                                  "(`gpt`, `lstm`).")] = "gpt"
    max_new_tokens: int = Field(64, ge=1, le=LIMITS.max_new_tokens, description="Most tokens to generate per "
                                                                                "sample.")

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


def generated(model_id: str, completions: list[Completion], prompt_tokens: int) -> GenerateResponse:
    results = [Result(text=c.text, finish_reason=c.finish_reason) for c in completions]
    return GenerateResponse(model=model_id, results=results,
                            usage=Usage.of(prompt_tokens, sum(c.tokens for c in completions)))


# With stream=true the 200 answer is Server-Sent Events rather than one JSON object.
STREAMED = {200: {"content": {"text/event-stream": {"example": 'data: {"text": " my lord"}\n\ndata: [DONE]\n\n'}}}}
ERRORS = documented_errors({422: "Empty or oversized prompt, out-of-range sampling values, stream with n > 1, "
                                 "a model that is not a language model, or a reply larger than "
                                 "MAX_RESPONSE_BYTES"})


@router.post("/generate", response_model=GenerateResponse, responses={**STREAMED, **ERRORS},
             summary="Continue a prompt; stream=true sends Server-Sent Events")
async def generate(body: GenerateRequest, request: Request, registry: Annotated[Registry, Depends(get_registry)],
                   pool: Annotated[InferencePool, Depends(get_pool)]) -> Response:
    if body.stream and body.samples > 1:  # this route's events carry no sample index
        raise HTTPException(status_code=422, detail="stream=true needs n = 1")
    served = registry.get(TextGenerator, body.model)
    generator = served.pipeline
    prompt_ids = generator.encode_prompt(body.prompt)
    params = body.params(body.max_new_tokens)
    if body.stream:
        admission = pool.admit()
        return EventStream(_events(request, pool, served.id, generator, prompt_ids, params), admission,
                           lambda message, kind: {"error": message})
    check_samples_fit(generator, params.n, params.max_new_tokens)
    async with pool.slot():
        completions = await complete(request, pool, generator, prompt_ids, params, Deadline(pool.timeout))
    count_tokens(request, served.id, sum(c.tokens for c in completions))
    return JSONResponse(generated(served.id, completions, len(prompt_ids)).model_dump())


async def _events(request: Request, pool: InferencePool, model_id: str, generator: TextGenerator,
                  prompt_ids: list[int], params: SamplingParams) -> AsyncIterator[dict[str, Any]]:
    async for piece in pieces(request, pool, generator, prompt_ids, params, Deadline(pool.timeout)):
        if piece.text:
            yield {"text": piece.text}
        if piece.finish_reason is not None:
            count_tokens(request, model_id, piece.tokens)
            yield {"finish_reason": piece.finish_reason, "usage": Usage.of(len(prompt_ids), piece.tokens).model_dump()}
