"""word2vec: skip-gram / CBOW with negative sampling (checkpoints word2vec-sg, word2vec-cbow).

The update is the per-pair stochastic gradient step of ``models.word2vec.Word2Vec``'s objective,
run as a compiled loop (numba) over the parameters' memory: one word pair at a time is what the
method is, and per-pair gathers and scatters in torch spend most of their time in dispatch. The
corpus is cut into jobs of about 10,000 words; worker threads take jobs one at a time and run them
without the GIL, updating shared vectors without locks (Hogwild), as the reference implementations
do, except the frequent words' output vectors, of which each thread updates its own copy and merges
its changes after each job (see ``fit``). A job's random stream depends only on the seed and the
job, so ``--workers 1`` with a seed reproduces a run exactly.
"""

from __future__ import annotations

import argparse
import logging
import math
import os
import threading
import time
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import NamedTuple

import numpy as np
import torch
from numba import njit

from models.catalog import checkpoint_id_of
from models.checkpoint import load_checkpoint, save_checkpoint, update_metrics
from models.pipelines.word_vectors import WordVectors, load
from models.tokenizers import WordVocab, words
from models.word2vec import VOCAB_FILE, Word2Vec, Word2VecConfig
from training import data
from training.common import add_name_arguments, apply_profile, checkpoint_name, log, progress, set_seed
from training.recipe import recipe

# The quick profile's 15 epochs, not the reference code's 5: on the 557k training words of the plays, 5
# epochs leave the vectors undertrained (wordsim353 rho 0.17 for skip-gram, 0.26 for CBOW; 0.36 and 0.40
# after 15, and gensim agrees; README, "How long to train") for 3-4 s more of training.
PROFILES = {
    "tiny": {"dim": 32, "epochs": 1, "min_count": 2, "workers": 1},
    "quick": {"dim": 100, "epochs": 15, "min_count": 5, "workers": None},
    "full": {"dim": 300, "epochs": 15, "min_count": 5, "workers": None},
}
DEFAULT_ALPHA = {"sg": 0.025, "cbow": 0.05}  # the reference implementation's starting rates
JOB_WORDS = 10_000  # corpus words per job, a thread's unit of work (gensim's batches are as long)
SIGMOID_TABLE_SIZE = 1000  # the reference implementation's table: σ over [-MAX_EXP, MAX_EXP]
MAX_EXP = 6.0
LOSS_SAMPLE_EVERY = 8  # sentences: the progress bar's loss is estimated on one in this many
PRIVATE_ROWS_BYTES = 4 << 20  # per thread: its own copy of the most frequent words' output vectors


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--mode", choices=("sg", "cbow"), default="sg", help="skip-gram or CBOW")
    parser.add_argument("--dim", type=int, default=None, help="vector size")
    parser.add_argument("--window", type=int, default=5, help="maximum context window (dynamic: 1..window)")
    parser.add_argument("--negative", type=int, default=5, help="noise words per positive pair (5-20)")
    parser.add_argument("--min-count", type=int, default=None, help="drop words rarer than this")
    parser.add_argument("--sample", type=float, default=1e-3, help="frequent-word subsampling threshold")
    parser.add_argument("--alpha", type=float, default=None, help="starting learning rate (decays linearly)")
    parser.add_argument("--min-alpha", type=float, default=1e-4, help="final learning rate")
    parser.add_argument("--workers", type=int, default=None, help="threads (default: every core)")
    add_name_arguments(parser, "the mode, sg or cbow")


# ---- corpus --------------------------------------------------------------------------------------


def shakespeare_sentences(parts: tuple[str, ...] = ("train",)) -> list[list[str]]:
    """One sentence per speech: lower-cased words, speaker names excluded."""
    plays = [p for part in parts for p in data.plays_in(part)]
    return [ws for play in plays for speech in play.speeches if (ws := words(speech.text))]


