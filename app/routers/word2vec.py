"""Word similarity and nearest neighbours from the word2vec checkpoints, with gensim's verbs."""

from __future__ import annotations

from typing import Annotated, Literal

from fastapi import APIRouter, Depends, HTTPException
from pydantic import AfterValidator, BaseModel, Field, model_validator

from app.inference import InferencePool, get_pool
from app.registry import Registry, get_registry
from models.word2vec import WordVectors

router = APIRouter(prefix="/v1/word2vec", tags=["word2vec"])


def _one_word(value: str) -> str:
    word = value.strip().lower()
    if not word:
        raise ValueError("a word must not be empty")
    if any(c.isspace() for c in word):
        raise ValueError(f"{value!r} is not a single word")
    return word


Word = Annotated[str, Field(min_length=1, max_length=64, examples=["king"]), AfterValidator(_one_word)]
ModelName = Annotated[Literal["sg", "cbow"], Field(description="skip-gram (`sg`) or CBOW (`cbow`) vectors")]


class SimilarityRequest(BaseModel):
    word_a: Word
    word_b: Word
    model: ModelName = "sg"

    model_config = {"json_schema_extra": {"examples": [{"word_a": "king", "word_b": "queen", "model": "sg"}]}}


class SimilarityResponse(BaseModel):
    similarity: float = Field(description="Cosine similarity of the two words' vectors, in [-1, 1].")
    model: str


class MostSimilarRequest(BaseModel):
    positive: list[Word] = Field(default_factory=list, max_length=20, description="Words to move towards.")
    negative: list[Word] = Field(default_factory=list, max_length=20, description="Words to move away from.")
    topn: int = Field(10, ge=1, le=100, description="How many neighbours to return.")
    model: ModelName = "sg"

    model_config = {"json_schema_extra": {"examples": [
        {"positive": ["king", "woman"], "negative": ["man"], "topn": 5},
        {"positive": ["love"], "topn": 10},
    ]}}

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


def _vectors(registry: Registry, name: str) -> tuple[str, WordVectors]:
    loaded = registry.get("word2vec", name)
    return loaded.id, loaded.model


def _require_known(vectors: WordVectors, model_id: str, words: list[str]) -> None:
    missing = vectors.missing(words)
    if missing:
        raise HTTPException(status_code=404, detail=f"not in the vocabulary of {model_id}: {', '.join(missing)}")


UNKNOWN_WORD = {404: {"description": "A word is not in the model's vocabulary"},
                503: {"description": "The model is not loaded; the message names the training command"}}


@router.post("/similarity", response_model=SimilarityResponse, responses=UNKNOWN_WORD,
             summary="Cosine similarity of two words")
async def similarity(body: SimilarityRequest, registry: Registry = Depends(get_registry),
                     pool: InferencePool = Depends(get_pool)) -> SimilarityResponse:
    model_id, vectors = _vectors(registry, body.model)
    _require_known(vectors, model_id, [body.word_a, body.word_b])
    score = await pool.run(vectors.similarity, body.word_a, body.word_b)
    return SimilarityResponse(similarity=score, model=model_id)


@router.post("/most-similar", response_model=MostSimilarResponse, responses=UNKNOWN_WORD,
             summary="Nearest words; analogies through positive and negative")
async def most_similar(body: MostSimilarRequest, registry: Registry = Depends(get_registry),
                       pool: InferencePool = Depends(get_pool)) -> MostSimilarResponse:
    model_id, vectors = _vectors(registry, body.model)
    _require_known(vectors, model_id, body.positive + body.negative)
    neighbours = await pool.run(vectors.most_similar, body.positive, body.negative, body.topn)
    return MostSimilarResponse(results=[Neighbour(word=w, score=s) for w, s in neighbours], model=model_id)
