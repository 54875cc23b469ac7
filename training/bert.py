"""BERT: masked-language-model + next-sentence pretraining of a small encoder on the training plays.

    python -m training bert [--profile tiny|quick|full] [--corpus FILE]   writes checkpoints/bert/
    python -m training bert --resume                                     continue from checkpoints/.bert-train-state
    python -m training evaluate bert                                     MLM / NSP accuracy on validation
    torchrun --nproc_per_node=2 -m training bert --device cpu           DistributedDataParallel

``make_pairs`` builds a pass's sentence pairs, ``pair_batches`` draws each step's global batch of them,
``collate`` pads and masks it, ``share_of_loss`` weighs a piece of it, ``evaluate_model`` is the
validation pass; ``PretrainingTask`` hands them to the shared loop (``training.loop``), which runs the
steps, under torchrun too.
"""

from __future__ import annotations

import argparse
import logging
import math
import random
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers
from torch import nn

from models.bert import (
    CLS,
    EMBEDDING_STD,
    IGNORE,
    IS_NEXT,
    MASK,
    NORMS,
    NOT_NEXT,
    PAD,
    SEP,
    SPECIAL_TOKENS,
    TOKENIZER_FILE,
    BertConfig,
    BertForPreTraining,
    MLMCandidates,
    load,
    load_tokenizer,
)
from models.catalog import checkpoint_id_of
from models.checkpoint import Checkpoint, load_checkpoint, update_metrics
from models.tokenizers import WordVocab
from models.word2vec import VOCAB_FILE as W2V_VOCAB_FILE
from training import loop
from training.common import add_name_arguments, checkpoint_name, pick_device, pretrained_checkpoint_path
from training.data import (
    SPLIT_SEED,
    plays_in,
    read_text_file,
    shakespeare_provenance,
    split_text,
    user_provenance,
)

FAMILY = "bert"
MASK_PROBABILITY = 0.15  # share of (non-special) tokens selected for prediction: BERT's, and the evaluation's
MASK_SPLIT = (0.8, 0.1)  # of the selected: → [MASK], → random token; the remaining 10% stay unchanged
EVAL_SEED = 1234  # the validation pairs and masks are the same for every checkpoint
USER_DOCUMENT_LINES = 100  # a user's corpus is cut into documents of this many lines for random NSP pairs
MODEL_FIELDS = ("max_position", "dim", "n_layers", "n_heads", "ffn_dim", "dropout", "norm")

PROFILES: dict[str, dict[str, Any]] = {
    # Seconds: the test session trains this before starting the server (through the sampled softmax, as quick).
    "tiny": {"epochs": 1, "max_steps": 150, "vocab_size": 1000, "max_position": 32, "short_position": 32,
             "dim": 64, "n_layers": 2, "n_heads": 2, "ffn_dim": 128, "dropout": 0.0, "batch_size": 32,
             "lr": 1e-3, "eval_pairs": 256, "sampled_softmax": 128},
    # What `make serve` trains. Measured on the validation plays: two layers, because in this budget four stayed
    # on the plateau of predicting unigram frequencies (MLM top-1 0.07 after 3 epochs). 30% of the tokens
    # masked rather than 15% (Wettig et al., 2022): at 1,740 steps of 64 pairs packed to 64 positions (the
    # evaluation masks 15%), MLM top-1 0.208 against 0.186, on word targets 0.145 against 0.121, NSP 0.708
    # against 0.722, for 1.12x the time of a step; 40% lost again (0.169 against 0.174 below).
    # Then BERT's length schedule on smaller batches (one thread, CPU seconds of the training loop, load 5-8,
    # 2026-11-29): at 180 s, 64 pairs at 64 positions made 603 steps and stayed on the plateau (0.077, words
    # 0.002); packing to 32 made 1,300 steps (0.153, words 0.087) but NSP fell to chance (0.564) while the
    # evaluation reads 64; the last 10% of the steps at 64 gave NSP back (0.709, 0.162 at 1,250 steps);
    # batches of 32 rather than 64 gained again (2,300 steps in 160 s: 0.174, words 0.105, NSP 0.709;
    # batches of 16 0.170 in 192 s). 3,500 such steps (238 s) reach the 6 epochs at 64 of before (0.205,
    # words 0.140, NSP 0.708 against 0.207, 0.145, 0.710) in under half their CPU time (about 520 s).
    # A feed-forward size of 256 led at 2,300 steps (0.181 in 142 s) but not at 3,500 (0.202 in 201 s).
    # Then (2026-11-30, one thread at load 1-8, 3,500 steps, the README's table): pre-norm layers 0.210 (words
    # 0.146, NSP 0.711); with a feed-forward of 256, 0.207 (0.142, 0.709) in 0.77x the CPU time (211 s against
    # 273 s); decaying over the last 10% rather than 20%, 0.212 (0.148); a longer step every 10th besides the
    # final phase, 0.215 (0.152) with 512. All four: 0.214 (0.150, NSP 0.709) in 219 s, against the post-norm
    # profile's 0.205 (0.140, 0.708) in 238 s. Learning rates 7e-4 and 2e-3, Adam's beta2 0.98, decaying over
    # the last 50%, whole-word masking, 3 layers with a feed-forward of 256, and [MASK] for every selected token
    # did worse.
    # Then a sampled softmax (2026-11-30, the 2-core AVX2 machine, 190 s on two threads, seeds 0 / 1, the README's
    # table): the decoder scores the batch's targets and 128 random ids rather than 8,000, so the same seconds make
    # 1.4x the steps: MLM top-1 0.179 / 0.194 -> 0.209 / 0.209 (words 0.112 / 0.131 -> 0.145 / 0.146); 512 random
    # ids 0.202 / 0.208, 2,048 0.195, 32 0.207 / 0.210; with 128, three layers 0.198 / 0.201. The clock ends the
    # run (max_steps only bounds a fast machine's), its final phase and decay following it.
    # Then the pieces that are whole words start from the served word2vec-sg's vectors (2026-12-01, the AVX2
    # machine, one thread each, 190 s, seeds 0 / 1, the README's table): MLM top-1 0.213 / 0.220 -> 0.221 / 0.230
    # (words 0.149 / 0.157 -> 0.159 / 0.167), NSP unchanged, in as many steps.
    "quick": {"epochs": 6, "max_steps": 8000, "vocab_size": 8000, "max_position": 64, "short_position": 32,
              "long_every": 10, "long_share": 0.1, "dim": 128, "n_layers": 2, "n_heads": 4, "ffn_dim": 256,
              "norm": "pre", "dropout": 0.0, "batch_size": 32, "lr": 1e-3, "decay": 0.1, "eval_pairs": None,
              "mask_probability": 0.3, "sampled_softmax": 128, "embeddings": "word2vec", "max_seconds": 190.0},
    # A GPU run.
    "full": {"epochs": 40, "vocab_size": 8000, "max_position": 128, "short_position": 64,
             "dim": 256, "n_layers": 6, "n_heads": 8, "ffn_dim": 1024, "dropout": 0.1, "batch_size": 128,
             "lr": 5e-4, "eval_pairs": None},
}
DEFAULTS: dict[str, Any] = {"mask_probability": MASK_PROBABILITY, "mask_split": MASK_SPLIT, "whole_word": False,
                             "norm": "post", "weight_decay": 0.01, "warmup": 0.06, "decay": 0.2, "betas": (0.9, 0.999),
                             "save_interval": 500, "long_every": 10, "long_share": 0.0,
                             "sampled_softmax": 0, "embeddings": "random"}

