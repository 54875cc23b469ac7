"""Translation: a seq2seq model with its two vocabularies, text in, text and alignment out.

``translate`` takes texts that share their decoding options; ``query`` and ``translate_queries`` take texts
each with its own (texts of many requests, batched), and group those that can decode together.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from models import seq2seq
from models.checkpoint import Checkpoint
from models.pipelines.errors import InvalidInput
from models.seq2seq import DIRECTIONS, SPECIALS, UNK_ID, Seq2Seq, detokenize, encode, pad_batch, tokenize
from models.tokenizers import WordVocab

# Beam search ranks by log p / ((5 + |y|) / 6) ** LENGTH_PENALTY (Wu et al., 2016): 0.6 is their choice.
LENGTH_PENALTY = 0.6


def default_max_length(source_tokens: int) -> int:
    """Target tokens allowed by default: an English word becomes about two Chinese characters, and a model
    that never says ``<eos>`` still stops."""
    return 2 * source_tokens + 10


@dataclass(frozen=True)
class TranslationOptions:
    """How to decode: greedy (``beam_size`` 1) or beam search ranked with ``length_penalty``, and the most
    target tokens (``None``: ``default_max_length`` of the longest source)."""

    beam_size: int = 1
    max_length: int | None = None
    length_penalty: float = LENGTH_PENALTY

    def __post_init__(self) -> None:
        if self.beam_size < 1:
            raise ValueError("beam_size must be at least 1")


@dataclass(frozen=True)
class TranslationQuery:
    """One text to translate with its decoding options: what ``Translator.translate_queries`` batches."""

    text: str
    options: TranslationOptions


@dataclass
class Translation:
    translation: str  # the target tokens as text, special tokens (an output <unk>) left out
    source_tokens: list[str]
    target_tokens: list[str]  # as produced, <unk> included, <eos> not
    attention: list[list[float]] | None  # len(target_tokens) x len(source_tokens), rows sum to 1
    unknown_tokens: list[str]  # source tokens outside the vocabulary (read as <unk>)


class Translator:
    """A trained model with its vocabularies: text in, text plus alignment out."""

    def __init__(self, model: Seq2Seq, source_vocab: WordVocab, target_vocab: WordVocab, direction: str,
                 device: torch.device):
        if direction not in DIRECTIONS:
            raise ValueError(f"direction must be one of {DIRECTIONS}, got {direction!r}")
        self.model = model.eval()
        self.source_vocab = source_vocab
        self.target_vocab = target_vocab
        self.direction = direction
        self.source_language, self.target_language = direction.split("-")
        self.device = device

    @property
    def has_attention(self) -> bool:
        return self.model.config.attention != "none"

    def source_tokens(self, text: str) -> list[str]:
        """``text`` as the model reads it (characters or words)."""
        return tokenize(text, self.source_language)

    def query(self, text: str, options: TranslationOptions) -> TranslationQuery:
        """One text with its options, checked: ``InvalidInput`` for a text the model reads as nothing."""
        if not self.source_tokens(text):
            raise InvalidInput("the text has no tokens")
        return TranslationQuery(text, options)

    def translate_queries(self, queries: Sequence[TranslationQuery]) -> list[Translation]:
        """Each query's translation, in order. Queries that decode alike (beam size and length penalty) share
        one batch whatever their limits, each cut at its own (its ``max_length``, else the default of its
        text), so texts of many requests decode together."""
        groups: dict[tuple[int, float], list[int]] = {}
        for i, query in enumerate(queries):
            groups.setdefault((query.options.beam_size, query.options.length_penalty), []).append(i)
        translations: dict[int, Translation] = {}
        for members in groups.values():
            texts = [queries[i].text for i in members]
            limits = [queries[i].options.max_length or default_max_length(len(self.source_tokens(queries[i].text)))
                      for i in members]
            translations.update(zip(members, self._decode(texts, queries[members[0]].options, limits), strict=True))
        return [translations[i] for i in range(len(queries))]

    def translate(self, texts: Sequence[str], options: TranslationOptions = TranslationOptions()) -> list[Translation]:
        """Greedy decoding (beam_size 1) runs the batch at once; beam search goes sentence by sentence."""
        longest = max(len(self.source_tokens(text)) for text in texts)
        return self._decode(texts, options, [options.max_length or default_max_length(longest)] * len(texts))

    def _decode(self, texts: Sequence[str], options: TranslationOptions, limits: list[int]) -> list[Translation]:
        """Each text decoded as ``options`` say, to at most its own limit of target tokens."""
        sources = [self.source_tokens(text) for text in texts]
        if empty := [i for i, s in enumerate(sources) if not s]:
            raise InvalidInput(f"text {empty[0]} has no tokens")
        ids = [encode(tokens, self.source_vocab) for tokens in sources]
        if options.beam_size == 1:
            # Greedy decoding of a token does not depend on how long the decoding may go on, so one batch
            # decodes to the largest limit and each text is cut at its own.
            outputs, maps = self.model.greedy(pad_batch(ids, self.device), max(limits))
            outputs = [out[:limit] for out, limit in zip(outputs, limits, strict=True)]
            maps = [alpha[:limit] if alpha is not None else None for alpha, limit in zip(maps, limits, strict=True)]
        else:
            decoded = [self.model.beam_search(torch.tensor([s], device=self.device), options.beam_size, limit,
                                              options.length_penalty) for s, limit in zip(ids, limits, strict=True)]
            outputs, maps = [d[0] for d in decoded], [d[1] for d in decoded]
        results = []
        for tokens, token_ids, out, alpha in zip(sources, ids, outputs, maps, strict=True):
            words = [self.target_vocab.itos[i] for i in out]
            results.append(Translation(
                translation=detokenize([w for w in words if w not in SPECIALS], self.target_language),
                source_tokens=tokens,
                target_tokens=words,
                attention=alpha.tolist() if alpha is not None else None,
                unknown_tokens=[t for t, i in zip(tokens, token_ids, strict=True) if i == UNK_ID],
            ))
        return results


def load(checkpoint: Checkpoint, device: torch.device) -> Translator:
    """A ``seq2seq`` checkpoint's model and vocabularies, translating in the direction it was trained for."""
    source_vocab, target_vocab = seq2seq.load_vocabularies(checkpoint)
    return Translator(seq2seq.load(checkpoint, device), source_vocab, target_vocab,
                      checkpoint.config["model"]["direction"], device)
