"""Unit tests of the seq2seq model: tokens, shapes, masking, the attention equations, decoding, training."""

from __future__ import annotations

import io
import itertools
import json

import pytest
import torch

from models.beam import BeamOptions
from models.checkpoint import load_checkpoint, save_checkpoint
from models.pipelines import translation
from models.pipelines.attention_image import attention_png
from models.pipelines.translation import TranslationOptions, Translator, load
from models.seq2seq import (
    ATTENTIONS,
    BOS_ID,
    CELLS,
    EOS_ID,
    PAD_ID,
    SPECIALS,
    UNK_ID,
    Attention,
    ChineseWords,
    EnglishSubwords,
    Seq2Seq,
    Seq2SeqConfig,
    build_vocab,
    detokenize,
    encode,
    model_config_dict,
    pad_batch,
    tokenize,
)
from training import seq2seq as trainer
from training.cli import build_parser
from training.loop import Run, state_dir
from training.seq2seq import bucket_of, dropped_words, fit, grid_markdown, split_pairs

from .conftest import interrupted_after_saving

torch.set_num_threads(1)

PAIRS = [
    ("我爱你。", "I love you."),
    ("他是学生。", "He is a student."),
    ("我们明天见。", "See you tomorrow."),
    ("今天很冷。", "It's cold today."),
    ("你好吗？", "How are you?"),
    ("她喜欢喝茶。", "She likes drinking tea."),
    ("这本书很好。", "This book is good."),
    ("我不知道。", "I don't know."),
]


def small_model(cell: str = "gru", attention: str = "additive", bidirectional: bool = True,
                vocab: tuple[int, int] = (30, 40)) -> Seq2Seq:
    torch.manual_seed(0)
    return Seq2Seq(Seq2SeqConfig(vocab[0], vocab[1], embedding_dim=8, hidden_dim=16, cell=cell,
                                 attention=attention, bidirectional=bidirectional, dropout=0.0)).eval()


def random_batch(lengths: list[int], vocab: int, seed: int = 0) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    rows = [torch.randint(len(SPECIALS), vocab, (n,), generator=generator).tolist() for n in lengths]
    return pad_batch(rows)


def tiny_translator(attention: str = "additive") -> Translator:
    source_vocab = build_vocab(tokenize(zh, "zh") for zh, _ in PAIRS)
    target_vocab = build_vocab(tokenize(en, "en") for _, en in PAIRS)
    model = small_model(attention=attention, vocab=(len(source_vocab), len(target_vocab)))
    return Translator(model, source_vocab, target_vocab, "zh-en", torch.device("cpu"))


# ---- tokens -------------------------------------------------------------------------------------------


def test_chinese_is_split_into_characters_and_spaces_are_dropped():
    assert tokenize("我 爱你。", "zh") == ["我", "爱", "你", "。"]
    assert detokenize(["我", "爱", "你", "。"], "zh") == "我爱你。"


def test_english_is_lower_cased_with_punctuation_split_and_contractions_kept():
    assert tokenize("It\u2019s 5.4 yuan, isn't it?", "en") == ["it's", "5.4", "yuan", ",", "isn't", "it", "?"]
    assert detokenize(["it's", "5.4", "yuan", ",", "isn't", "it", "?"], "en") == "It's 5.4 yuan, isn't it?"


def test_vocabulary_puts_specials_first_and_maps_unseen_tokens_to_unk():
    vocab = build_vocab([["a", "b", "a"], ["c"]])
    assert vocab.itos[: len(SPECIALS)] == list(SPECIALS)
    assert vocab.itos[len(SPECIALS)] == "a"  # most frequent first
    assert encode(["a", "zzz"], vocab) == [vocab.stoi["a"], UNK_ID]


# ---- shapes and masking ---------------------------------------------------------------------------------


@pytest.mark.parametrize(("cell", "attention"), list(itertools.product(CELLS, ATTENTIONS)))
def test_every_cell_and_attention_gives_logits_of_the_target_shape(cell, attention):
    model = small_model(cell, attention, bidirectional=cell != "rnn")
    source = random_batch([5, 3, 7], 30)
    target = random_batch([4, 6, 2], 40, seed=1)
    logits, loss = model(source, target)
    assert logits.shape == (3, target.size(1) - 1, 40)
    assert torch.isfinite(loss)


