"""Our word2vec against gensim's on the same corpus, hyperparameters and thread count.

    python bench/word2vec_vs_gensim.py [--mode sg|cbow] [--epochs 5] [--workers 2] [--repeats 1]

Both train on the speeches of the training plays (the shared split), dim 100, window 5, negative 5,
min_count 5, sample 1e-3, with the same starting and final learning rates. Only training is timed
(vocabulary building excluded for both). Words/second counts every corpus word once per epoch,
the same numerator for both, so the ratio is the ratio of training times. Quality: Spearman on
wordsim353 and simlex999 over the pairs both vocabularies cover (the same vocabulary, since both
apply min_count to the same corpus).
"""

from __future__ import annotations

import argparse
import logging
import time

import numpy as np
import torch

from models.pipelines.word_vectors import WordVectors
from models.tokenizers import WordVocab
from models.word2vec import Word2Vec, Word2VecConfig
from training.word2vec import DEFAULT_ALPHA, evaluate_vectors, fit, flatten, shakespeare_sentences


def train_ours(sentences, args) -> tuple[float, WordVectors]:
    vocab = WordVocab.build(sentences, min_count=args.min_count)
    corpus, starts = flatten(vocab, sentences)
    model = Word2Vec(Word2VecConfig(vocab_size=len(vocab), dim=args.dim, mode=args.mode, window=args.window,
                                    negative=args.negative, sample=args.sample, min_count=args.min_count))
    started = time.perf_counter()
    with torch.no_grad():
        fit(model, corpus, starts, np.array(vocab.counts), args.epochs, args.alpha, args.min_alpha,
            args.workers, seed=1, desc="ours")
    seconds = time.perf_counter() - started
    return seconds, WordVectors(vocab, model.input_embeddings.weight.detach().numpy().copy())


def train_gensim(sentences, args) -> tuple[float, WordVectors]:
    from gensim.models import Word2Vec as GensimWord2Vec

    model = GensimWord2Vec(vector_size=args.dim, window=args.window, negative=args.negative, hs=0,
                           sg=int(args.mode == "sg"), min_count=args.min_count, sample=args.sample,
                           alpha=args.alpha, min_alpha=args.min_alpha, workers=args.workers, seed=1)
    model.build_vocab(sentences)
    started = time.perf_counter()
    model.train(sentences, total_examples=model.corpus_count, epochs=args.epochs)
    seconds = time.perf_counter() - started
    keys = model.wv.index_to_key
    vocab = WordVocab(list(keys), [int(model.wv.get_vecattr(k, "count")) for k in keys])
    return seconds, WordVectors(vocab, model.wv.vectors)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--mode", choices=("sg", "cbow"), default="sg")
    parser.add_argument("--dim", type=int, default=100)
    parser.add_argument("--window", type=int, default=5)
    parser.add_argument("--negative", type=int, default=5)
    parser.add_argument("--min-count", type=int, default=5)
    parser.add_argument("--sample", type=float, default=1e-3)
    parser.add_argument("--epochs", type=int, default=5)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--alpha", type=float, default=None)
    parser.add_argument("--min-alpha", type=float, default=1e-4)
    parser.add_argument("--repeats", type=int, default=1, help="alternate runs; the best time of each counts")
    args = parser.parse_args()
    args.alpha = args.alpha if args.alpha is not None else DEFAULT_ALPHA[args.mode]
    logging.basicConfig(level=logging.WARNING)

    sentences = shakespeare_sentences()
    words = sum(len(s) for s in sentences) * args.epochs
    # One untimed pass compiles our loop, so compilation is not counted as training time.
    warm = argparse.Namespace(**{**vars(args), "epochs": 1})
    train_ours(sentences[:200], warm)

    results: dict[str, tuple[float, WordVectors]] = {}
    for _ in range(args.repeats):
        for name, trainer in (("ours", train_ours), ("gensim", train_gensim)):
            seconds, vectors = trainer(sentences, args)
            if name not in results or seconds < results[name][0]:
                results[name] = (seconds, vectors)

    print(f"\nword2vec {args.mode}: {len(sentences):,} sentences, {words:,} words over {args.epochs} epochs, "
          f"dim {args.dim}, window {args.window}, negative {args.negative}, {args.workers} threads\n")
    print("| implementation | seconds | words/s | wordsim353 ρ | simlex999 ρ | analogies |")
    print("|---|---:|---:|---:|---:|---:|")
    for name, (seconds, vectors) in results.items():
        scores = evaluate_vectors(vectors)
        print(f"| {name} | {seconds:.1f} | {words / seconds:,.0f} | {scores['wordsim353']['spearman']} "
              f"({scores['wordsim353']['pairs']} pairs) | {scores['simlex999']['spearman']} "
              f"({scores['simlex999']['pairs']} pairs) | {scores['analogies']['accuracy']} |")
    ratio = results["gensim"][0] / results["ours"][0]
    print(f"\nspeed ratio ours/gensim (words/s): {ratio:.2f}x")


if __name__ == "__main__":
    main()
