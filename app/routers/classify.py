"""Genre classification of Shakespeare passages by the MLP, CNN, RNN, LSTM, GRU and BERT classifiers.

Every classifier answers in the same shape, one ``{label, probabilities}`` per input text, so clients
can compare the lineage on their own passages by changing only ``model``.
"""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends
from fastapi.responses import JSONResponse, Response
from pydantic import BaseModel, Field

from app.batching import Batching, get_batching
from app.registry import Registry, get_registry
from app.routing import JSONRoute
from app.schemas import LIMITS, ModelName, Omittable, OneOrMany, Text, documented_errors
from models.pipelines import TextClassifier

router = APIRouter(prefix="/v1", tags=["classify"], route_class=JSONRoute)

Passage = Text(LIMITS.max_classify_text_length)
Passages = Annotated[list[Passage], Field(min_length=1, max_length=LIMITS.max_classify_texts)]


class ClassifyRequest(OneOrMany):
    text: Omittable(Passage) = Field(None, description="One passage to classify (or give `texts`).")
    texts: Omittable(Passages) = Field(
        None, description=f"Up to {LIMITS.max_classify_texts} passages, classified in one call.")
    model: Annotated[ModelName, Field(description="Which classifier: mlp, cnn, rnn, lstm, gru or bert (or a "
                                                  "checkpoint id).")] = "cnn"

    model_config = {"json_schema_extra": {
        "examples": [
            {"text": "HAMLET: To be, or not to be, that is the question: Whether 'tis nobler in the mind to "
                     "suffer the slings and arrows of outrageous fortune, or to take arms against a sea of "
                     "troubles, and by opposing end them.", "model": "lstm"},
            {"texts": ["KING HENRY: Once more unto the breach, dear friends, once more; or close the wall up "
                       "with our English dead.",
                       "ROSALIND: All the world's a stage, and all the men and women merely players."],
             "model": "cnn"},
        ],
        "oneOf": [{"required": ["text"]}, {"required": ["texts"]}],
    }}


class Classification(BaseModel):
    label: str = Field(description="The most probable class.", examples=["tragedy"])
    probabilities: dict[str, float] = Field(
        description="Every class's probability (comedy, history, tragedy for the genre models); they sum to 1.",
        examples=[{"comedy": 0.12, "history": 0.18, "tragedy": 0.70}])


class ClassifyResponse(BaseModel):
    model: str = Field(description="The checkpoint that answered, e.g. clf-lstm.")
    results: list[Classification] = Field(description="One per input text, in order.")


ERRORS = documented_errors({422: "Neither or both of text/texts, a blank or oversized text, too many texts, "
                                 "or a model that is not a classifier"})


@router.post("/classify", response_model=ClassifyResponse, responses=ERRORS,
             summary="Which genre a passage comes from: comedy, history or tragedy")
async def classify(body: ClassifyRequest, registry: Annotated[Registry, Depends(get_registry)],
                   batching: Annotated[Batching, Depends(get_batching)]) -> Response:
    served = registry.get(TextClassifier, body.model)
    pipeline = served.pipeline
    answers = await batching.submit(served.id, pipeline.classify_encoded,
                                    [lambda text=text: pipeline.encode(text) for text in body.inputs])
    return JSONResponse({"model": served.id, "results": answers})  # the pipeline's answers are the results' items