@pytest.mark.parametrize("attention", ["additive", "dot", "general"])
def test_padding_gets_no_attention_and_does_not_change_the_translation(attention):
    model = small_model(attention=attention)
    alone = random_batch([4], 30)
    padded = pad_batch([alone[0].tolist(), list(range(5, 14))])  # a longer neighbour pads it to 9
    ids_alone, maps_alone = model.greedy(alone, max_length=6)
    ids_padded, maps_padded = model.greedy(padded, max_length=6)
    assert ids_alone[0] == ids_padded[0]
    assert maps_padded[0].shape == maps_alone[0].shape == (len(ids_alone[0]), 4)
    torch.testing.assert_close(maps_alone[0], maps_padded[0], atol=1e-5, rtol=1e-4)
    memory, keys, mask, state, _ = model.start(padded)
    _, alpha = model.decoder.attention(state, keys, memory, mask)
    assert torch.all(alpha[0, 4:] == 0)
    torch.testing.assert_close(alpha.sum(-1), torch.ones(2))


# ---- the attention equations -----------------------------------------------------------------------------


def test_additive_score_is_v_tanh_of_w_query_plus_u_annotation():
    torch.manual_seed(0)
    attention = Attention("additive", 6)
    query, memory = torch.randn(1, 6), torch.randn(1, 3, 6)
    _, alpha = attention(query, attention.keys(memory), memory, torch.ones(1, 3, dtype=torch.bool))
    scores = torch.stack([attention.v(torch.tanh(attention.W(query[0]) + attention.U(memory[0, j])))[0]
                          for j in range(3)])
    torch.testing.assert_close(alpha[0], torch.softmax(scores, 0))


def test_dot_and_general_scores_are_bilinear_in_query_and_annotation():
    torch.manual_seed(0)
    query, memory = torch.randn(1, 6), torch.randn(1, 3, 6)
    mask = torch.ones(1, 3, dtype=torch.bool)
    dot = Attention("dot", 6)
    context, alpha = dot(query, dot.keys(memory), memory, mask)
    torch.testing.assert_close(alpha[0], torch.softmax(memory[0] @ query[0], 0))
    torch.testing.assert_close(context[0], alpha[0] @ memory[0])
    general = Attention("general", 6)
    _, alpha = general(query, general.keys(memory), memory, mask)
    W = general.W.weight
    torch.testing.assert_close(alpha[0], torch.softmax(torch.stack([query[0] @ W @ h for h in memory[0]]), 0))


def test_without_attention_the_decoder_reads_the_same_fixed_vector_whatever_the_source_length():
    model = small_model(attention="none")
    assert model.decoder.attention is None
    ids, maps = model.greedy(random_batch([3, 8], 30), max_length=5)
    assert maps == [None, None]


# ---- decoding -------------------------------------------------------------------------------------------


@pytest.mark.parametrize("attention", ["additive", "general", "none"])
def test_beam_of_one_is_greedy_decoding(attention):
    model = small_model(attention=attention)
    source = random_batch([6], 30, seed=3)
    greedy_ids, greedy_maps = model.greedy(source, max_length=7)
    [beam_ids], [beam_map] = model.beam_search(source, [BeamOptions(beam_size=1, max_length=7, length_penalty=0.0)])
    assert beam_ids == greedy_ids[0]
    if attention != "none":
        torch.testing.assert_close(beam_map, greedy_maps[0])


