"""TextCNN (Kim, 2014): convolutions over word embeddings, pooled over time, then a fully connected layer.

A kernel of size k slides over the sequence of word vectors (``stride`` positions at a time, the
sequence extended by ``padding`` zero vectors at both ends) and fires on the k-word patterns it has
learned — one feature map per kernel. Several kernel sizes see phrases of several lengths, each with
its own count of kernels. Pooling over time (``max``: did the pattern occur anywhere; ``avg``: how
much of the passage is like it) turns each feature map into one number, whatever the passage length;
the concatenated features go through dropout into the fully connected layer that scores each class.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from models.subword import word_embedding, word_ids

PAD_ID = 0


@dataclass
class CNNConfig:
    vocab_size: int
    num_classes: int
    embed_dim: int = 128
    kernel_sizes: tuple[int, ...] = (3, 4, 5)
    kernel_counts: tuple[int, ...] = (100, 100, 100)  # feature maps per kernel size
    stride: int = 1
    padding: int = 0
    pooling: str = "max"  # "max" or "avg" over time
    dropout: float = 0.5
    char_ngrams: tuple[int, ...] = ()  # (shortest, longest): add character n-grams (models/subword.py)
    ngram_buckets: int = 0  # hashed n-gram vectors, with char_ngrams

    def __post_init__(self) -> None:
        self.char_ngrams = tuple(self.char_ngrams)
        self.kernel_sizes, self.kernel_counts = tuple(self.kernel_sizes), tuple(self.kernel_counts)
        if len(self.kernel_sizes) != len(self.kernel_counts) or not self.kernel_sizes:
            raise ValueError("give one kernel count per kernel size")
        if self.pooling not in ("max", "avg"):
            raise ValueError(f"pooling must be max or avg, got {self.pooling!r}")
        if self.stride < 1 or not 0 <= self.padding < min(self.kernel_sizes):
            # Padding of a whole kernel or more would give windows that see no word at all.
            raise ValueError("stride must be at least 1 and padding between 0 and the smallest kernel size - 1")


class TextCNN(nn.Module):
    """Token ids (B, T), padded with ``PAD_ID`` (or spelled tokens (B, T, 1 + n-grams), see
    ``models.subword``), in; class logits out."""

    def __init__(self, config: CNNConfig):
        super().__init__()
        self.config = config
        self.embedding = word_embedding(config.vocab_size, config.embed_dim, PAD_ID, config.char_ngrams,
                                        config.ngram_buckets)
        self.convs = nn.ModuleList(
            nn.Conv1d(config.embed_dim, count, size, stride=config.stride, padding=config.padding)
            for size, count in zip(config.kernel_sizes, config.kernel_counts, strict=True)
        )
        self.dropout = nn.Dropout(config.dropout)
        self.fc = nn.Linear(sum(config.kernel_counts), config.num_classes)

    def forward(
        self, inputs: torch.Tensor, targets: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Class logits (B, classes) and, with ``targets`` (B,), their mean cross-entropy."""
        shortest = max(self.config.kernel_sizes) - 2 * self.config.padding
        if inputs.shape[1] < shortest:  # every kernel needs at least one full window
            # (the last pair of padding widths is the time axis's, for word ids and spelled tokens alike)
            inputs = F.pad(inputs, (0, 0) * (inputs.dim() - 2) + (0, shortest - inputs.shape[1]), value=PAD_ID)
        # Each passage's length, as if it were alone (and padded to the shortest usable length).
        lengths = (word_ids(inputs) != PAD_ID).sum(dim=1).clamp_min(max(1, shortest))
        x = self.embedding(inputs).transpose(1, 2)  # (B, embed, T): channels first for Conv1d
        pooled = [self._pool(F.relu(conv(x)), conv.kernel_size[0], lengths) for conv in self.convs]
        logits = self.fc(self.dropout(torch.cat(pooled, dim=1)))
        return logits, (None if targets is None else F.cross_entropy(logits.float(), targets))

    def _pool(self, maps: torch.Tensor, kernel: int, lengths: torch.Tensor) -> torch.Tensor:
        """Pool (B, C, T') over the windows the passage would have alone: those that end within it
        and its ``padding``, not in the batch's padding after it."""
        start = torch.arange(maps.shape[-1], device=maps.device) * self.config.stride - self.config.padding
        valid = (start.unsqueeze(0) + kernel <= (lengths + self.config.padding).unsqueeze(1)).unsqueeze(1)
        if self.config.pooling == "max":
            return maps.masked_fill(~valid, float("-inf")).amax(dim=-1)
        return (maps * valid).sum(dim=-1) / valid.sum(dim=-1).clamp_min(1)