def file_sentences(path: Path) -> list[list[str]]:
    """One sentence per non-empty line of a user's text file."""
    return [ws for line in data.read_text_file(path).splitlines() if (ws := words(line))]


def flatten(vocab: WordVocab, sentences: list[list[str]]) -> tuple[np.ndarray, np.ndarray]:
    """Concatenated in-vocabulary ids and the start offset of each sentence (plus the end)."""
    encoded = [vocab.encode(s) for s in sentences]
    encoded = [s for s in encoded if s]
    lengths = np.array([len(s) for s in encoded], dtype=np.int64)
    starts = np.zeros(len(encoded) + 1, dtype=np.int64)
    np.cumsum(lengths, out=starts[1:])
    corpus = np.fromiter((i for s in encoded for i in s), dtype=np.int32, count=int(starts[-1]))
    return corpus, starts


# ---- sampling distributions ----------------------------------------------------------------------


def keep_probabilities(counts: np.ndarray, sample: float) -> np.ndarray:
    """Probability of keeping each occurrence of a word: (sqrt(f/t) + 1) · t/f, f its frequency.

    Words far more frequent than the threshold ``t`` are mostly dropped; rare words always kept.
    """
    if sample <= 0:
        return np.ones(len(counts), dtype=np.float32)
    threshold = sample * counts.sum()
    keep = (np.sqrt(counts / threshold) + 1.0) * threshold / counts
    return np.minimum(keep, 1.0).astype(np.float32)


def noise_alias_tables(counts: np.ndarray, power: float = 0.75) -> tuple[np.ndarray, np.ndarray]:
    """Walker's alias tables for the noise distribution ``count_i^0.75 / Σ count^0.75``.

    Column ``c`` of ``V`` equal columns belongs to word ``c`` for a share ``threshold[c] / 2^32`` of
    its width and to word ``alias[c]`` for the rest, so one uniform draw picks a word exactly, in
    constant time, from two arrays of ``V`` entries (Vose's construction).
    """
    weights = counts.astype(np.float64) ** power
    scaled = weights / weights.sum() * len(counts)  # each column's width is 1
    share = np.ones(len(counts))
    alias = np.arange(len(counts), dtype=np.int32)
    small = [i for i in range(len(counts)) if scaled[i] < 1.0]
    large = [i for i in range(len(counts)) if scaled[i] >= 1.0]
    while small and large:
        short, tall = small.pop(), large[-1]
        share[short], alias[short] = scaled[short], tall
        scaled[tall] -= 1.0 - scaled[short]  # the tall word fills the rest of the short one's column
        if scaled[tall] < 1.0:
            small.append(large.pop())
    return np.round(share * 2.0**32).astype(np.uint64), alias  # what is left has share 1 (rounding)


def sigmoid_table(size: int = SIGMOID_TABLE_SIZE) -> np.ndarray:
    """σ at ``size`` evenly spaced points over [-MAX_EXP, MAX_EXP], the ends included."""
    return (1.0 / (1.0 + np.exp(-np.linspace(-MAX_EXP, MAX_EXP, size)))).astype(np.float32)


class Sampling(NamedTuple):
    """The tables the compiled loop draws from; a word ``w`` is kept when a uniform 32-bit draw is
    below ``keep[w]`` (its keep probability times 2^32)."""

    keep: np.ndarray  # uint64 (V,)
    noise_threshold: np.ndarray  # uint64 (V,)
    noise_alias: np.ndarray  # int32 (V,)
    sigmoid: np.ndarray  # float32 (SIGMOID_TABLE_SIZE,)

    @classmethod
    def build(cls, counts: np.ndarray, sample: float) -> Sampling:
        keep = np.round(keep_probabilities(counts, sample).astype(np.float64) * 2.0**32).astype(np.uint64)
        threshold, alias = noise_alias_tables(counts)
        return cls(keep, threshold, alias, sigmoid_table())


