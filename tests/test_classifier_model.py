"""The MLP, TextCNN and RNN/LSTM/GRU classifiers, their data, metrics, trainer and loader."""

from __future__ import annotations

import argparse
import math
import random
from pathlib import Path

import pytest
import torch

from models.checkpoint import Checkpoint, load_checkpoint
from models.classifier import ARCHITECTURES, SubwordEncoder, WordEncoder, build_model, build_vocab, pad_batch
from models.cnn import CNNConfig, TextCNN
from models.mlp import MLPClassifier, MLPConfig
from models.pipelines.classification import load
from models.subword import SubwordEmbedding, char_ngrams, ngram_bucket, spelled
from models.tokenizers import words
from training.classifier import (
    MIN_PASSAGE_WORDS,
    Augmentation,
    RandomWindows,
    class_weights,
    classification_metrics,
    genre_passages,
    labeled_splits,
)
from training.cli import build_parser
from training.data import GENRE_LABELS

from .conftest import run_training


def small_model(arch: str, **extra) -> torch.nn.Module:
    hyper = {"vocab_size": 50, "num_classes": 3, "embed_dim": 16, "dropout": 0.0, **extra}
    if arch in ("rnn", "lstm", "gru"):
        hyper["hidden_size"] = 12
    if arch == "cnn":
        hyper["kernel_counts"] = (4, 4, 4)
    if arch == "mlp":
        hyper["hidden_sizes"] = (8,)
    torch.manual_seed(0)
    return build_model(arch, hyper).eval()


@pytest.mark.parametrize("arch", ARCHITECTURES)
def test_logits_have_one_row_per_passage_and_padding_changes_nothing(arch: str) -> None:
    model = small_model(arch)
    ids = torch.randint(2, 50, (3, 9))
    logits, loss = model(ids)
    assert logits.shape == (3, 3) and loss is None
    # The same passages with five padding ids after them: same logits.
    padded = torch.cat([ids, torch.zeros(3, 5, dtype=torch.long)], dim=1)
    torch.testing.assert_close(model(padded)[0], logits, atol=1e-5, rtol=0)


@pytest.mark.parametrize("arch", ARCHITECTURES)
def test_a_short_passage_in_a_batch_is_scored_as_if_alone(arch: str) -> None:
    model = small_model(arch)
    long, short = torch.randint(2, 50, (1, 12)), torch.randint(2, 50, (1, 4))
    batch = torch.zeros(2, 12, dtype=torch.long)
    batch[0], batch[1, :4] = long[0], short[0]
    logits, _ = model(batch)
    torch.testing.assert_close(logits[1], model(short)[0][0], atol=1e-5, rtol=0)


@pytest.mark.parametrize("pooling", ["last", "mean"])
def test_rnn_classifier_pooling_options(pooling: str) -> None:
    model = small_model("gru", pooling=pooling)
    ids = torch.randint(2, 50, (2, 7))
    assert model(ids)[0].shape == (2, 3)


@pytest.mark.parametrize(("cell", "pooling"), [("gru", "last"), ("lstm", "max"), ("rnn", "mean")])
def test_a_bidirectional_network_reads_each_passage_backwards_from_its_own_last_word(cell: str, pooling: str) -> None:
    model = small_model(cell, pooling=pooling, bidirectional=True)
    assert model.V.in_features == 2 * 12
    long, short = torch.randint(2, 50, (1, 12)), torch.randint(2, 50, (1, 4))
    batch = torch.zeros(2, 12, dtype=torch.long)
    batch[0], batch[1, :4] = long[0], short[0]
    # The padding after the short passage would reach every backward state at its words if it were read.
    torch.testing.assert_close(model(batch)[0][1], model(short)[0][0], atol=1e-5, rtol=0)


@pytest.mark.parametrize("pooling", ["max", "mean-max"])
def test_the_mlps_bag_can_be_the_max_of_its_word_vectors_or_both(pooling: str) -> None:
    model = small_model("mlp", pooling=pooling)
    assert model.layers[1].in_features == (32 if pooling == "mean-max" else 16)
    ids = torch.tensor([[5, 6, 7, 8]])
    padded = torch.cat([ids, torch.zeros(1, 3, dtype=torch.long)], dim=1)
    torch.testing.assert_close(model(padded)[0], model(ids)[0])
    vectors = model.embedding(ids)[0]
    bag = {"max": vectors.amax(dim=0), "mean-max": torch.cat([vectors.mean(dim=0), vectors.amax(dim=0)])}[pooling]
    torch.testing.assert_close(model._bag(padded)[0], bag)


