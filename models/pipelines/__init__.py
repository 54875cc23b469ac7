"""Pipelines: a model with what it needs to answer one kind of question, in the shape callers use.

Each module holds one capability: ``word_vectors`` (gensim's verbs), ``translation`` (and
``attention_image``, its heatmap), ``fill_mask``, ``next_sentence``, ``text_generation`` (and ``chat``, a
conversation rendered as a play script), ``classification``, ``embedding`` (served by word2vec and BERT).
A model file in ``models/`` builds and loads the network; a pipeline tokenizes, checks input
(``InvalidInput`` for what the model cannot take), runs the network and shapes its answer. ``load`` gives
every pipeline a checkpoint serves.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from models import bert
from models.checkpoint import Checkpoint
from models.pipelines import classification, text_generation, translation, word_vectors
from models.pipelines.classification import TextClassifier
from models.pipelines.embedding import SentenceEmbedder, TextEmbedder
from models.pipelines.fill_mask import FillMask
from models.pipelines.next_sentence import NextSentence
from models.pipelines.text_generation import TextGenerator
from models.pipelines.translation import Translator
from models.pipelines.word_vectors import WordVectors

Pipeline = WordVectors | Translator | FillMask | NextSentence | TextGenerator | TextClassifier | SentenceEmbedder


def _bert(checkpoint: Checkpoint, device: torch.device) -> tuple[FillMask, NextSentence, SentenceEmbedder]:
    """Both of BERT's pretraining heads, and its encoder as an embedder, sharing one loaded model."""
    model, tokenizer = bert.load(checkpoint, device), bert.load_tokenizer(checkpoint)
    return FillMask(model, tokenizer, device), NextSentence(model, tokenizer, device), SentenceEmbedder(
        model, tokenizer, device)


# family -> the kinds of pipeline its checkpoints serve, and how to load them (word2vec's WordVectors is
# also its TextEmbedder)
PIPELINES: dict[str, tuple[tuple[type, ...], Callable[[Checkpoint, torch.device], tuple[Pipeline, ...]]]] = {
    "word2vec": ((WordVectors, TextEmbedder), lambda c, d: (word_vectors.load(c, d),)),
    "seq2seq": ((Translator,), lambda c, d: (translation.load(c, d),)),
    "bert": ((FillMask, NextSentence, TextEmbedder), _bert),
    "gpt": ((TextGenerator,), lambda c, d: (text_generation.load(c, d),)),
    "lm": ((TextGenerator,), lambda c, d: (text_generation.load(c, d),)),
    "classifier": ((TextClassifier,), lambda c, d: (classification.load(c, d),)),
}


def families_serving(kind: type) -> tuple[str, ...]:
    """The checkpoint families whose models answer as ``kind``."""
    return tuple(family for family, (kinds, _) in PIPELINES.items() if kind in kinds)


def load(checkpoint: Checkpoint, device: torch.device) -> tuple[Pipeline, ...]:
    """Every pipeline ``checkpoint`` serves, sharing one loaded model."""
    if checkpoint.family not in PIPELINES:
        raise ValueError(f"unknown family {checkpoint.family!r}")
    _, loader = PIPELINES[checkpoint.family]
    return loader(checkpoint, device)
