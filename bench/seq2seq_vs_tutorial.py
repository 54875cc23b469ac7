"""Translation quality per second: our default seq2seq against the PyTorch seq2seq tutorial's recipe.

    python bench/seq2seq_vs_tutorial.py [--seconds S] [--direction zh-en|en-zh|both] [--out bench-out]
    python bench/seq2seq_vs_tutorial.py --checkpoint-dir checkpoints     # ours already trained: score it
    python bench/seq2seq_vs_tutorial.py --reference --seeds 3            # the recipe alone, as its figure was stated

The tutorial's recipe ("NLP From Scratch: Translation with a Sequence to Sequence Network and
Attention"), written here from its description: a GRU encoder and a GRU decoder, embedding and hidden
128, additive (Bahdanau) attention queried by the decoder's previous state, dropout 0.1 on the
embeddings, Adam at 1e-3, batches of 32, full teacher forcing, negative log-likelihood, greedy
decoding. Where the tutorial pads every sentence to a fixed length, this batches them and masks the
padding (the encoder reads packed sequences, attention gives padding no weight, the loss skips it),
which can only help the recipe. It reads the same tokens as ours (Chinese characters, lower-cased
English words), keeps every training token in its vocabulary, as the tutorial does, and trains on the
training pairs of our split only.

Both train for the same wall-clock seconds (default: our quick profile's budget) on our split, and
both are scored on its test pairs with the same sacreBLEU settings (``training.seq2seq.corpus_scores``:
lower-cased; BLEU's ``13a`` tokenizer into English, ``zh`` into Chinese), the same detokenizer and the
same limit on output length; the validation split is printed beside the test split. The two runs go
side by side as two one-thread processes: on a quiet 2-core machine each has a core, and when other
work loads the machine they share its slowdown (or, with ``--clock cpu``, each counts its own CPU
seconds). The load average is printed before and after; read the figures with it.

``--reference`` trains the recipe alone under the conditions its reference figure (zh→en test BLEU 7.6,
chrF 24.1, after 120 s) was stated with: two threads (``--threads``), 120 s of wall clock (``--seconds``),
a test split of 400 pairs and every other pair for training (no validation split), once per seed. With
``--normalise`` the English of every pair is first what the tutorial's ``normalizeString`` makes of it
(lower case, no accents, nothing but letters, ! and ?), for training and for the references scored.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import re
import subprocess
import sys
import time
import unicodedata
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

from models.checkpoint import load_checkpoint
from models.pipelines.translation import TranslationOptions, default_max_length
from models.pipelines.translation import load as load_translator
from models.seq2seq import BOS_ID, EOS_ID, PAD_ID, SPECIALS, build_vocab, detokenize, encode, pad_batch, tokenize
from training.cli import build_parser
from training.seq2seq import corpus_scores, languages, load_pairs, resolve_arguments, split_pairs, translations

HIDDEN = 128  # the tutorial's embedding and hidden size
DROPOUT = 0.1
LR = 1e-3
BATCH = 32


# ---- the tutorial's model ----------------------------------------------------------------------------


class TutorialEncoder(nn.Module):
    def __init__(self, vocab: int):
        super().__init__()
        self.embedding = nn.Embedding(vocab, HIDDEN, padding_idx=PAD_ID)
        self.gru = nn.GRU(HIDDEN, HIDDEN, batch_first=True)
        self.dropout = nn.Dropout(DROPOUT)

    def forward(self, source: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        lengths = (source != PAD_ID).sum(1).clamp(min=1)
        packed = pack_padded_sequence(self.dropout(self.embedding(source)), lengths, batch_first=True,
                                      enforce_sorted=False)
        outputs, final = self.gru(packed)
        outputs, _ = pad_packed_sequence(outputs, batch_first=True, total_length=source.size(1))
        return outputs, final


class Bahdanau(nn.Module):
    """score(s, h_j) = v^T tanh(W s + U h_j)."""

    def __init__(self):
        super().__init__()
        self.W, self.U, self.v = nn.Linear(HIDDEN, HIDDEN), nn.Linear(HIDDEN, HIDDEN), nn.Linear(HIDDEN, 1)

    def forward(self, query: torch.Tensor, keys: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        scores = self.v(torch.tanh(self.W(query) + self.U(keys))).squeeze(-1).masked_fill(~mask, float("-inf"))
        return torch.bmm(torch.softmax(scores, -1).unsqueeze(1), keys)  # (B, 1, H)


class TutorialDecoder(nn.Module):
    def __init__(self, vocab: int):
        super().__init__()
        self.embedding = nn.Embedding(vocab, HIDDEN, padding_idx=PAD_ID)
        self.attention = Bahdanau()
        self.gru = nn.GRU(2 * HIDDEN, HIDDEN, batch_first=True)
        self.out = nn.Linear(HIDDEN, vocab)
        self.dropout = nn.Dropout(DROPOUT)

    def step(self, y: torch.Tensor, hidden: torch.Tensor, keys: torch.Tensor, mask: torch.Tensor
             ) -> tuple[torch.Tensor, torch.Tensor]:
        """y (B,) -> log-probabilities (B, V) and the new hidden state (1, B, H)."""
        embedded = self.dropout(self.embedding(y.unsqueeze(1)))
        context = self.attention(hidden.transpose(0, 1), keys, mask)
        output, hidden = self.gru(torch.cat([embedded, context], -1), hidden)
        return F.log_softmax(self.out(output.squeeze(1)), -1), hidden


class Tutorial(nn.Module):
    def __init__(self, source_vocab: int, target_vocab: int):
        super().__init__()
        self.encoder, self.decoder = TutorialEncoder(source_vocab), TutorialDecoder(target_vocab)

    def loss(self, source: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """Teacher forcing throughout: the reference token is always the next input."""
        keys, hidden = self.encoder(source)
        mask = source != PAD_ID
        steps = []
        for t in range(target.size(1) - 1):
            log_probs, hidden = self.decoder.step(target[:, t], hidden, keys, mask)
            steps.append(log_probs)
        return F.nll_loss(torch.stack(steps, 1).flatten(0, 1), target[:, 1:].flatten(), ignore_index=PAD_ID)

    @torch.no_grad()
    def greedy(self, source: torch.Tensor, max_length: int) -> list[list[int]]:
        keys, hidden = self.encoder(source)
        mask = source != PAD_ID
        y = torch.full((source.size(0),), BOS_ID, dtype=torch.long)
        rows = []
        for _ in range(max_length):
            log_probs, hidden = self.decoder.step(y, hidden, keys, mask)
            y = log_probs.argmax(-1)
            rows.append(y)
            if bool((torch.stack(rows, 1) == EOS_ID).any(1).all()):
                break
        out = torch.stack(rows, 1).tolist()
        return [row[: row.index(EOS_ID)] if EOS_ID in row else row for row in out]


@dataclass
class TutorialRun:
    steps: int
    seconds: float
    cpu_seconds: float
    hypotheses: dict[str, list[str]]  # split name -> greedy translations of its sources


REFERENCE_TEST_PAIRS = 400


def tutorial_normalise(text: str) -> str:
    """The tutorial's ``normalizeString``: lower case, accents stripped, a space before . ! ?, and every run
    of characters other than letters, ! and ? (the full stop included) made one space."""
    text = "".join(c for c in unicodedata.normalize("NFD", text.lower().strip()) if unicodedata.category(c) != "Mn")
    text = re.sub(r"([.!?])", r" \1", text)
    return re.sub(r"[^a-zA-Z!?]+", " ", text).strip()


def tutorial_splits(direction: str, reference: bool, seed: int, normalise: bool = False
                    ) -> tuple[list[tuple[str, str]], dict[str, list]]:
    """(training pairs, {split name: pairs}): our split (seed 0), or the reference figure's (400 test pairs at
    ``seed``, every other pair for training), its English normalised as the tutorial's with ``normalise``."""
    pairs, provenance = load_pairs(None)
    if not reference:
        split = split_pairs(pairs, direction, 0, 0.1, provenance)
        return split.train, {"validation": split.validation, "test": split.test}
    if normalise:
        pairs = [(zh, tutorial_normalise(en)) for zh, en in pairs]
    oriented = [(zh, en) if direction == "zh-en" else (en, zh) for zh, en in pairs]
    random.Random(seed).shuffle(oriented)
    return oriented[REFERENCE_TEST_PAIRS:], {"test": oriented[:REFERENCE_TEST_PAIRS]}