@pytest.mark.parametrize("pooling", ["weighted", "weighted-max"])
def test_the_mlps_weighted_mean_starts_as_the_mean_and_weighs_each_word_by_its_learned_score(pooling: str) -> None:
    model = small_model("mlp", pooling=pooling)
    ids = torch.tensor([[5, 6, 7, 8]])
    padded = torch.cat([ids, torch.zeros(1, 3, dtype=torch.long)], dim=1)
    vectors = model.embedding(ids)[0]
    width = vectors.shape[-1]
    torch.testing.assert_close(model._bag(padded)[0, :width], vectors.mean(dim=0))  # every score starts at zero
    with torch.no_grad():
        model.word_scores[6] = math.log(3.0)  # word 6 counts three times as much as each other word
    expected = (vectors[0] + 3 * vectors[1] + vectors[2] + vectors[3]) / 6
    torch.testing.assert_close(model._bag(padded)[0, :width], expected)
    torch.testing.assert_close(model(padded)[0], model(ids)[0])  # the padding has no weight
    torch.testing.assert_close(model(ids)[0], model(ids.flip(1))[0])  # still a bag
    if pooling == "weighted-max":
        torch.testing.assert_close(model._bag(padded)[0, width:], vectors.amax(dim=0))
    # the scores learn: a loss reaches the score of every word of the passage, and of no other word
    model(ids, torch.tensor([1]))[1].backward()
    assert model.word_scores.grad[[5, 6, 7, 8]].abs().min() > 0 and model.word_scores.grad[9:].abs().max() == 0


def test_only_the_weighted_bags_have_word_scores() -> None:
    assert small_model("mlp", pooling="mean-max").word_scores is None
    assert "word_scores" not in small_model("mlp", pooling="mean").state_dict()
    assert small_model("mlp", pooling="weighted").word_scores.shape == (50,)


def test_mlp_is_a_bag_word_order_does_not_matter() -> None:
    model = MLPClassifier(MLPConfig(vocab_size=30, num_classes=3, embed_dim=8, hidden_sizes=(16, 8))).eval()
    ids = torch.tensor([[5, 6, 7, 8]])
    torch.testing.assert_close(model(ids)[0], model(ids.flip(1))[0])


@pytest.mark.parametrize("stride,padding,pooling", [(1, 0, "max"), (2, 1, "avg"), (3, 2, "max")])
def test_cnn_kernel_sizes_counts_stride_padding_and_pooling_are_config(stride: int, padding: int,
                                                                        pooling: str) -> None:
    config = CNNConfig(vocab_size=40, num_classes=3, embed_dim=8, kernel_sizes=(3, 5), kernel_counts=(6, 2),
                       stride=stride, padding=padding, pooling=pooling, dropout=0.0)
    model = TextCNN(config).eval()
    assert [c.out_channels for c in model.convs] == [6, 2]
    assert all(c.stride == (stride,) and c.padding == (padding,) for c in model.convs)
    assert model.fc.in_features == 8
    for length in (1, 2, 11):  # shorter than the widest kernel too
        logits, _ = model(torch.randint(2, 40, (2, length)))
        assert logits.shape == (2, 3) and torch.isfinite(logits).all()


def test_cnn_rejects_inconsistent_kernels() -> None:
    with pytest.raises(ValueError):
        CNNConfig(vocab_size=10, num_classes=3, kernel_sizes=(3, 4), kernel_counts=(8,))
    with pytest.raises(ValueError):
        CNNConfig(vocab_size=10, num_classes=3, kernel_sizes=(3,), kernel_counts=(8,), padding=3)


@pytest.mark.parametrize("arch", ARCHITECTURES)
def test_a_few_steps_fit_a_separable_toy_task(arch: str) -> None:
    """Class c's passages use words from their own band of ids: the loss must fall."""
    torch.manual_seed(0)
    model = small_model(arch).train()
    labels = torch.randint(0, 3, (48,))
    ids = 2 + labels[:, None] * 15 + torch.randint(0, 15, (48, 8))
    optimizer = torch.optim.Adam(model.parameters(), lr=0.02)
    _, first = model(ids, labels)
    for _ in range(40):
        optimizer.zero_grad()
        _, loss = model(ids, labels)
        loss.backward()
        optimizer.step()
    assert loss.item() < 0.5 * first.item()