log = logging.getLogger("training.bert")


# ---- arguments -----------------------------------------------------------------------------------


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--vocab-size", type=int, default=None, help="WordPiece vocabulary size")
    parser.add_argument("--max-position", type=int, default=None,
                        help="longest input in tokens ([CLS]/[SEP] included): the position table's size")
    parser.add_argument("--short-position", type=int, default=None,
                        help="pack most pairs to this length, cheaper per step (default: --max-position)")
    parser.add_argument("--long-every", type=int, default=None,
                        help="with --short-position: every Nth step packs pairs longer, up to --max-position "
                             "(0: none)")
    parser.add_argument("--long-share", type=float, default=None,
                        help="with --short-position: this share of the steps, at the end, packs pairs to "
                             "--max-position (BERT's final phase; 0: none)")
    parser.add_argument("--dim", type=int, default=None, help="hidden size")
    parser.add_argument("--n-layers", type=int, default=None, help="encoder layers")
    parser.add_argument("--n-heads", type=int, default=None, help="attention heads per layer")
    parser.add_argument("--ffn-dim", type=int, default=None, help="feed-forward inner size")
    parser.add_argument("--dropout", type=float, default=None)
    parser.add_argument("--norm", choices=NORMS, default=None,
                        help="post: LayerNorm after each residual sum (BERT); pre: before each sublayer")
    parser.add_argument("--mask-probability", type=float, default=None,
                        help="share of tokens selected for prediction in training (the evaluation's stays 0.15)")
    parser.add_argument("--whole-word", action=argparse.BooleanOptionalAction, default=None,
                        help="select whole words for prediction in training, all of a word's pieces at once "
                             "(the evaluation's stay single tokens)")
    parser.add_argument("--mask-split", type=float, nargs=2, default=None, metavar=("MASK", "RANDOM"),
                        help="of the tokens selected in training, the shares replaced by [MASK] and by a random "
                             "token; the rest stay (BERT's: 0.8 0.1; the evaluation's stays 1 0)")
    parser.add_argument("--sampled-softmax", type=int, default=None, metavar="K",
                        help="training scores each masked token against the batch's targets and K token ids drawn "
                             "at random rather than the whole vocabulary (sampled softmax; 0: the whole vocabulary). "
                             "The evaluation and the service always use the whole vocabulary")
    parser.add_argument("--embeddings", choices=("random", "word2vec"), default=None,
                        help="where the WordPiece embeddings start: random vectors, or, for each piece that is a "
                             "whole word, its vector in --word2vec")
    parser.add_argument("--word2vec", type=Path, default=None,
                        help="the word2vec checkpoint for --embeddings word2vec (default: <out>/word2vec-sg)")
    parser.add_argument("--betas", type=float, nargs=2, default=None, metavar=("BETA1", "BETA2"),
                        help="AdamW's decay rates of its gradient and squared-gradient averages (BERT's: 0.9 0.999)")
    parser.add_argument("--warmup", type=float, default=None, help="fraction of steps of linear warm-up")
    parser.add_argument("--decay", type=float, default=None,
                        help="fraction of steps, at the end, of linear decay to zero (constant before)")
    add_name_arguments(parser, "bert: the id bert; X gives bert-X")
    loop.add_arguments(parser)
    _add_eval_flags(parser)


def add_evaluate_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--name", default=FAMILY, help="the checkpoint's name (bert, or X for bert-X)")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--precision", choices=("auto", "fp32", "bf16"), default="auto")
    _add_eval_flags(parser)


