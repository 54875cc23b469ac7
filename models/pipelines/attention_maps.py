"""Attention maps: what every layer and head of a Transformer looks at, for one input.

BERT and GPT answer with their self-attention over the tokens they read; the Transformer translator
translates the text (as ``/v1/translate`` decodes by default) and answers with its three kinds of attention
over that pair: the encoder's self-attention over the source, the decoder's causal self-attention over what
it read at each step (``<bos>`` and the target tokens before the last) and the decoder's attention over the
source, one row per target token as ``/v1/translate``'s ``attention_heads`` has it.

The weights come from the model's own forward pass with an ``AttentionRecorder`` (``models.attention``):
the recorded layers compute the softmax explicitly; nothing else changes. Each map is (layers, heads,
queries, keys), every row a distribution, restricted to the layers and heads asked for.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from tokenizers import Tokenizer
from torch import nn

from models.attention import AttentionRecorder
from models.beam import BeamOptions
from models.bert import BertForPreTraining
from models.gpt import GPT
from models.pipelines.errors import InvalidInput
from models.pipelines.translation import BEAM_SIZE, LENGTH_PENALTY, Translator, default_max_length
from models.seq2seq import BOS, BOS_ID, SPECIALS, encode
from models.tokenizers import TextTokenizer
from models.transformer import Transformer


@dataclass(frozen=True)
class Selection:
    """The layers and heads to return, by index, in the order given; None means all of them."""

    layers: tuple[int, ...] | None = None
    heads: tuple[int, ...] | None = None

    def resolve(self, n_layers: int, n_heads: int) -> tuple[list[int], list[int]]:
        """The chosen indices, checked against the model's ``n_layers`` and ``n_heads``."""
        layers = list(range(n_layers)) if self.layers is None else list(self.layers)
        heads = list(range(n_heads)) if self.heads is None else list(self.heads)
        for what, chosen, count in (("layer", layers, n_layers), ("head", heads, n_heads)):
            if bad := [i for i in chosen if not 0 <= i < count]:
                raise InvalidInput(f"{what} {bad[0]} does not exist: this model has {count} "
                                   f"{what}{'s' * (count != 1)} (0 to {count - 1})")
        return layers, heads


@dataclass
class AttentionMap:
    """One kind of attention: ``weights`` (layers, heads, queries, keys) of the queries over the keys."""

    kind: str  # "self" (BERT, GPT), or the translator's "encoder", "decoder" and "cross"
    queries: list[str]
    keys: list[str]
    weights: torch.Tensor


@dataclass
class Attention:
    """One input's attention: ``maps`` by kind, over the tokens the model read."""

    tokens: list[str]  # what the model read: BERT's [CLS] A [SEP] B [SEP], GPT's tokens, the translator's source
    layers: list[int]
    heads: list[int]
    maps: dict[str, AttentionMap]
    segment_ids: list[int] | None = None  # BERT: 0 for the first segment, 1 for text_b's
    translation: str | None = None  # the translator's output, as /v1/translate writes it
    target_tokens: list[str] | None = None


def _selected(recorder: AttentionRecorder, modules: list[nn.Module], layers: list[int], heads: list[int]
              ) -> torch.Tensor:
    """(layers, heads, queries, keys) of the first (only) input, for the chosen layers and heads."""
    return torch.stack([recorder.of(modules[i])[0, heads] for i in layers]).float().cpu()


class AttentionMaps:
    """A Transformer with its tokenizer: text in, each chosen layer's and head's attention out."""

    kinds: tuple[str, ...] = ("self",)  # the maps ``attention`` returns, in order

    @property
    def shape(self) -> tuple[int, int]:
        """(layers, heads) of each kind of attention."""
        raise NotImplementedError

    @property
    def max_tokens(self) -> int:
        """The most tokens the model reads (its positions)."""
        raise NotImplementedError

    def count_tokens(self, text: str, text_b: str | None = None) -> int:
        """How many tokens ``text`` (and ``text_b``) make, as the model reads them."""
        raise NotImplementedError

    def map_sizes(self, tokens: int) -> list[tuple[int, int]]:
        """For an input of ``tokens`` tokens, the most (queries, keys) one head of each kind has."""
        return [(tokens, tokens)]

    def attention(self, text: str, text_b: str | None = None, selection: Selection = Selection()) -> Attention:
        raise NotImplementedError

    def check_length(self, tokens: int) -> None:
        if tokens > self.max_tokens:
            raise InvalidInput(f"the input is {tokens} tokens long; this model reads at most {self.max_tokens} "
                               "tokens (its positions)")


class BertAttention(AttentionMaps):
    """BERT's bidirectional self-attention over ``[CLS] A [SEP]`` or ``[CLS] A [SEP] B [SEP]``."""

    def __init__(self, model: BertForPreTraining, tokenizer: Tokenizer, device: torch.device):
        self.model = model.to(device).eval()
        self.tokenizer = tokenizer
        self.device = device

    @property
    def shape(self) -> tuple[int, int]:
        return self.model.config.n_layers, self.model.config.n_heads

    @property
    def max_tokens(self) -> int:
        return self.model.config.max_position

    def count_tokens(self, text: str, text_b: str | None = None) -> int:
        return len(self.tokenizer.encode(text, text_b).ids)

    @torch.inference_mode()
    def attention(self, text: str, text_b: str | None = None, selection: Selection = Selection()) -> Attention:
        layers, heads = selection.resolve(*self.shape)
        encoding = self.tokenizer.encode(text, text_b)
        self.check_length(len(encoding.ids))
        modules = [layer.attention for layer in self.model.bert.layers]
        recorder = AttentionRecorder([modules[i] for i in layers])
        self.model.bert(torch.tensor([encoding.ids], device=self.device),
                        torch.tensor([encoding.type_ids], device=self.device), recorder=recorder)
        tokens = list(encoding.tokens)
        return Attention(tokens, layers, heads, {"self": AttentionMap("self", tokens, tokens,
                                                                      _selected(recorder, modules, layers, heads))},
                         segment_ids=list(encoding.type_ids))