def test_passages_come_from_the_plays_of_their_part_and_are_long_enough() -> None:
    passages = genre_passages("test")
    assert {label for label, _ in passages} == set(GENRE_LABELS)
    for _, text in passages:  # speaker names are not counted
        spoken = " ".join(line.split(": ", 1)[1] for line in text.splitlines())
        assert len(words(spoken)) >= MIN_PASSAGE_WORDS
    train_text = {text for _, text in genre_passages("train")}
    assert not train_text & {text for _, text in passages}


def test_metrics_accuracy_and_macro_f1_by_hand() -> None:
    gold = [0, 0, 0, 1, 1, 2]
    predicted = [0, 0, 1, 1, 2, 2]
    m = classification_metrics(gold, predicted, ["a", "b", "c"])
    assert m["accuracy"] == pytest.approx(4 / 6, abs=1e-4)
    f1 = [2 * 1.0 * (2 / 3) / (1.0 + 2 / 3), 0.5, 2 * 0.5 * 1.0 / 1.5]
    assert m["macro_f1"] == pytest.approx(sum(f1) / 3, abs=1e-3)
    assert m["confusion"] == [[2, 1, 0], [0, 1, 1], [0, 0, 1]]


def test_balanced_class_weights_give_each_class_the_same_total() -> None:
    targets = [0] * 6 + [1] * 3 + [2]
    w = class_weights(targets, 3, "balanced")
    totals = [w[c].item() * targets.count(c) for c in range(3)]
    assert totals == pytest.approx([totals[0]] * 3)
    assert class_weights(targets, 3, "none") is None


def test_word_encoder_keeps_unknown_words_and_truncates() -> None:
    vocab = build_vocab(["the king is dead", "the king"], min_count=2)
    assert vocab.itos == ["<pad>", "<unk>", "king", "the"]
    encoder = WordEncoder(vocab, max_len=3)
    assert encoder.encode("The KING is dead, long live") == [3, 2, 1]
    assert encoder.encode("!!!") == [1]


def test_the_vocabulary_can_keep_only_the_words_of_several_training_plays() -> None:
    from training.classifier import words_of_plays

    # Falstaff speaks in three training plays, Prospero in one (The Tempest): a name of one play is unknown, as
    # the names of the unseen plays are.
    shared = words_of_plays(2)
    assert {"the", "king", "falstaff"} <= shared and "prospero" not in shared
    vocab = build_vocab(["PROSPERO: the king", "FALSTAFF: the king"], min_count=1, allowed=shared)
    assert vocab.itos == ["<pad>", "<unk>", "king", "the", "falstaff"]
    assert WordEncoder(vocab, max_len=8).encode("PROSPERO: the king") == [1, 3, 2]


def test_labeled_file_is_split_80_10_10_reproducibly(tmp_path) -> None:
    path = tmp_path / "data.tsv"
    rows = [f"{'pos' if i % 2 else 'neg'}\ttext number {i}" for i in range(50)]
    path.write_text("\n".join(rows) + "\n", encoding="utf-8")
    train, validation, test = labeled_splits(path)
    assert (len(train), len(validation), len(test)) == (40, 5, 5)
    assert labeled_splits(path) == (train, validation, test)
    path.write_text("pos\tonly one field\nbroken line\n", encoding="utf-8")
    with pytest.raises(ValueError, match=":2:"):
        labeled_splits(path)


@pytest.mark.parametrize("pooling", ["mean", "weighted-max"])
def test_training_on_a_labeled_file_writes_a_loadable_checkpoint(tmp_path, pooling: str) -> None:
    rng = random.Random(0)
    rows = []
    for _ in range(120):
        label = rng.choice(["sea", "land"])
        vocabulary = ["wave", "ship", "salt", "tide"] if label == "sea" else ["hill", "field", "stone", "road"]
        rows.append(f"{label}\t" + " ".join(rng.choice(vocabulary) for _ in range(8)))
    data = tmp_path / "toy.tsv"
    data.write_text("\n".join(rows) + "\n", encoding="utf-8")
    args = build_parser().parse_args(["classifier", "--arch", "mlp", "--labeled", str(data), "--profile", "tiny",
                                      "--epochs", "8", "--pooling", pooling, "--out", str(tmp_path / "ck"), "--force"])
    from training.classifier import train

    (path,) = train(args)
    checkpoint = load_checkpoint(path)
    assert checkpoint.id == "clf-mlp" and checkpoint.config["labels"] == ["land", "sea"]
    assert checkpoint.metrics["test_accuracy"] >= 0.9
    assert {"test_accuracy", "test_macro_f1"} <= checkpoint.metrics.keys()
    classifier = load(checkpoint, torch.device("cpu"))
    (result,) = classifier.classify(["ship wave salt tide wave"])
    assert result["label"] == "sea"
    assert sum(result["probabilities"].values()) == pytest.approx(1.0, abs=1e-5)
    assert ("word_scores" in checkpoint.state_dict) == (pooling == "weighted-max")


