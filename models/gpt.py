"""GPT: the decoder half of the Transformer, trained to predict the next token.

Following the design notes and nanoGPT: the input is a token embedding plus a position embedding
(learned, or the fixed sinusoids of "Attention Is All You Need"); each block is pre-LayerNorm masked
multi-head self-attention then a GELU feed-forward, both residual; the output layer multiplies by the
token embedding matrix. Generation keeps each layer's keys and values in a ``KVCache`` so a new token
costs one position's work instead of the whole context's.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as F

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


# Positions a cache grows by when a row needs more: growing copies it, so never one position at a time.
CACHE_CHUNK = 64

# Where the new tokens of a forward pass go: after the same number of cached positions in every row (a
# number), or each row after its own (a tensor of one length per row, one new token each).
Past = int | torch.Tensor


class LayerKV:
    """One layer's keys and values, (rows, heads, positions, head_dim), filled as tokens arrive.

    Every row has the same room; a row shorter than the longest holds zeros past its end, which attention
    masks out (zeros rather than garbage, since a masked weight of 0 times NaN would still be NaN).
    """

    def __init__(self, k: torch.Tensor, v: torch.Tensor):
        self.k, self.v = k, v

    @classmethod
    def empty(cls, rows: int, n_head: int, head_dim: int, dtype: torch.dtype, device: torch.device) -> LayerKV:
        k = torch.zeros(rows, n_head, 0, head_dim, dtype=dtype, device=device)
        return cls(k, torch.zeros_like(k))

    @property
    def room(self) -> int:
        return self.k.size(2)

    def reserve(self, positions: int) -> None:
        """Room for at least ``positions`` positions in every row, grown by whole chunks."""
        if positions > self.room:
            grown = -(-positions // CACHE_CHUNK) * CACHE_CHUNK
            self.k, self.v = (F.pad(t, (0, 0, 0, grown - self.room)) for t in (self.k, self.v))

    def append(self, k: torch.Tensor, v: torch.Tensor, past: Past) -> tuple[torch.Tensor, torch.Tensor]:
        """Store the new positions' keys and values after ``past``; return those of every position so far
        (up to the longest row)."""
        if isinstance(past, int):
            end = past + k.size(2)
            self.reserve(end)
            self.k[:, :, past:end] = k
            self.v[:, :, past:end] = v
        else:
            end = int(past.max()) + 1
            self.reserve(end)
            rows = torch.arange(k.size(0), device=k.device)
            self.k[rows, :, past] = k[:, :, 0]
            self.v[rows, :, past] = v[:, :, 0]
        return self.k[:, :, :end], self.v[:, :, :end]

    def select(self, rows: torch.Tensor, room: int) -> None:
        self.k, self.v = self.k[rows, :, :room], self.v[rows, :, :room]

    def extend(self, other: LayerKV) -> None:
        room = max(self.room, other.room)
        self.reserve(room)
        other.reserve(room)
        self.k, self.v = torch.cat([self.k, other.k]), torch.cat([self.v, other.v])

    def put(self, row: int, other: LayerKV, length: int) -> None:
        """Row ``row`` becomes ``other``'s only row (its first ``length`` positions)."""
        self.reserve(length)
        for mine, theirs in ((self.k, other.k), (self.v, other.v)):
            mine[row] = 0.0
            mine[row, :, :length] = theirs[0, :, :length]


