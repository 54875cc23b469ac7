"""The word2vec checkpoints with gensim's verbs: similarity, most_similar, n_similarity, doesnt_match and the
vectors themselves."""

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


Words = Annotated[list[VocabularyWord], Field(min_length=1, max_length=LIMITS.max_query_words)]


class NSimilarityRequest(RequestModel):
    ws1: Words = Field(description="One set of words.")
    ws2: Words = Field(description="The other set.")
    model: Model = "sg"

    model_config = {"json_schema_extra": {"examples": [{"ws1": ["king", "queen"], "ws2": ["lord", "lady"]}]}}


class DoesntMatchRequest(RequestModel):
    words: Annotated[list[VocabularyWord], Field(min_length=2, max_length=LIMITS.max_query_words)] = Field(
        description="The words to compare.")
    model: Model = "sg"

    model_config = {"json_schema_extra": {"examples": [{"words": ["king", "queen", "lord", "cheese"]}]}}


class DoesntMatchResponse(BaseModel):
    word: str = Field(description="The word furthest from the mean of them all.")
    model: str


class VectorsRequest(RequestModel):
    words: Words = Field(description="The words whose vectors to give.")
    norm: bool = Field(False, description="Unit-length vectors (gensim's get_vector(word, norm=True)).")
    model: Model = "sg"

    model_config = {"json_schema_extra": {"examples": [{"words": ["king", "queen"], "norm": True}]}}


class WordVector(BaseModel):
    word: str
    vector: list[float]


class VectorsResponse(BaseModel):
    results: list[WordVector] = Field(description="One per word, in order.")
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


@router.post("/n-similarity", response_model=SimilarityResponse, responses=ERRORS,
             summary="Cosine similarity of the mean vectors of two sets of words")
async def n_similarity(body: NSimilarityRequest, registry: Annotated[Registry, Depends(get_registry)],
                       pool: Annotated[InferencePool, Depends(get_pool)]) -> SimilarityResponse:
    served = registry.get(WordVectors, body.model)
    vectors = served.pipeline
    _require_known(vectors, served.id, body.ws1 + body.ws2)
    score = await pool.run(lambda: vectors.n_similarity(body.ws1, body.ws2))
    return SimilarityResponse(similarity=score, model=served.id)


@router.post("/doesnt-match", response_model=DoesntMatchResponse, responses=ERRORS,
             summary="Which word does not go with the others")
async def doesnt_match(body: DoesntMatchRequest, registry: Annotated[Registry, Depends(get_registry)],
                       pool: Annotated[InferencePool, Depends(get_pool)]) -> DoesntMatchResponse:
    served = registry.get(WordVectors, body.model)
    vectors = served.pipeline
    _require_known(vectors, served.id, body.words)
    word = await pool.run(lambda: vectors.doesnt_match(body.words))
    return DoesntMatchResponse(word=word, model=served.id)


@router.post("/vectors", response_model=VectorsResponse, responses=ERRORS, summary="The vectors of given words")
async def word_vectors(body: VectorsRequest, registry: Annotated[Registry, Depends(get_registry)]) -> VectorsResponse:
    served = registry.get(WordVectors, body.model)
    vectors = served.pipeline
    _require_known(vectors, served.id, body.words)
    return VectorsResponse(results=[WordVector(word=w, vector=vectors.get_vector(w, norm=body.norm).tolist())
                                    for w in body.words], model=served.id)