@pytest.fixture(scope="module")
def toy_word2vec(tmp_path_factory) -> tuple[Path, Path]:
    """A word2vec checkpoint and a labelled file over the same small vocabulary."""
    tmp_path = tmp_path_factory.mktemp("word2vec")
    rng = random.Random(0)
    sea, land = ["wave", "ship", "salt", "tide"], ["hill", "field", "stone", "road"]
    rows = []
    for _ in range(120):
        label = rng.choice(["sea", "land"])
        rows.append((label, " ".join(rng.choice(sea if label == "sea" else land) for _ in range(8))))
    corpus = tmp_path / "corpus.txt"
    corpus.write_text("\n".join(text for _, text in rows) + "\n", encoding="utf-8")
    run_training("word2vec", "--profile", "tiny", "--corpus", str(corpus), "--min-count", "1", "--dim", "12",
                 "--out", str(tmp_path / "ck"))
    data = tmp_path / "toy.tsv"
    data.write_text("\n".join(f"{label}\t{text}" for label, text in rows) + "\n", encoding="utf-8")
    return tmp_path / "ck" / "word2vec-sg-corpus", data


def _embedding_rows(embedding: torch.Tensor, vocab_itos: list[str], vectors: Checkpoint
                    ) -> tuple[torch.Tensor, torch.Tensor]:
    """The classifier's rows and the word2vec vectors of the words both know."""
    from models.tokenizers import WordVocab

    known = WordVocab.from_file(vectors.file("vocab.json")).stoi
    shared = [w for w in vocab_itos if w in known]
    assert len(shared) == 8
    rows = torch.stack([embedding[vocab_itos.index(w)] for w in shared])
    return rows, vectors.state_dict["input_embeddings.weight"][[known[w] for w in shared]]


@pytest.mark.parametrize("arch", ARCHITECTURES)
def test_word2vec_initialised_embeddings_start_at_the_vectors_and_stay_there_when_frozen(
        tmp_path, toy_word2vec, arch: str) -> None:
    from training.classifier import load_splits, resolve_arguments, setup, train

    vectors_path, data = toy_word2vec
    vectors = load_checkpoint(vectors_path)
    common = ["classifier", "--arch", arch, "--labeled", str(data), "--profile", "tiny", "--epochs", "3",
              "--embeddings", "word2vec", "--word2vec", str(vectors_path), "--embed-dim", "12",
              "--out", str(tmp_path / "clf")]

    args = resolve_arguments(build_parser().parse_args(common))
    parts = setup(args, load_splits(data))
    assert parts.model.embedding.weight.requires_grad
    ours, theirs = _embedding_rows(parts.model.embedding.weight.detach(), parts.encoder.vocab.itos, vectors)
    torch.testing.assert_close(ours, theirs)  # step 0
    assert not parts.model.embedding.weight[0].any()  # padding

    for frozen, name in ((True, "frozen"), (False, "tuned")):
        (path,) = train(build_parser().parse_args(
            [*common, "--name", name, *(["--freeze-embeddings"] if frozen else [])]))
        checkpoint = load_checkpoint(path)
        itos = load(checkpoint, torch.device("cpu")).encoder.vocab.itos
        ours, theirs = _embedding_rows(checkpoint.state_dict["embedding.weight"], itos, vectors)
        assert torch.equal(ours, theirs) is frozen
        assert checkpoint.config["data"]["initialised_from"] == {
            "id": "word2vec-sg-corpus", "data": vectors.config["data"], "words": 8, "frozen": frozen}


