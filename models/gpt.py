"""GPT: the decoder half of the Transformer, trained to predict the next token.

Following the design notes and nanoGPT: the input is a token embedding plus a position embedding
(learned, or the fixed sinusoids of "Attention Is All You Need"); each block is pre-LayerNorm masked
multi-head self-attention then a GELU feed-forward, both residual; the output layer multiplies by the
token embedding matrix. Generation keeps each layer's keys and values in a ``KVCache`` so a new token
costs one position's work instead of the whole context's. The attention itself is ``models.attention``'s,
which BERT and the Transformer translator share: a fused kernel, or, given an ``AttentionRecorder``, the
explicit softmax whose weights it records.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as F

from models.attention import AttentionRecorder, scaled_dot_product
from models.checkpoint import Checkpoint
from models.sampling import SamplingParams, make_generator, sample_next


@dataclass
class GPTConfig:
    vocab_size: int = 4096
    block_size: int = 512  # the context: the most positions the model attends over
    n_layer: int = 4
    n_head: int = 4
    n_embd: int = 256
    dropout: float = 0.0
    bias: bool = False  # biases in Linear and LayerNorm; GPT-2 had them, leaving them out is a bit faster
    position: str = "learned"  # "learned" (GPT) or "sinusoidal" (the original Transformer)

    def __post_init__(self) -> None:
        if self.n_embd % self.n_head:
            raise ValueError(f"n_embd ({self.n_embd}) must be a multiple of n_head ({self.n_head})")
        if self.position not in ("learned", "sinusoidal"):
            raise ValueError(f"position must be 'learned' or 'sinusoidal', got {self.position!r}")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


# GPT-2's four sizes (layers, heads, width); vocab_size and block_size come from the tokenizer and run.
PRESETS: dict[str, dict[str, int]] = {
    "gpt2": {"n_layer": 12, "n_head": 12, "n_embd": 768},
    "gpt2-medium": {"n_layer": 24, "n_head": 16, "n_embd": 1024},
    "gpt2-large": {"n_layer": 36, "n_head": 20, "n_embd": 1280},
    "gpt2-xl": {"n_layer": 48, "n_head": 25, "n_embd": 1600},
}


def sinusoidal_positions(length: int, dim: int) -> torch.Tensor:
    """PE(pos, 2i) = sin(pos / 10000^(2i/d)), PE(pos, 2i+1) = cos(pos / 10000^(2i/d))."""
    position = torch.arange(length, dtype=torch.float32)[:, None]
    inverse_frequency = torch.exp(torch.arange(0, dim, 2, dtype=torch.float32) * (-math.log(10000.0) / dim))
    table = torch.zeros(length, dim)
    table[:, 0::2] = torch.sin(position * inverse_frequency)
    table[:, 1::2] = torch.cos(position * inverse_frequency)
    return table


class LayerKV:
    """One layer's keys and values, preallocated for the whole context and filled as tokens arrive."""

    def __init__(self, batch: int, n_head: int, capacity: int, head_dim: int,
                 dtype: torch.dtype, device: torch.device):
        self.k = torch.zeros(batch, n_head, capacity, head_dim, dtype=dtype, device=device)
        self.v = torch.zeros_like(self.k)
        self.length = 0

    def append(self, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Store the new positions' keys and values; return those of every position so far."""
        end = self.length + k.size(2)
        if end > self.k.size(2):
            raise ValueError(f"KV cache holds {self.k.size(2)} positions; {end} asked for")
        self.k[:, :, self.length:end] = k
        self.v[:, :, self.length:end] = v
        self.length = end
        return self.k[:, :, :end], self.v[:, :, :end]

    def select(self, rows: torch.Tensor) -> None:
        self.k, self.v = self.k[rows], self.v[rows]

    def repeat(self, n: int) -> None:
        self.k, self.v = self.k.repeat(n, 1, 1, 1), self.v.repeat(n, 1, 1, 1)


class KVCache:
    """Every layer's keys and values for the positions seen so far (``length`` of them)."""

    def __init__(self, config: GPTConfig, batch: int, dtype: torch.dtype = torch.float32,
                 device: torch.device | str = "cpu"):
        head_dim = config.n_embd // config.n_head
        self.layers = [LayerKV(batch, config.n_head, config.block_size, head_dim, dtype, torch.device(device))
                       for _ in range(config.n_layer)]

    @property
    def length(self) -> int:
        return self.layers[0].length

    def select(self, rows: torch.Tensor) -> None:
        for layer in self.layers:
            layer.select(rows)

    def repeat(self, n: int) -> None:
        """Copy a one-row cache into ``n`` rows: one prompt read once, continued ``n`` ways."""
        for layer in self.layers:
            layer.repeat(n)


class CausalSelfAttention(nn.Module):
    def __init__(self, config: GPTConfig):
        super().__init__()
        self.n_head = config.n_head
        self.c_attn = nn.Linear(config.n_embd, 3 * config.n_embd, bias=config.bias)  # q, k, v in one matmul
        self.c_proj = nn.Linear(config.n_embd, config.n_embd, bias=config.bias)
        self.dropout = config.dropout
        self.resid_dropout = nn.Dropout(config.dropout)

    def attend(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, past: int, need_weights: bool = False
               ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """softmax(q k^T / sqrt(d)) v over the allowed keys; ``past`` cached positions precede the queries."""
        dropout = self.dropout if self.training else 0.0
        T = q.size(2)
        if past == 0:  # the usual case: each position sees itself and those before it
            return scaled_dot_product(q, k, v, causal=True, dropout=dropout, need_weights=need_weights)
        if T == 1:  # one new token after cached ones: it may see them all, no mask needed
            return scaled_dot_product(q, k, v, dropout=dropout, need_weights=need_weights)
        # several new tokens after cached ones: query i sees keys up to past + i
        mask = torch.ones(T, past + T, dtype=torch.bool, device=q.device).tril(diagonal=past)
        return scaled_dot_product(q, k, v, mask, dropout=dropout, need_weights=need_weights)

    def forward(self, x: torch.Tensor, kv: LayerKV | None = None,
                recorder: AttentionRecorder | None = None) -> torch.Tensor:
        B, T, C = x.size()
        q, k, v = self.c_attn(x).split(C, dim=2)
        q, k, v = (t.view(B, T, self.n_head, C // self.n_head).transpose(1, 2) for t in (q, k, v))
        past = 0
        if kv is not None:
            past = kv.length
            k, v = kv.append(k, v)
        recording = recorder is not None and recorder.wants(self)
        y, weights = self.attend(q, k, v, past, need_weights=recording)
        if recording:
            recorder.record(self, weights)
        y = y.transpose(1, 2).contiguous().view(B, T, C)
        return self.resid_dropout(self.c_proj(y))


class MLP(nn.Module):
    def __init__(self, config: GPTConfig):
        super().__init__()
        self.c_fc = nn.Linear(config.n_embd, 4 * config.n_embd, bias=config.bias)
        self.gelu = nn.GELU()
        self.c_proj = nn.Linear(4 * config.n_embd, config.n_embd, bias=config.bias)
        self.dropout = nn.Dropout(config.dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.dropout(self.c_proj(self.gelu(self.c_fc(x))))


class Block(nn.Module):
    """Pre-LayerNorm (GPT-2): normalise before each sub-layer, so the residual path stays an identity."""

    def __init__(self, config: GPTConfig):
        super().__init__()
        self.ln_1 = nn.LayerNorm(config.n_embd, bias=config.bias)
        self.attn = CausalSelfAttention(config)
        self.ln_2 = nn.LayerNorm(config.n_embd, bias=config.bias)
        self.mlp = MLP(config)

    def forward(self, x: torch.Tensor, kv: LayerKV | None = None,
                recorder: AttentionRecorder | None = None) -> torch.Tensor:
        x = x + self.attn(self.ln_1(x), kv, recorder)
        return x + self.mlp(self.ln_2(x))


class GPT(nn.Module):
    def __init__(self, config: GPTConfig):
        super().__init__()
        self.config = config
        self.wte = nn.Embedding(config.vocab_size, config.n_embd)
        if config.position == "learned":
            self.wpe = nn.Embedding(config.block_size, config.n_embd)
        else:  # fixed, so rebuilt from the config rather than stored in checkpoints
            self.register_buffer("wpe_table", sinusoidal_positions(config.block_size, config.n_embd),
                                 persistent=False)
        self.drop = nn.Dropout(config.dropout)
        self.blocks = nn.ModuleList(Block(config) for _ in range(config.n_layer))
        self.ln_f = nn.LayerNorm(config.n_embd, bias=config.bias)
        self.lm_head = nn.Linear(config.n_embd, config.vocab_size, bias=False)
        # Weight tying: the output layer scores tokens against the same vectors that embed them.
        self.lm_head.weight = self.wte.weight
        self.apply(self._init_weights)
        # GPT-2: scale the projections into the residual stream by 1/sqrt(2 * n_layer), one per sub-layer.
        for name, p in self.named_parameters():
            if name.endswith("c_proj.weight"):
                nn.init.normal_(p, mean=0.0, std=0.02 / math.sqrt(2 * config.n_layer))

    @staticmethod
    def _init_weights(module: nn.Module) -> None:
        if isinstance(module, nn.Linear):
            nn.init.normal_(module.weight, mean=0.0, std=0.02)
            if module.bias is not None:
                nn.init.zeros_(module.bias)
        elif isinstance(module, nn.Embedding):
            nn.init.normal_(module.weight, mean=0.0, std=0.02)

    def num_parameters(self, non_embedding: bool = True) -> int:
        """Parameter count; the position table is left out by default, as in GPT-2's reporting."""
        n = sum(p.numel() for p in self.parameters())
        if non_embedding and self.config.position == "learned":
            n -= self.wpe.weight.numel()
        return n

    def position_embedding(self, start: int, length: int, device: torch.device) -> torch.Tensor:
        if self.config.position == "learned":
            return self.wpe(torch.arange(start, start + length, device=device))
        return self.wpe_table[start:start + length]

    def forward(self, idx: torch.Tensor, targets: torch.Tensor | None = None, kv_cache: KVCache | None = None,
                recorder: AttentionRecorder | None = None) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Logits for every position and the mean cross-entropy when ``targets`` are given.

        Without targets only the last position's logits are computed (all generation needs). With
        ``kv_cache`` the tokens continue the cached ones, whose keys and values are reused. With
        ``recorder`` every block's attention weights are recorded (``models.attention``), keyed by its
        ``attn`` module.
        """
        x = self.hidden_states(idx, kv_cache, recorder)
        if targets is None:
            return self.lm_head(x[:, -1:, :]), None
        logits = self.lm_head(x)
        loss = F.cross_entropy(logits.float().view(-1, logits.size(-1)), targets.reshape(-1), ignore_index=-1)
        return logits, loss

    def hidden_states(self, idx: torch.Tensor, kv_cache: KVCache | None = None,
                      recorder: AttentionRecorder | None = None) -> torch.Tensor:
        """The last block's output, normalised (B, T, n_embd): what the LM head reads at each position."""
        B, T = idx.size()
        start = kv_cache.length if kv_cache is not None else 0
        if start + T > self.config.block_size:
            raise ValueError(f"{start + T} positions exceed the context of {self.config.block_size}")
        x = self.drop(self.wte(idx) + self.position_embedding(start, T, idx.device))
        for i, block in enumerate(self.blocks):
            x = block(x, kv_cache.layers[i] if kv_cache is not None else None, recorder)
        return self.ln_f(x)

    def weights(self) -> dict[str, torch.Tensor]:
        """The state dict without ``lm_head.weight``, which is the token embedding (saved once)."""
        return {k: v for k, v in self.state_dict().items() if k != "lm_head.weight"}

    def load_weights(self, weights: dict[str, torch.Tensor]) -> None:
        self.load_state_dict({**weights, "lm_head.weight": weights["wte.weight"]})

    # ---- inference ------------------------------------------------------------------------------

    def start(self, prompt: list[int], rows: int = 1) -> tuple[GPTSession, torch.Tensor]:
        """Read ``prompt`` once and return a session continuing it in ``rows`` samples, with first logits."""
        session = GPTSession(self, torch.tensor([prompt], dtype=torch.long, device=self._device()))
        logits = session.logits
        if rows > 1:
            session.repeat(rows)
            logits = logits.expand(rows, -1)
        return session, logits

    @torch.no_grad()
    def next_token_logits(self, tokens: list[int]) -> torch.Tensor:
        """Row t holds the logits for the token that follows ``tokens[:t + 1]`` (len(tokens), vocab).

        Past the context, each token is read with the very context decoding gives it (``GPTSession``):
        when the context is full, the next window begins with the ``context_kept`` latest tokens, the
        last of them new, and each window scores the positions it adds.
        """
        idx = torch.tensor([tokens], dtype=torch.long, device=self._device())
        size = self.config.block_size
        kept = context_kept(size)
        rows = [self.lm_head(self.hidden_states(idx[:, :size]))[0]]
        start = size - kept + 1
        while start + kept - 1 < idx.size(1):
            rows.append(self.lm_head(self.hidden_states(idx[:, start:start + size])[:, kept - 1:])[0])
            start += size - kept + 1
        return torch.cat(rows)

    @torch.no_grad()
    def generate(self, idx: torch.Tensor, max_new_tokens: int, params: SamplingParams | None = None,
                 generator: torch.Generator | None = None, use_cache: bool = True) -> torch.Tensor:
        """Extend each row of ``idx`` (B, T) by ``max_new_tokens`` sampled tokens.

        ``use_cache=False`` is nanoGPT's loop: rerun the whole context (its last ``block_size``
        tokens) for every new token. It is kept as the reference the KV cache is measured against.
        """
        params = params or SamplingParams()
        generator = generator or make_generator(params.seed)
        if not use_cache:
            for _ in range(max_new_tokens):
                logits, _ = self(idx[:, -self.config.block_size:])
                token = sample_next(logits[:, -1], params, generator).to(idx.device)
                idx = torch.cat([idx, token[:, None]], dim=1)
            return idx
        session = GPTSession(self, idx)
        logits = session.logits
        for step in range(max_new_tokens):
            token = sample_next(logits, params, generator).to(idx.device)
            idx = torch.cat([idx, token[:, None]], dim=1)
            if step + 1 < max_new_tokens:
                logits = session.step(token)
        return idx

    def _device(self) -> torch.device:
        return self.wte.weight.device


def context_kept(block_size: int) -> int:
    """How many of the latest positions a full context keeps when it makes room: three quarters of it, so
    a refill (which reads them again) comes every quarter of the context rather than every token."""
    return block_size - max(1, block_size // 4)


class GPTSession:
    """Incremental decoding with a KV cache: each new token runs through the model alone.

    When the context is full, the oldest quarter is dropped and the rest read again into a fresh
    cache (absolute positions cannot simply shift); between refills every step is one position.
    """

    def __init__(self, model: GPT, tokens: torch.Tensor):
        self.model = model
        self.block_size = model.config.block_size
        self.refill(tokens[:, -self.block_size:])

    @torch.no_grad()
    def refill(self, tokens: torch.Tensor) -> None:
        self.tokens = tokens  # (rows, cached positions): what the cache holds, kept to refill from
        self.cache = KVCache(self.model.config, tokens.size(0), dtype=self.model.wte.weight.dtype,
                             device=tokens.device)
        logits, _ = self.model(tokens, kv_cache=self.cache)
        self.logits = logits[:, -1]

    @torch.no_grad()
    def step(self, tokens: torch.Tensor) -> torch.Tensor:
        tokens = tokens.to(self.tokens.device)[:, None]
        if self.cache.length == self.block_size:
            self.refill(torch.cat([self.tokens, tokens], dim=1)[:, -context_kept(self.block_size):])
            return self.logits
        self.tokens = torch.cat([self.tokens, tokens], dim=1)
        logits, _ = self.model(tokens, kv_cache=self.cache)
        self.logits = logits[:, -1]
        return self.logits

    def keep(self, rows: torch.Tensor) -> None:
        rows = rows.to(self.tokens.device)
        self.tokens = self.tokens[rows]
        self.cache.select(rows)

    def repeat(self, n: int) -> None:
        self.tokens = self.tokens.repeat(n, 1)
        self.cache.repeat(n)


def load(checkpoint: Checkpoint, device: torch.device) -> GPT:
    """The model of a ``gpt`` checkpoint, its weights loaded, ready for inference on ``device``."""
    model = GPT(GPTConfig(**checkpoint.config["model"]))
    model.load_weights(checkpoint.state_dict)
    return model.to(device).eval()