@pytest.mark.parametrize(("cell", "attention"), [("gru", "additive"), ("lstm", "general"), ("gru", "none")])
def test_beam_search_of_a_padded_batch_finds_what_each_sentence_finds_alone(cell, attention):
    model = small_model(cell=cell, attention=attention)
    with torch.no_grad():
        model.decoder.out.bias[EOS_ID] += 0.3  # so that some hypotheses end before their limit and some do not
    lengths = [6, 2, 4, 5]
    source = random_batch(lengths, 30, seed=5)
    options = [BeamOptions(beam_size=k, max_length=n, length_penalty=0.6)
               for k, n in [(4, 12), (4, 3), (2, 12), (4, 0)]]
    ids, maps = model.beam_search(source, options)
    for row, (n, sentence_options) in enumerate(zip(lengths, options, strict=True)):
        [alone], [alone_map] = model.beam_search(source[row:row + 1, :n], [sentence_options])
        assert ids[row] == alone
        if attention == "none":
            assert maps[row] is None and alone_map is None
        else:
            assert maps[row].shape == (len(alone), n)
            torch.testing.assert_close(maps[row], alone_map, atol=1e-5, rtol=1e-4)
    assert ids[3] == []


def test_beam_search_finds_a_hypothesis_at_least_as_likely_as_greedy():
    model = small_model()
    with torch.no_grad():
        model.decoder.out.bias[EOS_ID] += 2.0  # so that an untrained model ends its sentences
    source = random_batch([5], 30, seed=4)

    def log_prob(ids: list[int]) -> float:
        target = torch.tensor([[BOS_ID, *ids, EOS_ID]])
        logits, _ = model(source, target)
        return torch.log_softmax(logits[0], -1).gather(1, target[0, 1:, None]).sum().item()

    greedy_ids, _ = model.greedy(source, max_length=30)
    [beam_ids], _ = model.beam_search(source, [BeamOptions(beam_size=5, max_length=30, length_penalty=0.0)])
    assert len(greedy_ids[0]) < 30 and len(beam_ids) < 30  # both ended with <eos>
    assert log_prob(beam_ids) >= log_prob(greedy_ids[0]) - 1e-4


def test_max_length_bounds_the_output():
    model = small_model()
    source = random_batch([5, 2], 30)
    ids, _ = model.greedy(source, max_length=3)
    assert all(len(row) <= 3 for row in ids)
    [beam_ids], _ = model.beam_search(source[:1], [BeamOptions(beam_size=3, max_length=3, length_penalty=1.0)])
    assert len(beam_ids) <= 3


# ---- the translator and its picture ------------------------------------------------------------------------


def test_beam_search_takes_the_sentences_of_a_request_in_batches_of_bounded_rows(monkeypatch):
    translator = tiny_translator()
    texts = ["我爱你。他是学生。", "我们明天见。", "今天很冷。你好吗？", "他是学生。"]
    options = TranslationOptions(beam_size=2, max_length=8)
    alone = [translator.translate([text], options)[0] for text in texts]
    steps: list[int] = []
    search = translator.model.beam_search
    monkeypatch.setattr(translation, "BEAM_ROWS", 5)  # two sentences of two beams a batch
    monkeypatch.setattr(translator.model, "beam_search", lambda source, o: steps.append(len(o)) or search(source, o))
    together = translator.translate(texts, options)
    assert steps == [2, 2, 2]  # six sentences
    for one, other in zip(alone, together, strict=True):
        assert one.target_tokens == other.target_tokens
        torch.testing.assert_close(torch.tensor(one.attention), torch.tensor(other.attention), atol=1e-5, rtol=0)


def test_translation_has_one_attention_row_per_target_token_summing_to_one_and_lists_unknowns():
    translator = tiny_translator()
    for beam_size in (1, 3):
        result = translator.translate(["我爱猫。"], TranslationOptions(beam_size=beam_size))[0]
        assert result.source_tokens == ["我", "爱", "猫", "。"]
        assert result.unknown_tokens == ["猫"]
        assert len(result.attention) == len(result.target_tokens)
        for row in result.attention:
            assert len(row) == 4
            assert sum(row) == pytest.approx(1.0, abs=1e-4)


def test_attention_free_model_returns_no_attention():
    result = tiny_translator("none").translate(["我爱你。"])[0]
    assert result.attention is None


def test_blank_text_is_refused():
    with pytest.raises(ValueError):
        tiny_translator().translate(["  "])


