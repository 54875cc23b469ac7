"""Genre classification of Shakespeare passages by the MLP, CNN, RNN, LSTM, GRU and BERT classifiers.

Every classifier answers in the same shape, one ``{label, probabilities}`` per input text, so clients
can compare the lineage on their own passages by changing only ``model``.
"""

from __future__ import annotations

from typing import Annotated, Literal

from fastapi import APIRouter, Depends
from pydantic import AfterValidator, BaseModel, Field, model_validator

from app.batching import Batching, get_batching
from app.registry import Registry, get_registry
from models.classifier import TextClassifier

router = APIRouter(prefix="/v1", tags=["classify"])

MAX_TEXTS = 64
MAX_CHARS = 5000


def _not_blank(value: str) -> str:
    if not value.strip():
        raise ValueError("text must not be blank")
    return value


Text = Annotated[str, Field(min_length=1, max_length=MAX_CHARS), AfterValidator(_not_blank)]
ModelName = Literal["mlp", "cnn", "rnn", "lstm", "gru", "bert"]


class ClassifyRequest(BaseModel):
    text: Text | None = Field(None, description="One passage to classify (or give `texts`).")
    texts: list[Text] | None = Field(None, min_length=1, max_length=MAX_TEXTS,
                                     description=f"Up to {MAX_TEXTS} passages, classified in one call.")
    model: ModelName = Field("cnn", description="Which classifier: mlp, cnn, rnn, lstm, gru or bert.")

    model_config = {"json_schema_extra": {"examples": [
        {"text": "HAMLET: To be, or not to be, that is the question: Whether 'tis nobler in the mind to "
                 "suffer the slings and arrows of outrageous fortune, or to take arms against a sea of "
                 "troubles, and by opposing end them.", "model": "lstm"},
        {"texts": ["KING HENRY: Once more unto the breach, dear friends, once more; or close the wall up "
                   "with our English dead.",
                   "ROSALIND: All the world's a stage, and all the men and women merely players."],
         "model": "cnn"},
    ]}}

    @model_validator(mode="after")
    def one_input(self) -> ClassifyRequest:
        if (self.text is None) == (self.texts is None):
            raise ValueError("give exactly one of `text` or `texts`")
        return self

    @property
    def inputs(self) -> list[str]:
        return [self.text] if self.text is not None else list(self.texts or [])


class Classification(BaseModel):
    label: str = Field(description="The most probable class.", examples=["tragedy"])
    probabilities: dict[str, float] = Field(
        description="Every class's probability (comedy, history, tragedy for the genre models); they sum to 1.",
        examples=[{"comedy": 0.12, "history": 0.18, "tragedy": 0.70}])


class ClassifyResponse(BaseModel):
    model: str = Field(description="The checkpoint that answered, e.g. clf-lstm.")
    results: list[Classification] = Field(description="One per input text, in order.")


ERRORS = {422: {"description": "Neither or both of text/texts, a blank or oversized text, too many texts, "
                               "or an unknown model name"},
          429: {"description": "At capacity"},
          503: {"description": "The classifier is not loaded; the message names the training command"}}


@router.post("/classify", response_model=ClassifyResponse, responses=ERRORS,
             summary="Which genre a passage comes from: comedy, history or tragedy")
async def classify(body: ClassifyRequest, registry: Annotated[Registry, Depends(get_registry)],
                   batching: Annotated[Batching, Depends(get_batching)]) -> ClassifyResponse:
    loaded = registry.get("classifier", body.model)
    classifier: TextClassifier = loaded.model
    results = await batching.submit(loaded.id, classifier.encode, classifier.classify_encoded,
                                    [(text,) for text in body.inputs])
    return ClassifyResponse(model=loaded.id, results=[Classification(**r) for r in results])
