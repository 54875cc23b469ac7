"""Word similarity and nearest neighbours from the word2vec checkpoints, with gensim's verbs."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, HTTPException
from pydantic import BaseModel, Field, model_validator

from app.inference import InferencePool, get_pool
from app.registry import Registry, get_registry
from app.routing import JSONRoute
from app.schemas import LIMITS, ModelName, RequestModel, Word, documented_errors
from models.pipelines import WordVectors

router = APIRouter(prefix="/v1/word2vec", tags=["word2vec"], route_class=JSONRoute)


VocabularyWord = Word(LIMITS.max_word_length)
Model = Annotated[ModelName, Field(description="word2vec vectors: skip-gram (`sg`), CBOW (`cbow`), or a "
                                               "checkpoint id")]


class SimilarityRequest(RequestModel):
    word_a: VocabularyWord
    word_b: VocabularyWord
    model: Model = "sg"

    model_config = {"json_schema_extra": {"examples": [{"word_a": "king", "word_b": "queen", "model": "sg"}]}}


class SimilarityResponse(BaseModel):
    similarity: float = Field(description="Cosine similarity of the two words' vectors, in [-1, 1].")
    model: str


class MostSimilarRequest(RequestModel):
    positive: list[VocabularyWord] = Field(default_factory=list, max_length=LIMITS.max_query_words,
                                 description="Words to move towards.")
    negative: list[VocabularyWord] = Field(default_factory=list, max_length=LIMITS.max_query_words,
                                 description="Words to move away from.")
    topn: int = Field(10, ge=1, le=LIMITS.max_topn, description="How many neighbours to return.")
    model: Model = "sg"

    model_config = {"json_schema_extra": {
        "examples": [{"positive": ["king", "woman"], "negative": ["man"], "topn": 5}, {"positive": ["love"]}],
        "anyOf": [{"required": ["positive"], "properties": {"positive": {"minItems": 1}}},
                  {"required": ["negative"], "properties": {"negative": {"minItems": 1}}}],
    }}

    @model_validator(mode="after")
    def some_words(self) -> MostSimilarRequest:
        if not self.positive and not self.negative:
            raise ValueError("give at least one word in positive or negative")
        return self


class Neighbour(BaseModel):
    word: str
    score: float = Field(description="Cosine similarity to the query.")


class MostSimilarResponse(BaseModel):
    results: list[Neighbour]
    model: str


def _require_known(vectors: WordVectors, model_id: str, words: list[str]) -> None:
    missing = vectors.missing(words)
    if missing:
        raise HTTPException(status_code=404, detail=f"not in the vocabulary of {model_id}: {', '.join(missing)}")


ERRORS = documented_errors({404: "A word outside the model's vocabulary, or no model of that name"})


@router.post("/similarity", response_model=SimilarityResponse, responses=ERRORS,
             summary="Cosine similarity of two words")
async def similarity(body: SimilarityRequest, registry: Annotated[Registry, Depends(get_registry)],
                     pool: Annotated[InferencePool, Depends(get_pool)]) -> SimilarityResponse:
    served = registry.get(WordVectors, body.model)
    vectors = served.pipeline
    _require_known(vectors, served.id, [body.word_a, body.word_b])
    score = await pool.run(lambda: vectors.similarity(body.word_a, body.word_b))
    return SimilarityResponse(similarity=score, model=served.id)


@router.post("/most-similar", response_model=MostSimilarResponse, responses=ERRORS,
             summary="Nearest words; analogies through positive and negative")
async def most_similar(body: MostSimilarRequest, registry: Annotated[Registry, Depends(get_registry)],
                       pool: Annotated[InferencePool, Depends(get_pool)]) -> MostSimilarResponse:
    served = registry.get(WordVectors, body.model)
    vectors = served.pipeline
    _require_known(vectors, served.id, body.positive + body.negative)
    neighbours = await pool.run(lambda: vectors.most_similar(body.positive, body.negative, body.topn))
    return MostSimilarResponse(results=[Neighbour(word=w, score=s) for w, s in neighbours], model=served.id)
