"""Multi-head attention (Vaswani et al., 2017, §3.2), the one mechanism BERT, GPT and the Transformer
translator share.

    Attention(Q, K, V) = softmax(Q Kᵀ / √d_k + M) V

where the mask M is 0 where a query may look and -inf where it may not (padding, the future). Multi-head
attention projects the input into ``h`` heads of ``d_k = dim / h``, attends in each, and projects the
heads' concatenation back: ``MultiHead(Q, K, V) = Concat(head_1, ..., head_h) W^O``.

One model, two paths. Every ordinary call goes through ``F.scaled_dot_product_attention`` (one fused
kernel, flash or memory-efficient where the device has one), which never materialises the weights.
Asked for them, by an ``AttentionRecorder`` passed down the forward pass, the same layer computes the
softmax explicitly and hands its weights (batch, heads, queries, keys) to the recorder; the output is the
same to float rounding (the tests hold the two paths to 1e-5).

The modules here are ``SelfAttention`` (queries, keys and values from one sequence: BERT's encoder, the
translator's encoder and decoder) and ``CrossAttention`` (queries from the decoder, keys and values from
the encoder's output). GPT keeps nanoGPT's own projections and KV cache in ``models/gpt.py`` and attends
through ``scaled_dot_product`` here.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import Protocol

import torch
import torch.nn.functional as F
from torch import nn


class AttentionRecorder:
    """Collects the attention weights of every layer it is passed through, in call order.

    ``weights[layer]`` is a list with one (batch, heads, queries, keys) tensor per call of that layer
    (one for a whole sequence, or one per step of incremental decoding). The weights are those before
    attention dropout, detached.
    """

    def __init__(self, layers: Iterable[nn.Module] | None = None) -> None:
        """Record every attention layer the forward pass meets, or only ``layers`` (the rest stay on the
        fused path)."""
        self.layers = None if layers is None else set(layers)
        self.weights: dict[nn.Module, list[torch.Tensor]] = {}

    def wants(self, layer: nn.Module) -> bool:
        return self.layers is None or layer in self.layers

    def record(self, layer: nn.Module, weights: torch.Tensor) -> None:
        self.weights.setdefault(layer, []).append(weights.detach())

    def of(self, layer: nn.Module) -> torch.Tensor:
        """One layer's weights over every call, (batch, heads, queries, keys); calls that saw fewer keys
        (the early steps of causal decoding) are zero-padded on the right, where they could not look."""
        calls = self.weights[layer]
        keys = max(w.size(-1) for w in calls)
        return torch.cat([F.pad(w, (0, keys - w.size(-1))) for w in calls], dim=2)


def split_heads(x: torch.Tensor, n_heads: int) -> torch.Tensor:
    """(B, T, dim) -> (B, heads, T, d_k)."""
    B, T, C = x.shape
    return x.view(B, T, n_heads, C // n_heads).transpose(1, 2)


def merge_heads(y: torch.Tensor) -> torch.Tensor:
    """(B, heads, T, d_k) -> (B, T, dim): the heads' outputs concatenated."""
    B, H, T, D = y.shape
    return y.transpose(1, 2).reshape(B, T, H * D)


def causal_mask(queries: int, keys: int, device: torch.device) -> torch.Tensor:
    """(queries, keys), True where a query may look: the last ``queries`` of ``keys`` positions, each seeing
    itself and every position before it."""
    return torch.ones(queries, keys, dtype=torch.bool, device=device).tril(diagonal=keys - queries)


def scaled_dot_product(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor | None = None,
                       causal: bool = False, dropout: float = 0.0, need_weights: bool = False
                       ) -> tuple[torch.Tensor, torch.Tensor | None]:
    """softmax(q kᵀ / √d_k + M) v for q (B, H, Tq, d_k), k and v (B, H, Tk, d_k).

    ``mask`` is boolean, broadcast to (B, H, Tq, Tk), True where a query may look; ``causal`` lets the
    queries, the last Tq of the Tk positions, see only themselves and what precedes them. Returns the
    output and, with ``need_weights``, the weights (else None).
    """
    dtype = q.dtype
    if q.device.type == "cpu" and dtype == torch.bfloat16:
        # The CPU's bf16 flash-attention kernel is about 3x slower than its fp32 one (forward and backward,
        # head size 32), so under bf16 autocast attention alone runs in fp32 on the CPU.
        with torch.autocast("cpu", enabled=False):
            y, weights = scaled_dot_product(q.float(), k.float(), v.float(), mask, causal, dropout, need_weights)
        return y.to(dtype), weights
    if causal and (need_weights or mask is not None or q.size(2) != k.size(2)):
        # The fused kernel's causal flag needs as many queries as keys and no other mask: else spell it out.
        future = causal_mask(q.size(2), k.size(2), q.device)
        mask, causal = (future if mask is None else mask & future), False
    if not need_weights:
        return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=dropout, is_causal=causal), None
    scores = (q @ k.transpose(-2, -1)) / math.sqrt(q.size(-1))
    if mask is not None:
        scores = scores.masked_fill(~mask, float("-inf"))
    weights = torch.softmax(scores.float(), dim=-1).to(dtype)
    y = F.dropout(weights, dropout) @ v if dropout else weights @ v
    return y, weights