def train_tutorial(direction: str, train_pairs: list[tuple[str, str]], splits: dict[str, list], seconds: float,
                   seed: int, clock: str, threads: int) -> TutorialRun:
    """The recipe, on ``train_pairs``, for ``seconds`` on ``clock``; then the sources of ``splits`` translated."""
    torch.set_num_threads(threads)
    torch.manual_seed(seed)
    source_language, target_language = languages(direction)
    train = [(tokenize(s, source_language), tokenize(t, target_language)) for s, t in train_pairs]
    source_vocab = build_vocab((s for s, _ in train), min_count=1)
    target_vocab = build_vocab((t for _, t in train), min_count=1)
    examples = [(encode(s, source_vocab), [BOS_ID, *encode(t, target_vocab), EOS_ID]) for s, t in train]
    model = Tutorial(len(source_vocab), len(target_vocab))
    optimizer = torch.optim.Adam(model.parameters(), lr=LR)
    rng = random.Random(seed)
    now = time.process_time if clock == "cpu" else time.perf_counter
    steps, started, wall_started, cpu_started = 0, now(), time.perf_counter(), time.process_time()
    while now() - started < seconds:
        order = list(range(len(examples)))
        rng.shuffle(order)
        for i in range(0, len(order), BATCH):
            batch = [examples[j] for j in order[i:i + BATCH]]
            loss = model.loss(pad_batch([s for s, _ in batch]), pad_batch([t for _, t in batch]))
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            steps += 1
            if now() - started >= seconds:
                break
    elapsed, cpu = time.perf_counter() - wall_started, time.process_time() - cpu_started
    model.eval()

    def translate(pairs: list[tuple[str, str]]) -> list[str]:
        hypotheses = []
        for i in range(0, len(pairs), 128):
            sources = [encode(tokenize(s, source_language), source_vocab) for s, _ in pairs[i:i + 128]]
            for ids in model.greedy(pad_batch(sources), default_max_length(max(map(len, sources)))):
                words = [target_vocab.itos[k] for k in ids]
                hypotheses.append(detokenize([w for w in words if w not in SPECIALS], target_language))
        return hypotheses

    return TutorialRun(steps, elapsed, cpu, {name: translate(pairs) for name, pairs in splits.items()})