# ---- the compiled update -------------------------------------------------------------------------
#
# Where the time goes. Measured on the 2-core development machine (a KVM guest of a Xeon with AVX-512,
# 2 MB of L2 per core) under a load average of 6-10 from other jobs, so as the sum over six 10k-word
# skip-gram jobs of each job's least thread CPU time in 7 runs (dim 100, window 5, negative 5, a
# vocabulary of 6,868 words: each matrix 2.7 MB). This loop: 72-75 ms. Each line is one change to it:
# - Noise words. A 10M-entry unigram table indexed by `% size` (the reference code's, and this loop's
#   before): 220 ms. A 2^24-entry table indexed by a shift, no division: 209 ms, so the cost is the
#   cache miss of a 40-64 MB table on nearly every draw, not the division. gensim's binary search of
#   a cumulative table: 137 ms (branchy). Walker's alias tables, two arrays of V entries that stay in
#   L1/L2 and take one multiply, one compare: 75 ms.
# - Sigmoid. The exact 1/(1 + exp(-f)) once per target: 107 ms. The reference code's 1000-entry table
#   over [-6, 6]: 75 ms. gensim's variant, which skips targets with |f| >= 6, and a linearly
#   interpolated table: both 76 ms. The exact sigmoid, the table and gensim's variant give the same
#   wordsim353 ρ to three decimals over 5 seeds: the table's resolution does not show in quality.
# - fastmath. Without it: 150 ms: the dot product's sum cannot be reordered, so it is not vectorised.
#   Reassociation and contraction alone recover it (78 ms); the loop uses numba's full set.
# - Memory layout. Rows are contiguous float32 (the module's own tensors, 400 bytes each). Padding
#   them to 64-byte-aligned 112-float rows: 79 ms, no gain (a 400-byte row spans 7 cache lines
#   wherever it starts). The dimension as a compile-time constant: 80 ms. Copying the input row to a
#   buffer before the step (this loop reads it in place): 80 ms.
# - Random numbers. One 64-bit LCG step per draw, its high 32 bits used, and draws in [0, n) by
#   multiply-shift rather than `%`: no 64-bit division anywhere in the loop.
# - Threads. Jobs of 10,000 words (gensim's batch size) are handed out one at a time, so a thread that
#   loses its core to another process holds nobody back, and no barrier waits in between (this loop's
#   previous version cut each epoch into 50 blocks of 16 pieces, each block waiting for its slowest
#   piece). Dispatching a job costs about 11 µs in numba's dispatcher and 110 µs through the thread
#   pool under load, against about 12 ms of work: under 1%.
# - Sharing vectors between threads (two epochs of skip-gram at a load average of 1, so that both
#   threads had a core: one thread 1.16-1.27 s). Two threads on private copies of both matrices, the
#   bound: 0.62-0.64 s. Two threads sharing both (Hogwild, as the reference implementations do):
#   1.37-1.41 s and 2.7 CPU-seconds, slower than one thread: every update of a frequent word's output
#   row finds its 7 cache lines in the other core's cache. Sharing the input vectors alone costs
#   nothing measurable (context words are subsampled, so their rows are spread thin). So each thread
#   keeps a private copy of the most frequent words' output rows and merges its changes after each
#   job (``fit``): 1,024 rows 0.81 s, 2,621 (1 MB) 0.71 s, 4,096 0.67 s, all 6,868 (2.7 MB) 0.64 s.
#   The merge is one fused pass that also refreshes the thread's copy (fresh numpy copies and a
#   `+=`, with their page faults and temporaries, took one thread from 1.18 s to 1.28 s). Per-thread
#   scratch is job-local: the buffers come from each thread's own heap arena, and the counters are
#   locals returned at the end (the previous version summed the loss into adjacent slots of one
#   shared array, one cache line written by every thread).
# - Compilation. About 9 s the first time; `cache=True` loads it in 0.5-0.7 s afterwards.


