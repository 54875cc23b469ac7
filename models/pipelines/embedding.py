"""Text embeddings: one unit-length vector per text, from word2vec's vectors or from BERT's encoder.

``TextEmbedder`` is what both offer: ``encode`` checks one input (a text, or token ids of the model's own
vocabulary) and turns it into ids, raising ``InvalidInput`` for what the model cannot take;
``embed_encoded`` embeds many encoded inputs at once, so inputs of concurrent requests can share a forward
pass. word2vec's embedder is ``WordVectors`` itself (the mean of a text's known words' unit vectors);
BERT's is ``SentenceEmbedder`` here: the mean of the last layer's states over the input's tokens, ``[CLS]``
and ``[SEP]`` included and padding left out (sentence-BERT's mean pooling). Both are scaled to unit
length, as OpenAI's embeddings are, so a dot product of two of them is their cosine similarity.
"""

from __future__ import annotations

from typing import Protocol, runtime_checkable

import numpy as np
import torch
from tokenizers import Tokenizer

from models.bert import CLS, SEP, BertForPreTraining
from models.pipelines.errors import InvalidInput
from models.pipelines.fill_mask import check_length, special_id


@runtime_checkable
class TextEmbedder(Protocol):
    @property
    def dimensions(self) -> int:
        """The length of every embedding."""
        ...

    def encode(self, text: str | list[int]) -> list[int]:
        """One input as the ids the model reads, checked."""
        ...

    def embed_encoded(self, texts: list[list[int]]) -> list[np.ndarray]:
        """The embedding of each encoded input (float32, unit length)."""
        ...


class SentenceEmbedder:
    """A pretrained BERT's encoder, mean-pooled over each input's tokens."""

    def __init__(self, model: BertForPreTraining, tokenizer: Tokenizer, device: torch.device, batch_size: int = 64):
        self.encoder = model.bert.to(device).eval()
        self.batch_size = batch_size  # inputs per forward pass: bounds the attention's memory however many wait
        self.tokenizer = tokenizer
        self.device = device
        self.config = model.config
        self.cls_id = special_id(tokenizer, CLS)
        self.sep_id = special_id(tokenizer, SEP)

    @property
    def dimensions(self) -> int:
        return self.config.dim

    def encode(self, text: str | list[int]) -> list[int]:
        """A text's WordPiece ids with ``[CLS]`` and ``[SEP]``; given ids (the checkpoint's ``tokenizer.json``
        vocabulary) get them around them."""
        if isinstance(text, str):
            ids = self.tokenizer.encode(text).ids
        else:
            outside = [i for i in text if not 0 <= i < self.config.vocab_size]
            if outside:
                raise InvalidInput(f"token id {outside[0]} is outside the vocabulary (ids 0 to "
                                   f"{self.config.vocab_size - 1})")
            ids = [self.cls_id, *text, self.sep_id]
        check_length(len(ids), self.config.max_position)
        return ids

    @torch.inference_mode()
    def embed_encoded(self, texts: list[list[int]]) -> list[np.ndarray]:
        """Forward passes of up to ``batch_size`` inputs: right-padded to the longest, the padding masked out
        of attention and of the mean, so each embedding is the one its input gets alone."""
        out: list[np.ndarray] = []
        for start in range(0, len(texts), self.batch_size):
            out.extend(self._embed(texts[start:start + self.batch_size]))
        return out

    def _embed(self, texts: list[list[int]]) -> list[np.ndarray]:
        lengths = torch.tensor([len(ids) for ids in texts])
        input_ids = torch.full((len(texts), int(lengths.max())), self.config.pad_id, dtype=torch.long)
        for row, ids in enumerate(texts):
            input_ids[row, :len(ids)] = torch.tensor(ids)
        mask = torch.arange(input_ids.size(1))[None] < lengths[:, None]
        hidden, _ = self.encoder(input_ids.to(self.device), attention_mask=mask.to(self.device))
        summed = (hidden.float() * mask[..., None].to(self.device)).sum(dim=1).cpu()
        means = summed / lengths[:, None]
        units = means / means.norm(dim=1, keepdim=True).clamp_min(1e-12)
        return list(units.numpy().astype(np.float32))
