"""Word vectors from characters as well (fastText; Bojanowski et al., 2017): a word's vector is its own
vector plus the sum of the vectors of its character n-grams.

A word is spelled with boundary marks, ``<where>``, and cut into every n-gram of ``lengths`` characters
(3-5: ``<wh``, ``whe``, ..., ``re>``). The n-grams are hashed into a fixed number of buckets, so the table
does not grow with them, and a bucket shared by two n-grams is a small price. Rare words of the training
plays then share what their stems and endings (``-eth``, ``-est``, ``thou``) learn from common ones, and a
word the vocabulary does not know, a name of an unseen play, is still spelled: its vector is the unknown
word's plus its n-grams'.

So the spelling travels with the text, not with the vocabulary: the encoder turns each word into a token
``(word id, bucket + 1, bucket + 1, ...)`` (``spelled``), whatever the vocabulary knows, and a batch is
a tensor (B, T, 1 + n-grams) of them, padded with zeros: word id 0 is padding and bucket id 0 no n-gram.
"""

from __future__ import annotations

import functools
import zlib
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

NO_NGRAM = 0  # pads a token's n-grams to the batch's longest spelling; bucket b is id b + 1


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


@functools.lru_cache(maxsize=1 << 16)
def spelled(word_id: int, word: str, lengths: tuple[int, int], buckets: int) -> tuple[int, ...]:
    """The token of ``word`` (id ``word_id``): its id, then its n-grams' bucket ids. Cached: a passage repeats
    its words, and the training passages then share one tuple per word."""
    return (word_id, *(ngram_bucket(g, buckets) + 1 for g in char_ngrams(word, lengths)))


def word_ids(inputs: torch.Tensor) -> torch.Tensor:
    """The word ids (B, T) of a batch of word ids (B, T) or of spelled tokens (B, T, 1 + n-grams)."""
    return inputs[..., 0] if inputs.dim() == 3 else inputs


class SubwordEmbedding(nn.Embedding):
    """``nn.Embedding`` over spelled tokens (B, T, 1 + n-grams): each word id's row plus the sum of the
    n-gram rows of its bucket ids.

    ``weight`` is the words' own table (where word2vec vectors go); ``ngrams`` the buckets' table (id b + 1
    reads row b), starting at zero so that a word starts at its own vector.
    """

    def __init__(self, num_words: int, dim: int, lengths: tuple[int, int], buckets: int, padding_idx: int):
        super().__init__(num_words, dim, padding_idx=padding_idx)
        if not 1 <= lengths[0] <= lengths[1] or buckets < 1:
            raise ValueError(f"n-gram lengths must be 1 <= min <= max and buckets positive, got {lengths}, {buckets}")
        self.lengths, self.buckets = lengths, buckets
        self.ngrams = nn.Embedding(buckets, dim)
        nn.init.zeros_(self.ngrams.weight)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        if tokens.dim() != 3:
            raise ValueError(f"a SubwordEmbedding reads spelled tokens (B, T, 1 + n-grams), got {tuple(tokens.shape)}")
        # One bag per distinct token of the batch: a passage repeats its words, and padding is one token.
        present, where = torch.unique(tokens.reshape(-1, tokens.shape[-1]), dim=0, return_inverse=True)
        # One more NO_NGRAM column: a batch whose words have no n-gram (too short) still has one to sum.
        ngram_ids = F.pad(present[:, 1:], (0, 1), value=NO_NGRAM)
        # Row b for id b + 1, and padding weighs nothing: the table keeps one row per bucket.
        ngrams = F.embedding_bag((ngram_ids - 1).clamp_min(0), self.ngrams.weight, mode="sum",
                                 per_sample_weights=(ngram_ids != NO_NGRAM).to(self.ngrams.weight.dtype))
        vectors = F.embedding(present[:, 0], self.weight, self.padding_idx) + ngrams
        return vectors[where].view(*tokens.shape[:-1], -1)


def word_embedding(num_words: int, dim: int, padding_idx: int, char_ngrams: Sequence[int] = (),
                   ngram_buckets: int = 0) -> nn.Embedding:
    """The word-level networks' embedding: plain over word ids, or with character n-grams over spelled
    tokens when ``char_ngrams`` is ``(min, max)``."""
    if not char_ngrams:
        return nn.Embedding(num_words, dim, padding_idx=padding_idx)
    if len(char_ngrams) != 2:
        raise ValueError(f"char_ngrams is (shortest, longest), got {tuple(char_ngrams)}")
    return SubwordEmbedding(num_words, dim, (char_ngrams[0], char_ngrams[1]), ngram_buckets, padding_idx)