@njit(inline="always")
def _next_random(state: np.uint64) -> np.uint64:
    """The reference implementation's linear congruential generator (its high bits are the good ones)."""
    return state * np.uint64(25214903917) + np.uint64(11)


@njit(inline="always")
def _uniform32(state: np.uint64) -> np.uint64:
    return state >> np.uint64(32)


@njit(inline="always")
def _below(state: np.uint64, n: int) -> np.uint64:
    """A draw in [0, n) by multiply-shift, without a 64-bit division's tens of cycles."""
    return (_uniform32(state) * np.uint64(n)) >> np.uint64(32)


@njit(inline="always")
def _draw_noise(state: np.uint64, threshold: np.ndarray, alias: np.ndarray) -> np.int64:
    """A noise word from the alias tables: the product's high half picks the column, its low half,
    uniform within the column, picks the column's word or its alias."""
    scaled = _uniform32(state) * np.uint64(threshold.shape[0])
    column = scaled >> np.uint64(32)
    if (scaled & np.uint64(0xFFFFFFFF)) < threshold[column]:
        return np.int64(column)
    return np.int64(alias[column])


@njit(inline="always", fastmath=True)
def _sigmoid(f: np.float32, table: np.ndarray, scale: np.float32) -> np.float32:
    """σ(f) from the nearest table entry; beyond ±MAX_EXP the end entries (within 0.0025 of 0 and 1)."""
    index = int((f + np.float32(MAX_EXP)) * scale + np.float32(0.5))
    return table[min(max(index, 0), table.shape[0] - 1)]


@njit(inline="always", fastmath=True)
def _negative_sampling_step(h, target, w_out, private_out, grad_h, sampling, scale, negative, alpha, rng, track_loss):
    """One positive and ``negative`` noise targets for input ``h``: update their output rows in place
    (in ``private_out``, the thread's copy, for the words it holds; else in ``w_out``), accumulate the
    input's gradient step into ``grad_h``; returns (loss, rng).

    Scalars stay float32 so the vector loops run at single precision width.
    """
    dim = h.shape[0]
    loss = np.float32(0.0)
    for k in range(negative + 1):
        if k == 0:
            word = np.int64(target)
            label = np.float32(1.0)
        else:
            rng = _next_random(rng)
            word = _draw_noise(rng, sampling.noise_threshold, sampling.noise_alias)
            if word == target:
                continue
            label = np.float32(0.0)
        row = private_out[word] if word < private_out.shape[0] else w_out[word]
        f = np.float32(0.0)
        for d in range(dim):
            f += h[d] * row[d]
        sigma = _sigmoid(f, sampling.sigmoid, scale)
        if track_loss:
            loss -= np.log(sigma if k == 0 else np.float32(1.0) - sigma)
        g = (label - sigma) * alpha
        for d in range(dim):
            grad_h[d] += g * row[d]
            row[d] += g * h[d]
    return loss, rng


@njit(inline="always", fastmath=True)
def _skip_gram_position(w_in, w_out, private_out, kept, pos, lo, hi, grad_h, sampling, scale, negative, alpha, rng,
                        track_loss):
    """Each context word's input vector predicts the centre word, as in the reference code."""
    loss = np.float32(0.0)
    for j in range(lo, hi):
        if j == pos:
            continue
        h = w_in[kept[j]]
        grad_h[:] = 0.0
        pair_loss, rng = _negative_sampling_step(h, kept[pos], w_out, private_out, grad_h, sampling, scale, negative,
                                                 alpha, rng, track_loss)
        loss += pair_loss
        for d in range(h.shape[0]):
            h[d] += grad_h[d]
    return loss, hi - lo - 1, rng


