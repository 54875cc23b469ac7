"""word2vec: sampling distributions, the compiled update against autograd, vectors, training."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from numba import njit

from models.checkpoint import load_checkpoint
from models.pipelines.word_vectors import WordVectors, load
from models.tokenizers import WordVocab
from models.word2vec import Word2Vec, Word2VecConfig
from training.word2vec import (
    MAX_EXP,
    FitOptions,
    Sampling,
    _draw_noise,
    _next_random,
    _sigmoid,
    fit,
    flatten,
    keep_probabilities,
    merge_private_rows,
    noise_alias_tables,
    sigmoid_table,
    train_job,
)

from .conftest import run_training


def test_alias_tables_give_each_word_its_unigram_to_three_quarters_share():
    counts = np.array([5000, 1000, 100, 10, 10, 1, 0])
    threshold, alias = noise_alias_tables(counts)
    # Word w owns share[w] of its own column and 1 - share[c] of every column c aliased to it.
    share = threshold / 2.0**32
    implied = (share + np.bincount(alias, weights=1 - share, minlength=len(counts))) / len(counts)
    # Shares are held to 2^-32.
    np.testing.assert_allclose(implied, counts**0.75 / (counts**0.75).sum(), rtol=0, atol=1e-9)


@njit
def _noise_counts(draws: int, threshold: np.ndarray, alias: np.ndarray) -> np.ndarray:
    counts = np.zeros(threshold.shape[0], dtype=np.int64)
    state = np.uint64(1)
    for _ in range(draws):
        state = _next_random(state)
        counts[_draw_noise(state, threshold, alias)] += 1
    return counts


def test_compiled_noise_draws_follow_the_alias_tables():
    counts = np.array([5000, 1000, 100, 10, 1])
    observed = _noise_counts(2_000_000, *noise_alias_tables(counts)) / 2_000_000
    expected = counts**0.75 / (counts**0.75).sum()
    np.testing.assert_allclose(observed, expected, rtol=0.02, atol=1e-4)


def test_sigmoid_table_is_within_its_resolution_of_the_sigmoid():
    table = sigmoid_table()
    scale = np.float32((len(table) - 1) / (2 * MAX_EXP))
    for f in np.linspace(-10, 10, 2001, dtype=np.float32):
        # Half a step of the table times σ's steepest slope (1/4); beyond ±MAX_EXP, σ(MAX_EXP)'s distance from 1.
        bound = max(0.25 * MAX_EXP / (len(table) - 1), 1 / (1 + np.exp(MAX_EXP))) + 1e-6
        assert abs(_sigmoid(f, table, scale) - 1 / (1 + np.exp(-float(f)))) <= bound, f


def test_subsampling_drops_frequent_words_and_keeps_rare_ones():
    counts = np.array([1_000_000, 1_000, 10])
    keep = keep_probabilities(counts, sample=1e-3)
    threshold = 1e-3 * counts.sum()
    assert keep[2] == 1.0 and keep[1] == 1.0
    assert keep[0] == pytest.approx((np.sqrt(counts[0] / threshold) + 1) * threshold / counts[0], rel=1e-6)
    assert keep[0] < 0.05
    assert np.all(keep_probabilities(counts, sample=0) == 1.0)


def _one_update(mode: str, private_rows: int) -> tuple[Word2Vec, Word2Vec]:
    """The compiled loop on the sentence [0, 1, 2] (window 1, one negative always word 3), with the
    output vectors of words below ``private_rows`` in a thread's private copy merged afterwards, and
    the same updates done as SGD steps on Word2Vec.forward's loss through autograd."""
    torch.manual_seed(0)
    config = Word2VecConfig(vocab_size=4, dim=8, mode=mode, window=1, negative=1, sample=0)
    compiled = Word2Vec(config)
    torch.nn.init.normal_(compiled.output_embeddings.weight, std=0.3)
    torch.nn.init.normal_(compiled.input_embeddings.weight, std=0.3)
    reference = Word2Vec(config)
    reference.load_state_dict(compiled.state_dict())

    alpha = 0.1
    corpus = np.array([0, 1, 2], dtype=np.int32)
    starts = np.array([0, 3], dtype=np.int64)
    # Every word kept, noise word 3 alone, and a table fine enough that σ is exact to 1e-6.
    sampling = Sampling.build(np.array([0, 0, 0, 1]), sample=0)._replace(sigmoid=sigmoid_table(1_000_001))
    w_out = compiled.output_embeddings.weight.data.numpy()
    private_out = w_out[:private_rows].copy()
    start = private_out.copy()
    train_job(compiled.input_embeddings.weight.data.numpy(), w_out, private_out, corpus, starts, sampling,
              mode == "cbow", 1, 1, alpha, alpha, np.uint64(1))
    merge_private_rows(w_out[:private_rows], private_out, start)

    def sgd_step(inputs: torch.Tensor, centre: int, input_scale: float = 1.0) -> None:
        reference.zero_grad()
        reference(inputs, torch.tensor([centre]), torch.tensor([[3]])).backward()
        with torch.no_grad():
            reference.output_embeddings.weight -= alpha * reference.output_embeddings.weight.grad
            reference.input_embeddings.weight -= alpha * input_scale * reference.input_embeddings.weight.grad

    for centre, contexts in ((0, [1]), (1, [0, 2]), (2, [1])):
        if mode == "sg":  # each context word's input vector predicts the centre, one pair at a time
            for context in contexts:
                sgd_step(torch.tensor([context]), centre)
        else:  # the mean predicts the centre; each context vector takes h's whole step, as in the reference code
            sgd_step(torch.tensor([contexts]), centre, input_scale=len(contexts))
    return compiled, reference


