"""The Transformer encoder–decoder (Vaswani et al., 2017, "Attention Is All You Need") as a translator.

Read top to bottom like the paper: the config; the input embeddings (a token's vector times √d_model
plus the sinusoidal position signal, §3.4-3.5); the position-wise feed-forward network (§3.3); an
encoder layer (multi-head self-attention, then the feed-forward network); a decoder layer (masked
self-attention, attention over the encoder's output, the feed-forward network); the model, whose
decoder's output layer is its input embedding matrix; and the incremental decoder that greedy decoding
and beam search (``models.beam``) drive, one token per step with each layer's keys and values kept.

Multi-head attention itself is ``models.attention``, shared with BERT and GPT. One departure from the
paper: each sub-layer normalises its input rather than its output (pre-LayerNorm, as in GPT-2), with one
more LayerNorm after each stack. Its gradients are well scaled from the first step, so it needs no long
warm-up (Xiong et al., 2020), and it translates better from little data (Nguyen & Salazar, 2019).

The model reads and writes token ids: vocabularies and tokenizers are the translation pipeline's.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from models.attention import AttentionRecorder, CrossAttention, SelfAttention
from models.beam import BeamOptions, beam_search, greedy_search
from models.checkpoint import Checkpoint
from models.gpt import sinusoidal_positions
from models.seq2seq import BOS_ID, EOS_ID, PAD_ID


@dataclass
class TransformerConfig:
    source_vocab_size: int
    target_vocab_size: int
    dim: int = 256  # d_model
    n_layers: int = 3  # in the encoder, and again in the decoder (the paper: 6)
    n_heads: int = 4
    ffn_dim: int = 1024  # d_ff
    dropout: float = 0.1
    max_position: int = 512  # longest source or target the position signal covers
    tie_embeddings: bool = True  # the output layer is the target embedding matrix (§3.4)

    def __post_init__(self) -> None:
        if self.dim % self.n_heads:
            raise ValueError(f"dim {self.dim} is not divisible by n_heads {self.n_heads}")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


class Embedding(nn.Module):
    """A token's learned vector scaled by √d_model, plus the fixed sinusoid of its position, then dropout."""

    def __init__(self, vocab_size: int, config: TransformerConfig):
        super().__init__()
        self.token = nn.Embedding(vocab_size, config.dim, padding_idx=PAD_ID)
        self.scale = math.sqrt(config.dim)
        self.max_position = config.max_position
        self.register_buffer("positions", sinusoidal_positions(config.max_position, config.dim), persistent=False)
        self.dropout = nn.Dropout(config.dropout)

    def forward(self, ids: torch.Tensor, start: int = 0) -> torch.Tensor:
        """ids (B, T) at positions start..start+T-1 -> (B, T, dim)."""
        end = start + ids.size(1)
        if end > self.max_position:
            raise ValueError(f"{end} positions exceed the model's {self.max_position}")
        return self.dropout(self.token(ids) * self.scale + self.positions[start:end])


