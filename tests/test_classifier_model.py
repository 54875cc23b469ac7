"""The MLP, TextCNN and RNN/LSTM/GRU classifiers, their data, metrics, trainer and loader."""

from __future__ import annotations

import random

import pytest
import torch

from models.checkpoint import load_checkpoint
from models.classifier import ARCHITECTURES, WordEncoder, build_model, build_vocab
from models.cnn import CNNConfig, TextCNN
from models.mlp import MLPClassifier, MLPConfig
from models.pipelines.classification import load
from models.tokenizers import words
from training.classifier import (
    MIN_PASSAGE_WORDS,
    class_weights,
    classification_metrics,
    genre_passages,
    labeled_splits,
)
from training.cli import build_parser
from training.data import GENRE_LABELS


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


def test_training_on_a_labeled_file_writes_a_loadable_checkpoint(tmp_path) -> None:
    rng = random.Random(0)
    rows = []
    for _ in range(120):
        label = rng.choice(["sea", "land"])
        vocabulary = ["wave", "ship", "salt", "tide"] if label == "sea" else ["hill", "field", "stone", "road"]
        rows.append(f"{label}\t" + " ".join(rng.choice(vocabulary) for _ in range(8)))
    data = tmp_path / "toy.tsv"
    data.write_text("\n".join(rows) + "\n", encoding="utf-8")
    args = build_parser().parse_args(["classifier", "--arch", "mlp", "--labeled", str(data), "--profile", "tiny",
                                      "--epochs", "8", "--out", str(tmp_path / "ck"), "--force"])
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
