"""Every layer's and head's attention of BERT, GPT and the Transformer translator, as numbers or a picture.

``attention[layer][head][query][key]`` is the model's self-attention over ``tokens``: BERT's (with
``segment_ids``), GPT's (causal: zero above the diagonal), or the translator's encoder's over the source.
A translator also translates the text and adds its decoder's self-attention (``decoder_attention``, each
target token's row over the tokens the decoder had read) and its attention over the source
(``cross_attention``, in ``/v1/translate``'s ``attention_heads`` shape). ``layers`` and ``heads`` pick
which ones; a reply that could exceed MAX_RESPONSE_BYTES is refused before any inference, with the
filters that would fit. The weights are rounded to ``ATTENTION_DECIMALS`` places, as the translate route's.
"""

from __future__ import annotations

import json
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Depends, HTTPException
from fastapi.responses import Response
from pydantic import AfterValidator, BaseModel, BeforeValidator, Field

from app.inference import InferencePool, get_pool
from app.registry import Registry, get_registry
from app.routing import JSONRoute
from app.schemas import LIMITS, ModelName, Omittable, RequestModel, Text, check_reply_size, documented_errors
from models.pipelines import AttentionMaps
from models.pipelines.attention_image import attention_maps_png
from models.pipelines.attention_maps import Attention, Selection

router = APIRouter(prefix="/v1", tags=["attention"], route_class=JSONRoute)

ATTENTION_DECIMALS = 4
# A reply's worst case per weight ("0.1234, ") and per token string with its quotes and comma.
BYTES_PER_WEIGHT = ATTENTION_DECIMALS + 4
BYTES_PER_TOKEN = 48
MAX_INDICES = 256  # more layers or heads than any model here has

InputText = Text(LIMITS.max_text_length)


def _whole_numbers(indices: Any) -> Any:
    """JSON has one kind of number: 1.0 in the list is the index 1 (``RequestModel`` does this for fields)."""
    if isinstance(indices, list):
        return [int(i) if isinstance(i, float) and i.is_integer() else i for i in indices]
    return indices


def _distinct(indices: list[int]) -> list[int]:
    if len(set(indices)) != len(indices):
        raise ValueError("each index at most once")
    return indices


Indices = Annotated[list[Annotated[int, Field(ge=0)]],
                    Field(min_length=1, max_length=MAX_INDICES, json_schema_extra={"uniqueItems": True}),
                    BeforeValidator(_whole_numbers), AfterValidator(_distinct)]


class AttentionRequest(RequestModel):
    model: ModelName = Field(description="A model with self-attention: `bert`, `gpt` or a Transformer translator "
                                         "(`zh-en`, the default), by name or id.")
    text: InputText = Field(description="The text the model reads (the translator translates it).")
    text_b: Omittable(InputText) = Field(None, description="BERT only: the second segment, read as "
                                                           "`[CLS] text [SEP] text_b [SEP]`.")
    layers: Omittable(Indices) = Field(None, description="Only these layers (0-based), in this order; default: all.")
    heads: Omittable(Indices) = Field(None, description="Only these heads (0-based) of each layer; default: all.")

    model_config = {"json_schema_extra": {"examples": [
        {"model": "bert", "text": "To be, or not to be.", "text_b": "That is the question."},
        {"model": "gpt", "text": "ROMEO:\nBut soft", "layers": [0], "heads": [0, 1]},
        {"model": "zh-en", "text": "我们明天见。"},
    ]}}

    @property
    def selection(self) -> Selection:
        return Selection(None if self.layers is None else tuple(self.layers),
                         None if self.heads is None else tuple(self.heads))


class AttentionImageRequest(AttentionRequest):
    kind: Omittable(Literal["self", "encoder", "decoder", "cross"]) = Field(
        None, description="Which attention to draw: `self` (BERT, GPT), or a translator's `encoder`, `decoder` or "
                          "`cross` (its default).")

    model_config = {"json_schema_extra": {"examples": [
        {"model": "bert", "text": "To be, or not to be.", "layers": [1]},
        {"model": "gpt", "text": "ROMEO:\nBut soft"},
        {"model": "zh-en", "text": "我们明天见。", "kind": "cross", "layers": [0]},
    ]}}


Maps = list[list[list[list[float]]]]


class AttentionResponse(BaseModel):
    model: str
    tokens: list[str] = Field(description="What the model read: BERT's `[CLS] A [SEP] (B [SEP])`, GPT's tokens, "
                                          "the translator's source tokens.")
    segment_ids: list[int] | None = Field(description="BERT: each token's segment (0: text, 1: text_b); else null.")
    layers: list[int] = Field(description="The layers of the maps, in order.")
    heads: list[int] = Field(description="The heads of each layer's maps, in order.")
    attention: Maps = Field(description="[layer][head][query][key] over `tokens`: BERT's and GPT's self-attention "
                                        "(GPT's is zero above the diagonal), the translator's encoder's. Every row "
                                        f"sums to 1 (to {ATTENTION_DECIMALS} decimal places).")
    translation: str | None = Field(description="Translator: its translation of the text, decoded as /v1/translate "
                                                "decodes by default; else null.")
    target_tokens: list[str] | None = Field(description="Translator: the tokens it produced, `<eos>` excluded.")
    decoder_tokens: list[str] | None = Field(description="Translator: what its decoder read at each step, `<bos>` "
                                                         "then every target token but the last.")
    decoder_attention: Maps | None = Field(description="Translator: [layer][head][target][decoder token], the "
                                                       "decoder's causal self-attention.")
    cross_attention: Maps | None = Field(description="Translator: [layer][head][target][source], its attention over "
                                                     "the source, as /v1/translate's `attention_heads`.")


