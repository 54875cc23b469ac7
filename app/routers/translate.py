"""Chinese<->English translation from the seq2seq checkpoints, with the attention behind each word.

``direction`` picks the checkpoint (``seq2seq-zh-en`` or ``seq2seq-en-zh``; ``auto`` reads it from the
script of the text); ``model`` optionally picks another one trained for that direction
(``python -m training seq2seq --name NAME ...``, the Transformer among them). Each result carries the
source and target tokens and the attention matrix: one row per target token, one column per source
token, each row a probability distribution (``null`` for a model trained without attention), rounded to
``ATTENTION_DECIMALS`` places, which is all a heatmap shows and a quarter of the bytes. A text of several
sentences is translated sentence by sentence; ``sentences`` has each one's own result.
"""

from __future__ import annotations

import re
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
from models.pipelines.translation import (
    BEAM_SIZE,
    LENGTH_PENALTY,
    SentenceTranslation,
    Translation,
    TranslationOptions,
    default_max_length,
)

router = APIRouter(prefix="/v1/translate", tags=["translate"], route_class=JSONRoute)

ATTENTION_DECIMALS = 4
# A reply's worst case per attention weight ("0.1234, ") and per token string with its quotes and comma.
BYTES_PER_WEIGHT = ATTENTION_DECIMALS + 4
BYTES_PER_TOKEN = 48

SourceText = Text(LIMITS.max_translate_text_length)
SourceTexts = Annotated[list[SourceText], Field(min_length=1, max_length=LIMITS.max_translate_texts)]


# CJK unified ideographs (the basic block, extension A, the compatibility block, extensions B and on).
IDEOGRAPH = re.compile("[\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff\U00020000-\U0003ffff]")


def direction_of(text: str) -> str:
    """``zh-en`` for a text with a CJK ideograph, else ``en-zh``."""
    return "zh-en" if IDEOGRAPH.search(text) else "en-zh"


class Options(RequestModel):
    direction: Literal["zh-en", "en-zh", "auto"] = Field(
        "zh-en", description="Chinese→English, English→Chinese, or `auto`: zh-en for texts with CJK ideographs, "
                            "else en-zh (the reply's `direction` says which).")
    beam_size: int = Field(BEAM_SIZE, ge=1, le=LIMITS.max_beam_size,
                           description="1 = greedy decoding (fastest); more = beam search.")
    max_length: Omittable(Annotated[int, Field(ge=1, le=LIMITS.max_translation_length)]) = Field(
        None, description=f"Most target tokens to produce (default: 2 × source + 10, at most "
                    f"{LIMITS.max_translation_length}).")
    length_penalty: float = Field(LENGTH_PENALTY, ge=0.0, le=2.0,
                                  description="Beam search ranks by log p / ((5 + |y|) / 6)^length_penalty.")
    model: Omittable(ModelName) = Field(
        None, description="A checkpoint trained for this direction, by name (`zh-en-recurrent`, `zh-en-lstm`) "
                          "or id (`seq2seq-zh-en-recurrent`); default: the direction's own.")
    attention_heads: bool = Field(False, description="Also return `attention_heads[layer][head][target][source]`: "
                                                     "every layer's and head's attention over the source.")

    def resolved_direction(self, texts: list[str]) -> str:
        """``direction``, or for ``auto`` the one the texts' script says; texts in both scripts are a 422."""
        if self.direction != "auto":
            return self.direction
        found = {direction_of(text) for text in texts}
        if len(found) > 1:
            raise HTTPException(status_code=422, detail="direction auto: some texts have CJK ideographs and some "
                                                        "do not; send them in separate requests or set `direction`")
        return found.pop()

    def target_length(self, source_tokens: int) -> int:
        """The most tokens the translation of a text of ``source_tokens`` tokens may have."""
        return self.max_length or min(default_max_length(source_tokens), LIMITS.max_translation_length)

    def decoding(self, source_tokens: int) -> TranslationOptions:
        """How to decode texts of at most ``source_tokens`` tokens."""
        return TranslationOptions(beam_size=self.beam_size, max_length=self.target_length(source_tokens),
                                  length_penalty=self.length_penalty, attention_heads=self.attention_heads)