def test_heatmap_is_a_png_with_chinese_glyphs_available():
    from matplotlib import image

    from models.pipelines.attention_image import _cjk_font_family
    from models.pipelines.translation import Translation

    assert _cjk_font_family() is not None
    result = Translation("I love you.", ["我", "爱", "你", "。"], ["i", "love", "you", "."],
                         [[0.7, 0.1, 0.1, 0.1], [0.1, 0.7, 0.1, 0.1], [0.1, 0.1, 0.7, 0.1], [0, 0, 0, 1.0]], [])
    png = attention_png(result, title="test")
    assert png[:8] == b"\x89PNG\r\n\x1a\n"
    assert image.imread(io.BytesIO(png)).ndim == 3


def test_checkpoint_round_trip_restores_the_same_translations(tmp_path):
    translator = tiny_translator()
    config = {"id": "seq2seq-test", "family": "seq2seq", "architecture": "test",
              "model": model_config_dict(translator.model.config, "zh-en"),
              "tokenizer": {"type": "WordVocab", "file": "source_vocab.json",
                            "files": {"source": "source_vocab.json", "target": "target_vocab.json"}}}
    path = save_checkpoint(tmp_path, config, translator.model.state_dict(), {},
                           {"source_vocab.json": translator.source_vocab.to_json(),
                            "target_vocab.json": translator.target_vocab.to_json()})
    restored = load(load_checkpoint(path), torch.device("cpu"))
    assert restored.direction == "zh-en"
    assert restored.translate(["我爱你。"]) == translator.translate(["我爱你。"])


def test_a_checkpoint_with_learned_units_translates_the_same_after_loading(tmp_path):
    lexicon = ChineseWords(["我们", "明天", "学生", "喜欢"])
    subwords = EnglishSubwords.train([en for _, en in PAIRS] * 3, 60)
    source_vocab = build_vocab(lexicon.tokens(zh) for zh, _ in PAIRS)
    target_vocab = build_vocab(subwords.tokens(en) for _, en in PAIRS)
    torch.manual_seed(0)
    model = Seq2Seq(Seq2SeqConfig(len(source_vocab), len(target_vocab), embedding_dim=8, hidden_dim=16, dropout=0.0,
                                  tie_embeddings=True)).eval()
    translator = Translator(model, source_vocab, target_vocab, "zh-en", torch.device("cpu"), lexicon, subwords)
    config = {"id": "seq2seq-test", "family": "seq2seq", "architecture": "test",
              "model": model_config_dict(model.config, "zh-en"),
              "tokenizer": {"type": "WordVocab", "file": "source_vocab.json",
                            "files": {"source": "source_vocab.json", "target": "target_vocab.json",
                                      "zh_lexicon": "zh_lexicon.json", "en_bpe": "en_bpe.json"},
                            "units": {"zh": "words", "en": "bpe"}}}
    path = save_checkpoint(tmp_path, config, model.state_dict(), {},
                           {"source_vocab.json": source_vocab.to_json(), "target_vocab.json": target_vocab.to_json(),
                            "zh_lexicon.json": lexicon.to_json(), "en_bpe.json": subwords.to_json()})
    restored = load(load_checkpoint(path), torch.device("cpu"))
    assert restored.source_tokens("我们明天见。") == ["我们", "明天", "见", "。"]
    assert restored.translate(["她喜欢喝茶。"], TranslationOptions(max_length=6)) == \
        translator.translate(["她喜欢喝茶。"], TranslationOptions(max_length=6))


def test_chinese_words_are_the_longest_lexicon_words_from_the_left():
    words = ChineseWords(["我们", "一起", "一起去", "吃饭", "火车"])
    assert words.tokens("我们 一起去吃饭吧。") == ["我们", "一起去", "吃饭", "吧", "。"]
    assert words.text(words.tokens("我们坐火车。")) == "我们坐火车。"


def test_english_subwords_spell_back_every_word_even_unseen_ones():
    subwords = EnglishSubwords.train([en for _, en in PAIRS] * 3, 60)
    text = "She doesn't like unbelievable tea, it's 5.4 yuan."
    pieces = subwords.tokens(text)
    assert len(pieces) > len(tokenize(text, "en")) and "<unk>" not in pieces
    assert subwords.text(pieces) == detokenize(tokenize(text, "en"), "en")


