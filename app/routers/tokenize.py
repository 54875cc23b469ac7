"""vLLM's ``/tokenize`` and ``/detokenize`` for the language models: text to token ids and back.

A prompt, or a chat conversation rendered as ``/v1/chat/completions`` renders it, becomes the ids a
completion's prompt may be given as; ids become text again. Like every ``/v1`` route they need the
``API_KEY`` when the service has one, and they answer errors in OpenAI's shape.
"""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends
from pydantic import BaseModel, ConfigDict, Field, model_validator

from app.openai_api import FieldRefused, OpenAIRequest, openai_errors
from app.registry import Registry, get_registry
from app.routers.chat import ChatMessage
from app.routers.generate import Prompt
from app.routing import JSONRoute
from app.schemas import LIMITS, ModelName, Omittable, TokenIds
from models.pipelines import TextGenerator
from models.pipelines.chat import render
from models.pipelines.errors import InvalidInput

router = APIRouter(tags=["generate"], route_class=JSONRoute)

Model = Annotated[ModelName, Field(description="A language model: its id (see /v1/models) or short name.")]


class TokenizeRequest(OpenAIRequest):
    model: Model = "gpt"
    prompt: Omittable(Prompt) = Field(None, description="The text to tokenize (or give `messages`).")
    messages: Omittable(Annotated[list[ChatMessage], Field(min_length=1, max_length=LIMITS.max_messages)]) = Field(
        None, description="A conversation, tokenized as /v1/chat/completions renders it.")
    add_generation_prompt: bool | None = Field(None, description="With messages: end with the reply's speaker "
                                                                 "heading, as chat does (default true).")
    add_special_tokens: bool | None = Field(None, description="Accepted; these tokenizers add no special tokens.")
    return_token_strs: bool | None = Field(None, description="Also give each token as text.")

    model_config = ConfigDict(json_schema_extra={
        "examples": [{"model": "gpt", "prompt": "ROMEO:\nBut soft!", "return_token_strs": True},
                     {"model": "gpt", "messages": [{"role": "user", "content": "Who's there?"}]}],
        "oneOf": [{"required": ["prompt"]}, {"required": ["messages"]}],
    })

    @model_validator(mode="after")
    def _prompt_or_messages(self) -> TokenizeRequest:
        if (self.prompt is None) == (self.messages is None):
            raise ValueError("give exactly one of `prompt` (a text) or `messages` (a conversation)")
        return self

    @property
    def text(self) -> str:
        if self.prompt is not None:
            return self.prompt
        return render([m.message() for m in self.messages or []], reply=self.add_generation_prompt is not False)


class TokenizeResponse(BaseModel):
    count: int = Field(description="How many tokens.")
    max_model_len: int | None = Field(description="The most tokens the model reads at once (a GPT's context); "
                                                  "null for a recurrent model, which has no limit.")
    tokens: list[int]
    token_strs: list[str] | None = Field(None, description="Each token as text, with return_token_strs.")


class DetokenizeRequest(OpenAIRequest):
    model: Model = "gpt"
    tokens: TokenIds = Field(description="Token ids of the model's vocabulary.")

    model_config = ConfigDict(json_schema_extra={"examples": [{"model": "gpt", "tokens": [50, 51, 52]}]})


class DetokenizeResponse(BaseModel):
    prompt: str = Field(description="The text the ids stand for.")


ERRORS = openai_errors({400: "Invalid request: a field outside the schema, an invalid value, neither or both of "
                             "prompt and messages, a token id outside the vocabulary, or a model that is not a "
                             "language model",
                        404: "No language model of that name",
                        503: "The model is not loaded; the message names the training command"})


@router.post("/tokenize", response_model=TokenizeResponse, responses=ERRORS,
             summary="Token ids of a prompt, or of a chat conversation, for a language model")
async def tokenize(body: TokenizeRequest, registry: Annotated[Registry, Depends(get_registry)]) -> TokenizeResponse:
    generator = registry.get(TextGenerator, body.model).pipeline
    ids = generator.tokenizer.encode(body.text)
    return TokenizeResponse(count=len(ids), max_model_len=generator.context, tokens=ids,
                            token_strs=generator.token_texts(ids) if body.return_token_strs else None)


@router.post("/detokenize", response_model=DetokenizeResponse, responses=ERRORS,
             summary="The text token ids stand for, for a language model")
async def detokenize(body: DetokenizeRequest,
                     registry: Annotated[Registry, Depends(get_registry)]) -> DetokenizeResponse:
    generator = registry.get(TextGenerator, body.model).pipeline
    try:
        generator.check_ids(body.tokens)
    except InvalidInput as e:
        raise FieldRefused("tokens", str(e)) from e
    return DetokenizeResponse(prompt=generator.tokenizer.decode(body.tokens))
