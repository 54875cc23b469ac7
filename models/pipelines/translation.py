"""Translation: a seq2seq model (recurrent or Transformer) with its two vocabularies, text in, text and
alignment out. A text is translated sentence by sentence.

``translate`` takes texts that share their decoding options; ``query`` and ``translate_queries`` take texts
each with its own (texts of many requests, batched), and group those that can decode together.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass, field

import torch

from models import seq2seq, transformer
from models.beam import BeamOptions
from models.checkpoint import Checkpoint
from models.pipelines.errors import InvalidInput
from models.seq2seq import DIRECTIONS, SPECIALS, UNK_ID, Seq2Seq, Units, default_units, encode, pad_batch
from models.tokenizers import WordVocab
from models.transformer import Transformer

# Beam search ranks by log p / ((5 + |y|) / 6) ** LENGTH_PENALTY (Wu et al., 2016; their choice was 0.6).
# measured 2026-11-29, beam 4 on the validation split of three quick Transformer recipes: at 0.6 their
# translations were 10-15% short (BP 0.85-0.90); at 2.0, BP 0.95-1.00 and the best or within 0.2 of the
# best BLEU of 0.6-3.0 in both directions (today's recipe zh-en: 12.07 BLEU / 29.11 chrF against 11.51 /
# 27.90 at 0.6 and 10.18 / 27.99 greedy); from 2.5 into English they ran long (README, "The Transformer").
LENGTH_PENALTY = 2.0
# The service's default: beam 4 scores above greedy decoding in BLEU and chrF in both directions with the
# default checkpoints (README, "Seq2seq translation with attention"), for 1.7-2.1x greedy's CPU per sentence;
# Hugging Face's translation configurations default to 4 beams too.
BEAM_SIZE = 4
# Most hypotheses one step of beam search carries, whatever the batch: a step's rows hold their logits over
# the vocabulary and their keys and values, so sentences beyond it are searched in further batches.
BEAM_ROWS = 256


def default_max_length(source_tokens: int) -> int:
    """Target tokens allowed by default: an English word becomes about two Chinese characters, and a model
    that never says ``<eos>`` still stops."""
    return 2 * source_tokens + 10


@dataclass(frozen=True)
class TranslationOptions:
    """How to decode: greedy (``beam_size`` 1) or beam search ranked with ``length_penalty``
    (``models.beam``); the most target tokens (``None``: ``default_max_length`` of the longest source) and
    the fewest before ``<eos>`` (an empty translation is never right)."""

    beam_size: int = 1
    max_length: int | None = None
    min_length: int = 1
    length_penalty: float = LENGTH_PENALTY
    attention_heads: bool = False  # also return every layer's and head's attention

    def __post_init__(self) -> None:
        if self.beam_size < 1:
            raise ValueError("beam_size must be at least 1")
        if self.min_length < 0:
            raise ValueError("min_length must be at least 0")


@dataclass
class SentenceTranslation:
    """One sentence of a text, translated on its own."""

    text: str
    translation: str
    source_tokens: list[str]
    target_tokens: list[str]
    attention: list[list[float]] | None  # len(target_tokens) x len(source_tokens)


@dataclass(frozen=True)
class TranslationQuery:
    """One text to translate with its decoding options: what ``Translator.translate_queries`` batches."""

    text: str
    options: TranslationOptions


@dataclass
class Translation:
    """One text's translation. A text of several sentences is translated sentence by sentence: the tokens
    are every sentence's in order, and ``attention`` lets a target token weigh only its own sentence's
    source tokens (the matrix is block-diagonal), so it stays one row per target token, one column per
    source token, each row a distribution."""

    translation: str  # the sentences' translations joined, special tokens (an output <unk>) left out
    source_tokens: list[str]
    target_tokens: list[str]  # as produced, <unk> included, <eos> not
    attention: list[list[float]] | None  # len(target_tokens) x len(source_tokens), rows sum to 1
    unknown_tokens: list[str]  # source tokens outside the vocabulary (read as <unk>)
    # [layer][head][target][source], with TranslationOptions.attention_heads; the Transformer's every
    # cross-attention head, a recurrent model's one alignment as one layer of one head
    attention_heads: list[list[list[list[float]]]] | None = None
    sentences: list[SentenceTranslation] = field(default_factory=list)


TranslationModel = Seq2Seq | Transformer

# A sentence ends at a run of 。！？!? (or their half- and full-width forms), or of full stops followed by a
# space or the end, with any closing quotes or brackets; "3.5" and "e.g.x" do not end one.
_SENTENCE_END = re.compile(r"(?:[。｡！？!?．]+|\.+(?=[\s”’\"')）」』]|$))[”’\"')）」』]*")


def split_sentences(text: str) -> list[str]:
    """``text``'s sentences, each with its closing punctuation, spaces around them dropped."""
    sentences, start = [], 0
    for end in _SENTENCE_END.finditer(text):
        sentences.append(text[start:end.end()].strip())
        start = end.end()
    sentences.append(text[start:].strip())
    return [s for s in sentences if s]


