"""word2vec: sampling distributions, the compiled update against autograd, vectors, training."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from models.checkpoint import load_checkpoint
from models.pipelines.word_vectors import WordVectors, load
from models.tokenizers import WordVocab
from models.word2vec import Word2Vec, Word2VecConfig
from training.word2vec import flatten, keep_probabilities, noise_table, train_block

from .conftest import run_training


def test_noise_table_follows_unigram_to_three_quarters():
    counts = np.array([1000, 100, 10, 1])
    table = noise_table(counts, size=1_000_000)
    observed = np.bincount(table, minlength=4) / len(table)
    expected = counts**0.75 / (counts**0.75).sum()
    np.testing.assert_allclose(observed, expected, atol=1e-5)


def test_subsampling_drops_frequent_words_and_keeps_rare_ones():
    counts = np.array([1_000_000, 1_000, 10])
    keep = keep_probabilities(counts, sample=1e-3)
    threshold = 1e-3 * counts.sum()
    assert keep[2] == 1.0 and keep[1] == 1.0
    assert keep[0] == pytest.approx((np.sqrt(counts[0] / threshold) + 1) * threshold / counts[0], rel=1e-6)
    assert keep[0] < 0.05
    assert np.all(keep_probabilities(counts, sample=0) == 1.0)


def _one_update(mode: str) -> tuple[Word2Vec, Word2Vec]:
    """The compiled loop on the sentence [0, 1] (window 1, one negative always word 2) and the same
    two updates done as SGD steps on Word2Vec.forward's loss through autograd."""
    torch.manual_seed(0)
    config = Word2VecConfig(vocab_size=3, dim=8, mode=mode, window=1, negative=1, sample=0)
    compiled = Word2Vec(config)
    torch.nn.init.normal_(compiled.output_embeddings.weight, std=0.3)
    torch.nn.init.normal_(compiled.input_embeddings.weight, std=0.3)
    reference = Word2Vec(config)
    reference.load_state_dict(compiled.state_dict())

    alpha = 0.1
    corpus = np.array([0, 1], dtype=np.int32)
    starts = np.array([0, 2], dtype=np.int64)
    train_block(compiled.input_embeddings.weight.data.numpy(), compiled.output_embeddings.weight.data.numpy(),
                corpus, starts, np.ones(3, np.float32), np.array([2], np.int32), mode == "cbow", 1, 1,
                alpha, alpha, 0, 2, np.array([1], np.uint64))

    # Position 0 then position 1; skip-gram's input is the context word, predicting the centre.
    for centre, context in ((0, 1), (1, 0)):
        reference.zero_grad()
        inputs = torch.tensor([context]) if mode == "sg" else torch.tensor([[context]])
        loss = reference(inputs, torch.tensor([centre]), torch.tensor([[2]]))
        loss.backward()
        with torch.no_grad():
            for p in reference.parameters():
                p -= alpha * p.grad
    return compiled, reference


@pytest.mark.parametrize("mode", ["sg", "cbow"])
def test_compiled_update_is_the_gradient_step_of_the_objective(mode):
    compiled, reference = _one_update(mode)
    for (name, a), (_, b) in zip(compiled.state_dict().items(), reference.state_dict().items(), strict=True):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-4, msg=name)


def test_flatten_drops_unknown_words_and_marks_sentence_starts():
    vocab = WordVocab.build([["a", "b", "a"], ["c"]], min_count=2)
    corpus, starts = flatten(vocab, [["a", "b", "a"], ["c"], ["a"]])
    assert vocab.itos == ["a"]
    assert corpus.tolist() == [0, 0, 0]
    assert starts.tolist() == [0, 2, 3]


def test_most_similar_excludes_query_words_and_ranks_by_cosine():
    vocab = WordVocab(["king", "queen", "man", "woman", "apple"], [5, 4, 3, 2, 1])
    vectors = WordVectors(vocab, np.array([[1, 1, 0], [1, 0.9, 0.1], [0.1, 1, 0], [0.1, 0.9, 0.2], [0, 0, 1]],
                                          dtype=np.float32))
    results = vectors.most_similar(["king"], topn=4)
    assert [w for w, _ in results][0] == "queen"
    assert "king" not in [w for w, _ in results]
    scores = [s for _, s in results]
    assert scores == sorted(scores, reverse=True)
    assert vectors.similarity("king", "king") == pytest.approx(1.0)
    assert vectors.missing(["king", "pear", "pear"]) == ["pear"]


def test_tiny_training_writes_a_loadable_checkpoint_reproducibly(tmp_path):
    for out in ("a", "b"):
        run_training("word2vec", "--mode", "cbow", "--profile", "tiny", "--seed", "3", "--out", str(tmp_path / out))
    first = load_checkpoint(tmp_path / "a" / "word2vec-cbow")
    second = load_checkpoint(tmp_path / "b" / "word2vec-cbow")
    assert {p.name for p in first.path.iterdir()} == {"config.json", "model.safetensors", "vocab.json",
                                                      "metrics.json"}
    assert first.config["data"]["split"]["seed"] == 0
    assert set(first.metrics) >= {"wordsim353", "simlex999", "analogies"}
    assert 0 < first.metrics["wordsim353"]["pairs"] <= 353
    for name, tensor in first.state_dict.items():
        assert torch.equal(tensor, second.state_dict[name]), name
    vectors = load(first)
    assert len(vectors) == first.config["model"]["vocab_size"]


def test_export_writes_vectors_gensim_reads(tmp_path):
    from gensim.models import KeyedVectors

    run_training("word2vec", "--profile", "tiny", "--out", str(tmp_path))
    output = tmp_path / "vectors.txt"
    run_training("export", "word2vec", "--format", "text", "--out", str(tmp_path), "--output", str(output))
    keyed = KeyedVectors.load_word2vec_format(str(output), binary=False)
    ours = load(load_checkpoint(tmp_path / "word2vec-sg"))
    assert len(keyed) == len(ours)
    np.testing.assert_allclose(keyed["king"], ours["king"], atol=1e-5)


def test_user_corpus_file_trains(tmp_path):
    corpus = tmp_path / "corpus.txt"
    corpus.write_text("the cat sat on the mat\nthe dog sat on the log\n" * 50)
    run_training("word2vec", "--profile", "tiny", "--corpus", str(corpus), "--min-count", "1",
                 "--out", str(tmp_path / "ck"))
    checkpoint = load_checkpoint(tmp_path / "ck" / "word2vec-sg-corpus")  # beside the default, not over it
    assert checkpoint.config["data"]["name"] == "user corpus"
    assert "cat" in load(checkpoint)