class GPTAttention(AttentionMaps):
    """GPT's causal self-attention: a token sees itself and the tokens before it."""

    def __init__(self, model: GPT, tokenizer: TextTokenizer):
        self.model = model
        self.tokenizer = tokenizer

    @property
    def shape(self) -> tuple[int, int]:
        return self.model.config.n_layer, self.model.config.n_head

    @property
    def max_tokens(self) -> int:
        return self.model.config.block_size

    def count_tokens(self, text: str, text_b: str | None = None) -> int:
        return len(self.tokenizer.encode(text))

    @torch.inference_mode()
    def attention(self, text: str, text_b: str | None = None, selection: Selection = Selection()) -> Attention:
        if text_b is not None:
            raise InvalidInput("text_b is BERT's second segment; a GPT reads one text")
        layers, heads = selection.resolve(*self.shape)
        ids = self.tokenizer.encode(text)
        if not ids:
            raise InvalidInput("the text encodes to no tokens")
        self.check_length(len(ids))
        modules = [block.attn for block in self.model.blocks]
        recorder = AttentionRecorder([modules[i] for i in layers])
        self.model.hidden_states(torch.tensor([ids], device=self.model.wte.weight.device), recorder=recorder)
        tokens = [self.tokenizer.decode([i]) for i in ids]
        return Attention(tokens, layers, heads, {"self": AttentionMap("self", tokens, tokens,
                                                                      _selected(recorder, modules, layers, heads))})


class TranslatorAttention(AttentionMaps):
    """The Transformer translator's encoder, decoder and cross-attention over a text and its translation.

    The text is read as one sentence (``/v1/translate`` cuts a text into sentences first) and translated by
    beam search with the service's default beam and length penalty; then one forward pass over the source
    and the translation, taught the tokens it produced, records every layer: its rows are those decoding
    computed, step by step.
    """

    kinds = ("encoder", "decoder", "cross")

    def __init__(self, translator: Translator):
        if not isinstance(translator.model, Transformer):
            raise ValueError("only the Transformer translator has self-attention")
        self.translator = translator
        self.model: Transformer = translator.model

    @property
    def shape(self) -> tuple[int, int]:
        return self.model.config.n_layers, self.model.config.n_heads

    @property
    def max_tokens(self) -> int:
        return self.model.config.max_position

    def count_tokens(self, text: str, text_b: str | None = None) -> int:
        return len(self.translator.source_tokens(text))

    def target_length(self, source_tokens: int) -> int:
        """The most target tokens decoding may produce for a source of ``source_tokens`` tokens."""
        return min(default_max_length(source_tokens), self.max_tokens - 1)

    def map_sizes(self, tokens: int) -> list[tuple[int, int]]:
        target = self.target_length(tokens)
        return [(tokens, tokens), (target, target), (target, tokens)]

    @torch.inference_mode()
    def attention(self, text: str, text_b: str | None = None, selection: Selection = Selection()) -> Attention:
        if text_b is not None:
            raise InvalidInput("text_b is BERT's second segment; a translator reads one text")
        layers, heads = selection.resolve(*self.shape)
        source_tokens = self.translator.source_tokens(text)
        if not source_tokens:
            raise InvalidInput("the text has no tokens")
        self.check_length(len(source_tokens))
        device = self.translator.device
        source = torch.tensor([encode(source_tokens, self.translator.source_vocab)], device=device)
        [target_ids], _ = self.model.beam_search(
            source, [BeamOptions(BEAM_SIZE, self.target_length(len(source_tokens)), 1, LENGTH_PENALTY)])
        decoder_input = torch.tensor([[BOS_ID, *target_ids[:-1]]], device=device)
        recorder = AttentionRecorder()
        encoded, mask = self.model.encode(source, recorder)
        self.model.decode(decoder_input, self.model.memory(encoded), mask, recorder=recorder)
        target_tokens = [self.translator.target_vocab.itos[i] for i in target_ids]
        read = [BOS, *target_tokens[:-1]]
        modules = {"encoder": [layer.self_attention for layer in self.model.encoder],
                   "decoder": [layer.self_attention for layer in self.model.decoder],
                   "cross": [layer.cross_attention for layer in self.model.decoder]}
        axes = {"encoder": (source_tokens, source_tokens), "decoder": (target_tokens, read),
                "cross": (target_tokens, source_tokens)}
        maps = {kind: AttentionMap(kind, *axes[kind], _selected(recorder, modules[kind], layers, heads))
                for kind in self.kinds}
        translation = self.translator.target_units.text([w for w in target_tokens if w not in SPECIALS])
        return Attention(source_tokens, layers, heads, maps, translation=translation, target_tokens=target_tokens)
