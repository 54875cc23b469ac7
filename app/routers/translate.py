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
from fastapi.responses import JSONResponse, Response
from pydantic import BaseModel, Field, model_validator

from app.batching import Batching, get_batching
from app.inference import InferencePool, get_pool
from app.registry import Registry, Served, get_registry
from app.routing import JSONRoute
from app.schemas import (
    LIMITS,
    ModelName,
    Omittable,
    OneOrMany,
    RequestModel,
    Text,
    check_reply_size,
    documented_errors,
)
from models.pipelines import Translator
from models.pipelines.attention_image import attention_png
from models.pipelines.translation import LENGTH_PENALTY, Translation, TranslationOptions, default_max_length

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
    max_length: Omittable(Annotated[int, Field(ge=1, le=LIMITS.max_translation_length)]) = Field(
        None, description=f"Most target tokens to produce (default: 2 × source + 10, at most "
                    f"{LIMITS.max_translation_length}).")
    length_penalty: float = Field(LENGTH_PENALTY, ge=0.0, le=2.0,
                                  description="Beam search ranks by log p / ((5 + |y|) / 6)^length_penalty.")
    model: Omittable(ModelName) = Field(
        None, description="A checkpoint trained for this direction, by name (`zh-en-lstm`) or id "
                          "(`seq2seq-zh-en-lstm`); default: the direction's own.")

    def target_length(self, source_tokens: int) -> int:
        """The most tokens the translation of a text of ``source_tokens`` tokens may have."""
        return self.max_length or min(default_max_length(source_tokens), LIMITS.max_translation_length)

    def decoding(self, source_tokens: int) -> TranslationOptions:
        """How to decode texts of at most ``source_tokens`` tokens."""
        return TranslationOptions(beam_size=self.beam_size, max_length=self.target_length(source_tokens),
                                  length_penalty=self.length_penalty)


class TranslateRequest(Options, OneOrMany):
    text: Omittable(SourceText) = Field(None, description="One text to translate.")
    texts: Omittable(SourceTexts) = Field(None, description="Several texts.")

    model_config = {"json_schema_extra": {
        "examples": [{"text": "我们明天见。", "direction": "zh-en"},
                     {"texts": ["今天很冷。", "他是我的老师。"], "direction": "zh-en", "beam_size": 4},
                     {"text": "I like drinking tea.", "direction": "en-zh"}],
        "oneOf": [{"required": ["text"]}, {"required": ["texts"]}],
    }}


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


def result(translation: Translation) -> dict[str, Any]:
    """A ``TranslationResult``, built as the JSON it is sent as."""
    attention = translation.attention
    return {
        "translation": translation.translation,
        "source_tokens": translation.source_tokens,
        "target_tokens": translation.target_tokens,
        "attention": None if attention is None else [[round(w, ATTENTION_DECIMALS) for w in row] for row in attention],
        "unknown_tokens": translation.unknown_tokens,
    }


ERRORS = documented_errors({422: "Empty or too long text, unsupported direction, a model of another direction, "
                                 "or a reply larger than MAX_RESPONSE_BYTES"})


def _translator(registry: Registry, options: Options) -> Served[Translator]:
    served = registry.get(Translator, options.model or options.direction)
    if served.pipeline.direction != options.direction:
        raise HTTPException(status_code=422, detail=f"model '{served.id}' translates {served.pipeline.direction}, "
                                                    f"not {options.direction}")
    return served


def worst_reply(translator: Translator, texts: list[str], options: Options) -> int:
    """The bytes of the reply if every text got its longest translation, with a full attention matrix."""
    worst = 0
    for text in texts:
        source = len(translator.source_tokens(text))
        target = options.target_length(source)
        worst += target * (source * BYTES_PER_WEIGHT + BYTES_PER_TOKEN) + source * BYTES_PER_TOKEN
    return worst


@router.post("", response_model=TranslateResponse, responses=ERRORS,
             summary="Translate, with the attention of every output token over the input")
async def translate(body: TranslateRequest, registry: Annotated[Registry, Depends(get_registry)],
                    batching: Annotated[Batching, Depends(get_batching)]) -> Response:
    served = _translator(registry, body)
    translator, texts = served.pipeline, body.inputs
    check_reply_size(worst_reply(translator, texts, body), "send fewer or shorter texts, or a smaller max_length")
    # Every text of a request may run as long as the longest one's default allows, as when they decode together.
    options = body.decoding(max(len(translator.source_tokens(t)) for t in texts))
    queries = [lambda text=text: translator.query(text, options) for text in texts]
    translations = await batching.submit(served.id, translator.translate_queries, queries)
    return JSONResponse({"results": [result(t) for t in translations], "model": served.id,
                         "direction": body.direction})


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
    options = body.decoding(len(translator.source_tokens(body.text)))

    def draw() -> bytes:
        [translation] = translator.translate([body.text], options)
        return attention_png(translation, title=f"{served.id}: {translation.translation}")

    return Response(content=await pool.run(draw), media_type="image/png")