class KVCache:
    """Every layer's keys and values, and how many positions each row holds (rows may differ).

    Rows hold one prompt continued several ways, or many prompts decoded together, each at its own
    position: rows join (``extend``) and leave (``select``) between forward passes.
    """

    def __init__(self, config: GPTConfig, batch: int, dtype: torch.dtype = torch.float32,
                 device: torch.device | str = "cpu"):
        head_dim = config.n_embd // config.n_head
        self.layers = [LayerKV.empty(batch, config.n_head, head_dim, dtype, torch.device(device))
                       for _ in range(config.n_layer)]
        self.lengths = [0] * batch

    @property
    def length(self) -> int:
        """The longest row's positions."""
        return max(self.lengths, default=0)

    @property
    def past(self) -> Past:
        """Where the next tokens go: one number when every row holds as many positions, else one per row."""
        if len(set(self.lengths)) <= 1:
            return self.length
        return torch.tensor(self.lengths, device=self.layers[0].k.device)

    def advance(self, tokens: int) -> None:
        self.lengths = [n + tokens for n in self.lengths]

    def select(self, rows: torch.Tensor) -> None:
        """Keep these rows (indices; a repeated index copies a row), in this order."""
        self.lengths = [self.lengths[r] for r in rows.tolist()]
        room = min(self.layers[0].room, -(-self.length // CACHE_CHUNK) * CACHE_CHUNK)
        for layer in self.layers:
            layer.select(rows.to(layer.k.device), room)

    def extend(self, other: KVCache) -> None:
        """Add ``other``'s rows after these."""
        for mine, theirs in zip(self.layers, other.layers, strict=True):
            mine.extend(theirs)
        self.lengths += other.lengths

    def put(self, row: int, other: KVCache) -> None:
        """Replace row ``row`` with ``other``'s only row."""
        for mine, theirs in zip(self.layers, other.layers, strict=True):
            mine.put(row, theirs, other.lengths[0])
        self.lengths[row] = other.lengths[0]


class CausalSelfAttention(nn.Module):
    def __init__(self, config: GPTConfig):
        super().__init__()
        self.n_head = config.n_head
        self.c_attn = nn.Linear(config.n_embd, 3 * config.n_embd, bias=config.bias)  # q, k, v in one matmul
        self.c_proj = nn.Linear(config.n_embd, config.n_embd, bias=config.bias)
        self.dropout = config.dropout
        self.resid_dropout = nn.Dropout(config.dropout)

    def attend(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, past: Past) -> torch.Tensor:
        """softmax(q k^T / sqrt(d)) v over the allowed keys; ``past`` cached positions precede the queries."""
        dropout = self.dropout if self.training else 0.0
        T = q.size(2)
        if isinstance(past, torch.Tensor):  # rows at their own positions, one new token each: a row sees only
            visible = torch.arange(k.size(2), device=q.device) <= past[:, None]  # its own positions, itself included
            return F.scaled_dot_product_attention(q, k, v, attn_mask=visible[:, None, None, :], dropout_p=dropout)
        if past == 0:  # the usual case: each position sees itself and those before it
            return F.scaled_dot_product_attention(q, k, v, dropout_p=dropout, is_causal=True)
        if T == 1:  # one new token after cached ones: it may see them all, no mask needed
            return F.scaled_dot_product_attention(q, k, v, dropout_p=dropout)
        # several new tokens after cached ones: query i sees keys up to past + i
        mask = torch.ones(T, past + T, dtype=torch.bool, device=q.device).tril(diagonal=past)
        return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=dropout)

    def forward(self, x: torch.Tensor, kv: LayerKV | None = None, past: Past = 0) -> torch.Tensor:
        B, T, C = x.size()
        q, k, v = self.c_attn(x).split(C, dim=2)
        q, k, v = (t.view(B, T, self.n_head, C // self.n_head).transpose(1, 2) for t in (q, k, v))
        if kv is not None:
            k, v = kv.append(k, v, past)
        dtype = q.dtype
        if x.device.type == "cpu" and dtype == torch.bfloat16:
            # The CPU's bf16 flash-attention kernel is about 3x slower than its fp32 one (forward and
            # backward, head size 32), so under bf16 autocast attention alone runs in fp32 on the CPU.
            with torch.autocast("cpu", enabled=False):
                y = self.attend(q.float(), k.float(), v.float(), past)
        else:
            y = self.attend(q, k, v, past)
        y = y.to(dtype).transpose(1, 2).contiguous().view(B, T, C)
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

    def forward(self, x: torch.Tensor, kv: LayerKV | None = None, past: Past = 0) -> torch.Tensor:
        x = x + self.attn(self.ln_1(x), kv, past)
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

    def position_embedding(self, past: Past, length: int, device: torch.device) -> torch.Tensor:
        """The embeddings of ``length`` positions after ``past``: (length, C), or (rows, length, C) per row."""
        positions = torch.arange(length, device=device)
        positions = positions + (past[:, None] if isinstance(past, torch.Tensor) else past)
        if self.config.position == "learned":
            return self.wpe(positions)
        return self.wpe_table[positions]

    def forward(self, idx: torch.Tensor, targets: torch.Tensor | None = None,
                kv_cache: KVCache | None = None) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Logits for every position and the mean cross-entropy when ``targets`` are given.

        Without targets only the last position's logits are computed (all generation needs). With
        ``kv_cache`` the tokens continue the cached ones, whose keys and values are reused.
        """
        x = self.hidden_states(idx, kv_cache)
        if targets is None:
            return self.lm_head(x[:, -1:, :]), None
        logits = self.lm_head(x)
        loss = F.cross_entropy(logits.float().view(-1, logits.size(-1)), targets.reshape(-1), ignore_index=-1)
        return logits, loss

    def hidden_states(self, idx: torch.Tensor, kv_cache: KVCache | None = None) -> torch.Tensor:
        """The last block's output, normalised (B, T, n_embd): what the LM head reads at each position."""
        B, T = idx.size()
        past = kv_cache.past if kv_cache is not None else 0
        if isinstance(past, torch.Tensor) and T > 1:
            raise ValueError("rows at different positions take one new token each")
        end = (kv_cache.length if kv_cache is not None else 0) + T
        if end > self.config.block_size:
            raise ValueError(f"{end} positions exceed the context of {self.config.block_size}")
        x = self.drop(self.wte(idx) + self.position_embedding(past, T, idx.device))
        for i, block in enumerate(self.blocks):
            x = block(x, kv_cache.layers[i] if kv_cache is not None else None, past)
        if kv_cache is not None:
            kv_cache.advance(T)
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
            session.keep(torch.zeros(rows, dtype=torch.long))
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

    A ``models.sampling.DecodingSession``: its rows may be at different positions, so sessions of
    different prompts can be joined (``extend``) and decoded together, one step for every row. When a
    row's context is full, its oldest quarter is dropped and the rest read again (absolute positions
    cannot simply shift); between refills every step is one position.
    """

    def __init__(self, model: GPT, tokens: torch.Tensor):
        """Read ``tokens`` (rows, T): rows of one length, each its own context (its last block_size tokens)."""
        self.model = model
        self.block_size = model.config.block_size
        tokens = tokens[:, -self.block_size:]
        self.contexts = tokens.tolist()  # per row, the tokens its cache holds, kept to refill from
        self.cache, self.logits = self.read(tokens)

    @torch.no_grad()
    def read(self, tokens: torch.Tensor) -> tuple[KVCache, torch.Tensor]:
        """A fresh cache holding ``tokens`` (rows, T), and the next-token logits after them."""
        cache = KVCache(self.model.config, tokens.size(0), dtype=self.model.wte.weight.dtype, device=tokens.device)
        logits, _ = self.model(tokens, kv_cache=cache)
        return cache, logits[:, -1]

    @torch.no_grad()
    def step(self, tokens: torch.Tensor) -> torch.Tensor:
        tokens = tokens.to(self.model.wte.weight.device)
        kept = context_kept(self.block_size)
        for row, length in enumerate(self.cache.lengths):
            if length == self.block_size:  # read its last tokens again; this step's token follows them
                self.contexts[row] = self.contexts[row][-(kept - 1):]
                refilled, _ = self.read(torch.tensor([self.contexts[row]], device=tokens.device))
                self.cache.put(row, refilled)
        logits, _ = self.model(tokens[:, None], kv_cache=self.cache)
        for context, token in zip(self.contexts, tokens.tolist(), strict=True):
            context.append(token)
        self.logits = logits[:, -1]
        return self.logits

    def keep(self, rows: torch.Tensor) -> None:
        self.contexts = [list(self.contexts[r]) for r in rows.tolist()]
        self.cache.select(rows)

    def extend(self, other: GPTSession) -> None:
        self.contexts += other.contexts
        self.cache.extend(other.cache)


def load(checkpoint: Checkpoint, device: torch.device) -> GPT:
    """The model of a ``gpt`` checkpoint, its weights loaded, ready for inference on ``device``."""
    model = GPT(GPTConfig(**checkpoint.config["model"]))
    model.load_weights(checkpoint.state_dict)
    return model.to(device).eval()