class Translator:
    """A trained model with its vocabularies: text in, text plus alignment out."""

    def __init__(self, model: TranslationModel, source_vocab: WordVocab, target_vocab: WordVocab, direction: str,
                 device: torch.device, source_units: Units | None = None, target_units: Units | None = None):
        if direction not in DIRECTIONS:
            raise ValueError(f"direction must be one of {DIRECTIONS}, got {direction!r}")
        self.model = model.eval()
        self.source_vocab = source_vocab
        self.target_vocab = target_vocab
        self.direction = direction
        self.source_language, self.target_language = direction.split("-")
        self.source_units = source_units or default_units(self.source_language)
        self.target_units = target_units or default_units(self.target_language)
        self.device = device

    @property
    def has_attention(self) -> bool:
        return isinstance(self.model, Transformer) or self.model.config.attention != "none"

    @property
    def attention_shape(self) -> tuple[int, int] | None:
        """(layers, heads) of the attention over the source; None for a model without attention."""
        if isinstance(self.model, Transformer):
            return self.model.cross_attention_heads
        return (1, 1) if self.has_attention else None

    def source_tokens(self, text: str) -> list[str]:
        """``text`` as the model reads it (characters, words or subwords)."""
        return self.source_units.tokens(text)

    def sentences(self, text: str) -> list[list[str]]:
        """The source tokens of each sentence of ``text``, as it is translated."""
        return [self.source_tokens(sentence) for sentence in split_sentences(text)]

    def query(self, text: str, options: TranslationOptions) -> TranslationQuery:
        """One text with its options, checked: ``InvalidInput`` for a text the model reads as nothing."""
        if not any(self.sentences(text)):
            raise InvalidInput("the text has no tokens")
        return TranslationQuery(text, options)

    def translate_queries(self, queries: Sequence[TranslationQuery]) -> list[Translation]:
        """Each query's translation, in order. Queries that decode alike (beam size, length penalty, minimum
        length) share one batch of all their sentences whatever their limits, each sentence cut at its text's
        own (its query's ``max_length``, else the default of the text's longest sentence, as ``translate``
        has it for one text), so texts of many requests decode together."""
        groups: dict[tuple[int, float, int], list[int]] = {}
        for i, query in enumerate(queries):
            options = query.options
            groups.setdefault((options.beam_size, options.length_penalty, options.min_length), []).append(i)
        translations: dict[int, Translation] = {}
        for members in groups.values():
            pieces = [self._pieces(queries[i].text) for i in members]
            limits = [limit for i, piece in zip(members, pieces, strict=True)
                      for limit in [queries[i].options.max_length
                                    or default_max_length(max(len(tokens) for _, tokens in piece))] * len(piece)]
            sources = [tokens for piece in pieces for _, tokens in piece]
            decoded = iter(self._decode(sources, queries[members[0]].options, limits))
            for i, piece in zip(members, pieces, strict=True):
                translations[i] = self._join([(sentence, next(decoded)) for sentence, _ in piece], queries[i].options)
        return [translations[i] for i in range(len(queries))]

    def translate(self, texts: Sequence[str], options: TranslationOptions = TranslationOptions()) -> list[Translation]:
        """Every sentence of every text decoded together, as one batch. ``options.max_length`` (else the default
        of the longest sentence) bounds each sentence's translation."""
        pieces = [self._pieces(text) for text in texts]
        if empty := [i for i, piece in enumerate(pieces) if not piece]:
            raise InvalidInput(f"text {empty[0]} has no tokens")
        sources = [tokens for piece in pieces for _, tokens in piece]
        limit = options.max_length or default_max_length(max(map(len, sources)))
        decoded = iter(self._decode(sources, options, [limit] * len(sources)))
        return [self._join([(sentence, next(decoded)) for sentence, _ in piece], options) for piece in pieces]

    def _pieces(self, text: str) -> list[tuple[str, list[str]]]:
        """``text``'s sentences with their source tokens, those the model reads as nothing left out."""
        return [(sentence, tokens) for sentence in split_sentences(text) if (tokens := self.source_tokens(sentence))]

    def _decode(self, sources: list[list[str]], options: TranslationOptions, limits: list[int]) -> list[_Decoded]:
        """Each sentence decoded as ``options`` say, to at most its own limit of target tokens."""
        ids = [encode(tokens, self.source_vocab) for tokens in sources]
        if isinstance(self.model, Transformer) and max(map(len, ids)) > self.model.config.max_position:
            raise InvalidInput(f"a sentence of {max(map(len, ids))} tokens is longer than the model's "
                               f"{self.model.config.max_position} positions")
        if options.beam_size == 1:
            # Greedy decoding of a token does not depend on how long the decoding may go on, so one batch
            # decodes to the largest limit and each sentence is cut at its own.
            outputs, maps = self.model.greedy(pad_batch(ids, self.device), max(limits), options.min_length)
            outputs = [out[:limit] for out, limit in zip(outputs, limits, strict=True)]
            maps = [alpha[:limit] if alpha is not None else None for alpha, limit in zip(maps, limits, strict=True)]
        else:
            per_batch = max(1, BEAM_ROWS // options.beam_size)
            outputs, maps = [], []
            for start in range(0, len(ids), per_batch):
                found, found_maps = self.model.beam_search(
                    pad_batch(ids[start:start + per_batch], self.device),
                    [BeamOptions(options.beam_size, limit, options.min_length, options.length_penalty)
                     for limit in limits[start:start + per_batch]])
                outputs += found
                maps += found_maps
        return [_Decoded(tokens, token_ids, [self.target_vocab.itos[i] for i in out], _heads(alpha))
                for tokens, token_ids, out, alpha in zip(sources, ids, outputs, maps, strict=True)]

    def _join(self, parts: list[tuple[str, _Decoded]], options: TranslationOptions) -> Translation:
        """One text's result from its sentences' (each a block of the attention matrix)."""
        sentences = [SentenceTranslation(
            text=sentence,
            translation=self.target_units.text([w for w in d.target_tokens if w not in SPECIALS]),
            source_tokens=d.source_tokens, target_tokens=d.target_tokens,
            attention=d.heads[:, -1].mean(dim=1).tolist() if d.heads is not None else None) for sentence, d in parts]
        decoded = [d for _, d in parts]
        heads = None
        if all(d.heads is not None for d in decoded):
            layers, n_heads = decoded[0].heads.shape[1:3]
            heads = torch.zeros(layers, n_heads, sum(len(d.target_tokens) for d in decoded),
                                sum(len(d.source_tokens) for d in decoded))
            target = source = 0
            for d in decoded:
                t, s = len(d.target_tokens), len(d.source_tokens)
                heads[:, :, target:target + t, source:source + s] = d.heads.permute(1, 2, 0, 3)
                target, source = target + t, source + s
        return Translation(
            translation=(" " if self.target_language == "en" else "").join(s.translation for s in sentences),
            source_tokens=[t for d in decoded for t in d.source_tokens],
            target_tokens=[t for d in decoded for t in d.target_tokens],
            attention=heads[-1].mean(dim=0).tolist() if heads is not None else None,
            unknown_tokens=[t for d in decoded for t, i in zip(d.source_tokens, d.source_ids, strict=True)
                            if i == UNK_ID],
            attention_heads=heads.tolist() if heads is not None and options.attention_heads else None,
            sentences=sentences,
        )


@dataclass
class _Decoded:
    """A sentence as decoded: its tokens, and its attention (target, layers, heads, source) or None."""

    source_tokens: list[str]
    source_ids: list[int]
    target_tokens: list[str]
    heads: torch.Tensor | None


def _heads(alpha: torch.Tensor | None) -> torch.Tensor | None:
    """Attention as (target, layers, heads, source): a recurrent model's (target, source) is one of each."""
    if alpha is None:
        return None
    return alpha[:, None, None, :] if alpha.dim() == 2 else alpha


def load(checkpoint: Checkpoint, device: torch.device) -> Translator:
    """A ``seq2seq`` checkpoint's model and vocabularies, translating in the direction it was trained for."""
    source_vocab, target_vocab = seq2seq.load_vocabularies(checkpoint)
    direction = checkpoint.config["model"]["direction"]
    source, target = direction.split("-")
    loader = transformer.load if checkpoint.config["model"].get("arch") == "transformer" else seq2seq.load
    return Translator(loader(checkpoint, device), source_vocab, target_vocab, direction, device,
                      seq2seq.load_units(checkpoint, source), seq2seq.load_units(checkpoint, target))