def test_word2vec_embeddings_need_vectors_of_their_dimension(tmp_path, toy_word2vec) -> None:
    from training.classifier import load_splits, resolve_arguments, setup

    vectors_path, data = toy_word2vec

    def arguments(*flags: str):
        return resolve_arguments(build_parser().parse_args(
            ["classifier", "--arch", "cnn", "--labeled", str(data), "--profile", "tiny", "--out", str(tmp_path),
             *flags]))

    with pytest.raises(ValueError, match="give --embed-dim 12"):
        setup(arguments("--embeddings", "word2vec", "--word2vec", str(vectors_path)), load_splits(data))
    with pytest.raises(FileNotFoundError, match="python -m training word2vec"):
        setup(arguments("--embeddings", "word2vec", "--embed-dim", "12"), load_splits(data))  # no <out>/word2vec-sg
    with pytest.raises(ValueError, match="--freeze-embeddings is for the word2vec vectors"):
        arguments("--freeze-embeddings")
    with pytest.raises(ValueError, match="--word2vec is for the word2vec vectors"):
        arguments("--embeddings", "random", "--word2vec", str(vectors_path))


# ---- character n-grams and training augmentation ---------------------------------------------------


def test_a_words_ngrams_are_its_marked_pieces_of_three_to_five_characters_in_stable_buckets() -> None:
    assert char_ngrams("the", (3, 5)) == ["<th", "the", "he>", "<the", "the>", "<the>"]
    assert char_ngrams("", (3, 5)) == []
    # CRC-32, not Python's salted hash: a saved checkpoint's n-gram rows mean the same in every process.
    assert [ngram_bucket(g, 1000) for g in char_ngrams("the", (3, 5))] == [438, 78, 299, 817, 830, 240]


def test_a_words_vector_is_its_own_plus_the_sum_of_its_ngram_vectors() -> None:
    torch.manual_seed(0)
    embedding = SubwordEmbedding(4, 6, (3, 4), buckets=50, padding_idx=0)
    torch.nn.init.normal_(embedding.ngrams.weight)
    with pytest.raises(ValueError, match="spelled tokens"):
        embedding(torch.tensor([[2]]))  # word ids alone carry no spelling
    thee, thou, verona = (spelled(i, word, (3, 4), 50) for i, word in [(2, "thee"), (3, "thou"), (1, "verona")])
    tokens = pad_batch([[thee, thou, thou], [verona, thee]], pad_id=0)
    assert tokens.shape == (2, 3, max(map(len, (thee, thou, verona))))
    vectors = embedding(tokens)
    assert vectors.shape == (2, 3, 6)
    for position, (word_id, word) in enumerate([(2, "thee"), (3, "thou"), (3, "thou")]):
        buckets = [ngram_bucket(g, 50) for g in char_ngrams(word, (3, 4))]
        expected = embedding.weight[word_id] + embedding.ngrams.weight[buckets].sum(dim=0)
        torch.testing.assert_close(vectors[0, position], expected)
    # A word the vocabulary does not know: the unknown word's vector and its own n-grams.
    buckets = [ngram_bucket(g, 50) for g in char_ngrams("verona", (3, 4))]
    torch.testing.assert_close(vectors[1, 0], embedding.weight[1] + embedding.ngrams.weight[buckets].sum(dim=0))
    assert not vectors[1, 2].any()  # padding stays zero


def test_ngram_vectors_learn_so_a_rare_word_moves_with_the_words_it_shares_pieces_with() -> None:
    embedding = SubwordEmbedding(4, 3, (3, 5), buckets=100, padding_idx=0)
    embedding(pad_batch([[spelled(2, "kingdom", (3, 5), 100)]], 0)).sum().backward()  # a gradient through "kingdom"
    buckets = {ngram_bucket(g, 100) for g in char_ngrams("kingdom", (3, 5))}
    assert embedding.ngrams.weight.grad[ngram_bucket("<ki", 100)].abs().sum() > 0  # shared with "kingly"
    untouched = [b for b in range(100) if b not in buckets]
    assert embedding.ngrams.weight.grad[untouched].abs().sum() == 0


@pytest.mark.parametrize("arch", ARCHITECTURES)
def test_an_unknown_words_ngrams_reach_the_classifier(arch: str) -> None:
    vocab = build_vocab(["the king is dead", "the queen is dead"], min_count=1)
    encoder = WordEncoder(vocab, max_len=16, char_ngrams=(3, 5), ngram_buckets=200)
    model = small_model(arch, vocab_size=len(vocab), char_ngrams=(3, 5), ngram_buckets=200)
    torch.nn.init.normal_(model.embedding.ngrams.weight)
    # Two unknown words, one unknown id: their spellings alone tell them apart.
    verona, mantua = encoder.encode("the king is in verona"), encoder.encode("the king is in mantua")
    known = [vocab.stoi[w] for w in ("the", "king", "is")]
    assert [token[0] for token in verona] == [token[0] for token in mantua] == [*known, 1, 1]
    assert verona[-1][1:] == tuple(ngram_bucket(g, 200) + 1 for g in char_ngrams("verona", (3, 5)))
    with torch.no_grad():
        logits = model(pad_batch([verona, mantua], encoder.pad_id))[0]
    assert not torch.allclose(logits[0], logits[1])