def _add_eval_flags(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--eval-pairs", type=int, default=None,
                        help="evaluate on only the first N validation pairs (default: all)")


# ---- tokenizer -----------------------------------------------------------------------------------


def train_tokenizer(lines: Sequence[str], vocab_size: int) -> Tokenizer:
    """WordPiece on the training text, lower-cased like bert-base-uncased (a small corpus cannot spare
    vocabulary for capitalised duplicates); specials first so [PAD] = 0. The same lines give the same
    vocabulary with the same ids every time."""
    trained = _uncased(models.WordPiece(unk_token="[UNK]"))
    # The trainer numbers each "##" continuation piece when it first meets it, walking the corpus's words in
    # hash-map order, and breaks ties between equally frequent merges by those numbers, so the vocabulary
    # differed from run to run (measured on the training plays at 8,000 tokens: 8 distinct vocabularies in
    # 20 runs; 7 with RAYON_NUM_THREADS=1 or TOKENIZERS_PARALLELISM=false). Naming every continuation piece
    # up front, in sorted order, numbers them the same way every time: 1 vocabulary in 20 runs.
    words = (word for line in lines
             for word, _ in trained.pre_tokenizer.pre_tokenize_str(trained.normalizer.normalize_str(line)))
    continuations = sorted({f"##{c}" for word in words for c in word[1:]})
    trainer = trainers.WordPieceTrainer(vocab_size=vocab_size, special_tokens=[*SPECIAL_TOKENS, *continuations],
                                        min_frequency=2, show_progress=False)
    trained.train_from_iterator(lines, trainer)
    # Built afresh (the trainer made the continuation pieces special tokens of the tokenizer it trained),
    # numbered in sorted order so that one vocabulary always gets the same ids.
    ordered = [*SPECIAL_TOKENS, *sorted(set(trained.get_vocab()) - set(SPECIAL_TOKENS))]
    tokenizer = _uncased(models.WordPiece({token: i for i, token in enumerate(ordered)}, unk_token="[UNK]"))
    tokenizer.add_special_tokens(list(SPECIAL_TOKENS))
    cls_id, sep_id = tokenizer.token_to_id(CLS), tokenizer.token_to_id(SEP)
    tokenizer.post_processor = processors.TemplateProcessing(
        single=f"{CLS} $A {SEP}", pair=f"{CLS} $A {SEP} $B:1 {SEP}:1",
        special_tokens=[(CLS, cls_id), (SEP, sep_id)])
    return tokenizer


def _uncased(model: models.WordPiece) -> Tokenizer:
    """``model`` behind BERT's uncased normalizer and pre-tokenizer, with the WordPiece decoder."""
    tokenizer = Tokenizer(model)
    tokenizer.normalizer = normalizers.BertNormalizer(lowercase=True)
    tokenizer.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tokenizer.decoder = decoders.WordPiece()
    return tokenizer


# ---- sentence pairs ------------------------------------------------------------------------------


@dataclass(frozen=True)
class Pair:
    a: list[int]
    b: list[int]
    label: int  # IS_NEXT or NOT_NEXT


def documents_from_plays(part: str) -> list[list[str]]:
    """Each play is a document; its units are verse lines in play order (speech after speech)."""
    return [[line for speech in play.speeches for line in speech.lines] for play in plays_in(part)]


def documents_from_text(text: str) -> list[list[str]]:
    """A user's text: non-empty lines, cut into documents so random NSP partners come from elsewhere."""
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    documents = [lines[i:i + USER_DOCUMENT_LINES] for i in range(0, len(lines), USER_DOCUMENT_LINES)]
    if len(documents) < 2:
        raise ValueError(f"corpus part has {len(lines)} non-empty lines; sentence-pair training needs more "
                         f"than {USER_DOCUMENT_LINES}")
    return documents


def encode_documents(tokenizer: Tokenizer, documents: list[list[str]]) -> list[list[list[int]]]:
    """Token ids per line, specials excluded; lines that encode to nothing are dropped."""
    encoded = []
    for document in documents:
        ids = [e.ids for e in tokenizer.encode_batch(document, add_special_tokens=False)]
        encoded.append([line for line in ids if line])
    return encoded


def log_unigram_prior(documents: list[list[list[int]]], vocab_size: int) -> torch.Tensor:
    """log p(token) over the training lines, add-one smoothed: the MLM decoder's starting bias.

    Starting from the prior, the first steps need not learn which pieces are frequent before anything
    else. measured (quick profile, seeds 0 / 1, see the README): validation masked-token top-1 0.214 / 0.209
    -> 0.217 / 0.217, on word targets 0.150 / 0.145 -> 0.155 / 0.154.
    """
    counts = torch.ones(vocab_size)
    ids = [piece for document in documents for line in document for piece in line]
    counts += torch.bincount(torch.tensor(ids, dtype=torch.long), minlength=vocab_size).float()
    return (counts / counts.sum()).log()


def _random_segment(
    documents: list[list[list[int]]], exclude: int, length: int, rng: random.Random
) -> list[int]:
    """About ``length`` tokens of consecutive lines from a random document other than ``exclude``."""
    doc = rng.choice([d for d in range(len(documents)) if d != exclude and documents[d]])
    lines = documents[doc]
    start = rng.randrange(len(lines))
    segment: list[int] = []
    for line in lines[start:]:
        segment += line
        if len(segment) >= length:
            break
    return segment


