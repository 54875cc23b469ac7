"""OpenAI's ``/v1/chat/completions`` for language models that learnt from plays.

The conversation is rendered as a scene of the play script the models were trained on
(``models.pipelines.chat``): each message a speech by its ``name`` or its role's default speaker
(system and developer: Chorus; user: HAMLET; assistant: HORATIO), and the reply is the model's next
speech, by the last assistant message's speaker, ending where the next speaker's line would begin. The
rest is ``/v1/completions``'s generation (``app.routers.generate``, ``app.streaming``): the same sampling
controls, ``n`` choices, streaming, the request timeout and the client's disconnect. OpenAI's rules
apply (``app.openai_api``): every field of OpenAI's chat request is accepted, those this service cannot
honour (tools and functions, audio, logprobs, response formats other than text, storage, ...) only at
their neutral value.
"""

from __future__ import annotations

import dataclasses
import time
import uuid
from collections.abc import AsyncIterator
from typing import Annotated, Any, ClassVar, Literal

from fastapi import APIRouter, Depends, Request, Response
from fastapi.responses import JSONResponse
from pydantic import AfterValidator, BaseModel, ConfigDict, Field

from app.inference import InferencePool, get_pool
from app.openai_api import FieldRefused, OpenAIRequest, StreamOptions, openai_errors
from app.registry import Registry, get_registry
from app.routers.generate import STREAMED, FinishReason, Sampling, Usage, check_samples_fit, complete, count_tokens
from app.routing import JSONRoute
from app.schemas import LIMITS, SPACE, SPACES, ModelName, Text
from app.streaming import Deadline, EventStream, pieces
from models.pipelines import TextGenerator
from models.pipelines.chat import NEXT_SPEECH, Message, render
from models.sampling import SamplingParams

router = APIRouter(prefix="/v1", tags=["generate"], route_class=JSONRoute)

Content = Text(LIMITS.max_text_length)
SPEAKER_LENGTH = 64


def _speaker(value: str) -> str:
    return value.strip(SPACES)


# A speaker's name: one line, no colon (the colon ends a speaker's heading), not only spaces.
SPEAKER_PATTERN = f"^[^:\\r\\n]*[^:\\r\\n{SPACE}][^:\\r\\n]*$"
Speaker = Annotated[str, Field(min_length=1, max_length=SPEAKER_LENGTH, pattern=SPEAKER_PATTERN,
                               description="Who speaks this message, as the script names them: e.g. ROMEO."),
                    AfterValidator(_speaker)]


def unsupported() -> Any:
    """A field this service cannot honour at all: accepted as null."""
    return Field(None, description="Not supported; null when given.")


class TextPart(OpenAIRequest):
    NEUTRAL: ClassVar[dict[str, tuple[Any, ...]]] = {"prompt_cache_breakpoint": ()}

    type: Literal["text"]
    text: Content
    prompt_cache_breakpoint: None = unsupported()


class ChatMessage(OpenAIRequest):
    NEUTRAL: ClassVar[dict[str, tuple[Any, ...]]] = {"audio": (), "function_call": (), "refusal": (),
                                                     "tool_calls": ([],)}

    role: Literal["system", "developer", "user", "assistant"] = Field(
        description="Whose message; tool and function messages answer tool calls, which this service never makes.")
    content: Content | Annotated[list[TextPart], Field(min_length=1, max_length=LIMITS.max_messages)] = Field(
        description="The message: a text, or text parts (joined line by line).")
    name: Speaker | None = Field(None, description="The speaker; by default Chorus (system, developer), HAMLET "
                                                   "(user), HORATIO (assistant).")
    audio: None = unsupported()
    function_call: None = unsupported()
    refusal: None = unsupported()
    tool_calls: Annotated[list[dict[str, Any]], Field(max_length=0)] | None = Field(
        None, description="Not supported; empty when given.")

    def message(self) -> Message:
        text = self.content if isinstance(self.content, str) else "\n".join(part.text for part in self.content)
        return Message(self.role, text, self.name)


class ResponseFormat(OpenAIRequest):
    type: Literal["text"]