def test_augmentation_reads_a_random_window_and_drops_words_but_never_all() -> None:
    generator = torch.Generator().manual_seed(0)
    ids = list(range(10, 30))
    window = Augmentation(crop_words=5).apply(ids, generator)
    assert len(window) == 5 and window == list(range(window[0], window[0] + 5))
    assert len({Augmentation(crop_words=5).apply(ids, generator)[0] for _ in range(20)}) > 1  # anywhere
    assert Augmentation(crop_words=50).apply(ids, generator) == ids
    kept = Augmentation(word_dropout=0.5).apply(ids, generator)
    assert 0 < len(kept) < len(ids) and kept == sorted(kept) and set(kept) <= set(ids)
    assert len(Augmentation(word_dropout=0.999).apply(ids, generator)) >= 1
    assert Augmentation().apply(ids, generator) == ids
    # The same random state, the same draws: a resumed run restores torch's state and crops alike.
    torch.manual_seed(1)
    first = [Augmentation(crop_words=5, word_dropout=0.2).apply(ids) for _ in range(3)]
    torch.manual_seed(1)
    assert [Augmentation(crop_words=5, word_dropout=0.2).apply(ids) for _ in range(3)] == first


def test_bert_training_reads_whole_windows_of_a_passage_drawn_anywhere_in_it() -> None:
    # A passage of three whole windows of 4 ids and a short fourth, as SubwordEncoder cuts it: [CLS] … [SEP].
    windows = [[101, 10 * k + 1, 10 * k + 2, 102] for k in range(3)] + [[101, 31, 102]]
    ids = [i for window in windows for i in window]
    generator = torch.Generator().manual_seed(0)
    drawn = [RandomWindows(size=4, windows=1).apply(ids, generator) for _ in range(60)]
    assert all(window in windows for window in drawn)
    assert {tuple(window) for window in drawn} == {tuple(window) for window in windows}  # every one, the last too
    pairs = {tuple(RandomWindows(size=4, windows=2).apply(ids, generator)) for _ in range(60)}
    assert pairs == {tuple(windows[k] + windows[k + 1]) for k in range(3)}  # consecutive, never past the end
    assert RandomWindows(size=4, windows=5).apply(ids, generator) == ids  # fewer windows than asked: all of them
    torch.manual_seed(1)
    first = [RandomWindows(size=4, windows=1).apply(ids) for _ in range(5)]
    torch.manual_seed(1)
    assert [RandomWindows(size=4, windows=1).apply(ids) for _ in range(5)] == first  # torch's state, as on resume


def test_a_subword_encoder_without_a_window_limit_keeps_the_whole_text() -> None:
    from tokenizers import Tokenizer, models, pre_tokenizers

    vocab = {"[PAD]": 0, "[UNK]": 1, "[CLS]": 2, "[SEP]": 3, **{w: 4 + i for i, w in enumerate("abcdefghij")}}
    tokenizer = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    tokenizer.pre_tokenizer = pre_tokenizers.Whitespace()
    text = " ".join("abcdefghij")
    assert SubwordEncoder(tokenizer, max_len=5, windows=1).encode(text) == [2, 4, 5, 6, 3]
    whole = SubwordEncoder(tokenizer, max_len=5, windows=None).encode(text)
    assert whole == [2, 4, 5, 6, 3, 2, 7, 8, 9, 3, 2, 10, 11, 12, 3, 2, 13, 3]


@pytest.mark.parametrize(("flags", "error"), [
    (["--char-ngrams", "5-3"], SystemExit),
    (["--char-ngrams", "three"], SystemExit),
    (["--char-ngrams", "3-5", "--ngram-buckets", "0"], "--ngram-buckets must be at least 1"),
    (["--word-dropout", "1.0"], r"--word-dropout must be in \[0, 1\)"),
    (["--crop-words", "-1"], "--crop-words must be 0"),
    (["--windows", "2"], "--windows is for the BERT classifier"),
    (["--train-windows", "2"], "--train-windows is for the BERT classifier"),
    (["--random-window"], "--random-window is for the BERT classifier"),
    (["--min-plays", "0"], "--min-plays must be at least 1"),
])
def test_bad_ngram_and_augmentation_values_are_refused(tmp_path, flags: list[str], error) -> None:
    from training.classifier import resolve_arguments

    command = ["classifier", "--arch", "cnn", "--profile", "tiny", "--out", str(tmp_path), *flags]
    if error is SystemExit:
        with pytest.raises(SystemExit):
            build_parser().parse_args(command)
        return
    with pytest.raises(ValueError, match=error):
        resolve_arguments(build_parser().parse_args(command))


