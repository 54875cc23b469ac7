"""Masked-word filling and next-sentence probability from the BERT checkpoint.

Fill-mask answers in the Hugging Face pipeline's item shape, ``{score, token, token_str, sequence}``,
one list per ``[MASK]`` in order. ``targets`` must each be a single vocabulary token (after
lower-casing); unlike the pipeline, which silently scores only the first sub-word of a longer target,
a target the vocabulary splits is refused with a 422 naming its pieces, so every score returned is the
probability of exactly the word asked about.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Annotated, Literal

from fastapi import APIRouter, Depends, HTTPException
from pydantic import AfterValidator, BaseModel, Field

from app.batching import Batching, get_batching
from app.inference import InferencePool, get_pool
from app.registry import Registry, get_registry
from models.bert import BertInputError, FillMask

router = APIRouter(prefix="/v1", tags=["bert"])


def _not_blank(value: str) -> str:
    if not value.strip():
        raise ValueError("text must not be blank")
    return value


Text = Annotated[str, Field(min_length=1, max_length=2000), AfterValidator(_not_blank)]
ModelName = Annotated[Literal["bert"], Field(description="the BERT checkpoint (`bert`)")]


class FillMaskRequest(BaseModel):
    text: Text = Field(description="Text with one or more `[MASK]` tokens.")
    top_k: int = Field(5, ge=1, le=50, description="Predictions to return per mask.")
    targets: list[Annotated[str, Field(min_length=1, max_length=64)]] | None = Field(
        None, min_length=1, max_length=50,
        description="Only score these candidates; each must be one vocabulary token (422 otherwise).")
    model: ModelName = "bert"

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


class NextSentenceRequest(BaseModel):
    text_a: Text = Field(description="The first sentence.")
    text_b: Text = Field(description="The sentence that may or may not follow it.")
    model: ModelName = "bert"

    model_config = {"json_schema_extra": {"examples": [
        {"text_a": "But, soft! what light through yonder window breaks?",
         "text_b": "It is the east, and Juliet is the sun."},
    ]}}


class NextSentenceResponse(BaseModel):
    is_next_probability: float = Field(description="P(text_b follows text_a) from the NSP head.")
    model: str


RegistryDep = Annotated[Registry, Depends(get_registry)]
PoolDep = Annotated[InferencePool, Depends(get_pool)]
BatchingDep = Annotated[Batching, Depends(get_batching)]
ERRORS = {422: {"description": "No [MASK], input longer than the model's positions, or a bad target"},
          429: {"description": "At capacity"},
          503: {"description": "The model is not loaded; the message names the training command"}}


@contextmanager
def _unanswerable_is_422() -> Iterator[None]:
    """Input the model cannot answer becomes a 422 with its message."""
    try:
        yield
    except BertInputError as e:
        raise HTTPException(status_code=422, detail=str(e)) from e


@router.post("/fill-mask", response_model=FillMaskResponse, responses=ERRORS,
             summary="Most probable tokens for each [MASK]")
async def fill_mask(body: FillMaskRequest, registry: RegistryDep, batching: BatchingDep) -> FillMaskResponse:
    loaded = registry.get("bert", body.model)
    bert: FillMask = loaded.model
    with _unanswerable_is_422():
        [predictions] = await batching.submit(loaded.id, bert.encode, bert.fill_mask_encoded,
                                              [(body.text, body.top_k, body.targets)])
    return FillMaskResponse(predictions=predictions, model=loaded.id)


@router.post("/next-sentence", response_model=NextSentenceResponse, responses=ERRORS,
             summary="Probability that text_b follows text_a")
async def next_sentence(
    body: NextSentenceRequest, registry: RegistryDep, pool: PoolDep
) -> NextSentenceResponse:
    loaded = registry.get("bert", body.model)
    bert: FillMask = loaded.model
    with _unanswerable_is_422():
        probability = await pool.run(bert.next_sentence, body.text_a, body.text_b)
    return NextSentenceResponse(is_next_probability=probability, model=loaded.id)