class FeedForward(nn.Module):
    """FFN(x) = max(0, x W₁ + b₁) W₂ + b₂, applied at every position alike."""

    def __init__(self, config: TransformerConfig):
        super().__init__()
        self.fc1 = nn.Linear(config.dim, config.ffn_dim)
        self.fc2 = nn.Linear(config.ffn_dim, config.dim)
        self.dropout = nn.Dropout(config.dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.dropout(self.fc2(self.dropout(F.relu(self.fc1(x)))))


class EncoderLayer(nn.Module):
    """x = x + SelfAttn(LN(x)); x = x + FFN(LN(x)). Every source position attends to every real one."""

    def __init__(self, config: TransformerConfig):
        super().__init__()
        self.self_attention_norm = nn.LayerNorm(config.dim)
        self.self_attention = SelfAttention(config.dim, config.n_heads, config.dropout)
        self.ffn_norm = nn.LayerNorm(config.dim)
        self.ffn = FeedForward(config)

    def forward(self, x: torch.Tensor, source_mask: torch.Tensor, recorder: AttentionRecorder | None = None
                ) -> torch.Tensor:
        x = x + self.self_attention(self.self_attention_norm(x), source_mask, recorder=recorder)
        return x + self.ffn(self.ffn_norm(x))


class DecoderLayer(nn.Module):
    """x = x + MaskedSelfAttn(LN(x)); x = x + CrossAttn(LN(x), memory); x = x + FFN(LN(x)).

    The self-attention is causal, so a target position sees only those before it, as when it is generated.
    """

    def __init__(self, config: TransformerConfig):
        super().__init__()
        self.self_attention_norm = nn.LayerNorm(config.dim)
        self.self_attention = SelfAttention(config.dim, config.n_heads, config.dropout)
        self.cross_attention_norm = nn.LayerNorm(config.dim)
        self.cross_attention = CrossAttention(config.dim, config.n_heads, config.dropout)
        self.ffn_norm = nn.LayerNorm(config.dim)
        self.ffn = FeedForward(config)

    def forward(self, x: torch.Tensor, memory: tuple[torch.Tensor, torch.Tensor], source_mask: torch.Tensor,
                cache: LayerCache | None = None, recorder: AttentionRecorder | None = None) -> torch.Tensor:
        """``memory`` is this layer's keys and values of the encoder's output (``CrossAttention``)."""
        x = x + self.self_attention(self.self_attention_norm(x), causal=True, cache=cache, recorder=recorder)
        x = x + self.cross_attention(self.cross_attention_norm(x), memory, source_mask, recorder)
        return x + self.ffn(self.ffn_norm(x))


class LayerCache:
    """A decoder layer's self-attention keys and values of the target positions decoded so far; every row
    (sentence or hypothesis) is at the same step, so each step's keys are appended to all rows at once."""

    def __init__(self) -> None:
        self.k: torch.Tensor | None = None
        self.v: torch.Tensor | None = None

    def append(self, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        self.k = k if self.k is None else torch.cat([self.k, k], dim=2)
        self.v = v if self.v is None else torch.cat([self.v, v], dim=2)
        return self.k, self.v

    def select(self, rows: torch.Tensor) -> None:
        if self.k is not None and self.v is not None:
            self.k, self.v = self.k[rows], self.v[rows]


class Transformer(nn.Module):
    def __init__(self, config: TransformerConfig):
        super().__init__()
        self.config = config
        self.source_embedding = Embedding(config.source_vocab_size, config)
        self.target_embedding = Embedding(config.target_vocab_size, config)
        self.encoder = nn.ModuleList(EncoderLayer(config) for _ in range(config.n_layers))
        self.encoder_norm = nn.LayerNorm(config.dim)
        self.decoder = nn.ModuleList(DecoderLayer(config) for _ in range(config.n_layers))
        self.decoder_norm = nn.LayerNorm(config.dim)
        self.out = nn.Linear(config.dim, config.target_vocab_size, bias=False)
        self.apply(self._init_weights)
        if config.tie_embeddings:
            # §3.4: the pre-softmax projection scores a token against the vector that embeds it (fewer
            # parameters, and rare words learn from being both read and written).
            self.out.weight = self.target_embedding.token.weight

    @staticmethod
    @torch.no_grad()
    def _init_weights(module: nn.Module) -> None:
        """Glorot-uniform linear layers (the reference implementation's), embeddings N(0, 1/d_model): scaled
        by √d_model on input, a token's vector then has about unit size, like the position signal."""
        if isinstance(module, nn.Linear):
            nn.init.xavier_uniform_(module.weight)
            if module.bias is not None:
                nn.init.zeros_(module.bias)
        elif isinstance(module, nn.Embedding):
            nn.init.normal_(module.weight, std=module.embedding_dim ** -0.5)
            nn.init.zeros_(module.weight[module.padding_idx])

    @property
    def cross_attention_heads(self) -> tuple[int, int]:
        """(layers, heads) of the attention over the source that decoding returns per target token."""
        return self.config.n_layers, self.config.n_heads

    def encode(self, source: torch.Tensor, recorder: AttentionRecorder | None = None
               ) -> tuple[torch.Tensor, torch.Tensor]:
        """source (B, S) -> the encoder's output (B, S, dim) and the mask (B, 1, 1, S), True on real tokens."""
        mask = (source != PAD_ID)[:, None, None, :]
        x = self.source_embedding(source)
        for layer in self.encoder:
            x = layer(x, mask, recorder)
        return self.encoder_norm(x), mask

    def memory(self, encoded: torch.Tensor) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """Each decoder layer's keys and values of the encoder's output, computed once per source."""
        return [layer.cross_attention.memory_keys_values(encoded) for layer in self.decoder]

    def decode(self, target: torch.Tensor, memory: list[tuple[torch.Tensor, torch.Tensor]], source_mask: torch.Tensor,
               start: int = 0, caches: list[LayerCache] | None = None, recorder: AttentionRecorder | None = None
               ) -> torch.Tensor:
        """target (B, T) at positions start.. -> logits (B, T, target vocabulary)."""
        x = self.target_embedding(target, start)
        for i, layer in enumerate(self.decoder):
            x = layer(x, memory[i], source_mask, caches[i] if caches is not None else None, recorder)
        return self.out(self.decoder_norm(x))

    def forward(self, source: torch.Tensor, target: torch.Tensor, label_smoothing: float = 0.0,
                recorder: AttentionRecorder | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """source (B, S), target (B, T) = ``<bos> y_1 .. y_n <eos> <pad>..`` -> logits (B, T-1, V), loss.

        Every target position is predicted at once from the reference tokens before it (the causal mask
        stands in for the step-by-step loop). The loss is the cross-entropy with ``label_smoothing`` of the
        probability spread over the vocabulary (§5.4: ε = 0.1).
        """
        encoded, mask = self.encode(source, recorder)
        logits = self.decode(target[:, :-1], self.memory(encoded), mask, recorder=recorder)
        loss = F.cross_entropy(logits.flatten(0, 1).float(), target[:, 1:].flatten(), ignore_index=PAD_ID,
                               label_smoothing=label_smoothing)
        return logits, loss

    # ---- inference ------------------------------------------------------------------------------------

    def start(self, source: torch.Tensor) -> TransformerSession:
        return TransformerSession(self, source)

    @torch.no_grad()
    def greedy(self, source: torch.Tensor, max_length: int, min_length: int = 0
               ) -> tuple[list[list[int]], list[torch.Tensor]]:
        """Batched greedy decoding: per sentence, the token ids (no ``<eos>``, at least ``min_length`` of them
        unless ``max_length`` cuts first) and its attention over the source, (T, layers, heads, S)."""
        ids, maps = greedy_search(self.start(source).step, source.size(0), BOS_ID, EOS_ID, max_length, min_length,
                                  source.device)
        lengths = (source != PAD_ID).sum(1).tolist()
        return ids, [maps[i, :len(row), ..., :lengths[i]] for i, row in enumerate(ids)]

    @torch.no_grad()
    def beam_search(self, source: torch.Tensor, options: Sequence[BeamOptions]
                    ) -> tuple[list[list[int]], list[torch.Tensor]]:
        """Batched beam search (``models.beam``), sentence i of source (B, S) as ``options[i]`` says: per
        sentence, the best hypothesis's token ids and its attention over the source, (T, layers, heads, S)."""
        session = self.start(source)
        attention: list[torch.Tensor] = []

        def step(parents: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
            session.select(parents)
            logits, cross = session.step(tokens)
            attention.append(cross)
            return torch.log_softmax(logits.float(), -1)

        best = beam_search(step, BOS_ID, EOS_ID, options, source.device)
        lengths = (source != PAD_ID).sum(1).tolist()
        return [h.tokens for h in best], [h.along(attention, length).float().cpu()
                                          for h, length in zip(best, lengths, strict=True)]


class TransformerSession:
    """Incremental decoding: the source encoded once, then one target token per row and step, each decoder
    layer's earlier keys and values kept (``LayerCache``). A step returns the next-token logits and every
    layer's and head's attention over the source, (rows, layers, heads, S)."""

    def __init__(self, model: Transformer, source: torch.Tensor):
        self.model = model
        encoded, self.source_mask = model.encode(source)
        self.memory = model.memory(encoded)
        self.caches = [LayerCache() for _ in model.decoder]
        self.position = 0
        self.cross_attention = [layer.cross_attention for layer in model.decoder]

    @torch.no_grad()
    def step(self, tokens: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        recorder = AttentionRecorder(self.cross_attention)  # the self-attention stays on the fused path
        logits = self.model.decode(tokens[:, None], self.memory, self.source_mask, self.position, self.caches,
                                   recorder)
        self.position += 1
        cross = torch.stack([recorder.of(layer)[:, :, 0] for layer in self.cross_attention], dim=1)
        return logits[:, 0], cross

    def select(self, rows: torch.Tensor) -> None:
        self.memory = [(k[rows], v[rows]) for k, v in self.memory]
        self.source_mask = self.source_mask[rows]
        for cache in self.caches:
            cache.select(rows)


# ---- loading ----------------------------------------------------------------------------------------


def load(checkpoint: Checkpoint, device: torch.device) -> Transformer:
    """The model of a ``seq2seq`` checkpoint trained with ``--arch transformer``, ready for inference."""
    model_config = {k: v for k, v in checkpoint.config["model"].items() if k not in ("arch", "direction")}
    model = Transformer(TransformerConfig(**model_config))
    model.load_state_dict(weights_with_tied(model, checkpoint.state_dict))
    return model.to(device).eval()


def weights(model: Transformer) -> dict[str, torch.Tensor]:
    """The state dict to save: a tied output layer is the target embedding, saved once."""
    state = model.state_dict()
    if model.config.tie_embeddings:
        state.pop("out.weight")
    return state


def weights_with_tied(model: Transformer, state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    if model.config.tie_embeddings:
        return {**state, "out.weight": state["target_embedding.token.weight"]}
    return state