class KeyValueCache(Protocol):
    """One layer's keys and values from earlier decoding steps."""

    def append(self, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Keep the new positions' keys and values (B, H, T, d_k); return those of every position so far."""
        ...


class SelfAttention(nn.Module):
    """Multi-head self-attention: queries, keys and values are projections of the same sequence."""

    def __init__(self, dim: int, n_heads: int, dropout: float = 0.0, bias: bool = True):
        super().__init__()
        if dim % n_heads:
            raise ValueError(f"dim {dim} is not divisible by n_heads {n_heads}")
        self.n_heads = n_heads
        self.qkv = nn.Linear(dim, 3 * dim, bias=bias)  # W^Q, W^K and W^V of every head in one matmul
        self.proj = nn.Linear(dim, dim, bias=bias)  # W^O
        self.attn_dropout = dropout
        self.resid_dropout = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None, causal: bool = False,
                cache: KeyValueCache | None = None, recorder: AttentionRecorder | None = None) -> torch.Tensor:
        """``x`` (B, T, dim) -> (B, T, dim). ``mask`` (broadcast to (B, heads, T, keys)) is True where a
        query may look; ``causal`` hides the future. With ``cache`` the T positions follow the cached ones,
        and may see all of them."""
        q, k, v = (split_heads(t, self.n_heads) for t in self.qkv(x).chunk(3, dim=-1))
        if cache is not None:
            k, v = cache.append(k, v)
            causal = causal and q.size(2) > 1  # one new position after cached ones sees them all
        recording = recorder is not None and recorder.wants(self)
        y, weights = scaled_dot_product(q, k, v, mask, causal, self.attn_dropout if self.training else 0.0,
                                        need_weights=recording)
        if recording:
            recorder.record(self, weights)
        return self.resid_dropout(self.proj(merge_heads(y)))


class CrossAttention(nn.Module):
    """Multi-head attention of one sequence (the decoder's) over another (the encoder's output, "memory").

    ``memory_keys_values`` projects the memory once per source sentence; every decoding step reuses it.
    """

    def __init__(self, dim: int, n_heads: int, dropout: float = 0.0, bias: bool = True):
        super().__init__()
        if dim % n_heads:
            raise ValueError(f"dim {dim} is not divisible by n_heads {n_heads}")
        self.n_heads = n_heads
        self.q = nn.Linear(dim, dim, bias=bias)
        self.kv = nn.Linear(dim, 2 * dim, bias=bias)
        self.proj = nn.Linear(dim, dim, bias=bias)
        self.attn_dropout = dropout
        self.resid_dropout = nn.Dropout(dropout)

    def memory_keys_values(self, memory: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """memory (B, S, dim) -> keys and values (B, heads, S, d_k)."""
        k, v = (split_heads(t, self.n_heads) for t in self.kv(memory).chunk(2, dim=-1))
        return k, v

    def forward(self, x: torch.Tensor, keys_values: tuple[torch.Tensor, torch.Tensor], mask: torch.Tensor | None,
                recorder: AttentionRecorder | None = None) -> torch.Tensor:
        """``x`` (B, T, dim) attends over the memory's ``keys_values``; ``mask`` (B, 1, 1, S) is True on the
        memory's real positions."""
        q = split_heads(self.q(x), self.n_heads)
        recording = recorder is not None and recorder.wants(self)
        y, weights = scaled_dot_product(q, *keys_values, mask, dropout=self.attn_dropout if self.training else 0.0,
                                        need_weights=recording)
        if recording:
            recorder.record(self, weights)
        return self.resid_dropout(self.proj(merge_heads(y)))