@pytest.mark.parametrize("private_rows", [0, 2])
@pytest.mark.parametrize("mode", ["sg", "cbow"])
def test_compiled_update_is_the_gradient_step_of_the_objective(mode, private_rows):
    compiled, reference = _one_update(mode, private_rows)
    for (name, a), (_, b) in zip(compiled.state_dict().items(), reference.state_dict().items(), strict=True):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-4, msg=name)


def test_merge_adds_a_jobs_changes_to_the_shared_rows_and_refreshes_the_threads_copy():
    shared = np.array([[1.0, 2.0], [3.0, 4.0], [5.0, 6.0]], dtype=np.float32)  # another thread moved row 0
    start = np.array([[0.5, 2.0], [3.0, 4.0]], dtype=np.float32)
    private = np.array([[1.0, 2.0], [3.0, 3.0]], dtype=np.float32)  # this job moved rows 0 and 1
    merge_private_rows(shared[:2], private, start)
    np.testing.assert_array_equal(shared, [[1.5, 2.0], [3.0, 3.0], [5.0, 6.0]])
    np.testing.assert_array_equal(private, shared[:2])
    np.testing.assert_array_equal(start, shared[:2])


def test_two_workers_merge_every_threads_private_output_rows_into_the_model():
    vocab = WordVocab.build([["the", "cat", "sat", "on", "the", "mat"]] * 400, min_count=1)
    sentences = [["the", "cat", "sat", "on", "the", "mat"], ["the", "mat", "sat", "on", "the", "cat"]] * 3000
    corpus, starts = flatten(vocab, sentences)
    model = Word2Vec(Word2VecConfig(vocab_size=len(vocab), dim=16, window=2, negative=2, sample=0))
    with torch.no_grad():
        figures = fit(model, corpus, starts, np.array(vocab.counts), FitOptions(epochs=2, alpha=0.025, workers=2))
    # Output vectors start at zero, and every word's is in the threads' private copies (5 rows < 4 MB).
    assert torch.all(model.output_embeddings.weight.abs().sum(dim=1) > 0)
    assert figures["effective_words"] == 2 * len(corpus)


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