class ChatRequest(OpenAIRequest, Sampling):
    NEUTRAL: ClassVar[dict[str, tuple[Any, ...]]] = {
        "audio": (), "frequency_penalty": (0,), "function_call": ("none", "auto"), "functions": ([],),
        "logit_bias": ({},), "logprobs": (False,), "metadata": ({},), "modalities": (["text"],), "moderation": (),
        "prediction": (), "presence_penalty": (0,), "prompt_cache_options": (), "prompt_cache_retention": (),
        "reasoning_effort": ("none",), "response_format": ({"type": "text"},), "service_tier": ("auto", "default"),
        "store": (False,), "tool_choice": ("none", "auto"), "tools": ([],), "top_logprobs": (0,),
        "verbosity": ("medium",), "web_search_options": (),
    }

    model: Annotated[ModelName, Field(description="A language model: its id (see /v1/models) or short name.")] = "gpt"
    messages: Annotated[list[ChatMessage], Field(min_length=1, max_length=LIMITS.max_messages)] = Field(
        description=f"The conversation so far, up to {LIMITS.max_messages} messages.")
    max_completion_tokens: int | None = Field(None, ge=1, le=LIMITS.max_new_tokens, description=(
        f"Most tokens of the reply (default: the whole speech, at most {LIMITS.max_new_tokens})."))
    max_tokens: int | None = Field(None, ge=1, le=LIMITS.max_new_tokens, description="max_completion_tokens' "
                                                                                     "older name.")
    stream_options: StreamOptions | None = None
    user: str | None = Field(None, max_length=LIMITS.max_text_length, description="Accepted and ignored.")
    safety_identifier: str | None = Field(None, max_length=LIMITS.max_text_length, description="Accepted and "
                                                                                                "ignored.")
    prompt_cache_key: str | None = Field(None, max_length=LIMITS.max_text_length, description="Accepted and "
                                                                                              "ignored.")
    parallel_tool_calls: bool | None = Field(None, description="Accepted; no tool is ever called.")
    audio: None = unsupported()
    frequency_penalty: float | None = Field(None, ge=0.0, le=0.0, description="Not supported (use "
                                                                              "repetition_penalty); must be 0.")
    presence_penalty: float | None = Field(None, ge=0.0, le=0.0, description="Not supported (use "
                                                                             "repetition_penalty); must be 0.")
    function_call: Literal["none", "auto"] | None = Field(None, description="Not supported: none (or auto, with no "
                                                                            "functions).")
    functions: Annotated[list[dict[str, Any]], Field(max_length=0)] | None = Field(None, description="Not supported; "
                                                                                                     "empty.")
    logit_bias: Annotated[dict[str, float], Field(max_length=0)] | None = Field(None, description="Not supported; "
                                                                                                  "empty.")
    logprobs: Literal[False] | None = Field(None, description="Not supported; false when given.")
    top_logprobs: int | None = Field(None, ge=0, le=0, description="Not supported; 0 when given.")
    metadata: Annotated[dict[str, str], Field(max_length=0)] | None = Field(None, description="Not supported "
                                                                                              "(nothing is stored); "
                                                                                              "empty.")
    modalities: Annotated[list[Literal["text"]], Field(min_length=1, max_length=1)] | None = Field(
        None, description="Text only: [\"text\"].")
    moderation: None = unsupported()
    prediction: None = unsupported()
    prompt_cache_options: None = unsupported()
    prompt_cache_retention: None = unsupported()
    reasoning_effort: Literal["none"] | None = Field(None, description="These models do not reason: none.")
    response_format: ResponseFormat | None = Field(None, description="Text only: {\"type\": \"text\"}.")
    service_tier: Literal["auto", "default"] | None = Field(None, description="One tier: auto or default.")
    store: Literal[False] | None = Field(None, description="Nothing is stored: false.")
    tool_choice: Literal["none", "auto"] | None = Field(None, description="No tools: none (or auto).")
    tools: Annotated[list[dict[str, Any]], Field(max_length=0)] | None = Field(None, description="Not supported; "
                                                                                                 "empty.")
    verbosity: Literal["medium"] | None = Field(None, description="Not supported; medium (the default).")
    web_search_options: None = unsupported()

    model_config = ConfigDict(json_schema_extra={"examples": [
        {"model": "gpt", "messages": [{"role": "user", "content": "Where is my father?"}], "max_tokens": 40,
         "seed": 7},
        {"model": "lstm", "messages": [{"role": "user", "name": "ROMEO", "content": "But soft, what light?"},
                                       {"role": "assistant", "name": "JULIET", "content": "Ay me!"},
                                       {"role": "user", "name": "ROMEO", "content": "She speaks."}],
         "temperature": 0.8, "stream": True},
    ]})

    def check_consistent(self) -> None:
        """What OpenAI's schema cannot state: each is a 400 naming its field."""
        if None not in (self.max_tokens, self.max_completion_tokens) and self.max_tokens != self.max_completion_tokens:
            raise FieldRefused("max_tokens", "max_tokens and max_completion_tokens differ; give one of them")
        if self.stream_options is not None and not self.stream:
            raise FieldRefused("stream_options", "stream_options needs stream: true")

    def sampling(self) -> SamplingParams:
        """The sampling controls, with the reply ending where the next speech would begin."""
        params = self.params(self.max_completion_tokens or self.max_tokens or LIMITS.max_new_tokens)
        return dataclasses.replace(params, stop=(*params.stop, NEXT_SPEECH))