def test_tied_output_scores_against_the_target_embeddings_and_saves_them_once():
    torch.manual_seed(0)
    model = Seq2Seq(Seq2SeqConfig(30, 40, embedding_dim=8, hidden_dim=16, dropout=0.0, tie_embeddings=True)).eval()
    attentional = torch.randn(2, 16)
    expected = model.decoder.project(attentional) @ model.decoder.embedding.weight.T + model.decoder.out_bias
    torch.testing.assert_close(model.decoder.logits(attentional), expected)
    assert not any(name.startswith("decoder.out.") for name in model.state_dict())


def test_label_smoothing_mixes_the_reference_with_the_uniform_distribution():
    model = small_model()
    source, target = random_batch([5, 3], 30), random_batch([4, 6], 40, seed=1)
    logits, plain = model(source, target)
    _, smoothed = model(source, target, label_smoothing=0.1)
    log_probs = torch.log_softmax(logits.float(), -1).flatten(0, 1)
    real = target[:, 1:].flatten() != PAD_ID
    uniform = -log_probs[real].mean(-1).mean()
    torch.testing.assert_close(smoothed, 0.9 * plain + 0.1 * uniform)


# ---- data and training -------------------------------------------------------------------------------------


def test_word_dropout_reads_a_share_of_the_source_words_as_unknown_and_leaves_padding_alone():
    source = pad_batch([list(range(4, 404)), list(range(4, 204))])
    padding = source == PAD_ID
    assert torch.equal(dropped_words(source, 0.0, torch.Generator().manual_seed(0)), source)
    dropped = dropped_words(source, 0.25, torch.Generator().manual_seed(0))
    assert torch.equal(dropped == PAD_ID, padding)
    changed = dropped != source
    assert bool((dropped[changed] == UNK_ID).all())
    assert 0.2 < changed.sum().item() / (~padding).sum().item() < 0.3
    assert torch.equal(dropped, dropped_words(source, 0.25, torch.Generator().manual_seed(0)))  # seeded
    assert bool((dropped_words(source, 1.0, torch.Generator())[~padding] == UNK_ID).all())



def test_a_gloss_becomes_its_first_sense_that_translates_without_notes():
    from training.data import clean_gloss

    assert clean_gloss("(of an aircraft) to take off; (fig.) to start to develop rapidly") == "take off"
    assert clean_gloss("surname Le; happy; cheerful") == "happy"
    assert clean_gloss("used in 自個兒|自个儿[zi4 ge3 r5]") is None
    assert clean_gloss("variant of 乐[le4]/abbr. for 乐队/music (Tw)", senses="/") == "music"
    assert clean_gloss("to record sound; an audio recording (CL:段[duan4])") == "record sound"


def hsk_split(direction: str = "zh-en"):
    from training.data import HSK_SOURCE, load_hsk_pairs

    return split_pairs(list(load_hsk_pairs()), direction, 0, 0.1, dict(HSK_SOURCE))


def test_no_extra_pair_equals_a_validation_or_test_sentence():
    split = hsk_split()
    extras, provenance = trainer.extra_pairs(split, "zh-en", glosses=True, dictionary="hsk")
    assert provenance["glosses"] > 1000 and provenance["dictionary"] > 1000 and provenance["dropped_as_held_out"] == 0
    (word, _), (_, sense) = extras[0], extras[-1]
    split.validation.append((word + "。", "Something else."))  # a held-out sentence that is one of the words
    split.test.append(("别的。", sense.capitalize() + "!"))  # and one that is one of the senses
    extras_now, provenance_now = trainer.extra_pairs(split, "zh-en", glosses=True, dictionary="hsk")
    assert all(zh != word for zh, _ in extras_now) and all(en != sense for _, en in extras_now)
    assert provenance_now["dropped_as_held_out"] >= 2
    mirrored, _ = trainer.extra_pairs(hsk_split("en-zh"), "en-zh", glosses=True, dictionary="hsk")
    assert sorted((zh, en) for en, zh in mirrored) == sorted(extras)


