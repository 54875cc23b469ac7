"""The Transformer translator: its layers against torch's reference layers, causal masking, incremental
decoding against full recomputation, a task it learns, its checkpoints, and the translation pipeline."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from models.attention import AttentionRecorder
from models.beam import BeamOptions
from models.checkpoint import load_checkpoint
from models.pipelines.translation import TranslationOptions, Translator, load, split_sentences
from models.seq2seq import BOS_ID, EOS_ID, PAD_ID, build_vocab, pad_batch, tokenize
from models.transformer import DecoderLayer, EncoderLayer, Transformer, TransformerConfig

from .conftest import run_training

torch.set_num_threads(1)

SMALL = TransformerConfig(source_vocab_size=30, target_vocab_size=40, dim=32, n_layers=2, n_heads=4, ffn_dim=64,
                          dropout=0.0)
PAIRS = [("我爱你。", "I love you."), ("他是学生。", "He is a student."), ("我们明天见。", "See you tomorrow."),
         ("今天很冷。", "It's cold today."), ("你好吗？", "How are you?")]


def small_model(config: TransformerConfig = SMALL, seed: int = 0) -> Transformer:
    torch.manual_seed(seed)
    return Transformer(config).eval()


def random_ids(lengths: list[int], vocab: int, seed: int = 0) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    return pad_batch([torch.randint(4, vocab, (n,), generator=generator).tolist() for n in lengths])


def copy_weights(reference: nn.Module, pairs: dict[str, torch.Tensor]) -> None:
    with torch.no_grad():
        for name, value in pairs.items():
            reference.get_parameter(name).copy_(value)


# ---- the layers against torch's -------------------------------------------------------------------------


def test_encoder_layer_equals_torchs_pre_norm_encoder_layer() -> None:
    torch.manual_seed(0)
    ours = EncoderLayer(SMALL).eval()
    reference = nn.TransformerEncoderLayer(SMALL.dim, SMALL.n_heads, SMALL.ffn_dim, dropout=0.0, norm_first=True,
                                           batch_first=True).eval()
    a = ours.self_attention
    copy_weights(reference, {
        "self_attn.in_proj_weight": a.qkv.weight, "self_attn.in_proj_bias": a.qkv.bias,
        "self_attn.out_proj.weight": a.proj.weight, "self_attn.out_proj.bias": a.proj.bias,
        "linear1.weight": ours.ffn.fc1.weight, "linear1.bias": ours.ffn.fc1.bias,
        "linear2.weight": ours.ffn.fc2.weight, "linear2.bias": ours.ffn.fc2.bias,
        "norm1.weight": ours.self_attention_norm.weight, "norm1.bias": ours.self_attention_norm.bias,
        "norm2.weight": ours.ffn_norm.weight, "norm2.bias": ours.ffn_norm.bias})
    x = torch.randn(2, 6, SMALL.dim)
    keep = torch.tensor([[1] * 6, [1] * 4 + [0] * 2], dtype=torch.bool)
    expected = reference(x, src_key_padding_mask=~keep)
    actual = ours(x, keep[:, None, None, :])
    torch.testing.assert_close(actual[0], expected[0], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(actual[1, :4], expected[1, :4], atol=1e-5, rtol=1e-5)  # real positions


def test_decoder_layer_equals_torchs_pre_norm_decoder_layer_with_a_causal_mask() -> None:
    torch.manual_seed(0)
    ours = DecoderLayer(SMALL).eval()
    reference = nn.TransformerDecoderLayer(SMALL.dim, SMALL.n_heads, SMALL.ffn_dim, dropout=0.0, norm_first=True,
                                           batch_first=True).eval()
    s, c = ours.self_attention, ours.cross_attention
    copy_weights(reference, {
        "self_attn.in_proj_weight": s.qkv.weight, "self_attn.in_proj_bias": s.qkv.bias,
        "self_attn.out_proj.weight": s.proj.weight, "self_attn.out_proj.bias": s.proj.bias,
        "multihead_attn.in_proj_weight": torch.cat([c.q.weight, c.kv.weight]),
        "multihead_attn.in_proj_bias": torch.cat([c.q.bias, c.kv.bias]),
        "multihead_attn.out_proj.weight": c.proj.weight, "multihead_attn.out_proj.bias": c.proj.bias,
        "linear1.weight": ours.ffn.fc1.weight, "linear1.bias": ours.ffn.fc1.bias,
        "linear2.weight": ours.ffn.fc2.weight, "linear2.bias": ours.ffn.fc2.bias,
        "norm1.weight": ours.self_attention_norm.weight, "norm1.bias": ours.self_attention_norm.bias,
        "norm2.weight": ours.cross_attention_norm.weight, "norm2.bias": ours.cross_attention_norm.bias,
        "norm3.weight": ours.ffn_norm.weight, "norm3.bias": ours.ffn_norm.bias})
    x, memory = torch.randn(2, 5, SMALL.dim), torch.randn(2, 7, SMALL.dim)
    keep = torch.tensor([[1] * 7, [1] * 3 + [0] * 4], dtype=torch.bool)
    future = nn.Transformer.generate_square_subsequent_mask(5, dtype=torch.bool)
    expected = reference(x, memory, tgt_mask=future, memory_key_padding_mask=~keep)
    actual = ours(x, c.memory_keys_values(memory), keep[:, None, None, :])
    torch.testing.assert_close(actual, expected, atol=1e-5, rtol=1e-5)


# ---- the model ------------------------------------------------------------------------------------------


def test_forward_shapes_loss_near_uniform_and_tied_output_layer() -> None:
    model = small_model()
    source, target = random_ids([5, 3], 30), random_ids([6, 4], 40, seed=1)
    logits, loss = model(source, target)
    assert logits.shape == (2, target.size(1) - 1, 40)
    assert abs(loss.item() - torch.log(torch.tensor(40.0)).item()) < 1.0
    assert model.out.weight is model.target_embedding.token.weight
    untied = small_model(TransformerConfig(**{**SMALL.to_dict(), "tie_embeddings": False}))
    assert untied.out.weight is not untied.target_embedding.token.weight


def test_label_smoothing_raises_the_loss_of_a_confident_model() -> None:
    model = small_model()
    source, target = random_ids([5, 3], 30), random_ids([6, 4], 40, seed=1)
    _, plain = model(source, target)
    _, smoothed = model(source, target, label_smoothing=0.1)
    assert smoothed.item() != pytest.approx(plain.item())


def test_decoder_is_causal_a_later_target_token_changes_no_earlier_prediction() -> None:
    model = small_model()
    source = random_ids([6], 30)
    target = torch.tensor([[BOS_ID, 5, 6, 7, 8, 9, EOS_ID]])
    changed = target.clone()
    changed[0, 4] = 20
    a, _ = model(source, target)
    b, _ = model(source, changed)
    torch.testing.assert_close(a[:, :4], b[:, :4])
    assert not torch.allclose(a[:, 4:], b[:, 4:], atol=1e-4)


def test_source_padding_changes_nothing() -> None:
    model = small_model()
    source = random_ids([5], 30)
    padded = torch.cat([source, torch.full((1, 3), PAD_ID)], dim=1)
    target = torch.tensor([[BOS_ID, 5, 6, 7, EOS_ID]])
    torch.testing.assert_close(model(padded, target)[0], model(source, target)[0], atol=1e-5, rtol=1e-5)


def test_incremental_decoding_equals_full_recomputation() -> None:
    """Step by step with each layer's keys and values kept, the logits and the attention over the source are
    those of one teacher-forced pass over the same tokens."""
    model = small_model()
    source = random_ids([6, 4], 30)
    target = torch.cat([torch.full((2, 1), BOS_ID), random_ids([6, 6], 40, seed=2)], dim=1)
    recorder = AttentionRecorder()
    full, _ = model(source, target, recorder=recorder)
    session = model.start(source)
    for t in range(target.size(1) - 1):
        logits, attention = session.step(target[:, t])
        torch.testing.assert_close(logits, full[:, t], atol=1e-5, rtol=1e-5)
        for i, layer in enumerate(model.decoder):
            torch.testing.assert_close(attention[:, i], recorder.of(layer.cross_attention)[:, :, t], atol=1e-5,
                                       rtol=1e-5)


def test_greedy_decoding_picks_the_most_likely_token_at_each_step() -> None:
    model = small_model()
    source = random_ids([6, 4], 30)
    outputs, attention = model.greedy(source, max_length=8)
    for row, (ids, alpha) in enumerate(zip(outputs, attention, strict=True)):
        target = torch.tensor([[BOS_ID, *ids]])
        logits, _ = model(source[row:row + 1, :int((source[row] != PAD_ID).sum())], torch.cat(
            [target, torch.tensor([[EOS_ID]])], dim=1))
        assert logits[0].argmax(-1).tolist()[:len(ids)] == ids
        assert alpha.shape == (len(ids), SMALL.n_layers, SMALL.n_heads, int((source[row] != PAD_ID).sum()))


def test_beam_search_of_one_beam_is_greedy_decoding() -> None:
    model = small_model()
    source = random_ids([6], 30)
    [greedy_ids], [greedy_attention] = model.greedy(source, max_length=8)
    [ids], [attention] = model.beam_search(source, [BeamOptions(beam_size=1, max_length=8, length_penalty=0.0)])
    assert ids == greedy_ids
    torch.testing.assert_close(attention, greedy_attention)


def test_beam_search_of_a_padded_batch_finds_what_each_sentence_finds_alone() -> None:
    model = small_model()
    with torch.no_grad():
        model.out.weight[EOS_ID] *= 0.0  # logits 0 for <eos>: an untrained model ends some hypotheses early
    source = random_ids([7, 3, 5], 30)
    options = [BeamOptions(beam_size=3, max_length=n, length_penalty=0.6) for n in (9, 4, 0)]
    ids, attention = model.beam_search(source, options)
    assert ids[2] == [] and attention[2].shape == (0, SMALL.n_layers, SMALL.n_heads, 5)
    for row, (n, sentence_options) in enumerate(zip([7, 3, 5], options, strict=True)):
        [alone], [alone_attention] = model.beam_search(source[row:row + 1, :n], [sentence_options])
        assert ids[row] == alone
        torch.testing.assert_close(attention[row], alone_attention, atol=1e-5, rtol=1e-4)


def test_a_tiny_transformer_learns_to_reverse_sequences() -> None:
    torch.manual_seed(0)
    vocab = 14
    model = Transformer(TransformerConfig(vocab, vocab, dim=32, n_layers=2, n_heads=4, ffn_dim=64, dropout=0.0))
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3)
    generator = torch.Generator().manual_seed(1)

    def batch(n: int, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor, list[list[int]]]:
        rows = [torch.randint(4, vocab, (int(torch.randint(3, 7, (1,), generator=generator)),),
                              generator=generator).tolist() for _ in range(n)]
        return pad_batch(rows), pad_batch([[BOS_ID, *r[::-1], EOS_ID] for r in rows]), rows

    for _ in range(250):
        source, target, _ = batch(64, generator)
        _, loss = model(source, target)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    model.eval()
    source, _, rows = batch(100, torch.Generator().manual_seed(9))
    outputs, _ = model.greedy(source, max_length=10)
    assert sum(out == row[::-1] for out, row in zip(outputs, rows, strict=True)) >= 90


# ---- the pipeline ---------------------------------------------------------------------------------------


def tiny_translator() -> Translator:
    source_vocab = build_vocab(tokenize(zh, "zh") for zh, _ in PAIRS)
    target_vocab = build_vocab(tokenize(en, "en") for _, en in PAIRS)
    config = TransformerConfig(len(source_vocab), len(target_vocab), dim=32, n_layers=2, n_heads=4, ffn_dim=64,
                               dropout=0.0)
    return Translator(small_model(config), source_vocab, target_vocab, "zh-en", torch.device("cpu"))


@pytest.mark.parametrize("beam_size", [1, 3])
def test_attention_is_the_last_layers_cross_attention_averaged_over_heads(beam_size: int) -> None:
    options = TranslationOptions(beam_size=beam_size, max_length=6, attention_heads=True)
    [result] = tiny_translator().translate(["我爱猫。"], options)
    heads = torch.tensor(result.attention_heads)
    assert heads.shape == (2, 4, len(result.target_tokens), 4)
    torch.testing.assert_close(heads.sum(-1), torch.ones(heads.shape[:3]))
    torch.testing.assert_close(torch.tensor(result.attention), heads[-1].mean(0))
    assert result.unknown_tokens == ["猫"]
    assert tiny_translator().translate(["我爱猫。"], TranslationOptions(beam_size=beam_size))[0].attention_heads is None


def test_sentences_are_split_at_their_ends_keeping_the_punctuation() -> None:
    assert split_sentences("我爱你。你好吗？") == ["我爱你。", "你好吗？"]
    assert split_sentences("Really?! It costs 3.5 yuan. Fine") == ["Really?!", "It costs 3.5 yuan.", "Fine"]
    assert split_sentences("他说：“好。”  我们走吧！") == ["他说：“好。”", "我们走吧！"]
    assert split_sentences("你好！！我是学生") == ["你好！！", "我是学生"]
    assert split_sentences("Ｗａｉｔ．Ｏｋ？") == ["Ｗａｉｔ．", "Ｏｋ？"]
    assert split_sentences("  ") == []


def test_a_text_of_several_sentences_is_translated_sentence_by_sentence() -> None:
    translator = tiny_translator()
    options = TranslationOptions(max_length=5, attention_heads=True)
    [whole] = translator.translate(["我爱你。他是学生。"], options)
    parts = translator.translate(["我爱你。", "他是学生。"], options)
    assert [s.text for s in whole.sentences] == ["我爱你。", "他是学生。"]
    assert whole.translation == " ".join(p.translation for p in parts)
    assert whole.source_tokens == parts[0].source_tokens + parts[1].source_tokens
    assert whole.target_tokens == parts[0].target_tokens + parts[1].target_tokens
    for sentence, part in zip(whole.sentences, parts, strict=True):
        assert (sentence.translation, sentence.target_tokens, sentence.attention) == (
            part.translation, part.target_tokens, part.attention)
    # The whole text's matrix is block-diagonal: a target token weighs only its own sentence's source.
    t, s = len(parts[0].target_tokens), len(parts[0].source_tokens)
    attention = torch.tensor(whole.attention)
    torch.testing.assert_close(attention[:t, :s], torch.tensor(parts[0].attention))
    torch.testing.assert_close(attention[t:, s:], torch.tensor(parts[1].attention))
    assert torch.all(attention[:t, s:] == 0) and torch.all(attention[t:, :s] == 0)
    assert torch.tensor(whole.attention_heads).shape == (2, 4, len(whole.target_tokens), len(whole.source_tokens))


def test_trained_checkpoint_saves_the_tied_matrix_once_and_translates_after_loading(tmp_path) -> None:
    run_training("seq2seq", "--profile", "tiny", "--epochs", "1", "--out", str(tmp_path))
    checkpoint = load_checkpoint(tmp_path / "seq2seq-zh-en")  # the Transformer is the direction's default
    assert checkpoint.config["model"]["arch"] == "transformer"
    assert "out.weight" not in checkpoint.state_dict
    translator = load(checkpoint, torch.device("cpu"))
    assert translator.model.out.weight is translator.model.target_embedding.token.weight
    [result] = translator.translate(["我们明天见。"], TranslationOptions(beam_size=2, attention_heads=True))
    assert len(result.attention_heads) == checkpoint.config["model"]["n_layers"]
    assert "test" in checkpoint.metrics and checkpoint.metrics["parameters"] > 0


def test_a_flag_of_the_other_architecture_is_refused(tmp_path) -> None:
    from training import seq2seq as trainer
    from training.cli import build_parser

    args = build_parser().parse_args(["seq2seq", "--arch", "transformer", "--hidden-dim", "64"])
    with pytest.raises(ValueError, match="--hidden-dim is a setting of --arch recurrent"):
        trainer.resolve_arguments(args)
    args = build_parser().parse_args(["seq2seq", "--arch", "recurrent", "--n-layers", "2"])
    with pytest.raises(ValueError, match="--n-layers is a setting of --arch transformer"):
        trainer.resolve_arguments(args)
    args = build_parser().parse_args(["seq2seq", "--cell", "lstm"])  # the default, a Transformer, has no cell
    with pytest.raises(ValueError, match="--cell is a setting of --arch recurrent, not transformer"):
        trainer.resolve_arguments(args)


def test_the_grids_transformer_is_the_size_of_its_recurrent_models_and_trains_at_most_a_minute() -> None:
    from training import seq2seq as trainer
    from training.cli import build_parser

    def model_of(flags: tuple[str, ...]) -> nn.Module:
        args = trainer.resolve_arguments(build_parser().parse_args(["seq2seq", *flags]))
        model, _ = trainer.build_model(args, 1339, 1710)  # the HSK split's zh-en vocabularies
        return model

    def size(model: nn.Module) -> int:
        return sum(p.numel() for p in model.parameters())

    recurrent = [size(model_of((*trainer.GRID_FLAGS, *trainer.GRID_ROWS[f"{cell} additive"])))
                 for cell in ("rnn", "lstm", "gru")]
    flags = (*trainer.GRID_FLAGS, *trainer.GRID_ROWS["transformer"])
    assert trainer.resolve_arguments(build_parser().parse_args(["seq2seq", *flags])).max_seconds <= 60
    assert min(recurrent) <= size(model_of(flags)) <= max(recurrent)
