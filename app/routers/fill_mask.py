"""Masked-word filling and next-sentence probability from the BERT checkpoint.

Fill-mask answers in the Hugging Face pipeline's item shape, ``{score, token, token_str, sequence}``,
one list per ``[MASK]`` in order. ``targets`` must each be a single vocabulary token (after
lower-casing); unlike the pipeline, which silently scores only the first sub-word of a longer target,
a target the vocabulary splits is refused with a 422 naming its pieces, so every score returned is the
probability of exactly the word asked about.
"""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends
from fastapi.responses import JSONResponse, Response
from pydantic import AfterValidator, BaseModel, Field

from app.batching import Batching, get_batching
from app.inference import InferencePool, get_pool
from app.registry import Registry, get_registry
from app.routing import JSONRoute
from app.schemas import LIMITS, ModelName, Omittable, RequestModel, Text, check_reply_size, documented_errors
from models.bert import MASK
from models.pipelines import FillMask, NextSentence

router = APIRouter(prefix="/v1", tags=["bert"], route_class=JSONRoute)

InputText = Text(LIMITS.max_text_length)
Model = Annotated[ModelName, Field(description="The BERT checkpoint (`bert`), or another by id.")]
# A reply's worst case per prediction besides its sequence: score, token id, token string, keys.
BYTES_PER_PREDICTION = 160
BYTES_PER_CHARACTER = 6  # a control character is written \u00XX
Target = Annotated[str, Field(min_length=1, max_length=LIMITS.max_word_length)]


def _has_a_mask(text: str) -> str:
    """The schema's pattern, checked before the model is looked up: a text without a mask is malformed."""
    if MASK not in text:
        raise ValueError(f"text must contain at least one {MASK} token")
    return text


class FillMaskRequest(RequestModel):
    text: Annotated[InputText, AfterValidator(_has_a_mask)] = Field(
        description=f"Text with one or more `{MASK}` tokens.", json_schema_extra={"pattern": r"\[MASK\]"})
    top_k: int = Field(5, ge=1, le=LIMITS.max_top_k, description="Predictions to return per mask.")
    targets: Omittable(Annotated[list[Target], Field(min_length=1, max_length=LIMITS.max_targets)]) = Field(
        None, description="Only score these candidates; each must be one vocabulary token (422 otherwise).")
    model: Model = "bert"

    model_config = {"json_schema_extra": {"examples": [
        {"text": "To be, or not to be, that is the [MASK].", "top_k": 5},
        {"text": "O Romeo, Romeo, wherefore art [MASK] Romeo?", "targets": ["thou", "you", "he"]},
        {"text": "My [MASK] is as boundless as the [MASK].", "top_k": 3},
    ]}}


class Prediction(BaseModel):
    score: float = Field(description="Probability of this token at the mask.")
    token: int = Field(description="Vocabulary id.")
    token_str: str = Field(description="The token as text.")
    sequence: str = Field(description="The input with this mask filled in (lower-cased, other masks kept).")


class FillMaskResponse(BaseModel):
    predictions: list[list[Prediction]] = Field(description="One list per [MASK], in order, best first.")
    model: str


class NextSentenceRequest(RequestModel):
    text_a: InputText = Field(description="The first sentence.")
    text_b: InputText = Field(description="The sentence that may or may not follow it.")
    model: Model = "bert"

    model_config = {"json_schema_extra": {"examples": [
        {"text_a": "But, soft! what light through yonder window breaks?",
         "text_b": "It is the east, and Juliet is the sun."},
    ]}}


class NextSentenceResponse(BaseModel):
    is_next_probability: float = Field(description="P(text_b follows text_a) from the NSP head.")
    model: str


ERRORS = documented_errors({422: "No [MASK], input longer than the model's positions, a bad target, or a reply "
                                 "larger than MAX_RESPONSE_BYTES"})


def worst_reply(body: FillMaskRequest) -> int:
    """The bytes of the reply if every mask got top_k predictions, each repeating the whole text."""
    return body.text.count(MASK) * body.top_k * (BYTES_PER_PREDICTION + BYTES_PER_CHARACTER * len(body.text))


@router.post("/fill-mask", response_model=FillMaskResponse, responses=ERRORS,
             summary="Most probable tokens for each [MASK]")
async def fill_mask(body: FillMaskRequest, registry: Annotated[Registry, Depends(get_registry)],
                    batching: Annotated[Batching, Depends(get_batching)]) -> Response:
    served = registry.get(FillMask, body.model)
    check_reply_size(worst_reply(body), "ask for fewer masks, a smaller top_k or a shorter text")
    pipeline = served.pipeline
    [answer] = await batching.submit(served.id, pipeline.fill_mask_encoded,
                                     [lambda: pipeline.encode(body.text, body.top_k, body.targets)])
    # The pipeline's predictions are already the items of FillMaskResponse: sent as they are, not validated
    # again (measured: building and checking the response models cost more than the batched forward pass).
    return JSONResponse({"predictions": answer, "model": served.id})


@router.post("/next-sentence", response_model=NextSentenceResponse, responses=ERRORS,
             summary="Probability that text_b follows text_a")
async def next_sentence(body: NextSentenceRequest, registry: Annotated[Registry, Depends(get_registry)],
                        pool: Annotated[InferencePool, Depends(get_pool)]) -> NextSentenceResponse:
    served = registry.get(NextSentence, body.model)
    pipeline = served.pipeline
    probability = await pool.run(lambda: pipeline.probability(body.text_a, body.text_b))
    return NextSentenceResponse(is_next_probability=probability, model=served.id)