def test_glosses_come_from_the_training_records_only():
    from training.data import load_hsk_records

    split = hsk_split()
    extras, _ = trainer.extra_pairs(split, "zh-en", glosses=True, dictionary="none")
    train = {zh for zh, _ in split.train}
    seen = {word for r in load_hsk_records() if r.chinese in train for word, _ in r.words}
    held_out_only = {word for r in load_hsk_records() if r.chinese not in train for word, _ in r.words} - seen
    assert held_out_only  # words that only the validation and test records have...
    assert {zh for zh, _ in extras} <= seen  # ...give no pair


def test_split_is_deterministic_and_shared_by_both_directions():
    pairs = [(f"中{i}", f"w{i}") for i in range(50)]
    a = split_pairs(pairs, "zh-en", 7, 0.1, {})
    b = split_pairs(pairs, "zh-en", 7, 0.1, {})
    mirror = split_pairs(pairs, "en-zh", 7, 0.1, {})
    assert a.test == b.test and len(a.test) == len(a.validation) == 5 and len(a.train) == 40
    assert [(t, s) for s, t in mirror.test] == a.test
    assert split_pairs(pairs, "zh-en", 8, 0.1, {}).test != a.test


def test_source_length_buckets():
    assert [bucket_of(n, (7, 9, 11)) for n in (3, 7, 8, 11, 12, 18)] == ["1-7", "1-7", "8-9", "10-11", "12+", "12+"]


def test_training_lowers_the_validation_loss_and_keeps_the_best_epoch(tmp_path):
    split = split_pairs(PAIRS * 6, "zh-en", 0, 0.1, {})
    split.validation = split.train[:8]  # same sentences: a model that learns must improve on them
    args = trainer.resolve_arguments(build_parser().parse_args([
        "seq2seq", "--arch", "recurrent", "--profile", "tiny", "--out", str(tmp_path), "--device", "cpu",
        "--min-count", "1", "--batch-size", "8", "--embedding-dim", "16", "--hidden-dim", "32", "--dropout", "0",
        "--lr", "1e-2", "--epochs", "6", "--teacher-forcing", "0.8", "--patience", "6", "--precision", "fp32"]))
    with Run(args, "seq2seq-test") as run:
        fitted = fit(run, split, "zh-en", args)
    evaluations = fitted.trained.history["evaluations"]
    losses = [e["val_loss"] for e in evaluations]
    assert len(losses) == 6 and losses[-1] < losses[0] * 0.7
    assert fitted.trained.best == evaluations[losses.index(min(losses))]
    assert fitted.translator.translate([split.validation[0][0]])[0].translation


def test_pad_id_is_zero_so_embeddings_of_padding_stay_zero():
    model = small_model()
    assert PAD_ID == 0
    assert torch.all(model.encoder.embedding.weight[PAD_ID] == 0)


def test_grid_table_has_one_line_per_row_with_the_mean_and_std_over_its_seeds():
    runs = [{"row": f"{cell} {attention}", "seed": seed, "bleu": 2.0 + seed, "chrf": 20.0, "steps": 100,
             "bleu_by_source_length": {"1-7": 1.0 + seed, "8+": 3.0},
             "sentences_by_source_length": {"1-7": 10, "8+": 5},
             "bleu_by_sentences_joined": {"1": 2.0 + seed, "2": 1.0}}
            for cell, attention in itertools.product(CELLS, ATTENTIONS) for seed in (0, 1, 2)]
    lines = grid_markdown({"runs": runs}).splitlines()
    assert lines[0].startswith("| row | seeds | BLEU | chrF") and "BLEU 1-7 (10)" in lines[0] and "BLEU ×2" in lines[0]
    assert len(lines) == 2 + len(CELLS) * len(ATTENTIONS)
    gru_none = next(line for line in lines if line.startswith("| gru none |")).split(" | ")
    assert gru_none[1:4] == ["3", "3.0 ± 1.0", "20.0 ± 0.0"]
    assert gru_none[-1].rstrip(" |") == "1.0 ± 0.0"