# ---- the comparison ---------------------------------------------------------------------------------


def default_seconds() -> float:
    """The wall-clock budget of our quick profile's seq2seq."""
    return float(resolve_arguments(build_parser().parse_args(["seq2seq"])).max_seconds)


def start_tutorial(direction: str, args: argparse.Namespace, out: Path) -> subprocess.Popen:
    command = [sys.executable, __file__, "--tutorial-worker", "--direction", direction, "--seconds", str(args.seconds),
               "--seed", str(args.seed), "--clock", args.clock, "--threads", str(args.threads), "--out", str(out)]
    return subprocess.Popen(command)


def start_ours(direction: str, args: argparse.Namespace, out: Path) -> subprocess.Popen:
    command = [sys.executable, "-m", "training", "seq2seq", "--direction", direction, "--max-seconds",
               str(args.seconds), "--clock", args.clock, "--seed", str(args.seed), "--out", str(out)]
    print("$ " + " ".join(command[1:]), flush=True)
    return subprocess.Popen(command, env={**os.environ, "PROGRESS": "0"})


def score_ours(checkpoint: Path, pairs: list[tuple[str, str]], beam_size: int) -> dict:
    translator = load_translator(load_checkpoint(checkpoint), torch.device("cpu"))
    hypotheses = translations(translator, [s for s, _ in pairs], TranslationOptions(beam_size=beam_size))
    return corpus_scores(hypotheses, [t for _, t in pairs], translator.target_language)


def compare(direction: str, args: argparse.Namespace) -> list[tuple[str, dict[str, dict]]]:
    """(label, {split: scores}) for the tutorial's greedy run, then ours greedy and beam 4."""
    _, splits = tutorial_splits(direction, False, 0)
    tutorial_file = args.out / f"tutorial-{direction}.json"
    workers = [start_tutorial(direction, args, tutorial_file)]
    checkpoints = args.checkpoint_dir or args.out / "ours"
    if args.checkpoint_dir is None:
        workers.append(start_ours(direction, args, checkpoints))
    for worker in workers:
        if worker.wait() != 0:
            raise SystemExit(f"{worker.args} failed")
    tutorial = json.loads(tutorial_file.read_text(encoding="utf-8"))
    checkpoint = checkpoints / f"seq2seq-{direction}"
    training = json.loads((checkpoint / "config.json").read_text(encoding="utf-8"))["training"]
    target_language = languages(direction)[1]
    rows = [(f"tutorial recipe, greedy ({tutorial['steps']} steps, {tutorial['seconds']:.0f} s)",
             {name: corpus_scores(tutorial["hypotheses"][name], [t for _, t in pairs], target_language)
              for name, pairs in splits.items()})]
    for beam in (1, 4):
        label = "greedy" if beam == 1 else f"beam {beam}"
        rows.append((f"ours, {label} ({training['steps']} steps, {training['seconds']:.0f} s)",
                     {name: score_ours(checkpoint, pairs, beam) for name, pairs in splits.items()}))
    return rows