def test_bert_counts_plays_too(tmp_path) -> None:
    from training.classifier import resolve_arguments

    def min_plays(*flags: str) -> int:
        return resolve_arguments(build_parser().parse_args(
            ["classifier", "--arch", "bert", "--profile", "quick", "--out", str(tmp_path), *flags])).min_plays

    assert (min_plays(), min_plays("--min-plays", "3")) == (2, 3)
    with pytest.raises(ValueError, match="--min-plays must be at least 1, got 0"):
        min_plays("--min-plays", "0")


def test_word_level_flags_are_refused_for_bert(tmp_path) -> None:
    from training.classifier import resolve_arguments

    with pytest.raises(ValueError, match="--char-ngrams is for the word-level classifiers"):
        resolve_arguments(build_parser().parse_args(
            ["classifier", "--arch", "bert", "--profile", "tiny", "--out", str(tmp_path), "--char-ngrams", "3-5"]))


@pytest.mark.parametrize("arch", ["gru", "bert"])
def test_a_labeled_file_has_no_plays_to_count(tmp_path, arch: str) -> None:
    from training.classifier import resolve_arguments

    data = tmp_path / "mine.tsv"
    data.write_text("a\tone text\nb\tanother\na\ta third\n", encoding="utf-8")
    command = ["classifier", "--arch", arch, "--labeled", str(data), "--profile", "quick", "--out", str(tmp_path)]
    with pytest.raises(ValueError, match="--min-plays counts the training plays"):
        resolve_arguments(build_parser().parse_args([*command, "--min-plays", "2"]))
    assert resolve_arguments(build_parser().parse_args(command)).min_plays == 1  # whatever the profile says


@pytest.mark.parametrize("flag", ["--windows", "--train-windows"])
def test_bert_reads_at_least_one_window(tmp_path, flag: str) -> None:
    from training.classifier import resolve_arguments

    with pytest.raises(ValueError, match=f"{flag} must be at least 1, got 0"):
        resolve_arguments(build_parser().parse_args(
            ["classifier", "--arch", "bert", "--profile", "tiny", "--out", str(tmp_path), flag, "0"]))


def test_bert_draws_train_windows_of_a_training_passage_and_they_default_to_windows(tmp_path) -> None:
    from models.bert import BertConfig, BertForSequenceClassification
    from training.classifier import ClassificationTask, RandomWindows, Splits, resolve_arguments

    def resolved(*flags: str) -> argparse.Namespace:
        return resolve_arguments(build_parser().parse_args(
            ["classifier", "--arch", "bert", "--profile", "full", "--out", str(tmp_path), *flags]))

    assert (resolved("--windows", "3").train_windows, resolved("--windows", "3", "--train-windows", "2").train_windows
            ) == (3, 2)  # --windows unless given
    args = resolved("--windows", "4", "--train-windows", "2", "--random-window")
    model = BertForSequenceClassification(BertConfig(vocab_size=16, max_position=8, dim=8, n_layers=1, n_heads=2,
                                                     ffn_dim=16), num_labels=2)
    rows = ([[1, 2, 3]], [0])
    task = ClassificationTask(model, rows, rows, Splits([], [], [], ["a", "b"], {}), 0, args, torch.device("cpu"))
    assert task.augmentation == RandomWindows(size=8, windows=2)