def test_joined_test_pairs_run_chinese_on_and_space_english():
    pairs = [("我爱你。", "I love you."), ("他是学生。", "He is a student."), ("你好吗？", "How are you?")]
    assert trainer.joined_test(pairs, 2, "zh-en") == [("我爱你。他是学生。", "I love you. He is a student.")]
    mirror = [(en, zh) for zh, en in pairs]
    assert trainer.joined_test(mirror, 3, "en-zh") == [("I love you. He is a student. How are you?",
                                                         "我爱你。他是学生。你好吗？")]


def test_cli_trains_on_a_user_tsv_then_evaluates_and_draws_the_heatmap(tmp_path):
    import json

    from training.cli import main

    pairs = tmp_path / "pairs.tsv"
    pairs.write_text("".join(f"{zh}\t{en}\n" for zh, en in PAIRS * 5), encoding="utf-8")
    out = tmp_path / "checkpoints"
    assert main(["seq2seq", "--profile", "tiny", "--pairs", str(pairs), "--direction", "en-zh", "--name", "mine",
                 "--out", str(out)]) == 0
    config = json.loads((out / "seq2seq-mine" / "config.json").read_text(encoding="utf-8"))
    assert config["model"]["direction"] == "en-zh" and config["data"]["name"] == "user corpus"
    assert config["data"]["split"]["test"] == 4 and config["split_seed"] == 0
    assert main(["evaluate", "seq2seq", "--name", "mine", "--out", str(out)]) == 0
    metrics = json.loads((out / "seq2seq-mine" / "metrics.json").read_text(encoding="utf-8"))
    assert metrics["test"]["sentences"] == 4 and 0.0 <= metrics["test"]["chrf"] <= 100.0
    png = tmp_path / "attention.png"
    assert main(["evaluate", "seq2seq", "--name", "mine", "--out", str(out), "--heatmap", str(png),
                 "--text", "I love you."]) == 0
    assert png.read_bytes()[:4] == b"\x89PNG"


def test_cli_reports_a_malformed_pairs_file(tmp_path, capsys):
    from training.cli import main

    pairs = tmp_path / "pairs.tsv"
    pairs.write_text("我爱你。\tI love you.\nno tab here\n", encoding="utf-8")
    assert main(["seq2seq", "--profile", "tiny", "--pairs", str(pairs), "--out", str(tmp_path)]) == 2
    assert "pairs.tsv:2" in capsys.readouterr().err


def test_resume_after_an_interruption_repeats_the_uninterrupted_run(tmp_path, monkeypatch):
    pairs = tmp_path / "pairs.tsv"
    pairs.write_text("".join(f"{zh}\t{en}\n" for zh, en in PAIRS * 5), encoding="utf-8")

    def run(out: str, *extra: str) -> list[dict]:
        # Dropout and teacher forcing below 1 both draw from torch's RNG, which must continue too.
        trainer.train(build_parser().parse_args([
            "seq2seq", "--arch", "recurrent", "--profile", "tiny", "--pairs", str(pairs), "--out", str(tmp_path / out),
            "--device", "cpu", "--epochs", "4", "--patience", "4", "--batch-size", "8", "--teacher-forcing", "0.8",
            "--precision", "fp32", "--force", *extra]))
        return json.loads((state_dir(tmp_path / out, "seq2seq-zh-en-recurrent") / "history.json").read_text())

    straight = run("a")
    with interrupted_after_saving(monkeypatch, lambda state: len(state["history"]["evaluations"]) == 2):
        run("b")  # stops right after the second epoch's evaluation
    resumed = run("b", "--resume")
    assert len(resumed["evaluations"]) == 4
    assert resumed["loss"] == straight["loss"]
    assert [e["val_loss"] for e in resumed["evaluations"]] == [e["val_loss"] for e in straight["evaluations"]]
    a, b = (load_checkpoint(tmp_path / run / "seq2seq-zh-en-recurrent") for run in ("a", "b"))
    assert b.config["training"]["best_step"] == a.config["training"]["best_step"]
    for name, weight in a.state_dict.items():
        torch.testing.assert_close(b.state_dict[name], weight, rtol=0, atol=1e-6)
