"""The attention shared by BERT, GPT and the Transformer translator: the fused path and the path that
returns the weights agree, the weights are softmax(QKᵀ/√d + M) recomputed by hand, masks hide what they
should, and the checkpoints' parameter names are those the models always had."""

from __future__ import annotations

import math

import pytest
import torch

from models.attention import AttentionRecorder, CrossAttention, SelfAttention, causal_mask, scaled_dot_product
from models.bert import BertConfig, BertForPreTraining
from models.gpt import GPT, GPTConfig, KVCache
from models.seq2seq import BOS_ID, PAD_ID
from models.transformer import Transformer, TransformerConfig

torch.set_num_threads(1)

BERT = BertConfig(vocab_size=50, max_position=16, dim=32, n_layers=2, n_heads=4, ffn_dim=64, dropout=0.0)
GPT_CONFIG = GPTConfig(vocab_size=50, block_size=32, n_layer=2, n_head=4, n_embd=32)
TRANSLATOR = TransformerConfig(source_vocab_size=30, target_vocab_size=40, dim=32, n_layers=2, n_heads=4, ffn_dim=64,
                               dropout=0.0)


def by_hand(q: torch.Tensor, k: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    """softmax(q kᵀ / √d_k + M), M = -inf where ``mask`` is False."""
    scores = q @ k.transpose(-2, -1) / math.sqrt(q.size(-1))
    if mask is not None:
        scores = scores.masked_fill(~mask, -math.inf)
    return scores.softmax(dim=-1)


def heads(x: torch.Tensor, n_heads: int) -> torch.Tensor:
    B, T, C = x.shape
    return x.view(B, T, n_heads, C // n_heads).transpose(1, 2)


@pytest.mark.parametrize(("mask", "causal"), [(None, False), ("padding", False), (None, True), ("padding", True)])
def test_the_weight_returning_path_equals_the_fused_kernel(mask: str | None, causal: bool) -> None:
    torch.manual_seed(0)
    q, k, v = torch.randn(3, 2, 4, 7, 8).unbind(0)
    keep = torch.tensor([[1] * 7, [1] * 5 + [0] * 2], dtype=torch.bool)[:, None, None, :] if mask else None
    fast, none = scaled_dot_product(q, k, v, keep, causal)
    explicit, weights = scaled_dot_product(q, k, v, keep, causal, need_weights=True)
    assert none is None
    torch.testing.assert_close(explicit, fast, atol=1e-5, rtol=1e-5)
    visible = torch.ones(7, 7, dtype=torch.bool)
    if keep is not None:
        visible = visible & keep
    if causal:
        visible = visible & torch.ones(7, 7, dtype=torch.bool).tril()
    torch.testing.assert_close(weights, by_hand(q, k, visible), atol=1e-6, rtol=1e-5)


def test_causal_queries_after_cached_keys_see_themselves_and_everything_before() -> None:
    mask = causal_mask(2, 5, torch.device("cpu"))
    assert mask.tolist() == [[True, True, True, True, False], [True, True, True, True, True]]
    torch.manual_seed(0)
    q, k, v = torch.randn(2, 3, 6, 8), torch.randn(2, 3, 9, 8), torch.randn(2, 3, 9, 8)
    fast, _ = scaled_dot_product(q, k, v, causal=True)
    explicit, weights = scaled_dot_product(q, k, v, causal=True, need_weights=True)
    torch.testing.assert_close(explicit, fast, atol=1e-5, rtol=1e-5)
    assert torch.all(weights[..., 0, 4:] == 0) and torch.all(weights[..., -1, :] > 0)


def test_bert_returns_each_layers_weights_without_changing_its_output() -> None:
    torch.manual_seed(0)
    model = BertForPreTraining(BERT).eval()
    ids = torch.tensor([[2, 11, 12, 13, 3, 0, 0], [2, 14, 15, 16, 17, 18, 3]])
    plain, pooled = model.bert(ids)
    recorder = AttentionRecorder()
    recorded, recorded_pooled = model.bert(ids, recorder=recorder)
    torch.testing.assert_close(recorded, plain, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(recorded_pooled, pooled, atol=1e-5, rtol=1e-5)
    layers = [layer.attention for layer in model.bert.layers]
    assert list(recorder.weights) == layers
    # Layer 1 by hand: its input is layer 0's output; padding keys get no weight.
    inputs: list[torch.Tensor] = []
    model.bert.layers[1].register_forward_pre_hook(lambda _, args: inputs.append(args[0]))
    model.bert(ids)
    q, k, _ = model.bert.layers[1].attention.qkv(inputs[0]).split(BERT.dim, dim=2)
    keep = (ids != 0)[:, None, None, :]
    expected = by_hand(heads(q, BERT.n_heads), heads(k, BERT.n_heads), keep)
    weights = recorder.of(layers[1])
    assert weights.shape == (2, BERT.n_heads, 7, 7)
    torch.testing.assert_close(weights, expected, atol=1e-5, rtol=1e-5)
    assert torch.all(weights[0, :, :, 5:] == 0)
    torch.testing.assert_close(weights.sum(-1), torch.ones(2, BERT.n_heads, 7))


def test_gpt_weights_are_causal_and_the_output_unchanged_with_and_without_the_cache() -> None:
    torch.manual_seed(0)
    model = GPT(GPT_CONFIG).eval()
    idx = torch.randint(0, 50, (2, 12))
    plain, _ = model(idx, idx)
    recorder = AttentionRecorder()
    recorded, _ = model(idx, idx, recorder=recorder)
    torch.testing.assert_close(recorded, plain, atol=1e-5, rtol=1e-5)
    inputs: list[torch.Tensor] = []
    block = model.blocks[1]
    block.attn.register_forward_pre_hook(lambda _, args: inputs.append(args[0]))
    model(idx, idx)
    q, k, _ = block.attn.c_attn(inputs[0]).split(GPT_CONFIG.n_embd, dim=2)
    expected = by_hand(heads(q, GPT_CONFIG.n_head), heads(k, GPT_CONFIG.n_head), causal_mask(12, 12, idx.device))
    weights = recorder.of(block.attn)
    torch.testing.assert_close(weights, expected, atol=1e-5, rtol=1e-5)
    assert torch.all(weights.triu(diagonal=1) == 0)
    # Decoded with the KV cache, a prompt then one token at a time, the weights are the same matrix.
    stepwise = AttentionRecorder()
    cache = KVCache(GPT_CONFIG, batch=2)
    model(idx[:, :5], kv_cache=cache, recorder=stepwise)
    for t in range(5, 12):
        model(idx[:, t:t + 1], kv_cache=cache, recorder=stepwise)
    torch.testing.assert_close(stepwise.of(block.attn), weights, atol=1e-5, rtol=1e-5)


def test_cross_attention_matches_torch_multi_head_attention() -> None:
    torch.manual_seed(0)
    dim, n_heads = 32, 4
    ours = CrossAttention(dim, n_heads).eval()
    reference = torch.nn.MultiheadAttention(dim, n_heads, batch_first=True).eval()
    with torch.no_grad():
        reference.in_proj_weight.copy_(torch.cat([ours.q.weight, ours.kv.weight]))
        reference.in_proj_bias.copy_(torch.cat([ours.q.bias, ours.kv.bias]))
        reference.out_proj.weight.copy_(ours.proj.weight)
        reference.out_proj.bias.copy_(ours.proj.bias)
    x, memory = torch.randn(2, 5, dim), torch.randn(2, 7, dim)
    keep = torch.tensor([[1] * 7, [1] * 4 + [0] * 3], dtype=torch.bool)
    expected, expected_weights = reference(x, memory, memory, key_padding_mask=~keep, average_attn_weights=False)
    recorder = AttentionRecorder()
    output = ours(x, ours.memory_keys_values(memory), keep[:, None, None, :], recorder)
    torch.testing.assert_close(output, expected, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(recorder.of(ours), expected_weights, atol=1e-5, rtol=1e-5)


def test_self_attention_matches_torch_multi_head_attention_with_a_causal_mask() -> None:
    torch.manual_seed(0)
    dim, n_heads = 32, 4
    ours = SelfAttention(dim, n_heads).eval()
    reference = torch.nn.MultiheadAttention(dim, n_heads, batch_first=True).eval()
    with torch.no_grad():
        reference.in_proj_weight.copy_(ours.qkv.weight)
        reference.in_proj_bias.copy_(ours.qkv.bias)
        reference.out_proj.weight.copy_(ours.proj.weight)
        reference.out_proj.bias.copy_(ours.proj.bias)
    x = torch.randn(2, 6, dim)
    future = ~causal_mask(6, 6, x.device)
    expected, _ = reference(x, x, x, attn_mask=future)
    torch.testing.assert_close(ours(x, causal=True), expected, atol=1e-5, rtol=1e-5)


def test_bert_and_gpt_keep_their_parameter_names() -> None:
    """Checkpoints written before the attention was shared load unchanged: the same keys, the same shapes."""
    bert = BertForPreTraining(BERT).state_dict()
    assert {k: tuple(v.shape) for k, v in bert.items() if k.startswith("bert.layers.0.attention.")} == {
        "bert.layers.0.attention.qkv.weight": (96, 32), "bert.layers.0.attention.qkv.bias": (96,),
        "bert.layers.0.attention.proj.weight": (32, 32), "bert.layers.0.attention.proj.bias": (32,)}
    gpt = GPT(GPT_CONFIG).state_dict()
    assert {k: tuple(v.shape) for k, v in gpt.items() if k.startswith("blocks.0.attn.")} == {
        "blocks.0.attn.c_attn.weight": (96, 32), "blocks.0.attn.c_proj.weight": (32, 32)}


def test_the_translator_returns_every_layers_weights_without_changing_its_output() -> None:
    """Encoder self-attention, the decoder's causal self-attention and its attention over the source, each
    recorded in the same forward pass whose logits equal the fused path's, and each softmax(QKᵀ/√d + M)."""
    torch.manual_seed(0)
    model = Transformer(TRANSLATOR).eval()
    source = torch.tensor([[5, 6, 7, 8, 9], [10, 11, 12, PAD_ID, PAD_ID]])
    target = torch.tensor([[BOS_ID, 13, 14, 15, 16], [BOS_ID, 17, 18, 19, 20]])
    plain, _ = model(source, target)
    recorder = AttentionRecorder()
    recorded, _ = model(source, target, recorder=recorder)
    torch.testing.assert_close(recorded, plain, atol=1e-5, rtol=1e-5)
    encoder, decoder = model.encoder[1], model.decoder[1]
    inputs: dict[str, torch.Tensor] = {}
    encoder.self_attention.register_forward_pre_hook(lambda _, args: inputs.update(encoder=args[0]))
    decoder.self_attention.register_forward_pre_hook(lambda _, args: inputs.update(decoder=args[0]))
    decoder.cross_attention.register_forward_pre_hook(lambda _, args: inputs.update(cross=args[0], memory=args[1]))
    model(source, target)
    keep = (source != PAD_ID)[:, None, None, :]
    q, k, _ = encoder.self_attention.qkv(inputs["encoder"]).split(TRANSLATOR.dim, dim=2)
    torch.testing.assert_close(recorder.of(encoder.self_attention), by_hand(heads(q, 4), heads(k, 4), keep),
                               atol=1e-5, rtol=1e-5)
    q, k, _ = decoder.self_attention.qkv(inputs["decoder"]).split(TRANSLATOR.dim, dim=2)
    weights = recorder.of(decoder.self_attention)
    torch.testing.assert_close(weights, by_hand(heads(q, 4), heads(k, 4), causal_mask(4, 4, q.device)),
                               atol=1e-5, rtol=1e-5)
    assert torch.all(weights.triu(diagonal=1) == 0)
    q = heads(decoder.cross_attention.q(inputs["cross"]), 4)
    memory_keys, _ = inputs["memory"]
    cross = recorder.of(decoder.cross_attention)
    torch.testing.assert_close(cross, by_hand(q, memory_keys, keep), atol=1e-5, rtol=1e-5)
    assert torch.all(cross[1, :, :, 3:] == 0)
