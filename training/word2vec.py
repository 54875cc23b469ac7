"""word2vec: skip-gram / CBOW with negative sampling (checkpoints word2vec-sg, word2vec-cbow).

The update is the per-pair stochastic gradient step of ``models.word2vec.Word2Vec``'s objective,
run as a compiled loop (numba) over the parameters' memory: one word pair at a time is what the
method is, and per-pair gathers and scatters in torch spend most of their time in dispatch. Threads
share the two matrices without locks (Hogwild), as the reference implementation does; with
``--workers 1`` a seed reproduces a run exactly.
"""

from __future__ import annotations

import argparse
import logging
import math
import os
import time
from dataclasses import asdict
from pathlib import Path

import numba
import numpy as np
import torch
from numba import njit, prange

from models.catalog import checkpoint_id_of
from models.checkpoint import load_checkpoint, save_checkpoint, update_metrics
from models.pipelines.word_vectors import WordVectors, load
from models.tokenizers import WordVocab, words
from models.word2vec import VOCAB_FILE, Word2Vec, Word2VecConfig
from training import data
from training.common import add_name_arguments, apply_profile, checkpoint_name, log, progress, set_seed
from training.recipe import recipe

PROFILES = {
    "tiny": {"dim": 32, "epochs": 1, "min_count": 2, "workers": 1},
    "quick": {"dim": 100, "epochs": 5, "min_count": 5, "workers": None},
    "full": {"dim": 300, "epochs": 15, "min_count": 5, "workers": None},
}
DEFAULT_ALPHA = {"sg": 0.025, "cbow": 0.05}  # the reference implementation's starting rates
NOISE_TABLE_SIZE = 10_000_000
BLOCKS_PER_EPOCH = 50  # progress-bar updates per epoch
PIECES_PER_WORKER = 8
LOSS_SAMPLE_EVERY = 8  # sentences: the progress bar's loss is estimated on one in this many


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


def noise_table(counts: np.ndarray, size: int = NOISE_TABLE_SIZE, power: float = 0.75) -> np.ndarray:
    """A table in which word ``i`` fills a share ``count_i^0.75 / Σ count^0.75`` of the slots."""
    weights = counts.astype(np.float64) ** power
    bounds = np.round(np.cumsum(weights) / weights.sum() * size).astype(np.int64)
    return np.repeat(np.arange(len(counts), dtype=np.int32), np.diff(bounds, prepend=0))


def keep_probabilities(counts: np.ndarray, sample: float) -> np.ndarray:
    """Probability of keeping each occurrence of a word: (sqrt(f/t) + 1) · t/f, f its frequency.

    Words far more frequent than the threshold ``t`` are mostly dropped; rare words always kept.
    """
    if sample <= 0:
        return np.ones(len(counts), dtype=np.float32)
    threshold = sample * counts.sum()
    keep = (np.sqrt(counts / threshold) + 1.0) * threshold / counts
    return np.minimum(keep, 1.0).astype(np.float32)


# ---- the compiled update -------------------------------------------------------------------------


@njit(inline="always", fastmath=True)
def _next_random(state: np.uint64) -> np.uint64:
    return state * np.uint64(25214903917) + np.uint64(11)


@njit(fastmath=True, inline="always")
def _negative_sampling_step(h, target, w_out, grad_h, table, negative, alpha, rng, track_loss):
    """One positive and ``negative`` noise targets for input ``h``: update ``w_out`` rows in place,
    accumulate the input's gradient step into ``grad_h``; returns (loss, rng).

    Scalars stay float32 so the vector loops run at single precision width.
    """
    dim = h.shape[0]
    loss = np.float32(0.0)
    for k in range(negative + 1):
        if k == 0:
            word = target
            label = np.float32(1.0)
        else:
            rng = _next_random(rng)
            word = table[(rng >> np.uint64(16)) % np.uint64(table.shape[0])]
            if word == target:
                continue
            label = np.float32(0.0)
        row = w_out[word]
        f = np.float32(0.0)
        for d in range(dim):
            f += h[d] * row[d]
        f = min(max(f, np.float32(-20.0)), np.float32(20.0))
        e = np.exp(-f)
        sigma = np.float32(1.0) / (np.float32(1.0) + e)
        if track_loss:
            loss += np.log1p(e) if k == 0 else np.log1p(np.float32(1.0) / e)
        g = (label - sigma) * alpha
        for d in range(dim):
            grad_h[d] += g * row[d]
            row[d] += g * h[d]
    return loss, rng


