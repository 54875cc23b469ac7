"""A multilayer perceptron over a bag of word embeddings.

Each neuron computes z = wᵀx + b and passes it through an activation; a layer is many neurons, a
``Linear`` then the activation. The input is the mean of the passage's word embeddings (or their
elementwise max, or both side by side), so word order is lost (a "bag") — the simplest text classifier
that still learns its own word representations, and the baseline the order-aware models (CNN, RNN) have
to beat. The mean may weigh its words: each vocabulary word has a learned score, and a passage's words
count in proportion to the exponentials of theirs (all scores start at zero, the plain mean), so the
bag can learn to listen less to words that say nothing of the label, as a fixed weighting by word
frequency does (Arora et al., 2017), but learned for the task.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from models.subword import word_embedding, word_ids

PAD_ID = 0
ACTIVATIONS = {"relu": nn.ReLU, "tanh": nn.Tanh, "gelu": nn.GELU}
POOLINGS = ("mean", "max", "mean-max", "weighted", "weighted-max")


@dataclass
class MLPConfig:
    vocab_size: int
    num_classes: int
    embed_dim: int = 128
    hidden_sizes: tuple[int, ...] = (128,)
    activation: str = "relu"
    dropout: float = 0.3
    # the bag: the "mean" of the word vectors, their elementwise "max", or both ("mean-max"); "weighted" is the
    # mean with a learned weight per word, "weighted-max" that beside the max
    pooling: str = "mean"
    char_ngrams: tuple[int, ...] = ()  # (shortest, longest): add character n-grams (models/subword.py)
    ngram_buckets: int = 0  # hashed n-gram vectors, with char_ngrams

    def __post_init__(self) -> None:
        self.char_ngrams = tuple(self.char_ngrams)
        if self.pooling not in POOLINGS:
            raise ValueError(f"pooling must be one of {', '.join(POOLINGS)}, got {self.pooling!r}")
        if self.activation not in ACTIVATIONS:
            raise ValueError(f"activation must be one of {', '.join(ACTIVATIONS)}, got {self.activation!r}")
        self.hidden_sizes = tuple(self.hidden_sizes)


class MLPClassifier(nn.Module):
    """Token ids (B, T), padded with ``PAD_ID`` (or spelled tokens (B, T, 1 + n-grams), see
    ``models.subword``), in; class logits out."""

    def __init__(self, config: MLPConfig):
        super().__init__()
        self.config = config
        self.embedding = word_embedding(config.vocab_size, config.embed_dim, PAD_ID, config.char_ngrams,
                                        config.ngram_buckets)
        layers: list[nn.Module] = []
        # One score per vocabulary word, for the weighted bags only: the other bags' checkpoints stay as they were.
        self.word_scores = nn.Parameter(torch.zeros(config.vocab_size)) if config.pooling.startswith("weighted") \
            else None
        width = config.embed_dim * (2 if config.pooling.endswith("-max") else 1)
        for size in config.hidden_sizes:
            layers += [nn.Dropout(config.dropout), nn.Linear(width, size), ACTIVATIONS[config.activation]()]
            width = size
        layers += [nn.Dropout(config.dropout), nn.Linear(width, config.num_classes)]
        self.layers = nn.Sequential(*layers)

    def forward(
        self, inputs: torch.Tensor, targets: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Class logits (B, classes) and, with ``targets`` (B,), their mean cross-entropy."""
        logits = self.layers(self._bag(inputs))
        return logits, (None if targets is None else F.cross_entropy(logits.float(), targets))

    def _bag(self, inputs: torch.Tensor) -> torch.Tensor:
        """The passage as one vector (B, embed_dim, or twice that beside the max), whatever its length."""
        ids = word_ids(inputs)
        mask = (ids != PAD_ID).unsqueeze(-1)
        vectors = self.embedding(inputs)
        if self.word_scores is None:
            # The padding row is zero, so the sum counts real tokens only; divide by their number.
            mean = vectors.sum(dim=1) / mask.sum(dim=1).clamp_min(1)
        else:
            # A passage of padding alone (never one of a batch's texts) gets the zero vector, as the plain mean.
            scores = self.word_scores[ids].masked_fill(~mask.squeeze(-1), float("-inf"))
            weights = torch.softmax(scores, dim=1).nan_to_num(0.0).unsqueeze(-1)
            mean = (weights * vectors).sum(dim=1)
        if self.config.pooling in ("mean", "weighted"):
            return mean
        # Max pooling (SWEM-max; Shen et al., 2018): the strongest value of each dimension over the words.
        most = vectors.masked_fill(~mask, float("-inf")).amax(dim=1)
        return most if self.config.pooling == "max" else torch.cat([mean, most], dim=-1)
