"""Word vectors from characters as well (fastText; Bojanowski et al., 2017): a word's vector is its own
vector plus the sum of the vectors of its character n-grams.

A word is spelled with boundary marks, ``<where>``, and cut into every n-gram of ``lengths`` characters
(3-5: ``<wh``, ``whe``, ..., ``re>``). The n-grams are hashed into a fixed number of buckets, so the table
does not grow with them, and a bucket shared by two n-grams is a small price. Rare words of the training
plays then share what their stems and endings (``-eth``, ``-est``, ``thou``) learn from common ones.

Each vocabulary word's n-gram buckets are worked out once (``spell``), then a batch costs one bag of
n-gram vectors per distinct word in it, not one per token.
"""

from __future__ import annotations

import zlib
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn


def char_ngrams(word: str, lengths: tuple[int, int]) -> list[str]:
    """The n-grams of ``<word>`` of ``lengths[0]`` to ``lengths[1]`` characters, in order, repeats kept.
    The empty word (padding, unknown) has none."""
    if not word:
        return []
    marked = f"<{word}>"
    return [marked[i:i + n] for n in range(lengths[0], lengths[1] + 1) for i in range(len(marked) - n + 1)]


def ngram_bucket(ngram: str, buckets: int) -> int:
    """A bucket in 0..buckets - 1; CRC-32 rather than ``hash`` so that it is the same in every process."""
    return zlib.crc32(ngram.encode("utf-8")) % buckets


class SubwordEmbedding(nn.Embedding):
    """``nn.Embedding`` over word ids whose rows gain the sum of the words' n-gram vectors.

    ``weight`` is the words' own table (where word2vec vectors go); ``ngrams`` the buckets' table, starting at
    zero so that a word starts at its own vector. Call ``spell`` with the vocabulary before the first batch.
    """

    def __init__(self, num_words: int, dim: int, lengths: tuple[int, int], buckets: int, padding_idx: int):
        super().__init__(num_words, dim, padding_idx=padding_idx)
        if not 1 <= lengths[0] <= lengths[1] or buckets < 1:
            raise ValueError(f"n-gram lengths must be 1 <= min <= max and buckets positive, got {lengths}, {buckets}")
        self.lengths, self.buckets = lengths, buckets
        self.ngrams = nn.Embedding(buckets, dim)
        nn.init.zeros_(self.ngrams.weight)
        # Each vocabulary word's buckets, one after another, and where each word's start and how many it has:
        # rebuilt from the vocabulary, so not saved with the weights.
        for name in ("flat", "starts", "counts"):
            self.register_buffer(name, torch.zeros(0, dtype=torch.long), persistent=False)

    def spell(self, words: Sequence[str]) -> None:
        """Give word id i the n-grams of ``words[i]`` (an empty string: none, as for padding and unknown)."""
        if len(words) != self.num_embeddings:
            raise ValueError(f"{len(words)} words for an embedding of {self.num_embeddings}")
        rows = [[ngram_bucket(g, self.buckets) for g in char_ngrams(w, self.lengths)] for w in words]
        device = self.weight.device
        self.counts = torch.tensor([len(r) for r in rows], dtype=torch.long, device=device)
        self.starts = torch.cumsum(self.counts, 0) - self.counts
        self.flat = torch.tensor([b for r in rows for b in r], dtype=torch.long, device=device)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        if len(self.counts) != self.num_embeddings:  # spell has not run
            raise RuntimeError("spell the vocabulary first: SubwordEmbedding.spell(words)")
        present, where = torch.unique(ids, return_inverse=True)
        # One bag per distinct word of the batch, gathered from the flat spellings without padding.
        counts, starts = self.counts[present], self.starts[present]
        offsets = torch.cumsum(counts, 0) - counts
        positions = torch.repeat_interleave(starts - offsets, counts) + torch.arange(int(counts.sum()),
                                                                                     device=ids.device)
        ngrams = F.embedding_bag(self.flat[positions], self.ngrams.weight, offsets, mode="sum")
        return (F.embedding(present, self.weight, self.padding_idx) + ngrams)[where]


def word_embedding(num_words: int, dim: int, padding_idx: int, char_ngrams: Sequence[int] = (),
                   ngram_buckets: int = 0) -> nn.Embedding:
    """The word-level networks' embedding: plain, or with character n-grams when ``char_ngrams`` is
    ``(min, max)`` (then ``spell`` it with the vocabulary)."""
    if not char_ngrams:
        return nn.Embedding(num_words, dim, padding_idx=padding_idx)
    if len(char_ngrams) != 2:
        raise ValueError(f"char_ngrams is (shortest, longest), got {tuple(char_ngrams)}")
    return SubwordEmbedding(num_words, dim, (char_ngrams[0], char_ngrams[1]), ngram_buckets, padding_idx)
