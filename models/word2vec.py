"""word2vec: skip-gram and CBOW with negative sampling (Mikolov et al., 2013).

Two embedding matrices: the input vectors ``W_in`` (one per word as a centre word, the ones people
use) and the output vectors ``W_out`` (one per word as a predicted word). For an input ``h`` and a
target word ``o`` with ``k`` noise words ``n_1..n_k`` drawn from the unigram distribution raised to
3/4, negative sampling maximises

    log σ(W_out[o] · h) + Σ_i log σ(-W_out[n_i] · h)

where ``h = W_in[c]`` for skip-gram (predict each context word from the centre word) and the mean of
the context words' input vectors for CBOW (predict the centre word from its context).

``Word2Vec.forward`` states that objective for batches (tests check the trainer's compiled update
against its gradient); ``models.pipelines.word_vectors`` is the inference side with gensim's verbs.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from models.checkpoint import Checkpoint

VOCAB_FILE = "vocab.json"


@dataclass
class Word2VecConfig:
    vocab_size: int
    dim: int = 100
    mode: str = "sg"  # "sg" (skip-gram) or "cbow"
    window: int = 5
    negative: int = 5
    sample: float = 1e-3  # frequent-word subsampling threshold
    min_count: int = 5

    def __post_init__(self) -> None:
        if self.mode not in ("sg", "cbow"):
            raise ValueError(f"mode must be 'sg' or 'cbow', got {self.mode!r}")


class Word2Vec(nn.Module):
    def __init__(self, config: Word2VecConfig):
        super().__init__()
        self.config = config
        self.input_embeddings = nn.Embedding(config.vocab_size, config.dim)
        self.output_embeddings = nn.Embedding(config.vocab_size, config.dim)
        # Small uniform input vectors and zero output vectors, as the reference implementations do; the
        # range is gensim 4's, ±1/dim (word2vec.c's is ±0.5/dim). Measured on the training plays (skip-gram,
        # 5 epochs, 13 seeds): wordsim353 ρ 0.172 ± 0.005 with ±1/dim against 0.160 ± 0.006 with ±0.5/dim.
        nn.init.uniform_(self.input_embeddings.weight, -1.0 / config.dim, 1.0 / config.dim)
        nn.init.zeros_(self.output_embeddings.weight)

    def hidden(self, inputs: torch.Tensor, input_mask: torch.Tensor | None = None) -> torch.Tensor:
        """``h``: the centre word's vector (inputs ``(B,)``) or the mean of context vectors (``(B, C)``)."""
        vectors = self.input_embeddings(inputs)
        if inputs.dim() == 1:
            return vectors
        if input_mask is None:
            return vectors.mean(dim=1)
        mask = input_mask.unsqueeze(-1).to(vectors.dtype)
        return (vectors * mask).sum(dim=1) / mask.sum(dim=1).clamp_min(1.0)

    def forward(
        self,
        inputs: torch.Tensor,
        targets: torch.Tensor,
        negatives: torch.Tensor,
        input_mask: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Negative-sampling loss, summed over the batch: ``targets (B,)``, ``negatives (B, K)``."""
        h = self.hidden(inputs, input_mask)  # (B, d)
        positive = (self.output_embeddings(targets) * h).sum(-1)  # (B,)
        negative = torch.bmm(self.output_embeddings(negatives), h.unsqueeze(-1)).squeeze(-1)  # (B, K)
        return -(F.logsigmoid(positive) + F.logsigmoid(-negative).sum(-1)).sum()


def config_from_checkpoint(checkpoint: Checkpoint) -> Word2VecConfig:
    return Word2VecConfig(**checkpoint.config["model"])


def load(checkpoint: Checkpoint, device: torch.device | None = None) -> Word2Vec:
    """Both embedding matrices of a word2vec checkpoint, in a model built from its config."""
    model = Word2Vec(config_from_checkpoint(checkpoint))
    model.load_state_dict(checkpoint.state_dict)
    return model.to(device or "cpu").eval()
