"""What the OpenAI-compatible routes share: OpenAI's rules for request fields, and its error body.

The rules, as OpenAI and vLLM apply them: every field of OpenAI's request schema is accepted; a field this
service cannot honour is accepted only at its neutral value (the value that asks for nothing), which its
request schema states, and any other value is a 400 naming it; a field outside the schema, or an invalid
value, is a 400 naming it. Errors come in OpenAI's ``{"error": {message, type, param, code}}`` shape with
OpenAI's statuses (``app.errors`` answers them), so OpenAI clients raise their usual exceptions.
"""

from __future__ import annotations

from typing import Any, ClassVar, Literal

from fastapi import HTTPException
from pydantic import BaseModel, Field, ValidationInfo, field_validator

from app.schemas import RequestModel


class FieldRefused(HTTPException):
    """400 naming the field, for a value the schema allows but the rest of the request does not."""

    def __init__(self, param: str, message: str):
        super().__init__(status_code=400, detail=message)
        self.param = param


class OpenAIRequest(RequestModel):
    """A request in OpenAI's dialect. ``NEUTRAL`` maps each field the service cannot honour to the values
    that ask for nothing; any other value is refused naming the field, whatever its type."""

    NEUTRAL: ClassVar[dict[str, tuple[Any, ...]]] = {}

    @field_validator("*", mode="before")
    @classmethod
    def _neutral_only(cls, value: Any, info: ValidationInfo) -> Any:
        neutral = cls.NEUTRAL.get(info.field_name or "")
        if neutral is not None and value is not None and not any(_same(value, n) for n in neutral):
            raise ValueError(f"{info.field_name} is not supported by this service; leave it out")
        return value


def _same(value: Any, neutral: Any) -> bool:
    """Equal as JSON values: 0 and 0.0 are, 0 and false are not."""
    return value == neutral and isinstance(value, bool) == isinstance(neutral, bool)


class StreamOptions(OpenAIRequest):
    NEUTRAL: ClassVar[dict[str, tuple[Any, ...]]] = {"include_obfuscation": (False,)}

    include_usage: bool | None = Field(None, description="Send a last chunk with usage and no choices.")
    include_obfuscation: Literal[False] | None = Field(None, description="Not supported (no obfuscation is "
                                                                         "sent); false when given.")


class OpenAIError(BaseModel):
    message: str
    type: str
    param: str | None
    code: str | None


class OpenAIErrorResponse(BaseModel):
    error: OpenAIError


def openai_errors(descriptions: dict[int, str]) -> dict[int | str, dict[str, Any]]:
    """A route's error responses, each in OpenAI's shape: 401, 413, 429 and 504 as every route has them, and
    ``descriptions`` for the rest."""
    texts = {401: "Missing or wrong API key (only when the service runs with API_KEY)",
             413: "Request body over MAX_BODY_BYTES", 429: "At capacity; retry after Retry-After seconds",
             504: "Not answered within REQUEST_TIMEOUT", **descriptions}
    return {status: {"model": OpenAIErrorResponse, "description": text} for status, text in sorted(texts.items())}