ERRORS = documented_errors({422: "A model without self-attention (the message names those with it), a text longer "
                                 "than the model's positions, a layer or head it lacks, text_b for a model other "
                                 "than BERT, or a reply larger than MAX_RESPONSE_BYTES (the message names filters "
                                 "that fit)"})


def rounded(maps: list) -> Maps:
    return [[[[round(w, ATTENTION_DECIMALS) for w in row] for row in head] for head in layer] for layer in maps]


def response(model: str, result: Attention) -> AttentionResponse:
    translator = result.target_tokens is not None
    main = result.maps["encoder" if translator else "self"]
    return AttentionResponse(
        model=model, tokens=result.tokens, segment_ids=result.segment_ids, layers=result.layers, heads=result.heads,
        attention=rounded(main.weights.tolist()),
        translation=result.translation, target_tokens=result.target_tokens,
        decoder_tokens=result.maps["decoder"].keys if translator else None,
        decoder_attention=rounded(result.maps["decoder"].weights.tolist()) if translator else None,
        cross_attention=rounded(result.maps["cross"].weights.tolist()) if translator else None,
    )


def fitting_filters(maps: AttentionMaps, budget: int, per_map: int) -> str:
    """Advice naming the ``layers`` and ``heads`` whose maps fit in ``budget`` bytes, ``per_map`` each."""
    fit = budget // per_map if budget > 0 else 0
    if fit == 0:
        return "even one head of one layer is too large: send a shorter text"
    n_layers, n_heads = maps.shape
    if fit >= n_heads:
        example = {"layers": list(range(min(fit // n_heads, n_layers)))}
    else:
        example = {"layers": [0], "heads": list(range(fit))}
    return f"ask for at most {fit} layer × head maps, e.g. {json.dumps(example)}"


def check_size(maps: AttentionMaps, body: AttentionRequest) -> None:
    """422 for a text past the model's positions, or a reply that could exceed MAX_RESPONSE_BYTES."""
    tokens = maps.count_tokens(body.text, body.text_b)
    maps.check_length(tokens)
    n_layers, n_heads = maps.shape
    layers, heads = body.selection.resolve(n_layers, n_heads)
    sizes = maps.map_sizes(tokens)
    per_map = sum(queries * keys for queries, keys in sizes) * BYTES_PER_WEIGHT
    labels = sum(queries + keys for queries, keys in sizes) * BYTES_PER_TOKEN + 2 * len(body.text.encode())
    worst = len(layers) * len(heads) * per_map + labels
    check_reply_size(worst, fitting_filters(maps, LIMITS.max_response_bytes - labels, per_map))


@router.post("/attention", response_model=AttentionResponse, responses=ERRORS,
             summary="Every layer's and head's attention of a Transformer over a text")
async def attention(body: AttentionRequest, registry: Annotated[Registry, Depends(get_registry)],
                    pool: Annotated[InferencePool, Depends(get_pool)]) -> AttentionResponse:
    served = registry.get(AttentionMaps, body.model)
    maps = served.pipeline
    check_size(maps, body)
    result = await pool.run(lambda: maps.attention(body.text, body.text_b, body.selection))
    return response(served.id, result)


@router.post("/attention.png", response_class=Response, responses={
    200: {"content": {"image/png": {}}, "description": "One layer's heads side by side, with the tokens; or, for "
                                                       "several layers, every layer × head as thumbnails."},
    **ERRORS}, summary="A Transformer's attention as a PNG: one layer's heads, or every layer × head")
async def attention_image(body: AttentionImageRequest, registry: Annotated[Registry, Depends(get_registry)],
                          pool: Annotated[InferencePool, Depends(get_pool)]) -> Response:
    served = registry.get(AttentionMaps, body.model)
    maps = served.pipeline
    kind = body.kind or maps.kinds[-1]
    if kind not in maps.kinds:
        raise HTTPException(status_code=422, detail=f"model '{served.id}' has no {kind} attention; it has: "
                                                    f"{', '.join(maps.kinds)}")
    check_size(maps, body)

    def draw() -> bytes:
        result = maps.attention(body.text, body.text_b, body.selection)
        return attention_maps_png(result.maps[kind], result.layers, result.heads,
                                  title=f"{served.id}: {kind} attention")

    return Response(content=await pool.run(draw), media_type="image/png")