@njit(inline="always", fastmath=True)
def _cbow_position(w_in, w_out, private_out, kept, pos, lo, hi, h, grad_h, sampling, scale, negative, alpha, rng,
                   track_loss):
    """The mean of the context words' input vectors predicts the centre word; each context vector then
    takes the whole step of ``h``, as in the reference code."""
    count = hi - lo - 1
    if count == 0:
        return np.float32(0.0), 0, rng
    h[:] = 0.0
    grad_h[:] = 0.0
    for j in range(lo, hi):
        if j != pos:
            context = w_in[kept[j]]
            for d in range(h.shape[0]):
                h[d] += context[d]
    h *= np.float32(1.0 / count)
    loss, rng = _negative_sampling_step(h, kept[pos], w_out, private_out, grad_h, sampling, scale, negative, alpha,
                                        rng, track_loss)
    for j in range(lo, hi):
        if j != pos:
            context = w_in[kept[j]]
            for d in range(h.shape[0]):
                context[d] += grad_h[d]
    return loss, 1, rng


@njit(nogil=True, fastmath=True, cache=True)
def train_job(w_in, w_out, private_out, corpus, starts, sampling, cbow, window, negative, alpha_first, alpha_last,
              seed):
    """Train on the sentences ``corpus[starts[s]:starts[s + 1]]``, one job, the learning rate going
    linearly from ``alpha_first`` to ``alpha_last`` across it. Output vectors of the words below
    ``len(private_out)`` are read and written in ``private_out``, this thread's copy (see ``fit``).

    Returns (effective words: those kept by subsampling, summed loss, number of predictions in that
    sum). The loss is tracked on every ``LOSS_SAMPLE_EVERY``-th sentence only: it is for the progress
    bar, and its logarithms on every sentence would cost 7% more time (measured: 77.6 ms against 72.3).
    """
    n_sentences = starts.shape[0] - 1
    longest = 0
    for s in range(n_sentences):
        longest = max(longest, starts[s + 1] - starts[s])
    # This job's own buffers (each thread's allocations come from its own heap arena).
    kept = np.empty(longest, dtype=np.int32)
    h = np.empty(w_in.shape[1], dtype=np.float32)
    grad_h = np.empty(w_in.shape[1], dtype=np.float32)
    scale = np.float32((sampling.sigmoid.shape[0] - 1) / (2 * MAX_EXP))
    job_words = max(starts[n_sentences] - starts[0], 1)
    rng = np.uint64(seed)
    effective, loss, predictions = 0, 0.0, 0
    for s in range(n_sentences):
        alpha = np.float32(alpha_first + (alpha_last - alpha_first) * (starts[s] - starts[0]) / job_words)
        track_loss = s % LOSS_SAMPLE_EVERY == 0
        n = 0
        for i in range(starts[s], starts[s + 1]):
            word = corpus[i]
            rng = _next_random(rng)
            if _uniform32(rng) < sampling.keep[word]:
                kept[n] = word
                n += 1
        effective += n
        for pos in range(n):
            rng = _next_random(rng)
            reach = window - np.int64(_below(rng, window))  # dynamic window: 1..window
            lo, hi = max(0, pos - reach), min(n, pos + reach + 1)
            if cbow:
                position_loss, count, rng = _cbow_position(w_in, w_out, private_out, kept[:n], pos, lo, hi, h, grad_h,
                                                           sampling, scale, negative, alpha, rng, track_loss)
            else:
                position_loss, count, rng = _skip_gram_position(w_in, w_out, private_out, kept[:n], pos, lo, hi,
                                                                grad_h, sampling, scale, negative, alpha, rng,
                                                                track_loss)
            if track_loss:
                loss += position_loss
                predictions += count
    return effective, loss, predictions


@njit(nogil=True, fastmath=True, cache=True)
def merge_private_rows(shared, private, start):
    """Add a job's changes to its private rows (``private - start``) to the shared rows, and start the
    thread's next job from the merged rows."""
    for r in range(private.shape[0]):
        for d in range(private.shape[1]):
            merged = shared[r, d] + (private[r, d] - start[r, d])
            shared[r, d] = merged
            private[r, d] = merged
            start[r, d] = merged