def reference(direction: str, seconds: float, threads: int, seeds: int, normalise: bool) -> int:
    """The recipe alone on the reference figure's split, once per seed; test BLEU and chrF of each, and the mean."""
    directions = ("zh-en", "en-zh") if direction == "both" else (direction,)
    print(f"the tutorial recipe alone: {seconds:g} s of wall clock on {threads} thread(s), "
          f"{REFERENCE_TEST_PAIRS} test pairs{', English normalised as the tutorial' if normalise else ''}; "
          f"load average {os.getloadavg()[0]:.2f}", flush=True)
    for d in directions:
        target_language = languages(d)[1]
        bleus, chrfs = [], []
        for seed in range(seeds):
            train_pairs, splits = tutorial_splits(d, True, seed, normalise)
            run = train_tutorial(d, train_pairs, splits, seconds, seed, "wall", threads)
            scores = corpus_scores(run.hypotheses["test"], [t for _, t in splits["test"]], target_language)
            bleus.append(scores["bleu"])
            chrfs.append(scores["chrf"])
            print(f"{d} seed {seed}: {run.steps} steps in {run.seconds:.0f} s, test BLEU {scores['bleu']:.2f}, "
                  f"chrF {scores['chrf']:.2f}", flush=True)
        print(f"{d} mean of {seeds}: test BLEU {sum(bleus) / seeds:.2f}, chrF {sum(chrfs) / seeds:.2f}")
    print(f"load average now {os.getloadavg()[0]:.2f}")
    return 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=None, help="training budget of each (default: ours)")
    parser.add_argument("--direction", choices=("zh-en", "en-zh", "both"), default="both")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--clock", choices=("wall", "cpu"), default="wall",
                        help="what the seconds count (cpu: each process's CPU time, for a machine others load)")
    parser.add_argument("--out", type=Path, default=Path("bench-out/seq2seq"))
    parser.add_argument("--checkpoint-dir", type=Path, default=None,
                        help="score ours from here (seq2seq-<direction>) instead of training it alongside")
    parser.add_argument("--threads", type=int, default=None,
                        help="torch threads of the recipe's run (default: 1; 2 with --reference)")
    parser.add_argument("--reference", action="store_true",
                        help="the recipe alone, under the conditions of its reference figure (see above)")
    parser.add_argument("--seeds", type=int, default=1, help="--reference: seeds 0..N-1, one run each")
    parser.add_argument("--normalise", action="store_true",
                        help="--reference: the English of every pair as the tutorial's normalizeString leaves it, in "
                             "training and in the references scored")
    parser.add_argument("--tutorial-worker", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.threads is not None and args.threads < 1:
        parser.error(f"--threads must be at least 1, got {args.threads}")
    if args.reference:
        return reference(args.direction, args.seconds or 120.0, args.threads or 2, args.seeds, args.normalise)
    if args.normalise:
        parser.error("--normalise goes with --reference")
    args.threads = args.threads or 1
    args.seconds = args.seconds or default_seconds()
    if args.tutorial_worker:  # --out is the file of its translations
        run = train_tutorial(args.direction, *tutorial_splits(args.direction, False, 0), args.seconds, args.seed,
                             args.clock, args.threads)
        args.out.write_text(json.dumps(run.__dict__, ensure_ascii=False), encoding="utf-8")
        return 0

    args.out.mkdir(parents=True, exist_ok=True)
    directions = ("zh-en", "en-zh") if args.direction == "both" else (args.direction,)
    print(f"{args.seconds:g} s of training each; load average {os.getloadavg()[0]:.2f}", flush=True)
    results = {d: compare(d, args) for d in directions}
    print(f"\nload average now {os.getloadavg()[0]:.2f}; split seed 0 of the HSK pairs")
    print(f"{'direction':<9} {'run':<46} {'split':<10} {'BLEU':>6} {'chrF':>6} {'BP':>6} {'ratio':>6}")
    for direction, rows in results.items():
        for label, by_split in rows:
            for name, s in by_split.items():
                print(f"{direction:<9} {label:<46} {name:<10} {s['bleu']:>6.2f} {s['chrf']:>6.2f} "
                      f"{s['brevity_penalty']:>6.3f} {s['length_ratio']:>6.3f}")
        tutorial_bleu = rows[0][1]["test"]["bleu"]
        for label, by_split in rows[1:]:
            print(f"{direction:<9} {label}: test BLEU {by_split['test']['bleu'] / max(tutorial_bleu, 1e-9):.2f}x "
                  "the tutorial's")
    (args.out / "results.json").write_text(json.dumps(results, indent=2), encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
