"""Text classification: a trained classifier with its encoder and labels, texts in, labels out.

Each text is encoded on its own, then the encoded texts are padded and run together
(``classify_encoded``), so texts from many requests can share one forward pass.
"""

from __future__ import annotations

from typing import TypedDict

import torch
from torch import nn

from models import classifier
from models.checkpoint import Checkpoint
from models.classifier import SubwordEncoder, Token, WordEncoder, pad_batch


class Classification(TypedDict):
    label: str  # the most probable class
    probabilities: dict[str, float]  # every class's probability, in the classifier's label order


class TextClassifier:
    """``probabilities(texts)`` for evaluation, ``classify(texts)`` for answers."""

    def __init__(self, model: nn.Module, encoder: WordEncoder | SubwordEncoder, labels: list[str],
                 device: torch.device, batch_size: int = 64):
        self.model = model.to(device).eval()
        self.encoder = encoder
        self.labels = labels
        self.device = device
        self.batch_size = batch_size

    def encode(self, text: str) -> list[Token]:
        return self.encoder.encode(text)

    @torch.no_grad()
    def _probabilities(self, encoded: list[list[Token]]) -> torch.Tensor:
        out = [torch.empty(0, len(self.labels))]
        for start in range(0, len(encoded), self.batch_size):
            ids = pad_batch(encoded[start:start + self.batch_size], self.encoder.pad_id)
            logits, _ = self.model(ids.to(self.device))
            out.append(torch.softmax(logits.float(), dim=-1).cpu())
        return torch.cat(out)

    def probabilities(self, texts: list[str]) -> torch.Tensor:
        """Class probabilities (N, classes), in ``labels`` order."""
        return self._probabilities([self.encode(t) for t in texts])

    def classify_encoded(self, encoded: list[list[Token]]) -> list[Classification]:
        """One classification per encoded text; padding changes no answer (each network masks it out)."""
        results = []
        for row in self._probabilities(encoded).tolist():
            best = max(range(len(row)), key=row.__getitem__)
            results.append(Classification(label=self.labels[best],
                                          probabilities=dict(zip(self.labels, row, strict=True))))
        return results

    def classify(self, texts: list[str]) -> list[Classification]:
        return self.classify_encoded([self.encode(t) for t in texts])


def load(checkpoint: Checkpoint, device: torch.device) -> TextClassifier:
    """A ``clf-<arch>`` checkpoint's network, encoder and labels."""
    return TextClassifier(classifier.load(checkpoint, device), classifier.load_encoder(checkpoint),
                          list(checkpoint.config["labels"]), device)