def test_a_classifier_with_char_ngrams_keeps_its_best_epoch_and_loads_to_the_same_scores(tmp_path) -> None:
    from training.classifier import load_splits, train

    # A noisy toy task (each word from the passage's side with probability 0.6), so that validation
    # macro-F1 goes up and down and the best epoch is not the last.
    rng = random.Random(0)
    rows = []
    for _ in range(160):
        label = rng.choice(["sea", "land"])
        sides = [["wave", "ship", "salt", "tide"], ["hill", "field", "stone", "road"]]
        mine, other = sides if label == "sea" else sides[::-1]
        rows.append(f"{label}\t" + " ".join(rng.choice(mine if rng.random() < 0.6 else other)
                                            + rng.choice(["", "s", "ward"]) for _ in range(4)))
    data = tmp_path / "toy.tsv"
    data.write_text("\n".join(rows) + "\n", encoding="utf-8")
    (path,) = train(build_parser().parse_args(
        ["classifier", "--arch", "mlp", "--labeled", str(data), "--profile", "tiny", "--epochs", "6", "--lr", "1e-2",
         "--char-ngrams", "3-5", "--ngram-buckets", "500", "--word-dropout", "0.1", "--crop-words", "3",
         "--out", str(tmp_path / "ck"), "--force"]))
    checkpoint = load_checkpoint(path)
    assert checkpoint.config["model"]["char_ngrams"] == [3, 5] and checkpoint.config["model"]["ngram_buckets"] == 500
    assert "embedding.ngrams.weight" in checkpoint.state_dict
    evaluations = [e["val_macro_f1"] for e in checkpoint.metrics["evaluations"] if "val_macro_f1" in e]
    assert len(evaluations) == 6 and checkpoint.metrics["val_macro_f1"] == max(evaluations) != evaluations[-1]
    # The saved weights are the best epoch's: the reloaded network, its encoder spelling the words again,
    # scores the validation passages as that epoch did.
    classifier = load(checkpoint, torch.device("cpu"))
    validation = load_splits(data).validation
    predicted = classifier.probabilities([text for _, text in validation]).argmax(dim=-1).tolist()
    gold = [classifier.labels.index(label) for label, _ in validation]
    assert classification_metrics(gold, predicted, classifier.labels)["macro_f1"] == max(evaluations)


@pytest.mark.parametrize("smoothing", [0.0, 0.2])
def test_label_smoothing_moves_that_much_of_each_target_to_every_class_alike(smoothing: float) -> None:
    from argparse import Namespace

    from training.classifier import ClassificationTask, Splits

    model = small_model("mlp")
    passages, targets = [[5, 6, 7], [8, 9], [10, 11, 12, 13]], [0, 2, 1]
    args = Namespace(batch_size=3, seed=0, crop_words=0, word_dropout=0.0, random_window=None,
                     label_smoothing=smoothing, class_weights="none")
    task = ClassificationTask(model, (passages, targets), (passages, targets), Splits([], [], [], ["a", "b", "c"], {}),
                              0, args, torch.device("cpu"))
    log_p = torch.log_softmax(model(pad_batch(passages, 0))[0], dim=-1)
    # The target is 1 - smoothing on the label plus smoothing / classes on every class.
    expected = -((1 - smoothing) * log_p[range(3), targets] + smoothing * log_p.mean(dim=-1)).mean()
    torch.testing.assert_close(task.loss(model, [0, 1, 2], [0, 1, 2]), expected)


def test_average_last_scores_the_mean_of_the_last_epochs_weights_too(tmp_path) -> None:
    from training.classifier import train

    rng = random.Random(0)
    sides = [["wave", "ship", "salt", "tide"], ["hill", "field", "stone", "road"]]
    rows = [f"{label}\t" + " ".join(rng.choice(sides[label == "land"]) for _ in range(6))
            for label in (rng.choice(["sea", "land"]) for _ in range(80))]
    data = tmp_path / "toy.tsv"
    data.write_text("\n".join(rows) + "\n", encoding="utf-8")
    (path,) = train(build_parser().parse_args(
        ["classifier", "--arch", "gru", "--labeled", str(data), "--profile", "tiny", "--epochs", "3",
         "--average-last", "2", "--out", str(tmp_path / "ck"), "--force"]))
    evaluations = load_checkpoint(path).metrics["evaluations"]
    assert [e.get("averaged") for e in evaluations] == [None, None, None, 2]


def test_the_mlps_bag_is_the_one_chosen_for_its_start_unless_asked(tmp_path) -> None:
    from training.classifier import resolve_arguments

    def pooling(*flags: str) -> str:
        return resolve_arguments(build_parser().parse_args(
            ["classifier", "--arch", "mlp", "--profile", "quick", "--out", str(tmp_path), *flags])).pooling

    assert pooling() == pooling("--embeddings", "word2vec") == "weighted-max"
    assert pooling("--embeddings", "random") == "mean"
    assert pooling("--embeddings", "random", "--pooling", "max") == "max"
