"""Chinese<->English translation from the seq2seq checkpoints, with the attention behind each word.

``direction`` picks the checkpoint (``seq2seq-zh-en`` or ``seq2seq-en-zh``); ``model`` optionally picks
another one trained for that direction (``python -m training seq2seq --name NAME ...``). Each result
carries the source and target tokens and the attention matrix: one row per target token, one column per
source token, each row a probability distribution (``null`` for a model trained without attention),
rounded to ``ATTENTION_DECIMALS`` places, which is all a heatmap shows and a quarter of the bytes.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from fastapi import APIRouter, Depends, HTTPException
from fastapi.responses import Response
from pydantic import BaseModel, Field, field_validator, model_validator
from pydantic.json_schema import SkipJsonSchema

from app.inference import InferencePool, get_pool
from app.registry import Registry, Served, get_registry
from app.routing import JSONRoute
from app.schemas import LIMITS, ModelName, RequestModel, Text, documented_errors
from models.pipelines import Translator
from models.pipelines.attention_image import attention_png
from models.pipelines.translation import LENGTH_PENALTY, Translation, default_max_length

router = APIRouter(prefix="/v1/translate", tags=["translate"], route_class=JSONRoute)

ATTENTION_DECIMALS = 4
# A reply's worst case per attention weight ("0.1234, ") and per token string with its quotes and comma.
BYTES_PER_WEIGHT = ATTENTION_DECIMALS + 4
BYTES_PER_TOKEN = 48

SourceText = Text(LIMITS.max_translate_text_length)
SourceTexts = Annotated[list[SourceText], Field(min_length=1, max_length=LIMITS.max_translate_texts)]


class Options(RequestModel):
    direction: Literal["zh-en", "en-zh"] = Field("zh-en", description="Chinese→English or English→Chinese.")
    beam_size: int = Field(1, ge=1, le=LIMITS.max_beam_size, description="1 = greedy decoding; more = beam search.")
    max_length: Annotated[int, Field(ge=1, le=LIMITS.max_translation_length)] | SkipJsonSchema[None] = Field(
        None, description=f"Most target tokens to produce (default: 2 × source + 10, at most "
                    f"{LIMITS.max_translation_length}).")
    length_penalty: float = Field(LENGTH_PENALTY, ge=0.0, le=2.0,
                                  description="Beam search ranks by log p / ((5 + |y|) / 6)^length_penalty.")
    model: ModelName | SkipJsonSchema[None] = Field(
        None, description="A checkpoint trained for this direction, by name (`zh-en-lstm`) or id "
                          "(`seq2seq-zh-en-lstm`); default: the direction's own.")

    @field_validator("max_length", "model", mode="before")
    @classmethod
    def _absent_not_null(cls, value: Any) -> Any:
        if value is None:
            raise ValueError("leave the field out rather than sending null")
        return value

    def target_length(self, source_tokens: int) -> int:
        """The most tokens the translation of a text of ``source_tokens`` tokens may have."""
        return self.max_length or min(default_max_length(source_tokens), LIMITS.max_translation_length)


class TranslateRequest(Options):
    text: SourceText | SkipJsonSchema[None] = Field(None, description="One text to translate.")
    texts: SourceTexts | SkipJsonSchema[None] = Field(None, description="Several texts.")

    model_config = {"json_schema_extra": {
        "examples": [{"text": "我们明天见。", "direction": "zh-en"},
                     {"texts": ["今天很冷。", "他是我的老师。"], "direction": "zh-en", "beam_size": 4},
                     {"text": "I like drinking tea.", "direction": "en-zh"}],
        "oneOf": [{"required": ["text"]}, {"required": ["texts"]}],
    }}

    @field_validator("text", "texts", mode="before")
    @classmethod
    def _given_not_null(cls, value: Any) -> Any:
        if value is None:
            raise ValueError("send a string (text) or a list of strings (texts), not null")
        return value

    @model_validator(mode="after")
    def one_of_text_or_texts(self) -> TranslateRequest:
        if (self.text is None) == (self.texts is None):
            raise ValueError("give exactly one of `text` (a string) or `texts` (a list of strings)")
        return self

    @property
    def inputs(self) -> list[str]:
        return [self.text] if self.text is not None else list(self.texts or [])


class AttentionImageRequest(Options):
    text: SourceText = Field(description="The one text whose attention is drawn.")

    model_config = {"json_schema_extra": {"examples": [{"text": "我们明天见。", "direction": "zh-en"}]}}

    @model_validator(mode="before")
    @classmethod
    def no_texts(cls, data: Any) -> Any:
        if isinstance(data, dict) and "texts" in data:
            raise ValueError("this route draws one text: send `text`, not `texts`")
        return data


class TranslationResult(BaseModel):
    translation: str
    source_tokens: list[str] = Field(description="The input as the model reads it (characters or words).")
    target_tokens: list[str] = Field(description="The output tokens, `<eos>` excluded.")
    attention: list[list[float]] | None = Field(
        description=f"len(target_tokens) × len(source_tokens); each row sums to 1 (to {ATTENTION_DECIMALS} "
                    "decimal places). Null without attention.")
    unknown_tokens: list[str] = Field(description="Source tokens outside the vocabulary, read as `<unk>`.")


class TranslateResponse(BaseModel):
    results: list[TranslationResult] = Field(description="One per input text, in order.")
    model: str
    direction: str


def result(translation: Translation) -> TranslationResult:
    attention = translation.attention
    return TranslationResult(
        translation=translation.translation,
        source_tokens=translation.source_tokens,
        target_tokens=translation.target_tokens,
        attention=None if attention is None else [[round(w, ATTENTION_DECIMALS) for w in row] for row in attention],
        unknown_tokens=translation.unknown_tokens,
    )


ERRORS = documented_errors({422: "Empty or too long text, unsupported direction, a model of another direction, "
                                 "or a reply larger than MAX_RESPONSE_BYTES"})


def _translator(registry: Registry, options: Options) -> Served[Translator]:
    served = registry.get(Translator, options.model or options.direction)
    if served.pipeline.direction != options.direction:
        raise HTTPException(status_code=422, detail=f"model '{served.id}' translates {served.pipeline.direction}, "
                                                    f"not {options.direction}")
    return served


def _check_reply_size(translator: Translator, texts: list[str], options: Options) -> None:
    """422 before any decoding when the worst-case reply (every text at its longest translation, with a
    full attention matrix) would be larger than MAX_RESPONSE_BYTES."""
    worst = 0
    for text in texts:
        source = len(translator.source_tokens(text))
        target = options.target_length(source)
        worst += target * (source * BYTES_PER_WEIGHT + BYTES_PER_TOKEN) + source * BYTES_PER_TOKEN
    if worst > LIMITS.max_response_bytes:
        raise HTTPException(status_code=422, detail=f"the reply could reach {worst} bytes, over MAX_RESPONSE_BYTES "
                                                    f"({LIMITS.max_response_bytes}); send fewer or shorter texts, "
                                                    "or a smaller max_length")


@router.post("", response_model=TranslateResponse, responses=ERRORS,
             summary="Translate, with the attention of every output token over the input")
async def translate(body: TranslateRequest, registry: Annotated[Registry, Depends(get_registry)],
                    pool: Annotated[InferencePool, Depends(get_pool)]) -> TranslateResponse:
    served = _translator(registry, body)
    translator, texts = served.pipeline, body.inputs
    _check_reply_size(translator, texts, body)
    longest = max(len(translator.source_tokens(t)) for t in texts)
    translations = await pool.run(lambda: translator.translate(
        texts, beam_size=body.beam_size, max_length=body.target_length(longest), length_penalty=body.length_penalty))
    return TranslateResponse(results=[result(t) for t in translations], model=served.id, direction=body.direction)


@router.post("/attention.png", response_class=Response, responses={
    200: {"content": {"image/png": {}}, "description": "Heatmap: source tokens across, target tokens down."},
    **ERRORS}, summary="The attention of one translation as a PNG heatmap")
async def attention_image(body: AttentionImageRequest, registry: Annotated[Registry, Depends(get_registry)],
                          pool: Annotated[InferencePool, Depends(get_pool)]) -> Response:
    served = _translator(registry, body)
    translator = served.pipeline
    if not translator.has_attention:
        raise HTTPException(status_code=422, detail=f"model '{served.id}' was trained without attention; there "
                                                    "is nothing to draw")
    max_length = body.target_length(len(translator.source_tokens(body.text)))

    def draw() -> bytes:
        [translation] = translator.translate([body.text], beam_size=body.beam_size, max_length=max_length,
                                             length_penalty=body.length_penalty)
        return attention_png(translation, title=f"{served.id}: {translation.translation}")

    return Response(content=await pool.run(draw), media_type="image/png")