def _truncate(a: list[int], b: list[int], budget: int) -> tuple[list[int], list[int]]:
    """Trim the longer segment until both fit: A from its start, B from its end, so the A|B boundary the
    NSP head judges stays intact."""
    while len(a) + len(b) > budget:
        if len(a) > len(b):
            a = a[1:]
        else:
            b = b[:-1]
    return a, b


def _pair_at(
    documents: list[list[list[int]]], doc: int, start: int, budget: int, rng: random.Random
) -> tuple[Pair, int] | None:
    """The pair whose A starts at line ``start`` of document ``doc``, and the line where the next pair of a
    pass starts; None when fewer than two lines are left.

    Consecutive lines are gathered until they fill ``budget`` tokens and split at a random line boundary
    into A and B. Half the time B is replaced by text from another document (NOT_NEXT), and the real
    continuation starts the next pair, as in BERT's data preparation."""
    lines = documents[doc]
    end, total = start, 0
    while end < len(lines) and (end - start < 2 or total + len(lines[end]) <= budget):
        total += len(lines[end])
        end += 1
    if end - start < 2:
        return None
    split = rng.randint(start + 1, end - 1)
    a = [t for line in lines[start:split] for t in line]
    b = [t for line in lines[split:end] for t in line]
    if rng.random() < 0.5:
        label, following = IS_NEXT, end
    else:
        b = _random_segment(documents, doc, len(b), rng)
        label, following = NOT_NEXT, split
    a, b = _truncate(a, b, budget)
    return Pair(a, b, label), following


def make_pairs(documents: list[list[list[int]]], max_position: int, rng: random.Random) -> list[Pair]:
    """One epoch of sentence pairs (BERT §3.1, task #2): each document read from its first line, pair after
    pair (``_pair_at``), each packed to ``max_position``. Each epoch draws new pairs."""
    if len(documents) < 2:
        raise ValueError("sentence-pair training needs at least two documents")
    pairs: list[Pair] = []
    for doc in range(len(documents)):
        start = 0
        while (drawn := _pair_at(documents, doc, start, max_position - 3, rng)) is not None:
            pair, start = drawn
            pairs.append(pair)
    return pairs


def sampled_pairs(documents: list[list[list[int]]], max_position: int, count: int, rng: random.Random) -> list[Pair]:
    """``count`` sentence pairs packed to ``max_position``, each starting at a line drawn uniformly from the
    text's lines that have another after them: a few batches at a length without building a whole epoch."""
    if len(documents) < 2:
        raise ValueError("sentence-pair training needs at least two documents")
    weights = [max(0, len(lines) - 1) for lines in documents]
    pairs = []
    for doc in rng.choices(range(len(documents)), weights=weights, k=count):
        pair, _ = _pair_at(documents, doc, rng.randrange(weights[doc]), max_position - 3, rng)
        pairs.append(pair)
    return pairs


# ---- batches and masking -------------------------------------------------------------------------


@dataclass(frozen=True)
class SpecialIds:
    pad: int
    cls: int
    sep: int
    mask: int
    n_special: int  # ids below this are special tokens; random replacements are drawn above it
    vocab_size: int

    @classmethod
    def of(cls, tokenizer: Tokenizer) -> SpecialIds:
        ids = [tokenizer.token_to_id(t) for t in SPECIAL_TOKENS]
        if ids != list(range(len(SPECIAL_TOKENS))):
            raise ValueError(f"tokenizer's special tokens are not ids 0..{len(SPECIAL_TOKENS) - 1}: {ids}")
        return cls(pad=tokenizer.token_to_id(PAD), cls=tokenizer.token_to_id(CLS),
                   sep=tokenizer.token_to_id(SEP), mask=tokenizer.token_to_id(MASK),
                   n_special=len(SPECIAL_TOKENS), vocab_size=tokenizer.get_vocab_size())


def continuation_pieces(tokenizer: Tokenizer) -> torch.Tensor:
    """(vocab_size,) True for the WordPiece pieces that continue a word ("##ing")."""
    return torch.tensor([tokenizer.id_to_token(i).startswith("##") for i in range(tokenizer.get_vocab_size())])