class AssistantMessage(BaseModel):
    role: Literal["assistant"] = "assistant"
    content: str = Field(description="The reply: the model's next speech, without its speaker's heading.")
    refusal: None = None


class ChatChoice(BaseModel):
    index: int
    message: AssistantMessage
    logprobs: None = None
    finish_reason: FinishReason = Field(description="stop: the speech ended (the next speaker's line, a stop "
                                                    "sequence or the end of text); length: the token limit.")


class ChatCompletion(BaseModel):
    id: str
    object: Literal["chat.completion"] = "chat.completion"
    created: int
    model: str
    choices: list[ChatChoice]
    usage: Usage


ERRORS = openai_errors({
    400: "Invalid request: a field outside OpenAI's schema, an unsupported one not at its neutral value, an "
         "invalid value, a model that is not a language model, or a reply larger than MAX_RESPONSE_BYTES",
    404: "No language model of that name", 503: "The model is not loaded; the message names the training command"})


@router.post("/chat/completions", response_model=ChatCompletion, responses={**STREAMED, **ERRORS},
             summary="OpenAI-compatible chat: the conversation as a play scene, the reply as the next speech")
async def chat_completions(body: ChatRequest, request: Request, registry: Annotated[Registry, Depends(get_registry)],
                           pool: Annotated[InferencePool, Depends(get_pool)]) -> Response:
    body.check_consistent()
    served = registry.get(TextGenerator, body.model)
    generator = served.pipeline
    prompt_ids = generator.encode_prompt(render([m.message() for m in body.messages]))
    params = body.sampling()
    head = {"id": f"chatcmpl-{uuid.uuid4().hex}", "created": int(time.time()), "model": served.id}
    if body.stream:
        admission = pool.admit()
        return EventStream(_chunks(request, pool, served.id, generator, body, prompt_ids, params, head), admission,
                           lambda message, kind: {"error": {"message": message, "type": kind, "param": None,
                                                            "code": None}})
    check_samples_fit(generator, params.n, params.max_new_tokens)
    async with pool.slot():
        results = await complete(request, pool, generator, prompt_ids, params, Deadline(pool.timeout))
    completion_tokens = sum(r.tokens for r in results)
    count_tokens(request, served.id, completion_tokens)
    choices = [ChatChoice(index=i, message=AssistantMessage(content=r.text), finish_reason=r.finish_reason)
               for i, r in enumerate(results)]
    reply = ChatCompletion(**head, choices=choices, usage=Usage.of(len(prompt_ids), completion_tokens))
    return JSONResponse(reply.model_dump())


async def _chunks(request: Request, pool: InferencePool, model_id: str, generator: TextGenerator, body: ChatRequest,
                  prompt_ids: list[int], params: SamplingParams, head: dict[str, Any]) -> AsyncIterator[dict[str, Any]]:
    def chunk(index: int, delta: dict[str, str], finish_reason: str | None = None) -> dict[str, Any]:
        return {**head, "object": "chat.completion.chunk",
                "choices": [{"index": index, "delta": delta, "logprobs": None, "finish_reason": finish_reason}]}

    for i in range(params.n):
        yield chunk(i, {"role": "assistant", "content": ""})
    completion_tokens = 0
    async for piece in pieces(request, pool, generator, prompt_ids, params, Deadline(pool.timeout)):
        if piece.text:
            yield chunk(piece.index, {"content": piece.text})
        if piece.finish_reason is not None:
            yield chunk(piece.index, {}, piece.finish_reason)
            completion_tokens += piece.tokens
            count_tokens(request, model_id, piece.tokens)
    if body.stream_options is not None and body.stream_options.include_usage:
        yield {**head, "object": "chat.completion.chunk", "choices": [],
               "usage": Usage.of(len(prompt_ids), completion_tokens).model_dump()}