# ---- training ------------------------------------------------------------------------------------


@dataclass
class FitOptions:
    epochs: int
    alpha: float  # starting learning rate, decaying linearly to min_alpha over all the words
    min_alpha: float = 1e-4
    workers: int = 1
    seed: int = 0


def job_bounds(starts: np.ndarray, job_words: int = JOB_WORDS) -> np.ndarray:
    """Sentence indices cutting the corpus into jobs of about ``job_words`` words each."""
    cuts = np.searchsorted(starts, np.arange(job_words, int(starts[-1]), job_words))
    return np.unique(np.concatenate(([0], cuts, [len(starts) - 1])))


def fit(model: Word2Vec, corpus: np.ndarray, starts: np.ndarray, counts: np.ndarray, options: FitOptions,
        desc: str = "word2vec") -> dict[str, float]:
    """Train ``model`` in place; returns throughput figures.

    The epochs' jobs are queued in order and each worker thread takes the next one when it is done
    with its last, so a thread slowed by other work on the machine holds nobody back. A job's
    random stream depends only on the seed and the job, and with one worker the order is fixed, so
    such runs reproduce exactly.

    With several workers, each thread keeps its own copy of the output vectors of the most frequent
    words (ids below ``private_rows``: up to 4 MB of them, every word of the plays' 6,868) and adds
    its changes to the shared ones after each job, under a lock, so a thread sees the others' updates
    to those rows one job late. Those rows take most updates (the 2,621 most frequent words draw 78%
    of the noise words and 88% of the centre words), and two cores writing the same rows pass their
    cache lines back and forth: with every row shared (plain Hogwild), two threads took 2.2 times the
    CPU time per word of one and ran at 0.87x its speed (see "Where the time goes").
    """
    if np.any(np.diff(counts) > 0):
        raise ValueError("word ids must be in descending order of count, as WordVocab.build gives them")
    config = model.config
    w_in = model.input_embeddings.weight.data.numpy()  # shares memory with the module
    w_out = model.output_embeddings.weight.data.numpy()
    sampling = Sampling.build(counts, config.sample)
    private_rows = 0 if options.workers == 1 else min(len(counts), PRIVATE_ROWS_BYTES // w_out[0].nbytes)
    bounds = job_bounds(starts)
    epoch_words = int(starts[-1] - starts[0])
    words_total = options.epochs * epoch_words
    jobs = [(epoch, lo, hi) for epoch in range(options.epochs) for lo, hi in zip(bounds[:-1], bounds[1:], strict=True)]
    seeds = np.random.SeedSequence(options.seed).generate_state(len(jobs), dtype=np.uint64)
    thread = threading.local()
    merge_lock = threading.Lock()

    def alpha_at(words_done: int) -> float:
        return options.alpha - (options.alpha - options.min_alpha) * words_done / words_total

    def run(index: int) -> tuple[int, int, int, float, int]:
        epoch, lo, hi = jobs[index]
        done = epoch * epoch_words + int(starts[lo] - starts[0])
        job_words = int(starts[hi] - starts[lo])
        if not hasattr(thread, "private_out"):
            with merge_lock:
                thread.private_out = w_out[:private_rows].copy()
            thread.start = thread.private_out.copy()
        effective, loss, predictions = train_job(
            w_in, w_out, thread.private_out, corpus, starts[lo:hi + 1], sampling, config.mode == "cbow", config.window,
            config.negative, alpha_at(done), alpha_at(done + job_words), seeds[index])
        with merge_lock:
            merge_private_rows(w_out[:private_rows], thread.private_out, thread.start)
        return epoch, job_words, effective, loss, predictions

    # An empty job compiles the loop (or loads it from numba's cache) before the clock starts.
    train_job(w_in, w_out, w_out[:0].copy(), corpus, starts[:1], sampling, config.mode == "cbow", config.window,
              config.negative, options.alpha, options.alpha, np.uint64(0))
    merge_private_rows(w_out[:0], w_out[:0].copy(), w_out[:0].copy())
    effective_total = 0
    epoch_loss = np.zeros(options.epochs)
    epoch_predictions = np.zeros(options.epochs, dtype=np.int64)
    started = time.perf_counter()
    bar = progress(total=words_total, desc=desc, unit="word", unit_scale=True)
    with ThreadPoolExecutor(max_workers=options.workers) as pool:
        futures = [pool.submit(run, index) for index in range(len(jobs))]
        try:
            for future in as_completed(futures):
                epoch, job_words, effective, loss, predictions = future.result()
                effective_total += effective
                epoch_loss[epoch] += loss
                epoch_predictions[epoch] += predictions
                bar.update(job_words)
                bar.set_postfix(epoch=epoch + 1, loss=f"{epoch_loss[epoch] / max(epoch_predictions[epoch], 1):.3f}")
        finally:
            for future in futures:
                future.cancel()
    bar.close()
    seconds = time.perf_counter() - started
    return {"seconds": round(seconds, 2), "words_per_second": round(words_total / seconds),
            "effective_words": effective_total}


def resolve_arguments(args: argparse.Namespace) -> argparse.Namespace:
    return apply_profile(args, PROFILES)


def train(args: argparse.Namespace) -> list[Path]:
    resolve_arguments(args)
    name = checkpoint_name(args, "word2vec", args.mode, args.corpus)
    workers = args.workers or os.cpu_count() or 1
    alpha = args.alpha if args.alpha is not None else DEFAULT_ALPHA[args.mode]
    set_seed(args.seed)
    if args.corpus is not None:
        sentences = file_sentences(args.corpus)
        provenance = data.user_provenance(args.corpus)
    else:
        sentences = shakespeare_sentences()
        provenance = data.shakespeare_provenance()
    vocab = WordVocab.build(sentences, min_count=args.min_count)
    if len(vocab) < 2:
        raise ValueError(f"only {len(vocab)} words occur at least --min-count={args.min_count} times")
    corpus, starts = flatten(vocab, sentences)
    config = Word2VecConfig(vocab_size=len(vocab), dim=args.dim, mode=args.mode, window=args.window,
                            negative=args.negative, sample=args.sample, min_count=args.min_count)
    model = Word2Vec(config)
    log.info("word2vec-%s: %d words in vocabulary, %d training words, %d sentences",
             args.mode, len(vocab), corpus.shape[0], len(starts) - 1)
    with torch.no_grad():
        speed = fit(model, corpus, starts, np.array(vocab.counts),
                    FitOptions(epochs=args.epochs, alpha=alpha, min_alpha=args.min_alpha, workers=workers,
                               seed=args.seed), desc=f"word2vec-{args.mode}")
    vectors = WordVectors(vocab, model.input_embeddings.weight.detach().numpy().copy())
    metrics = {**evaluate_vectors(vectors), "training": speed}
    ckpt_id = checkpoint_id_of("word2vec", name)
    config_json = {
        "id": ckpt_id,
        "family": "word2vec",
        "name": name,
        "architecture": "skip-gram" if args.mode == "sg" else "cbow",
        "model": asdict(config),
        "tokenizer": {"type": "word", "file": VOCAB_FILE, "pattern": "[a-z]+('[a-z]+)?, lower-cased"},
        "data": provenance,
        "split_seed": data.SPLIT_SEED,
        "training": {"profile": args.profile, "epochs": args.epochs, "seed": args.seed, "alpha": alpha,
                     "min_alpha": args.min_alpha, "workers": workers, "words": int(corpus.shape[0])},
        "recipe": recipe(args),
    }
    path = save_checkpoint(args.out, config_json, model.state_dict(), metrics, {VOCAB_FILE: vocab.to_json()})
    log.info("%s: %s", ckpt_id, {k: v for k, v in metrics.items() if k != "training"})
    return [path]


# ---- evaluation ----------------------------------------------------------------------------------


def word_pairs(path: str) -> list[tuple[str, str, float]]:
    """``word<TAB>word<TAB>score`` rows of a similarity benchmark, comment lines skipped."""
    with open(path, encoding="utf-8") as f:
        rows = [line.rstrip("\n").split("\t") for line in f if line.strip() and not line.startswith("#")]
    return [(a.lower(), b.lower(), float(score)) for a, b, score in rows]


def evaluate_vectors(vectors: WordVectors) -> dict:
    """Spearman on wordsim353 and simlex999 over the pairs in vocabulary; Google analogy accuracy.

    The benchmarks are the copies in gensim's test data; analogies are scored by gensim's own
    ``evaluate_word_analogies`` on our vectors, the reference implementation of that protocol.
    """
    logging.getLogger("gensim").setLevel(logging.WARNING)  # its test module logs as it is imported
    from gensim.models import KeyedVectors
    from gensim.test.utils import datapath
    from scipy.stats import spearmanr

    results: dict[str, dict] = {}
    for name, file in (("wordsim353", "wordsim353.tsv"), ("simlex999", "simlex999.txt")):
        pairs = word_pairs(datapath(file))
        used = [(a, b, s) for a, b, s in pairs if a in vectors and b in vectors]
        spearman = None
        if len(used) > 2:
            statistic = spearmanr([s for _, _, s in used], [vectors.similarity(a, b) for a, b, _ in used]).statistic
            spearman = None if math.isnan(statistic) else round(float(statistic), 4)
        results[name] = {"spearman": spearman, "oov_rate": round(1 - len(used) / len(pairs), 4), "pairs": len(used)}

    keyed = KeyedVectors(vector_size=vectors.vector_size)
    keyed.add_vectors(vectors.vocab.itos, vectors.vectors)
    accuracy, sections = keyed.evaluate_word_analogies(datapath("questions-words.txt"))
    total = next(s for s in sections if s["section"] == "Total accuracy")
    questions = len(total["correct"]) + len(total["incorrect"])
    results["analogies"] = {"accuracy": round(float(accuracy), 4) if questions else None, "questions": questions}
    return results


def add_evaluate_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--mode", choices=("sg", "cbow"), default="sg", help="which checkpoint")
    parser.add_argument("--name", default=None, help="the checkpoint's name (default: the mode)")


def evaluate(args: argparse.Namespace) -> dict:
    path = Path(args.out) / checkpoint_id_of("word2vec", args.name or args.mode)
    checkpoint = load_checkpoint(path)
    metrics = {**checkpoint.metrics, **evaluate_vectors(load(checkpoint))}
    update_metrics(path, metrics)
    return metrics


# ---- export --------------------------------------------------------------------------------------


def add_export_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--mode", choices=("sg", "cbow"), default="sg", help="which checkpoint")
    parser.add_argument("--name", default=None, help="the checkpoint's name (default: the mode)")
    parser.add_argument("--format", choices=("text", "binary"), default="text",
                        help="word2vec's text or binary format (gensim reads either: binary=False or True)")
    parser.add_argument("--output", type=Path, default=None, help="file to write (default: <id>.txt or <id>.bin)")


def export(args: argparse.Namespace) -> None:
    ckpt_id = checkpoint_id_of("word2vec", args.name or args.mode)
    vectors = load(load_checkpoint(Path(args.out) / ckpt_id))
    binary = args.format == "binary"
    output = args.output or Path(f"{ckpt_id}.{'bin' if binary else 'txt'}")
    vectors.save_word2vec_format(output, binary=binary)
    print(f"wrote {len(vectors)} vectors of size {vectors.vector_size} to {output}")