class TranslateRequest(Options, OneOrMany):
    text: Omittable(SourceText) = Field(None, description="One text to translate.")
    texts: Omittable(SourceTexts) = Field(None, description="Several texts.")

    model_config = {"json_schema_extra": {
        "examples": [{"text": "我们明天见。", "direction": "zh-en"},
                     {"texts": ["今天很冷。", "他是我的老师。"], "direction": "zh-en", "beam_size": 1},
                     {"text": "I like drinking tea.", "direction": "en-zh"},
                     {"text": "你好！我是学生。", "direction": "auto", "attention_heads": True}],
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


Matrix = list[list[float]]


class SentenceResult(BaseModel):
    text: str = Field(description="The sentence as cut from the input, its closing punctuation kept.")
    translation: str
    source_tokens: list[str]
    target_tokens: list[str]
    attention: Matrix | None = Field(description="len(target_tokens) × len(source_tokens) of this sentence.")


class TranslationResult(BaseModel):
    translation: str = Field(description="The text's translation: its sentences' translations joined.")
    source_tokens: list[str] = Field(description="The input as the model reads it (characters or words).")
    target_tokens: list[str] = Field(description="The output tokens, `<eos>` excluded.")
    attention: Matrix | None = Field(
        description=f"len(target_tokens) × len(source_tokens); each row sums to 1 (to {ATTENTION_DECIMALS} "
                    "decimal places). A Transformer's is the last layer's attention over the source averaged "
                    "over its heads. For several sentences it is block-diagonal: a target token weighs only "
                    "its own sentence's source tokens. Null without attention.")
    unknown_tokens: list[str] = Field(description="Source tokens outside the vocabulary, read as `<unk>`.")
    attention_heads: list[list[Matrix]] | None = Field(
        description="With `attention_heads: true`: [layer][head][target][source], every layer's and head's "
                    "attention over the source, the sentences' blocks as in `attention` (a recurrent model's "
                    "one alignment is one layer of one head). Null otherwise, and without attention.")
    sentences: list[SentenceResult] = Field(description="The sentences the text was cut into (at 。！？.!? and "
                                                        "their full-width forms), each translated on its own.")


class TranslateResponse(BaseModel):
    results: list[TranslationResult] = Field(description="One per input text, in order.")
    model: str
    direction: str


def rounded(matrix: Matrix | None) -> Matrix | None:
    return None if matrix is None else [[round(w, ATTENTION_DECIMALS) for w in row] for row in matrix]


def sentence_result(sentence: SentenceTranslation) -> dict[str, Any]:
    """A ``SentenceResult``, built as the JSON it is sent as."""
    return {"text": sentence.text, "translation": sentence.translation, "source_tokens": sentence.source_tokens,
            "target_tokens": sentence.target_tokens, "attention": rounded(sentence.attention)}


def result(translation: Translation) -> dict[str, Any]:
    """A ``TranslationResult``, built as the JSON it is sent as."""
    heads = translation.attention_heads
    return {
        "translation": translation.translation,
        "source_tokens": translation.source_tokens,
        "target_tokens": translation.target_tokens,
        "attention": rounded(translation.attention),
        "unknown_tokens": translation.unknown_tokens,
        "attention_heads": None if heads is None else [[rounded(head) for head in layer] for layer in heads],
        "sentences": [sentence_result(s) for s in translation.sentences],
    }


ERRORS = documented_errors({422: "Empty or too long text, unsupported direction, texts in both scripts with "
                                 "direction auto, a model of another direction, or a reply larger than "
                                 "MAX_RESPONSE_BYTES"})


def _translator(registry: Registry, options: Options, direction: str) -> Served[Translator]:
    served = registry.get(Translator, options.model or direction)
    if served.pipeline.direction != direction:
        raise HTTPException(status_code=422, detail=f"model '{served.id}' translates {served.pipeline.direction}, "
                                                    f"not {direction}")
    return served


def worst_reply(translator: Translator, texts: list[str], options: Options) -> int:
    """The bytes of the reply if every sentence got its longest translation: the text's tokens, its
    block-diagonal attention (and every head's, when asked), and each sentence's own tokens and attention."""
    layers, heads = translator.attention_shape or (0, 0)
    matrices = 1 + (layers * heads if options.attention_heads else 0)
    worst = 0
    for text in texts:
        sentences = translator.sentences(text)
        sources = [len(tokens) for tokens in sentences]
        targets = [options.target_length(n) for n in sources]
        source, target = sum(sources), sum(targets)
        worst += matrices * target * source * BYTES_PER_WEIGHT + 2 * (source + 2 * target) * BYTES_PER_TOKEN
        worst += sum(t * n for t, n in zip(targets, sources, strict=True)) * BYTES_PER_WEIGHT
        worst += len(text.encode()) + 2 * BYTES_PER_TOKEN * len(sentences)  # each sentence's text, keys, commas
    return worst


@router.post("", response_model=TranslateResponse, responses=ERRORS,
             summary="Translate, with the attention of every output token over the input")
async def translate(body: TranslateRequest, registry: Annotated[Registry, Depends(get_registry)],
                    batching: Annotated[Batching, Depends(get_batching)]) -> Response:
    texts = body.inputs
    direction = body.resolved_direction(texts)
    served = _translator(registry, body, direction)
    translator = served.pipeline
    check_reply_size(worst_reply(translator, texts, body), "send fewer or shorter texts, or a smaller max_length"
                     + (", or leave out attention_heads" if body.attention_heads else ""))
    # Every sentence of a request may run as long as the longest one's default allows, as when they decode
    # together.
    options = body.decoding(max((len(tokens) for text in texts for tokens in translator.sentences(text)), default=1))
    queries = [lambda text=text: translator.query(text, options) for text in texts]
    translations = await batching.submit(served.id, translator.translate_queries, queries)
    return JSONResponse({"results": [result(t) for t in translations], "model": served.id, "direction": direction})


@router.post("/attention.png", response_class=Response, responses={
    200: {"content": {"image/png": {}}, "description": "Heatmap: source tokens across, target tokens down."},
    **ERRORS}, summary="The attention of one translation as a PNG heatmap")
async def attention_image(body: AttentionImageRequest, registry: Annotated[Registry, Depends(get_registry)],
                          pool: Annotated[InferencePool, Depends(get_pool)]) -> Response:
    served = _translator(registry, body, body.resolved_direction([body.text]))
    translator = served.pipeline
    if not translator.has_attention:
        raise HTTPException(status_code=422, detail=f"model '{served.id}' was trained without attention; there "
                                                    "is nothing to draw")
    options = body.decoding(max((len(tokens) for tokens in translator.sentences(body.text)), default=1))

    def draw() -> bytes:
        [translation] = translator.translate([body.text], options)
        return attention_png(translation, title=f"{served.id}: {translation.translation}")

    return Response(content=await pool.run(draw), media_type="image/png")
