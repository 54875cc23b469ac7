"""What every request schema shares: strict fields, bounded texts, model names, the error shapes.

Every request model derives from ``RequestModel``: an unknown field is refused (naming it), and so is a
value of another JSON type (``false`` for a number, ``"5"`` for 5); a number must be finite, and no text
may carry a lone surrogate (it is not a character; no tokenizer or JSON encoder can take it). Every
string and list has a maximum size, from ``Settings``.
"""

from __future__ import annotations

import re
from typing import Annotated, Any, cast

from fastapi import HTTPException
from pydantic import AfterValidator, BaseModel, BeforeValidator, ConfigDict, Field, field_validator, model_validator
from pydantic.json_schema import SkipJsonSchema

from app.settings import get_settings
from models.catalog import ID_PATTERN, MAX_ID_LENGTH

LIMITS = get_settings()

# A checkpoint id or short name: letters, digits, '.', '_' and '-', not starting with a dot.
MODEL_NAME_PATTERN = f"^{ID_PATTERN}$"
MODEL_NAME_LENGTH = MAX_ID_LENGTH
LONE_SURROGATE = re.compile("[\ud800-\udfff]")

# What JSON Schema's patterns call a space (ECMAScript's \s), spelt out, so that the validator here, the
# Rust regex engine and the test generators all read "blank" and "one word" alike (\s differs among them).
SPACES = ("\t\n\x0b\x0c\r \xa0\u1680" + "".join(chr(c) for c in range(0x2000, 0x200B))
          + "\u2028\u2029\u202f\u205f\u3000\ufeff")
SPACE = "".join(f"\\u{ord(c):04x}" for c in SPACES)  # the same characters as a regex class body
NOT_BLANK = f"[^{SPACE}]"
ONE_WORD = f"^[{SPACE}]*[^{SPACE}]+[{SPACE}]*$"


class RequestModel(BaseModel):
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False, strict=True)

    @field_validator("*", mode="before")
    @classmethod
    def _json_values(cls, value: Any) -> Any:
        if has_lone_surrogate(value):
            raise ValueError("contains a lone surrogate (\\ud800-\\udfff), which is not a character")
        return _integers(value)


def _integers(value: Any) -> Any:
    """JSON has one kind of number: 20.0 is the integer 20, as JSON Schema reads it, in lists too (token ids)."""
    if isinstance(value, float) and value.is_integer():
        return int(value)
    if isinstance(value, list):
        return [_integers(item) for item in value]
    return value


class OneOrMany(RequestModel):
    """A request of one text (``text``) or several (``texts``), never both; subclasses bound each."""

    text: str | None = None
    texts: list[str] | None = None

    @model_validator(mode="after")
    def _one_of_text_or_texts(self) -> OneOrMany:
        if (self.text is None) == (self.texts is None):
            raise ValueError("give exactly one of `text` (a string) or `texts` (a list of strings)")
        return self

    @property
    def inputs(self) -> list[str]:
        return [self.text] if self.text is not None else list(self.texts or [])


def has_lone_surrogate(value: Any) -> bool:
    """Whether any string in ``value`` (nested in lists and dicts, keys included) holds a lone surrogate."""
    pending = [value]
    while pending:
        item = pending.pop()
        if isinstance(item, str):
            if not item.isascii() and LONE_SURROGATE.search(item):
                return True
        elif isinstance(item, list):
            pending.extend(item)
        elif isinstance(item, dict):
            pending.extend(item.keys())
            pending.extend(item.values())
    return False


def _not_null(value: Any) -> Any:
    if value is None:
        raise ValueError("leave the field out rather than send null")
    return value


def Omittable(field_type: Any) -> Any:  # noqa: N802 - it names a type, as Annotated does
    """A field that may be left out, but is never null."""
    return Annotated[field_type | SkipJsonSchema[None], BeforeValidator(_not_null)]


def check_reply_size(worst: int, advice: str) -> None:
    """422 before any inference when a request's worst-case reply would exceed MAX_RESPONSE_BYTES."""
    if worst > LIMITS.max_response_bytes:
        raise HTTPException(status_code=422, detail=f"the reply could reach {worst} bytes, over MAX_RESPONSE_BYTES "
                                                    f"({LIMITS.max_response_bytes}); {advice}")


def _not_blank(value: str) -> str:
    if not value.strip(SPACES):
        raise ValueError("text must not be empty or only spaces")
    return value


def Text(max_length: int) -> Any:  # noqa: N802 - it names a type, as Annotated does
    """A string of 1 to ``max_length`` characters with at least one that is not a space."""
    return Annotated[str, Field(min_length=1, max_length=max_length, json_schema_extra={"pattern": NOT_BLANK}),
                     AfterValidator(_not_blank)]


def _one_word(value: str) -> str:
    word = value.strip(SPACES)
    if not word:
        raise ValueError("a word must not be empty")
    if any(c in SPACES for c in word):
        raise ValueError(f"{value!r} is not a single word")
    return word.lower()


def Word(max_length: int) -> Any:  # noqa: N802 - it names a type, as Annotated does
    """One word of at most ``max_length`` characters, spaces around it dropped, lower-cased."""
    return Annotated[str, Field(min_length=1, max_length=max_length, json_schema_extra={"pattern": ONE_WORD},
                                examples=["king"]),
                     AfterValidator(_one_word)]


# A token id: bounded by the largest id any vocabulary could have; a model checks its own vocabulary.
TokenId = Annotated[int, Field(ge=0, le=2**31 - 1)]
TokenIds = Annotated[list[TokenId], Field(min_length=1, max_length=LIMITS.max_prompt_tokens)]

def texts_or_ids(value: str | list[str] | list[int] | list[list[int]]) -> list[str | list[int]]:
    """The items of an OpenAI field that is one text or one list of token ids, or a list of either (a
    completion's ``prompt``, an embedding's ``input``)."""
    if isinstance(value, str) or isinstance(value[0], int):
        return [cast(str | list[int], value)]
    return list(cast(list[str] | list[list[int]], value))


ModelName = Annotated[str, Field(min_length=1, max_length=MODEL_NAME_LENGTH, pattern=MODEL_NAME_PATTERN,
                                 description="A loaded checkpoint, by id (see /v1/models) or short name.")]


class FieldError(BaseModel):
    type: str
    loc: list[str | int] = Field(description="Where in the request: ['body', field, ...].")
    msg: str


class Error(BaseModel):
    detail: str | list[FieldError] = Field(description="What is wrong: a sentence, or one entry per field.")


ERROR_DESCRIPTIONS = {
    401: "Missing or wrong API key (only when the service runs with API_KEY)",
    404: "No model of that name",
    413: "Request body over MAX_BODY_BYTES",
    422: "Malformed input: the message names the field or the limit",
    429: "At capacity; retry after Retry-After seconds",
    503: "The model is not loaded; the message names the command that trains it",
    504: "Not answered within REQUEST_TIMEOUT",
}


def documented_errors(descriptions: dict[int, str] | None = None) -> dict[int | str, dict[str, Any]]:
    """A route's error responses, each in the ``{"detail": ...}`` shape; ``descriptions`` says more where
    the route has more to say."""
    texts = {**ERROR_DESCRIPTIONS, **(descriptions or {})}
    return {status: {"model": Error, "description": text} for status, text in texts.items()}
