"""OpenAI's ``/v1/embeddings``: one unit-length vector per input, from word2vec or BERT.

word2vec (``sg``, ``cbow``) embeds a text as the mean of its words' unit vectors, words outside the
vocabulary skipped (a text with none in it is refused); BERT as the mean of its last layer over the text's
tokens (``models.pipelines.embedding``). An input is a text, or token ids of the model's own vocabulary: a
word's row in the vocabulary for word2vec (the order ``export word2vec`` writes), WordPiece ids of the
checkpoint's ``tokenizer.json`` for BERT, which adds ``[CLS]`` and ``[SEP]`` around them. Inputs of
concurrent requests to one model share a forward pass (``app.batching``). OpenAI's rules apply
(``app.openai_api``): ``dimensions`` only at the model's own size.
"""

from __future__ import annotations

import base64
from typing import Annotated, Literal

import numpy as np
from fastapi import APIRouter, Depends
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field

from app.batching import Batching, get_batching
from app.openai_api import FieldRefused, OpenAIRequest, openai_errors
from app.registry import Registry, get_registry
from app.routing import JSONRoute
from app.schemas import LIMITS, ModelName, Text, TokenIds, check_reply_size, texts_or_ids
from models.pipelines import TextEmbedder
from models.pipelines.errors import InvalidInput

router = APIRouter(prefix="/v1", tags=["embeddings"], route_class=JSONRoute)

Input = Text(LIMITS.max_text_length)
BYTES_PER_NUMBER = 25  # one float of an embedding in JSON, with its separator
BYTES_PER_INPUT = 100  # an item's keys and index


class EmbeddingRequest(OpenAIRequest):
    input: Input | Annotated[list[Input], Field(min_length=1, max_length=LIMITS.max_embedding_inputs)] | \
        TokenIds | Annotated[list[TokenIds], Field(min_length=1, max_length=LIMITS.max_embedding_inputs)] = Field(
            description=f"A text, or token ids, or a list of up to {LIMITS.max_embedding_inputs} of either.")
    model: Annotated[ModelName, Field(description="word2vec (`sg`, `cbow`) or `bert`, by short name or checkpoint "
                                                  "id.")] = "sg"
    encoding_format: Literal["float", "base64"] | None = Field(
        None, description="float (default): a list of numbers; base64: the little-endian float32 bytes, "
                          "base64-encoded (what the openai client asks for).")
    dimensions: int | None = Field(None, ge=1, description="Must equal the model's own size when given.")
    user: str | None = Field(None, max_length=LIMITS.max_text_length, description="Accepted and ignored.")

    model_config = ConfigDict(json_schema_extra={"examples": [
        {"input": "The king is dead; long live the queen.", "model": "sg"},
        {"input": ["to be or not to be", "that is the question"], "model": "bert", "encoding_format": "float"},
    ]})

    @property
    def inputs(self) -> list[str | list[int]]:
        return texts_or_ids(self.input)


class Embedding(BaseModel):
    object: Literal["embedding"] = "embedding"
    index: int
    embedding: list[float] | str = Field(description="The vector, or its float32 bytes base64-encoded.")


class EmbeddingUsage(BaseModel):
    prompt_tokens: int = Field(description="Tokens read: word2vec's known words, BERT's WordPiece tokens.")
    total_tokens: int


class EmbeddingResponse(BaseModel):
    object: Literal["list"] = "list"
    data: list[Embedding]
    model: str
    usage: EmbeddingUsage


ERRORS = openai_errors({
    400: "Invalid request: a field outside OpenAI's schema, an invalid value, dimensions other than the model's, "
         "a text with no word in a word2vec vocabulary, one longer than BERT's positions, a token id outside the "
         "vocabulary, a model that embeds nothing, or a reply larger than MAX_RESPONSE_BYTES",
    404: "No embedding model of that name",
    503: "The model is not loaded; the message names the training command"})


def encoded(vector: np.ndarray, encoding_format: str) -> list[float] | str:
    if encoding_format == "base64":
        return base64.b64encode(vector.astype("<f4").tobytes()).decode("ascii")
    return vector.tolist()


@router.post("/embeddings", response_model=EmbeddingResponse, responses=ERRORS,
             summary="OpenAI-compatible embeddings: word2vec's mean word vector or BERT's mean-pooled last layer")
async def embeddings(body: EmbeddingRequest, registry: Annotated[Registry, Depends(get_registry)],
                     batching: Annotated[Batching, Depends(get_batching)]) -> JSONResponse:
    served = registry.get(TextEmbedder, body.model)
    embedder = served.pipeline
    if body.dimensions is not None and body.dimensions != embedder.dimensions:
        raise FieldRefused("dimensions", f"{served.id} embeds in {embedder.dimensions} dimensions; leave dimensions "
                                         f"out, or make it {embedder.dimensions}")
    inputs = body.inputs
    check_reply_size(len(inputs) * (BYTES_PER_INPUT + BYTES_PER_NUMBER * embedder.dimensions),
                     "embed fewer inputs at once")
    ids: list[list[int]] = []

    def prepare(item: str | list[int]) -> list[int]:
        encoded_ids = embedder.encode(item)
        ids.append(encoded_ids)
        return encoded_ids

    try:
        vectors = await batching.submit(served.id, embedder.embed_encoded,
                                        [lambda item=item: prepare(item) for item in inputs])
    except InvalidInput as e:
        raise FieldRefused("input", str(e)) from e
    tokens = sum(map(len, ids))
    data = [Embedding(index=i, embedding=encoded(v, body.encoding_format or "float")) for i, v in enumerate(vectors)]
    return JSONResponse(EmbeddingResponse(data=data, model=served.id,
                                          usage=EmbeddingUsage(prompt_tokens=tokens, total_tokens=tokens)).model_dump())