def mask_tokens(
    input_ids: torch.Tensor,
    maskable: torch.Tensor,
    ids: SpecialIds,
    generator: torch.Generator,
    probability: float = MASK_PROBABILITY,
    split: tuple[float, float] = MASK_SPLIT,
    continuation: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """BERT's masking: in each row, round(15%) of the maskable tokens (at least one) are selected;
    of those ``split[0]`` become [MASK], ``split[1]`` a random token, the rest stay as they are.

    With ``continuation`` (vocabulary-sized, True for the "##" pieces that continue a word) whole words are
    selected, as in BERT's whole-word-masking models: a word's pieces share one score, so they rank
    together (only the last word chosen may be cut short by the row's count).

    Returns (corrupted input ids, labels = original id at selected positions, IGNORE elsewhere).
    """
    n_maskable = maskable.sum(dim=1)
    n_selected = (n_maskable.float() * probability).round().long().clamp(min=1).minimum(n_maskable)
    # Random scores, +inf on non-maskable positions: a row's n lowest scores are a uniform choice of n.
    scores = torch.rand(input_ids.shape, generator=generator)
    if continuation is not None:  # each piece takes the score of the piece that starts its word
        positions = torch.arange(input_ids.size(1)).expand_as(input_ids)
        word_start = torch.where(continuation[input_ids], 0, positions).cummax(dim=1).values
        scores = scores.gather(1, word_start)
    scores = scores.masked_fill(~maskable, math.inf)
    rank = scores.argsort(dim=1).argsort(dim=1)
    selected = rank < n_selected[:, None]
    labels = torch.where(selected, input_ids, torch.full_like(input_ids, IGNORE))

    action = torch.rand(input_ids.shape, generator=generator)
    to_mask = selected & (action < split[0])
    to_random = selected & (action >= split[0]) & (action < split[0] + split[1])
    random_ids = torch.randint(ids.n_special, ids.vocab_size, input_ids.shape, generator=generator)
    corrupted = input_ids.masked_fill(to_mask, ids.mask)
    corrupted = torch.where(to_random, random_ids, corrupted)
    return corrupted, labels


def collate(
    pairs: Sequence[Pair],
    ids: SpecialIds,
    generator: torch.Generator,
    probability: float = MASK_PROBABILITY,
    split: tuple[float, float] = MASK_SPLIT,
    continuation: torch.Tensor | None = None,
) -> dict[str, torch.Tensor]:
    """Pad ``[CLS] A [SEP] B [SEP]`` to the batch's longest pair and mask it (whole words with
    ``continuation``, see ``mask_tokens``): the model's keyword inputs."""
    length = max(len(p.a) + len(p.b) + 3 for p in pairs)
    input_ids = torch.full((len(pairs), length), ids.pad, dtype=torch.long)
    segment_ids = torch.zeros((len(pairs), length), dtype=torch.long)
    for row, pair in enumerate(pairs):
        sequence = [ids.cls, *pair.a, ids.sep, *pair.b, ids.sep]
        input_ids[row, :len(sequence)] = torch.tensor(sequence)
        segment_ids[row, len(pair.a) + 2:len(sequence)] = 1
    attention_mask = input_ids != ids.pad
    maskable = attention_mask & (input_ids != ids.cls) & (input_ids != ids.sep)
    corrupted, mlm_labels = mask_tokens(input_ids, maskable, ids, generator, probability, split, continuation)
    return {
        "input_ids": corrupted,
        "segment_ids": segment_ids,
        "attention_mask": attention_mask,
        "mlm_labels": mlm_labels,
        "nsp_labels": torch.tensor([p.label for p in pairs]),
    }


def epoch_batches(n_pairs: int, batch_size: int, rng: random.Random) -> Iterator[list[int]]:
    """Shuffled global batches of pair indices."""
    order = list(range(n_pairs))
    rng.shuffle(order)
    for start in range(0, n_pairs, batch_size):
        yield order[start:start + batch_size]


def length_batches(
    documents: list[list[list[int]]], length: int, batch_size: int, rng: random.Random
) -> Iterator[list[Pair]]:
    """Endless batches of pairs packed to ``length``; every pass over the text draws fresh pairs: new
    A/B split points, new NSP partners."""
    while True:
        pairs = make_pairs(documents, length, rng)
        for indices in epoch_batches(len(pairs), batch_size, rng):
            yield [pairs[i] for i in indices]


def sampled_batches(
    documents: list[list[list[int]]], length: int, batch_size: int, rng: random.Random
) -> Iterator[list[Pair]]:
    """Endless batches of pairs packed to ``length``, each pair from a random line (``sampled_pairs``)."""
    while True:
        yield sampled_pairs(documents, length, batch_size, rng)


def pair_batches(
    documents: list[list[list[int]]], lengths: Sequence[int], batch_size: int, rng: random.Random,
    final: Callable[[], bool] = lambda: False,
) -> Iterator[tuple[int, list[Pair]]]:
    """(packing length, pairs) for each step, following the per-step ``lengths``; once ``final()``
    says so (a run on the clock that has reached its final phase before its steps do), every later step
    packs to the longest of them.

    Short pairs make most steps cheap (attention is quadratic, and a short context teaches a small
    model to read neighbouring words sooner); the longer steps, spread over the whole run rather than
    BERT's final 10%, train every position, and NSP on longer inputs, at the full learning rate.

    A length whose steps read at least about an epoch's pairs goes through epochs (``length_batches``);
    one that fewer steps use, such as each of the lengths the longer steps draw, takes its pairs from
    random lines (``sampled_batches``): building an epoch for a few batches took about 0.4 s a length,
    and the quick profile's 3,500 batches 18.2 s rather than 4.6 s.
    """
    tokens = sum(len(line) for lines in documents for line in lines)
    steps = Counter(lengths)

    def stream(length: int) -> Iterator[list[Pair]]:
        epoch_pairs = tokens / (length - 3)  # about: a pair packs up to length - 3 tokens
        whole = steps[length] * batch_size >= epoch_pairs
        return (length_batches if whole else sampled_batches)(documents, length, batch_size, rng)

    streams = {n: stream(n) for n in sorted(steps)}
    longest = max(lengths)
    for length in lengths:
        length = longest if final() else length
        yield length, next(streams[length])


def short_position(args: argparse.Namespace) -> int:
    return min(args.short_position or args.max_position, args.max_position)


def step_lengths(documents: list[list[list[int]]], args: argparse.Namespace) -> list[int]:
    """Each step's packing length: ``--epochs`` passes over the text at ``--short-position`` (capped by
    ``--max-steps``), except every ``--long-every``-th step, packed to a length drawn uniformly from
    above the short one up to ``--max-position``, so inputs of every length are seen, and the last
    ``--long-share`` of the steps, packed to ``--max-position`` (BERT's final phase at 512 tokens); on a
    budget of seconds that phase starts at that share of the budget if it comes first (``final_phase``)."""
    short = short_position(args)
    per_epoch = math.ceil(len(make_pairs(documents, short, random.Random(args.seed))) / args.batch_size)
    total = loop.total_steps(args, per_epoch)
    if short == args.max_position:
        return [short] * total
    rng = random.Random(args.seed)
    long_from = total - round(total * args.long_share)
    return [args.max_position if step >= long_from
            else rng.randint(short + 1, args.max_position) if args.long_every and (step + 1) % args.long_every == 0
            else short
            for step in range(total)]


def to_device(batch: dict[str, torch.Tensor], device: torch.device) -> dict[str, torch.Tensor]:
    return {k: v.to(device, non_blocking=True) for k, v in batch.items()}


def share_of_loss(
    mlm_logits: torch.Tensor, nsp_logits: torch.Tensor, piece: dict[str, torch.Tensor], n_masked: int, n_pairs: int,
    candidates: MLMCandidates | None = None,
) -> torch.Tensor:
    """A piece of the global batch's MLM + NSP loss: the piece's summed cross-entropies over the global
    batch's counts of masked tokens and pairs. The pieces' shares add up to the loss of the whole batch;
    a mean per piece would weigh a piece with fewer masked tokens as much as one with more, and the
    result would depend on how the batch is split. With ``candidates`` the MLM logits are theirs."""
    targets = piece["mlm_labels"][piece["mlm_labels"] != IGNORE]
    if candidates is not None:
        targets = candidates.index_of(targets)
    mlm = F.cross_entropy(mlm_logits.float(), targets, reduction="sum")
    nsp = F.cross_entropy(nsp_logits.float(), piece["nsp_labels"], reduction="sum")
    return mlm / n_masked + nsp / n_pairs


def schedule(args: argparse.Namespace, total_steps: int) -> loop.Schedule:
    """Linear warm-up over ``--warmup`` of the steps, the peak rate, then a linear decay to zero over the last
    ``--decay`` of them. BERT decays over the whole run; on a budget of minutes that halves the rate before
    a small model has left the plateau where it only predicts unigram frequencies."""
    warmup = max(1, round(total_steps * args.warmup))
    hold = (total_steps * (1 - args.decay) - warmup) / max(1, total_steps - warmup)
    return loop.Schedule(args.lr, 0.0, warmup, "linear", min(1.0, max(0.0, hold)))


def final_phase(run: loop.Run, args: argparse.Namespace) -> Callable[[], bool]:
    """Whether the run has spent the share of its ``--max-seconds`` before the final ``--long-share``: on a
    machine slower than the profile's steps assume, the clock ends the run before its steps do, and the
    final phase at ``--max-position`` (where next-sentence prediction on full-length pairs is learnt)
    must still come. Every process reads rank 0's clock, so all pack alike."""
    return lambda: args.long_share > 0 and run.budget_spent >= 1 - args.long_share


def sample_candidates(targets: torch.Tensor, unigram: torch.Tensor, negatives: int, n_special: int,
                      generator: torch.Generator) -> MLMCandidates:
    """The batch's targets and ``negatives`` token ids drawn uniformly from the non-special ones, each with the
    log of its probability of being among them: a target is one of the batch's ``n`` masked tokens, drawn
    from the unigram distribution, so a token is missed with probability (1 - u)^n by the targets and
    (1 - 1/V)^negatives by the uniform draws."""
    drawn = torch.randint(n_special, len(unigram), (negatives,), generator=generator)
    ids = torch.cat([targets, drawn]).unique()  # sorted
    missed = targets.numel() * torch.log1p(-unigram[ids]) + negatives * math.log1p(-1 / (len(unigram) - n_special))
    return MLMCandidates(ids, torch.log1p(-missed.exp()))


@dataclass
class PretrainingBatch:
    """A global batch: the model's inputs and labels, one row per pair, and the sampled softmax's candidates
    (shared by every row; None for the full softmax)."""

    rows: dict[str, torch.Tensor]
    candidates: MLMCandidates | None


class PretrainingTask:
    """MLM + NSP on sentence pairs packed to each step's length, masked as BERT does; every process draws
    and masks the same global batch (pairs and masks come from the seed) and trains on its rows."""

    def __init__(self, model: BertForPreTraining, tokenizer: Tokenizer, train: list[list[list[int]]],
                 validation: list[list[list[int]]], lengths: list[int], args: argparse.Namespace,
                 device: torch.device, final: Callable[[], bool] = lambda: False):
        self.model, self.tokenizer, self.train, self.validation = model, tokenizer, train, validation
        self.lengths, self.final, self.device, self.ids = lengths, final, device, SpecialIds.of(tokenizer)
        self.batch_size, self.seed, self.eval_pairs = args.batch_size, args.seed, args.eval_pairs
        self.mask_probability, self.mask_split = args.mask_probability, tuple(args.mask_split)
        self.continuation = continuation_pieces(tokenizer) if args.whole_word else None
        self.sampled_softmax = args.sampled_softmax
        # The pieces' log-prior: where the MLM bias starts, and how likely each piece is to be a sampled target.
        self.prior = log_unigram_prior(train, self.ids.vocab_size)
        self.unigram = self.prior.exp()

    def batches(self) -> Iterator[loop.Batch[PretrainingBatch]]:
        masks = torch.Generator().manual_seed(self.seed)
        for _, pairs in pair_batches(self.train, self.lengths, self.batch_size, random.Random(self.seed), self.final):
            batch = collate(pairs, self.ids, masks, self.mask_probability, self.mask_split, self.continuation)
            candidates = None
            if self.sampled_softmax:
                targets = batch["mlm_labels"][batch["mlm_labels"] != IGNORE]
                candidates = sample_candidates(targets, self.unigram, self.sampled_softmax, self.ids.n_special, masks)
            yield loop.Batch(PretrainingBatch(batch, candidates), len(pairs), int(batch["attention_mask"].sum()))

    def loss(self, model: nn.Module, batch: PretrainingBatch, rows: list[int]) -> torch.Tensor:
        rows_of = batch.rows
        n_masked, n_pairs = int((rows_of["mlm_labels"] != IGNORE).sum()), len(rows_of["nsp_labels"])
        piece = to_device({k: v[torch.tensor(rows)] for k, v in rows_of.items()}, self.device)
        candidates = batch.candidates
        if candidates is not None:
            candidates = MLMCandidates(candidates.ids.to(self.device), candidates.log_inclusion.to(self.device))
        mlm_logits, nsp_logits, _ = model(piece["input_ids"], piece["segment_ids"], piece["attention_mask"],
                                          piece["mlm_labels"], mlm_candidates=candidates)
        return share_of_loss(mlm_logits, nsp_logits, piece, n_masked, n_pairs, candidates)

    def validate(self, model: nn.Module) -> dict[str, float]:
        return evaluate_model(model, self.tokenizer, self.validation, self.device, max_pairs=self.eval_pairs)


# ---- evaluation ----------------------------------------------------------------------------------


@torch.no_grad()
def evaluate_model(
    model: BertForPreTraining,
    tokenizer: Tokenizer,
    documents: list[list[list[int]]],
    device: torch.device,
    batch_size: int = 64,
    max_pairs: int | None = None,
) -> dict[str, Any]:
    """MLM top-1/top-5 accuracy and NSP accuracy on fixed validation pairs.

    The same 15% of tokens are selected as in training but every one becomes [MASK] (the fill-mask
    question users ask). ``mlm_top1_words`` counts only targets that contain a letter, since
    punctuation is a large and easy share of the tokens.
    """
    ids = SpecialIds.of(tokenizer)
    pairs = make_pairs(documents, model.config.max_position, random.Random(EVAL_SEED))[:max_pairs]
    generator = torch.Generator().manual_seed(EVAL_SEED)
    is_word = torch.tensor([any(c.isalpha() for c in tokenizer.id_to_token(i))
                            for i in range(ids.vocab_size)], device=device)
    model.eval()
    top1 = top5 = words = word_hits = n_masked = nsp_hits = 0
    loss_sum = 0.0
    for start in range(0, len(pairs), batch_size):
        batch = collate(pairs[start:start + batch_size], ids, generator, split=(1.0, 0.0))
        batch = to_device(batch, device)
        labels = batch.pop("mlm_labels")
        nsp_labels = batch.pop("nsp_labels")
        mlm_logits, nsp_logits, _ = model(**batch)
        selected = labels != IGNORE
        logits = mlm_logits[selected].float()
        targets = labels[selected]
        best5 = logits.topk(5, dim=-1).indices
        hits1 = best5[:, 0] == targets
        top1 += hits1.sum().item()
        top5 += (best5 == targets[:, None]).any(dim=-1).sum().item()
        word_targets = is_word[targets]
        words += word_targets.sum().item()
        word_hits += (hits1 & word_targets).sum().item()
        loss_sum += torch.nn.functional.cross_entropy(logits, targets, reduction="sum").item()
        n_masked += targets.numel()
        nsp_hits += (nsp_logits.argmax(dim=-1) == nsp_labels).sum().item()
    return {
        "mlm_top1": top1 / n_masked,
        "mlm_top5": top5 / n_masked,
        "mlm_top1_words": word_hits / max(1, words),
        "mlm_loss": loss_sum / n_masked,
        "nsp_accuracy": nsp_hits / len(pairs),
        "masked_tokens": n_masked,
        "pairs": len(pairs),
    }


# ---- training ------------------------------------------------------------------------------------


def _corpus(args: argparse.Namespace) -> tuple[list[list[str]], list[list[str]], dict[str, Any]]:
    """(training documents, validation documents, provenance) for the Shakespeare split or ``--corpus``."""
    if args.corpus is not None:
        train_text, val_text = split_text(read_text_file(args.corpus), args.val_fraction)
        return (documents_from_text(train_text), documents_from_text(val_text),
                user_provenance(args.corpus, args.val_fraction))
    return documents_from_plays("train"), documents_from_plays("validation"), shakespeare_provenance()


def resolve_arguments(args: argparse.Namespace) -> argparse.Namespace:
    loop.resolve(args, {**DEFAULTS, **PROFILES[args.profile]})
    if args.sampled_softmax < 0:
        raise ValueError(f"--sampled-softmax must be 0 (the whole vocabulary) or more, got {args.sampled_softmax}")
    if args.word2vec is not None and args.embeddings != "word2vec":
        raise ValueError("--word2vec is for the word2vec vectors; give --embeddings word2vec too")
    return args


@torch.no_grad()
def start_from_word2vec(embedding: nn.Embedding, tokenizer: Tokenizer, vectors: Checkpoint,
                        generator: torch.Generator) -> int:
    """Each WordPiece that is a whole word of the word2vec checkpoint starts at that word's vector, as the
    word-level classifiers' embeddings do (Kim, 2014); the tied MLM decoder reads the same matrix. The vectors
    are mapped into the model's width by a random orthogonal matrix, which keeps their angles, and scaled so
    that an entry spreads as a random start's (``EMBEDDING_STD``). The "##" pieces, which spell no word2vec
    word, and the special tokens keep their random start. Returns how many pieces start from a vector."""
    table = vectors.state_dict["input_embeddings.weight"].float()
    known = WordVocab.from_file(vectors.file(W2V_VOCAB_FILE)).stoi
    found = sorted((i, known[piece]) for piece, i in tokenizer.get_vocab().items() if piece in known)
    if not found:
        return 0
    rows, sources = (list(column) for column in zip(*found, strict=True))
    width, dim = embedding.embedding_dim, table.shape[1]
    basis, _ = torch.linalg.qr(torch.randn(max(width, dim), min(width, dim), generator=generator))
    rotation = basis if width >= dim else basis.T  # (width, dim): orthonormal columns, or rows when narrower
    embedding.weight[rows] = (table[sources] @ rotation.T * (EMBEDDING_STD / table.std().item())).to(embedding.weight)
    return len(found)


def train(args: argparse.Namespace) -> list[Path]:
    resolve_arguments(args)
    name = checkpoint_name(args, FAMILY, FAMILY, args.corpus)
    vectors = (load_checkpoint(pretrained_checkpoint_path(args.word2vec, args.out, "word2vec-sg",
                                                          "point --word2vec at one, or give --embeddings random"))
               if args.embeddings == "word2vec" else None)
    with loop.Run(args, checkpoint_id_of(FAMILY, name)) as run:
        if run.saved:  # a state saved before a model field existed holds that field's default (norm: post)
            run.saved["model_config"] = BertConfig.from_dict(run.saved["model_config"]).to_dict()
        run.restore(args, MODEL_FIELDS)
        train_docs, val_docs, provenance = _corpus(args)
        tokenizer_json = run.saved["tokenizer"] if run.saved else None
        if tokenizer_json is None and run.is_main:  # rank 0 trains it and hands it to the others: all encode alike
            tokenizer_json = train_tokenizer([line for doc in train_docs for line in doc], args.vocab_size).to_str()
        tokenizer = Tokenizer.from_str(run.dist.broadcast(tokenizer_json))
        ids = SpecialIds.of(tokenizer)
        train_encoded, val_encoded = encode_documents(tokenizer, train_docs), encode_documents(tokenizer, val_docs)
        config = BertConfig(vocab_size=ids.vocab_size, pad_id=ids.pad, **{k: getattr(args, k) for k in MODEL_FIELDS})
        model = BertForPreTraining(config).to(run.device)
        lengths = step_lengths(train_encoded, args)
        log.info("bert: %d training lines, %d steps (%d of them long)", sum(len(d) for d in train_encoded),
                 len(lengths), sum(n != short_position(args) for n in lengths))
        task = PretrainingTask(model, tokenizer, train_encoded, val_encoded, lengths, args, run.device,
                               final_phase(run, args))
        with torch.no_grad():  # a resumed run's saved weights replace it in run.fit, and the embeddings below
            model.mlm.bias.copy_(task.prior)
        if vectors is not None:
            found = start_from_word2vec(model.bert.embeddings.token, tokenizer, vectors,
                                        torch.Generator().manual_seed(args.seed))
            log.info("bert: %d of %d pieces start from %s", found, ids.vocab_size, vectors.id)
            provenance = {**provenance, "initialised_from": {"id": vectors.id, "data": vectors.config.get("data"),
                                                             "pieces": found}}
        settings = loop.Settings(len(lengths), schedule(args, len(lengths)), betas=tuple(args.betas), eps=1e-6)
        trained = run.fit(task, settings,
                          rebuild={"model_config": config.to_dict(), "tokenizer": tokenizer.to_str()})
        if not run.is_main:
            return []
        with run.autocast():
            metrics = evaluate_model(model, tokenizer, val_encoded, run.device, max_pairs=args.eval_pairs)
        log.info("bert: MLM top-1 %.3f, top-5 %.3f, NSP %.3f on validation", metrics["mlm_top1"],
                 metrics["mlm_top5"], metrics["nsp_accuracy"])
        return [run.save(loop.Record({
            "id": checkpoint_id_of(FAMILY, name), "family": FAMILY, "name": name, "architecture": "BertForPreTraining",
            "model": config.to_dict(), "tokenizer": {"type": "wordpiece", "file": TOKENIZER_FILE, "lowercase": True},
            "data": provenance, "split_seed": SPLIT_SEED,
        }, {TOKENIZER_FILE: tokenizer.to_str()}), trained, metrics)]


def evaluate(args: argparse.Namespace) -> dict[str, Any]:
    """Re-run the validation evaluation of ``checkpoints/bert`` and refresh its metrics.json."""
    checkpoint = load_checkpoint(args.out / checkpoint_id_of(FAMILY, args.name))
    device = pick_device(args.device)
    model, tokenizer = load(checkpoint, device), load_tokenizer(checkpoint)
    data = checkpoint.config["data"]
    _, documents, _ = _corpus(argparse.Namespace(corpus=Path(data["file"]) if "file" in data else None,
                                                  val_fraction=data.get("val_fraction")))
    with loop.autocast(device, loop.resolve_precision(args.precision, device)):
        results = evaluate_model(model, tokenizer, encode_documents(tokenizer, documents), device, args.batch_size,
                                 args.eval_pairs)
    metrics = {**checkpoint.metrics, **results}
    update_metrics(checkpoint.path, metrics)
    return metrics
