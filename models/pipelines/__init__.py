"""Pipelines: a model with what it needs to answer one kind of question, in the shape callers use.

Each module holds one capability: ``word_vectors`` (gensim's verbs), ``translation`` (and
``attention_image``, its heatmaps), ``fill_mask``, ``next_sentence``, ``text_generation`` (and ``chat``, a
conversation rendered as a play script), ``classification``, ``embedding`` (served by word2vec and BERT),
``attention_maps`` (every layer's and head's attention of BERT, GPT and the Transformer translator).
A model file in ``models/`` builds and loads the network; a pipeline tokenizes, checks input
(``InvalidInput`` for what the model cannot take), runs the network and shapes its answer. ``load`` gives
every pipeline a checkpoint serves.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from models import bert, gpt
from models.checkpoint import Checkpoint
from models.pipelines import classification, text_generation, translation, word_vectors
from models.pipelines.attention_maps import AttentionMaps, BertAttention, GPTAttention, TranslatorAttention
from models.pipelines.classification import TextClassifier
from models.pipelines.embedding import SentenceEmbedder, TextEmbedder
from models.pipelines.fill_mask import FillMask
from models.pipelines.next_sentence import NextSentence
from models.pipelines.text_generation import TextGenerator
from models.pipelines.translation import Translator
from models.pipelines.word_vectors import WordVectors
from models.tokenizers import load_text_tokenizer
from models.transformer import Transformer

Pipeline = (WordVectors | Translator | FillMask | NextSentence | TextGenerator | TextClassifier | SentenceEmbedder
            | AttentionMaps)


def _bert(checkpoint: Checkpoint, device: torch.device) -> tuple[FillMask, NextSentence, SentenceEmbedder,
                                                                 AttentionMaps]:
    """Both of BERT's pretraining heads, its encoder as an embedder, and its attention, sharing one loaded
    model."""
    model, tokenizer = bert.load(checkpoint, device), bert.load_tokenizer(checkpoint)
    return (FillMask(model, tokenizer, device), NextSentence(model, tokenizer, device),
            SentenceEmbedder(model, tokenizer, device), BertAttention(model, tokenizer, device))


def _gpt(checkpoint: Checkpoint, device: torch.device) -> tuple[TextGenerator, AttentionMaps]:
    """Generation and attention, sharing one loaded GPT."""
    model = gpt.load(checkpoint, device)
    tokenizer = load_text_tokenizer(checkpoint, model.config.vocab_size)
    return TextGenerator(model, tokenizer), GPTAttention(model, tokenizer)


def _seq2seq(checkpoint: Checkpoint, device: torch.device) -> tuple[Translator] | tuple[Translator, AttentionMaps]:
    """A translator; the Transformer's attention too (a recurrent model has no self-attention)."""
    translator = translation.load(checkpoint, device)
    return (translator, TranslatorAttention(translator)) if isinstance(translator.model, Transformer) else (translator,)


# family -> the kinds of pipeline its checkpoints serve (word2vec's WordVectors is also its TextEmbedder; a
# seq2seq model has attention maps only as a Transformer), and how to load them
PIPELINES: dict[str, tuple[tuple[type, ...], Callable[[Checkpoint, torch.device], tuple[Pipeline, ...]]]] = {
    "word2vec": ((WordVectors, TextEmbedder), lambda c, d: (word_vectors.load(c, d),)),
    "seq2seq": ((Translator, AttentionMaps), _seq2seq),
    "bert": ((FillMask, NextSentence, TextEmbedder, AttentionMaps), _bert),
    "gpt": ((TextGenerator, AttentionMaps), _gpt),
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
