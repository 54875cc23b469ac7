"""Trained word vectors with the verbs gensim's ``KeyedVectors`` users know."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from models import word2vec
from models.checkpoint import Checkpoint
from models.tokenizers import WordVocab


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

    def save_word2vec_format(self, path: Path) -> None:
        """The word2vec text format: a ``count dim`` header, then ``word v1 v2 ...`` per line."""
        with open(path, "w", encoding="utf-8") as f:
            f.write(f"{len(self.vocab)} {self.vector_size}\n")
            for word, vector in zip(self.vocab.itos, self.vectors, strict=True):
                f.write(word + " " + " ".join(f"{x:.6f}" for x in vector) + "\n")


def load(checkpoint: Checkpoint, device: torch.device | None = None) -> WordVectors:
    """The input vectors and vocabulary of a word2vec checkpoint (they live in memory, on no device)."""
    model = word2vec.load(checkpoint)
    vocab = WordVocab.from_file(checkpoint.file(word2vec.VOCAB_FILE))
    if len(vocab) != model.config.vocab_size:
        raise ValueError(f"vocabulary of {len(vocab)} words, config of {model.config.vocab_size}")
    return WordVectors(vocab, model.input_embeddings.weight.detach().numpy())