@njit(parallel=True, fastmath=True, cache=True)
def train_block(w_in, w_out, corpus, starts, keep, table, cbow, window, negative,
                alpha_start, alpha_end, words_done, words_total, seeds):
    """Train on the sentences ``starts[:-1]``, in ``len(seeds)`` pieces shared out to the threads.

    Returns (summed loss, number of predictions it sums over, rng states to continue from). The loss
    is tracked on every ``LOSS_SAMPLE_EVERY``-th sentence only: it is for the progress bar, and its
    logarithms would otherwise cost as much as the update.
    """
    n_pieces = seeds.shape[0]
    n_sentences = starts.shape[0] - 1
    dim = w_in.shape[1]
    losses = np.zeros(n_pieces)
    predictions = np.zeros(n_pieces, dtype=np.int64)
    out_seeds = seeds.copy()
    max_len = 0
    for s in range(n_sentences):
        max_len = max(max_len, starts[s + 1] - starts[s])
    for t in prange(n_pieces):
        rng = seeds[t]
        kept = np.empty(max_len, dtype=np.int32)
        h = np.empty(dim, dtype=np.float32)
        grad_h = np.empty(dim, dtype=np.float32)
        seen = 0
        for s in range(n_sentences * t // n_pieces, n_sentences * (t + 1) // n_pieces):
            # Linear decay, the pieces' progress counted as if they advanced together.
            progress = (words_done + seen * n_pieces) / words_total
            alpha = np.float32(max(alpha_start - (alpha_start - alpha_end) * progress, alpha_end))
            track_loss = s % LOSS_SAMPLE_EVERY == 0
            n = 0
            for i in range(starts[s], starts[s + 1]):
                word = corpus[i]
                rng = _next_random(rng)
                if keep[word] < ((rng >> np.uint64(16)) & np.uint64(0xFFFF)) / 65536.0:
                    continue
                kept[n] = word
                n += 1
            seen += starts[s + 1] - starts[s]
            for pos in range(n):
                rng = _next_random(rng)
                reach = window - int(rng % np.uint64(window))  # dynamic window: 1..window
                lo = max(0, pos - reach)
                hi = min(n, pos + reach + 1)
                if cbow:
                    count = hi - lo - 1
                    if count == 0:
                        continue
                    for d in range(dim):
                        h[d] = 0.0
                        grad_h[d] = 0.0
                    for j in range(lo, hi):
                        if j != pos:
                            for d in range(dim):
                                h[d] += w_in[kept[j], d]
                    inverse = np.float32(1.0 / count)
                    for d in range(dim):
                        h[d] *= inverse
                    loss, rng = _negative_sampling_step(h, kept[pos], w_out, grad_h, table, negative, alpha, rng,
                                                        track_loss)
                    if track_loss:
                        losses[t] += loss
                        predictions[t] += 1
                    for j in range(lo, hi):
                        if j != pos:
                            for d in range(dim):
                                w_in[kept[j], d] += grad_h[d]
                else:
                    for j in range(lo, hi):
                        if j == pos:
                            continue
                        # As in the reference code, the context word's input vector predicts the centre.
                        context = kept[j]
                        for d in range(dim):
                            h[d] = w_in[context, d]
                            grad_h[d] = 0.0
                        loss, rng = _negative_sampling_step(h, kept[pos], w_out, grad_h, table, negative, alpha,
                                                            rng, track_loss)
                        if track_loss:
                            losses[t] += loss
                            predictions[t] += 1
                        for d in range(dim):
                            w_in[context, d] += grad_h[d]
        out_seeds[t] = rng
    return losses.sum(), predictions.sum(), out_seeds


# ---- training ------------------------------------------------------------------------------------


def fit(
    model: Word2Vec,
    corpus: np.ndarray,
    starts: np.ndarray,
    counts: np.ndarray,
    epochs: int,
    alpha: float,
    min_alpha: float,
    workers: int,
    seed: int,
    desc: str = "word2vec",
) -> dict[str, float]:
    """Train ``model`` in place; returns throughput figures."""
    config = model.config
    w_in = model.input_embeddings.weight.data.numpy()  # shares memory with the module
    w_out = model.output_embeddings.weight.data.numpy()
    keep = keep_probabilities(counts, config.sample)
    table = noise_table(counts)
    numba.set_num_threads(workers)
    # Several pieces per thread, handed out one at a time, so a thread slowed by other work on the
    # machine does not hold the rest back; with one worker the order is fixed and runs reproduce.
    numba.set_parallel_chunksize(1)
    seeds = np.array([seed * 1_000_003 + t + 1 for t in range(PIECES_PER_WORKER * workers)], dtype=np.uint64)
    n_sentences = len(starts) - 1
    words_total = epochs * int(corpus.shape[0])
    block_bounds = np.linspace(0, n_sentences, BLOCKS_PER_EPOCH + 1).astype(np.int64)
    words_done = 0
    started = time.perf_counter()
    bar = progress(total=words_total, desc=desc, unit="word", unit_scale=True)
    for epoch in range(epochs):
        epoch_loss, epoch_predictions = 0.0, 0
        for lo, hi in zip(block_bounds[:-1], block_bounds[1:], strict=True):
            if hi == lo:
                continue
            block_starts = starts[lo:hi + 1]
            loss, predictions, seeds = train_block(
                w_in, w_out, corpus, block_starts, keep, table, config.mode == "cbow", config.window,
                config.negative, alpha, min_alpha, words_done, words_total, seeds)
            block_words = int(block_starts[-1] - block_starts[0])
            words_done += block_words
            epoch_loss += loss
            epoch_predictions += predictions
            bar.update(block_words)
            bar.set_postfix(epoch=epoch + 1, loss=f"{epoch_loss / max(epoch_predictions, 1):.3f}")
    bar.close()
    seconds = time.perf_counter() - started
    return {"seconds": round(seconds, 2), "words_per_second": round(words_total / seconds)}


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
        speed = fit(model, corpus, starts, np.array(vocab.counts), args.epochs, alpha, args.min_alpha,
                    workers, args.seed, desc=f"word2vec-{args.mode}")
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
