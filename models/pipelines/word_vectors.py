"""Trained word vectors with the verbs gensim's ``KeyedVectors`` users know, and text embeddings from them.

A text's embedding is the mean of its words' unit vectors, scaled to unit length: the words are those of
the training corpus's word unit (``models.tokenizers.words``: lower-cased, inner apostrophes kept), and a
word outside the vocabulary is skipped, as gensim's ``get_mean_vector(..., ignore_missing=True)`` skips it;
a text with no word in the vocabulary has no embedding (``InvalidInput``).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from models import word2vec
from models.checkpoint import Checkpoint
from models.pipelines.errors import InvalidInput
from models.tokenizers import WordVocab, words


class WordVectors:
    """The input vectors of a trained word2vec model, one per vocabulary word."""

    def __init__(self, vocab: WordVocab, vectors: np.ndarray):
        if vectors.shape[0] != len(vocab):
            raise ValueError(f"{vectors.shape[0]} vectors for {len(vocab)} words")
        self.vocab = vocab
        self.vectors = np.ascontiguousarray(vectors, dtype=np.float32)
        norms = np.linalg.norm(self.vectors, axis=1, keepdims=True)
        self.unit_vectors = self.vectors / np.maximum(norms, 1e-12)

    @property
    def vector_size(self) -> int:
        return self.vectors.shape[1]

    def __len__(self) -> int:
        return len(self.vocab)

    def __contains__(self, word: str) -> bool:
        return word in self.vocab

    def missing(self, words: list[str]) -> list[str]:
        """The words of ``words`` that have no vector, in order, without repeats."""
        return list(dict.fromkeys(w for w in words if w not in self.vocab))

    def __getitem__(self, word: str) -> np.ndarray:
        return self.vectors[self.vocab.stoi[word]]

    def get_vector(self, word: str, norm: bool = False) -> np.ndarray:
        """A word's vector; with ``norm``, scaled to unit length."""
        return (self.unit_vectors if norm else self.vectors)[self.vocab.stoi[word]]

    def similarity(self, word_a: str, word_b: str) -> float:
        """Cosine similarity of two words' vectors."""
        a = self.unit_vectors[self.vocab.stoi[word_a]]
        b = self.unit_vectors[self.vocab.stoi[word_b]]
        return float(a @ b)

    def most_similar(
        self, positive: list[str], negative: list[str] | None = None, topn: int = 10
    ) -> list[tuple[str, float]]:
        """Words nearest the mean of the positive unit vectors minus the negative ones (3CosAdd).

        The query words themselves are excluded; analogies read ``positive=[king, woman],
        negative=[man]``.
        """
        negative = negative or []
        if not positive and not negative:
            raise ValueError("give at least one word")
        ids = [self.vocab.stoi[w] for w in positive + negative]
        weights = np.array([1.0] * len(positive) + [-1.0] * len(negative), dtype=np.float32)
        query = weights @ self.unit_vectors[ids]
        query /= max(float(np.linalg.norm(query)), 1e-12)
        scores = self.unit_vectors @ query
        scores[ids] = -np.inf
        topn = min(topn, len(self.vocab) - len(set(ids)))
        best = np.argpartition(-scores, topn - 1)[:topn] if topn > 0 else np.array([], dtype=np.int64)
        best = best[np.argsort(-scores[best])]
        return [(self.vocab.itos[i], float(scores[i])) for i in best]

    def get_mean_vector(self, keys: list[str], pre_normalize: bool = True, post_normalize: bool = False) -> np.ndarray:
        """The mean of the words' vectors (their unit vectors with ``pre_normalize``), scaled to unit length
        with ``post_normalize``: gensim's verb, its defaults included."""
        return self._mean([self.vocab.stoi[w] for w in keys], pre_normalize, post_normalize)

    def _mean(self, ids: list[int], pre_normalize: bool, post_normalize: bool) -> np.ndarray:
        mean = (self.unit_vectors if pre_normalize else self.vectors)[ids].mean(axis=0)
        return mean / max(float(np.linalg.norm(mean)), 1e-12) if post_normalize else mean

    def n_similarity(self, ws1: list[str], ws2: list[str]) -> float:
        """Cosine similarity of the mean vectors of two sets of words."""
        mean1 = self.get_mean_vector(ws1, pre_normalize=False, post_normalize=True)
        mean2 = self.get_mean_vector(ws2, pre_normalize=False, post_normalize=True)
        return float(mean1 @ mean2)

    def doesnt_match(self, words: list[str]) -> str:
        """The word furthest from the mean of them all (cosine to the mean of their unit vectors)."""
        ids = [self.vocab.stoi[w] for w in words]
        mean = self.get_mean_vector(words, post_normalize=True)
        distances = self.unit_vectors[ids] @ mean
        return min(zip(distances.tolist(), words, strict=True))[1]

    # ---- embeddings: a text in, one unit vector out (models.pipelines.embedding.TextEmbedder) ----------

    @property
    def dimensions(self) -> int:
        return self.vector_size

    def encode(self, text: str | list[int]) -> list[int]:
        """The vocabulary ids of a text's words, unknown words skipped; given ids (a word's row in the
        vocabulary, as ``export word2vec`` writes them) are checked."""
        if isinstance(text, str):
            ids = self.vocab.encode(words(text))
            if not ids:
                raise InvalidInput("no word of the text is in the vocabulary, so it has no embedding")
            return ids
        outside = [i for i in text if not 0 <= i < len(self.vocab)]
        if outside:
            raise InvalidInput(f"word id {outside[0]} is outside the vocabulary (ids 0 to {len(self.vocab) - 1})")
        return text

    def embed_encoded(self, texts: list[list[int]]) -> list[np.ndarray]:
        """Each text's embedding: the mean of its words' unit vectors, scaled to unit length."""
        return [self._mean(ids, pre_normalize=True, post_normalize=True) for ids in texts]

    # ---- files gensim reads ----------------------------------------------------------------------------

    def save_word2vec_format(self, path: Path, binary: bool = False) -> None:
        """The word2vec format (``KeyedVectors.load_word2vec_format(path, binary=...)`` reads it): a
        ``count dim`` header line, then per word either ``word v1 v2 ...`` as text, or, ``binary``, the word,
        a space and its ``dim`` little-endian float32 values, each record ending in a newline as the original
        word2vec.c writes it."""
        with open(path, "wb") as f:
            f.write(f"{len(self.vocab)} {self.vector_size}\n".encode())
            for word, vector in zip(self.vocab.itos, self.vectors, strict=True):
                if binary:
                    f.write(word.encode() + b" " + vector.astype("<f4").tobytes() + b"\n")
                else:
                    f.write((word + " " + " ".join(f"{x:.6f}" for x in vector) + "\n").encode())


def load(checkpoint: Checkpoint, device: torch.device | None = None) -> WordVectors:
    """The input vectors and vocabulary of a word2vec checkpoint (they live in memory, on no device)."""
    model = word2vec.load(checkpoint)
    vocab = WordVocab.from_file(checkpoint.file(word2vec.VOCAB_FILE))
    if len(vocab) != model.config.vocab_size:
        raise ValueError(f"vocabulary of {len(vocab)} words, config of {model.config.vocab_size}")
    return WordVectors(vocab, model.input_embeddings.weight.detach().numpy())
