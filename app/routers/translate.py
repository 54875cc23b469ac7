"""Chinese<->English translation from the seq2seq checkpoints, with the attention behind each word.

``direction`` picks the checkpoint (``seq2seq-zh-en`` or ``seq2seq-en-zh``); ``model`` optionally picks
another one trained for that direction (``python -m training seq2seq --name NAME ...``). Each result
carries the source and target tokens and the attention matrix: one row per target token, one column per
source token, each row a probability distribution (``null`` for a model trained without attention).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Annotated, Any, Literal, TypeVar

from fastapi import APIRouter, Depends, HTTPException
from fastapi.responses import Response
from pydantic import AfterValidator, BaseModel, Field, model_validator

from app.inference import InferencePool, get_pool
from app.registry import LoadedModel, Registry, get_registry
from models.seq2seq import Translation, Translator, attention_png

router = APIRouter(prefix="/v1/translate", tags=["translate"])
T = TypeVar("T")

# The models learnt from sentences of at most ~18 characters; far longer input only yields noise and
# attention matrices of a size no one can read.
MAX_TEXT_CHARS = 200
MAX_TEXTS = 32


def _not_blank(value: str) -> str:
    if not value.strip():
        raise ValueError("text must not be empty or only spaces")
    return value


Text = Annotated[str, Field(min_length=1, max_length=MAX_TEXT_CHARS), AfterValidator(_not_blank)]


class Options(BaseModel):
    direction: Literal["zh-en", "en-zh"] = Field("zh-en", description="Chinese→English or English→Chinese.")
    beam_size: int = Field(1, ge=1, le=10, description="1 = greedy decoding; more = beam search.")
    max_length: int | None = Field(None, ge=1, le=100,
                                   description="Most target tokens to produce (default: 2 × source + 10).")
    length_penalty: float = Field(0.6, ge=0.0, le=2.0,
                                  description="Beam search ranks by log p / ((5 + |y|) / 6)^length_penalty.")
    model: str | None = Field(None, min_length=1, max_length=64, pattern=r"^[A-Za-z0-9._-]+$",
                              description="A checkpoint trained for this direction, by name (`zh-en-lstm`) "
                                          "or id (`seq2seq-zh-en-lstm`); default: the direction's own.")


class TranslateRequest(Options):
    text: Text | None = Field(None, description="One text to translate.")
    texts: list[Text] | None = Field(None, min_length=1, max_length=MAX_TEXTS, description="Several texts.")

    model_config = {"json_schema_extra": {"examples": [
        {"text": "我们明天见。", "direction": "zh-en"},
        {"texts": ["今天很冷。", "他是我的老师。"], "direction": "zh-en", "beam_size": 4},
        {"text": "I like drinking tea.", "direction": "en-zh"},
    ]}}

    @model_validator(mode="after")
    def one_of_text_or_texts(self) -> TranslateRequest:
        if (self.text is None) == (self.texts is None):
            raise ValueError("give exactly one of `text` (a string) or `texts` (a list of strings)")
        return self


class AttentionImageRequest(Options):
    text: Text = Field(description="The one text whose attention is drawn.")

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
        description="len(target_tokens) × len(source_tokens); each row sums to 1. Null without attention.")
    unknown_tokens: list[str] = Field(description="Source tokens outside the vocabulary, read as `<unk>`.")


class TranslateResponse(BaseModel):
    results: list[TranslationResult] = Field(description="One per input text, in order.")
    model: str
    direction: str


RegistryDep = Annotated[Registry, Depends(get_registry)]
PoolDep = Annotated[InferencePool, Depends(get_pool)]
ERRORS = {422: {"description": "Empty or too long text, unsupported direction, or a model of another "
                               "direction"},
          503: {"description": "The model is not loaded; the message names the training command"}}


def _translator(registry: Registry, options: Options) -> LoadedModel:
    name = options.model.removeprefix("seq2seq-") if options.model else options.direction
    loaded = registry.get("seq2seq", name)
    translator: Translator = loaded.model
    if translator.direction != options.direction:
        detail = f"model '{loaded.name}' translates {translator.direction}, not {options.direction}"
        raise HTTPException(status_code=422, detail=detail)
    return loaded


async def _answer(pool: InferencePool, fn: Callable[..., T], *args: object) -> T:
    """Run model code in the pool; input the model cannot take becomes a 422 with its message."""
    try:
        return await pool.run(fn, *args)
    except ValueError as e:
        raise HTTPException(status_code=422, detail=str(e)) from e


@router.post("", response_model=TranslateResponse, responses=ERRORS,
             summary="Translate, with the attention of every output token over the input")
async def translate(body: TranslateRequest, registry: RegistryDep, pool: PoolDep) -> TranslateResponse:
    loaded = _translator(registry, body)
    texts = body.texts if body.texts is not None else [body.text]
    results: list[Translation] = await _answer(pool, loaded.model.translate, texts, body.beam_size,
                                               body.max_length, body.length_penalty)
    return TranslateResponse(results=[TranslationResult(**vars(r)) for r in results], model=loaded.id,
                             direction=body.direction)


def _draw(translator: Translator, model_id: str, body: AttentionImageRequest) -> bytes:
    if not translator.has_attention:
        raise ValueError(f"model '{model_id}' was trained without attention; there is nothing to draw")
    result = translator.translate([body.text], body.beam_size, body.max_length, body.length_penalty)[0]
    return attention_png(result, title=f"{model_id}: {result.translation}")


@router.post("/attention.png", response_class=Response, responses={
    200: {"content": {"image/png": {}}, "description": "Heatmap: source tokens across, target tokens down."},
    **ERRORS}, summary="The attention of one translation as a PNG heatmap")
async def attention_image(body: AttentionImageRequest, registry: RegistryDep, pool: PoolDep) -> Response:
    loaded = _translator(registry, body)
    png = await _answer(pool, _draw, loaded.model, loaded.id, body)
    return Response(content=png, media_type="image/png")
