"""Seq2seq translation (Chinese<->English): a Transformer, or a recurrent encoder-decoder with additive, dot,
general or no attention.

    python -m training seq2seq --direction zh-en            the Transformer (the default) -> checkpoints/seq2seq-zh-en
    python -m training seq2seq --arch recurrent             GRU + additive attention -> seq2seq-zh-en-recurrent
    python -m training seq2seq --direction en-zh --arch recurrent --cell lstm --attention dot --name en-zh-lstm-dot
    python -m training seq2seq --pairs my_pairs.tsv         your own "chinese<TAB>english" pairs
    python -m training seq2seq --resume                     continue from the last saved state
    python -m training evaluate seq2seq --direction zh-en   BLEU / chrF on the test split -> metrics.json
    python -m training evaluate seq2seq --grid              attention x cell comparison (markdown table)
    python -m training evaluate seq2seq --heatmap docs/attention.png --text "我们明天见。"
    torchrun --nproc_per_node=2 -m training seq2seq --device cpu    DistributedDataParallel

The pairs are split once into train / validation / test (``--val-fraction`` each) by ``--split-seed``;
both directions and every grid run share that split, so no model is scored on a sentence it (or its
mirror) trained on. Training runs on the shared loop (``training.loop``), which checks the validation loss
after every epoch, keeps the best model and stops early.
"""

from __future__ import annotations

import argparse
import functools
import json
import logging
import os
import random
import re
import subprocess
import sys
import time
from collections import defaultdict
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, TypeVar

import torch
from torch import nn

from models.catalog import checkpoint_id_of
from models.checkpoint import load_checkpoint, update_metrics
from models.pipelines.attention_image import attention_png
from models.pipelines.translation import LENGTH_PENALTY, TranslationOptions, Translator, load
from models.seq2seq import (
    ATTENTIONS,
    BOS_ID,
    CELLS,
    DIRECTIONS,
    EOS_ID,
    PAD_ID,
    SPECIALS,
    UNK_ID,
    Characters,
    ChineseWords,
    EnglishSubwords,
    EnglishWords,
    Seq2Seq,
    Seq2SeqConfig,
    Units,
    build_vocab,
    encode,
    model_config_dict,
    pad_batch,
    tokenize,
)
from models.tokenizers import WordVocab
from models.transformer import Transformer, TransformerConfig
from models.transformer import weights as transformer_weights
from training import loop
from training.common import add_name_arguments, checkpoint_name, length_grouped, pick_device
from training.data import (
    CEDICT_SOURCE,
    HSK_SOURCE,
    SPLIT_SEED,
    HskRecord,
    clean_gloss,
    hsk_word_list,
    load_cedict,
    load_hsk_pairs,
    load_hsk_records,
    read_tsv,
    user_provenance,
)

FAMILY = "seq2seq"
SOURCE_VOCAB, TARGET_VOCAB = "source_vocab.json", "target_vocab.json"
ARCHES = ("recurrent", "transformer")
UNITS_FILES = {"zh_lexicon": ChineseWords.file_name, "en_bpe": EnglishSubwords.file_name}
MODEL_FIELDS = {"recurrent": ("embedding_dim", "hidden_dim", "cell", "attention", "bidirectional", "dropout",
                              "tie_embeddings"),
                "transformer": ("dim", "n_layers", "n_heads", "ffn_dim", "dropout", "tie_embeddings")}
# The flags only one architecture reads: given to the other, they are an error rather than ignored.
ARCH_ONLY = {"recurrent": ("embedding_dim", "hidden_dim", "cell", "attention", "bidirectional", "teacher_forcing"),
             "transformer": ("dim", "n_layers", "n_heads", "ffn_dim")}
# Each direction's default checkpoint (seq2seq-zh-en, seq2seq-en-zh); the other architecture's is
# seq2seq-<direction>-<arch>. measured 2026-11-29 at 150 CPU s, one thread, seed 0, validation split: the
# quick Transformer 8.63 BLEU / 25.69 chrF zh-en and 12.31 / 13.16 en-zh (10.18 / 27.99 and 13.66 / 13.93
# once tuned), the recurrent quick recipe 7.79 / 23.23 and 10.03 / 10.90 (README, "The Transformer").
DEFAULT_ARCH = {"zh-en": "transformer", "en-zh": "transformer"}
CHINESE_UNITS = ("characters", "words")
ENGLISH_UNITS = ("words", "bpe")
DICTIONARIES = ("none", "hsk", "all")
SELECTIONS = ("val_loss", "val_bleu", "val_chrf")

PROFILES: dict[str, dict[str, Any]] = {
    # seconds: a small model on a slice of the training pairs, enough for the service tests
    "tiny": {"epochs": 2, "embedding_dim": 32, "hidden_dim": 64, "batch_size": 64, "max_train_pairs": 640,
             "lr": 3e-3, "patience": 2},
    # make serve: 150 s per direction, the learning rate warming up and decaying on the clock. The sentence
    # pairs only, without label smoothing: measured at 150 CPU s, zh-en validation BLEU 3.40 with the HSK
    # glosses and CC-CEDICT's words (3.4x the pairs: they took the steps the sentences needed), 5.54 with
    # the glosses only, 6.71 with neither, 8.35 with neither and no label smoothing (README, "The quick
    # recipe against the tutorial's"); English as words 8.83 but chrF 22.21 against 23.52 and BP 0.71,
    # Chinese as words 6.79, so subwords and characters stay. `--arch recurrent`: each direction's default
    # is the Transformer (DEFAULT_ARCH).
    "quick": {"epochs": 1000, "max_seconds": 150.0, "embedding_dim": 128, "hidden_dim": 192, "batch_size": 64,
              "max_train_pairs": None, "lr": 2e-3, "min_lr": 1e-4, "warmup_steps": 100, "decay": "cosine",
              "tie_embeddings": True, "english_units": "bpe", "bpe_vocab_size": 3000, "select": "val_bleu",
              "patience": 0, "eval_interval": 250, "average_last": 3},
    # a GPU, or patience
    "full": {"epochs": 80, "embedding_dim": 256, "hidden_dim": 512, "batch_size": 64,
             "max_train_pairs": None, "lr": 1e-3, "patience": 6},
}
DEFAULTS: dict[str, Any] = {
    "cell": "gru", "attention": "additive", "bidirectional": True,
    "dropout": 0.3, "teacher_forcing": 1.0, "min_count": 2, "tie_embeddings": False, "chinese_units": "characters",
    "english_units": "words", "bpe_vocab_size": 2000, "glosses": False, "dictionary": "none", "label_smoothing": 0.0,
    "word_dropout": 0.0, "length_buckets": True, "select": "val_loss", "warmup_steps": 0, "decay": "none",
    "min_lr": 0.0, "average_last": 0, "concatenate": 0.0}
# --arch transformer: these profiles in place of PROFILES, with the same data, units and schedule as the
# recurrent quick recipe (DEFAULTS still fill what they leave unset). quick: measured 2026-11-29 at 150 CPU s,
# one thread, seed 0, validation BLEU / chrF zh-en and en-zh: lr 2e-3 and dropout 0.2 8.63 / 25.69 and
# 12.31 / 13.16; dropout 0.1 9.30 / 27.19 and 13.22 / 13.48; dropout 0.1 and lr 3e-3 10.18 / 27.99 and
# 13.66 / 13.93; without label smoothing (lr 2e-3, dropout 0.2) 9.10 / 25.89 and 11.44 / 12.54, so it
# stays (README, "The Transformer"). Weight decay 0.1: the model overfits its 3,415 pairs (validation loss
# lowest near step 500 of ~1,300); measured 2026-11-29 at 150 CPU s, one thread, greedy / beam 4 validation
# chrF zh-en seed 0 29.38 / 30.47 against 27.74 / 28.93 without, seed 1 29.85 / 30.69 against 29.17 /
# 30.62, en-zh BLEU 14.19 / 15.73 against 13.58 / 15.09; subwords 2000 (28.62 / 30.36), averaging five
# checks 150 steps apart (28.05 / 29.22) and lr 4e-3 (28.08 / 28.97) gained less into English and did not
# add to it (README). Side by side on 2026-11-30 (seeds 0 and 1, greedy / beam 4 validation chrF zh-en), weight
# decay 0.2 drew with 0.1 (28.81 / 30.26 against 28.59 / 29.92, greedy BLEU 11.14 against 11.61), and source word
# dropout (--word-dropout) drew at 0.1 (28.75 / 30.08) and lost at 0.2 (27.80 / 28.92), so neither is taken.
TRANSFORMER_PROFILES: dict[str, dict[str, Any]] = {
    "tiny": {"epochs": 2, "dim": 32, "n_layers": 1, "n_heads": 2, "ffn_dim": 64, "dropout": 0.1,
             "tie_embeddings": True, "label_smoothing": 0.1, "warmup_steps": 5, "decay": "cosine", "batch_size": 64,
             "max_train_pairs": 640, "lr": 3e-3, "patience": 2},
    "quick": {"epochs": 1000, "max_seconds": 150.0, "dim": 128, "n_layers": 2, "n_heads": 4, "ffn_dim": 512,
              "dropout": 0.1, "batch_size": 64, "max_train_pairs": None, "lr": 3e-3, "min_lr": 1e-4,
              "warmup_steps": 200, "decay": "cosine", "label_smoothing": 0.1, "tie_embeddings": True,
              "english_units": "bpe", "bpe_vocab_size": 3000, "select": "val_bleu", "patience": 0,
              "eval_interval": 250, "average_last": 3, "weight_decay": 0.1},
    "full": {"epochs": 200, "dim": 256, "n_layers": 3, "n_heads": 4, "ffn_dim": 1024, "dropout": 0.3,
             "tie_embeddings": True, "label_smoothing": 0.1, "warmup_steps": 400, "decay": "cosine", "batch_size": 64,
             "max_train_pairs": None, "lr": 7e-4, "glosses": True, "dictionary": "hsk", "english_units": "bpe",
             "bpe_vocab_size": 3000, "patience": 10},
}
# --grid: every row below, smaller than the quick models and on a shorter clock, with the quick recipes'
# other settings. The Transformer is the size of the recurrent rows (0.67M parameters, within their
# 0.43-0.73M, with the vocabularies of HSK's characters and words).
GRID_FLAGS = ("--max-seconds", "60", "--eval-interval", "100")
GRID_ROWS: dict[str, tuple[str, ...]] = {
    **{f"{cell} {attention}": ("--arch", "recurrent", "--cell", cell, "--attention", attention, "--embedding-dim",
                               "64", "--hidden-dim", "128") for cell in CELLS for attention in ATTENTIONS},
    "transformer": ("--arch", "transformer", "--dim", "96", "--n-layers", "2", "--n-heads", "4", "--ffn-dim", "192"),
}
# Inclusive upper bounds of the source-length buckets (HSK sentences are 3-18 characters, 1-14 words).
BUCKET_EDGES = {"zh": (7, 9, 11), "en": (5, 7, 9)}

log = logging.getLogger("training.seq2seq")
T = TypeVar("T")


# ---- flags --------------------------------------------------------------------------------------------


def _add_data_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--direction", choices=DIRECTIONS, default="zh-en", help="translate from-to")
    parser.add_argument("--pairs", type=Path, default=None,
                        help="TSV of 'chinese<TAB>english' pairs instead of the HSK sentences")
    parser.add_argument("--split-seed", type=int, default=SPLIT_SEED,
                        help="seed of the train/validation/test split of the pairs")


def _add_model_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--arch", choices=ARCHES, default=None,
                        help="recurrent: an RNN encoder-decoder (--cell, --attention); transformer: the Transformer "
                             "(--dim, --n-layers, ...); default: the direction's (DEFAULT_ARCH, transformer for both)")
    parser.add_argument("--cell", choices=CELLS, default=None, help="recurrent cell of encoder and decoder (gru)")
    parser.add_argument("--attention", choices=ATTENTIONS, default=None,
                        help="additive (Bahdanau, the default), dot / general (Luong), none (fixed-vector baseline)")
    parser.add_argument("--bidirectional", action=argparse.BooleanOptionalAction, default=None,
                        help="bidirectional encoder (the default)")
    parser.add_argument("--embedding-dim", type=int, default=None)
    parser.add_argument("--hidden-dim", type=int, default=None)
    parser.add_argument("--dropout", type=float, default=None)
    parser.add_argument("--tie-embeddings", action=argparse.BooleanOptionalAction, default=None,
                        help="score the output against the target embeddings (one vector per word, in and out)")


def _add_units_arguments(parser: argparse.ArgumentParser) -> None:
    g = parser.add_argument_group("tokens and extra pairs")
    g.add_argument("--chinese-units", choices=CHINESE_UNITS, default=None,
                   help="characters, or words cut by the lexicon of the HSK records' segmentation")
    g.add_argument("--english-units", choices=ENGLISH_UNITS, default=None,
                   help="whole words, or byte-pair-encoding subwords learned on the training side")
    g.add_argument("--bpe-vocab-size", type=int, default=None, help="subword vocabulary with --english-units bpe")
    g.add_argument("--min-count", type=int, default=None, help="rarer tokens are <unk>")
    g.add_argument("--glosses", action=argparse.BooleanOptionalAction, default=None,
                   help="add (word, gloss) pairs from the HSK records of the training split")
    g.add_argument("--dictionary", choices=DICTIONARIES, default=None,
                   help="add (word, first sense) pairs from CC-CEDICT: none, the words of the HSK vocabulary "
                        "lists, or every entry")
    g.add_argument("--max-train-pairs", type=int, default=None,
                   help="use only the first N training pairs (the tiny profile's shortcut)")
    g.add_argument("--concatenate", type=float, default=None,
                   help="add this many examples, as a share of the training pairs, each 2-4 of them joined (long "
                        "sentences for a length-controlled test)")


def _add_training_arguments(parser: argparse.ArgumentParser) -> None:
    g = parser.add_argument_group("seq2seq training")
    g.add_argument("--teacher-forcing", type=float, default=None,
                   help="probability of feeding the reference token (else the model's own guess)")
    g.add_argument("--label-smoothing", type=float, default=None, help="share of the target spread over the vocabulary")
    g.add_argument("--word-dropout", type=float, default=None,
                   help="probability that a training source token is read as <unk> (Sennrich and Zhang, 2019)")
    g.add_argument("--length-buckets", action=argparse.BooleanOptionalAction, default=None,
                   help="batch sentences of similar length together (else shuffle freely)")
    g.add_argument("--select", choices=SELECTIONS, default=None,
                   help="keep the evaluated model with the best validation loss, BLEU or chrF (greedy decoding)")
    g.add_argument("--patience", type=int, default=None,
                   help="stop after this many validation checks without a better --select figure (0: never)")
    g.add_argument("--warmup-steps", type=int, default=None, help="linear warm-up of the learning rate")
    g.add_argument("--decay", choices=("none", "linear", "cosine"), default=None,
                   help="learning-rate decay to --min-lr over the run (its steps or its --max-seconds)")
    g.add_argument("--min-lr", type=float, default=None, help="learning rate at the end of the decay")
    g.add_argument("--average-last", type=int, default=None,
                   help="average the weights of the last K validation checks at the end, kept if --select "
                        "prefers them (0: no)")
    transformer = parser.add_argument_group("--arch transformer")
    transformer.add_argument("--dim", type=int, default=None, help="model width (d_model)")
    transformer.add_argument("--n-layers", type=int, default=None, help="encoder layers, and as many decoder layers")
    transformer.add_argument("--n-heads", type=int, default=None, help="attention heads per layer")
    transformer.add_argument("--ffn-dim", type=int, default=None, help="feed-forward inner size (d_ff)")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    _add_data_arguments(parser)
    _add_model_arguments(parser)
    _add_units_arguments(parser)
    _add_training_arguments(parser)
    add_name_arguments(parser, "the direction, e.g. zh-en, and zh-en-recurrent for --arch recurrent")
    loop.add_arguments(parser)


def add_evaluate_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--direction", choices=DIRECTIONS, default="zh-en")
    parser.add_argument("--name", default=None, help="checkpoint name; default: the direction")
    parser.add_argument("--beam-size", type=int, default=1, help="1 = greedy decoding")
    parser.add_argument("--length-penalty", type=float, default=LENGTH_PENALTY)
    parser.add_argument("--min-length", type=int, default=TranslationOptions.min_length,
                        help="fewest target tokens before <eos>")
    parser.add_argument("--split", choices=("test", "validation"), default="test", help="the pairs to score")
    parser.add_argument("--heatmap", type=Path, default=None, metavar="PNG",
                        help="draw the attention of --text into this PNG instead of scoring the test split")
    parser.add_argument("--text", default=None, help="the sentence for --heatmap")
    grid = parser.add_argument_group("--grid: train and compare every cell x attention pair")
    grid.add_argument("--grid", action="store_true")
    grid.add_argument("--rows", nargs="+", choices=GRID_ROWS, default=None, metavar="ROW",
                      help=f"only these rows ({', '.join(GRID_ROWS)})")
    grid.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2], help="one run per row and seed")
    grid.add_argument("--jobs", type=int, default=1, help="runs side by side (one thread each)")
    grid.add_argument("--clock", choices=("wall", "cpu"), default="wall", help="what the runs' seconds count")
    grid.add_argument("--concatenate", type=float, default=0.0,
                      help="train on this many more examples, as a share of the training pairs, each 2-4 pairs joined")
    grid.add_argument("--concatenated", type=int, default=1, metavar="N",
                      help="also score test pairs joined 2..N at a time (a length-controlled test)")
    grid.add_argument("--pairs", type=Path, default=None, help="grid on your own TSV pairs")
    grid.add_argument("--split-seed", type=int, default=SPLIT_SEED)
    grid.add_argument("--report", type=Path, default=None, help="also write the grid results as JSON here")


# ---- data -------------------------------------------------------------------------------------------


@dataclass
class Split:
    """Pairs already oriented source -> target, and where they came from."""

    train: list[tuple[str, str]]
    validation: list[tuple[str, str]]
    test: list[tuple[str, str]]
    provenance: dict[str, Any]
    seed: int


def load_pairs(pairs_file: Path | None) -> tuple[list[tuple[str, str]], dict[str, Any]]:
    """(Chinese, English) pairs: the HSK sentences, or a user's two-column TSV."""
    if pairs_file is None:
        return list(load_hsk_pairs()), dict(HSK_SOURCE)
    if not Path(pairs_file).is_file():
        raise FileNotFoundError(f"pairs file not found: {pairs_file}")
    rows = read_tsv(pairs_file, 2, "a Chinese<TAB>English pair")
    return [(zh, en) for zh, en in rows], user_provenance(pairs_file)


def split_pairs(pairs: Sequence[tuple[str, str]], direction: str, seed: int, fraction: float,
                provenance: dict[str, Any]) -> Split:
    """Shuffle by ``seed``, then ``fraction`` test, ``fraction`` validation, the rest train.

    The split is made on the (Chinese, English) pairs before orienting them, so both directions share it.
    """
    if not 0.0 < fraction < 0.5:
        raise ValueError(f"--val-fraction must be between 0 and 0.5, got {fraction}")
    order = list(range(len(pairs)))
    random.Random(seed).shuffle(order)
    n_held = max(1, round(len(pairs) * fraction))
    if len(pairs) < 2 * n_held + 1:
        raise ValueError(f"{len(pairs)} pairs are too few to split into train, validation and test")
    oriented = [(zh, en) if direction == "zh-en" else (en, zh) for zh, en in pairs]
    test = [oriented[i] for i in order[:n_held]]
    validation = [oriented[i] for i in order[n_held:2 * n_held]]
    train = [oriented[i] for i in order[2 * n_held:]]
    record = {**provenance, "split": {"seed": seed, "fraction_validation": fraction, "fraction_test": fraction,
                                      "train": len(train), "validation": len(validation), "test": len(test)}}
    return Split(train, validation, test, record, seed)


def languages(direction: str) -> tuple[str, str]:
    source, target = direction.split("-")
    return source, target


# ---- long sentences: pairs joined -------------------------------------------------------------------

JOINERS = {"zh": "", "en": " "}


def joined(pairs: Sequence[tuple[str, str]], direction: str) -> tuple[str, str]:
    """One pair of several: the sources joined, and the targets (Chinese runs on, English takes a space)."""
    source, target = languages(direction)
    return JOINERS[source].join(s for s, _ in pairs), JOINERS[target].join(t for _, t in pairs)


def concatenations(pairs: Sequence[tuple[str, str]], share: float, direction: str, seed: int
                   ) -> list[tuple[str, str]]:
    """``share`` x len(pairs) new pairs, each 2-4 random pairs joined: sentences longer than any in HSK, so
    that one fixed vector has more to carry than attention does."""
    rng = random.Random(seed)
    return [joined(rng.sample(list(pairs), rng.randint(2, 4)), direction) for _ in range(round(share * len(pairs)))]


def joined_test(pairs: Sequence[tuple[str, str]], n: int, direction: str) -> list[tuple[str, str]]:
    """The test pairs joined ``n`` at a time, in their order (a length-controlled test set)."""
    return [joined(pairs[i:i + n], direction) for i in range(0, len(pairs) - n + 1, n)]


# ---- extra pairs: the HSK records' glosses and the CC-CEDICT dictionary ------------------------------

_END_PUNCTUATION = re.compile(r"[\s.!?。！？，,；;：:]+$")


def normalised(sentence: str) -> str:
    """A sentence compared for equality: lower case, inner spaces collapsed, no closing punctuation."""
    return _END_PUNCTUATION.sub("", " ".join(sentence.lower().split()))


def training_records(split: Split, direction: str) -> list[HskRecord]:
    """The HSK records of the training split (none for a user's pairs)."""
    if split.provenance.get("package") != HSK_SOURCE["package"]:
        return []
    by_chinese = {r.chinese: r for r in load_hsk_records()}
    zh_side = 0 if direction == "zh-en" else 1
    return [by_chinese[pair[zh_side]] for pair in split.train if pair[zh_side] in by_chinese]


def extra_pairs(split: Split, direction: str, glosses: bool, dictionary: str
                ) -> tuple[list[tuple[str, str]], dict[str, Any]]:
    """(word, translation) pairs oriented like the split: the glosses of the training records' words, and
    CC-CEDICT's first clean sense of each word of the HSK vocabulary lists (``hsk``) or of every entry
    (``all``). A pair is dropped when either side equals a validation or test sentence."""
    held_out = {normalised(text) for pair in split.validation + split.test for text in pair}
    found: dict[tuple[str, str], str] = {}  # (Chinese, English) -> where it came from
    if glosses:
        for record in training_records(split, direction):
            for word, gloss in record.words:
                sense = clean_gloss(gloss)
                if sense is not None:
                    found.setdefault((word, sense), "glosses")
    if dictionary != "none":
        listed = hsk_word_list() if dictionary == "hsk" else None
        for word, sense in load_cedict():
            if listed is None or word in listed:
                found.setdefault((word, sense), "dictionary")
    kept = {pair: source for pair, source in found.items()
            if normalised(pair[0]) not in held_out and normalised(pair[1]) not in held_out}
    pairs = [(zh, en) if direction == "zh-en" else (en, zh) for zh, en in kept]
    counts = {source: sum(1 for s in kept.values() if s == source) for source in ("glosses", "dictionary")}
    provenance = {"glosses": counts["glosses"], "dictionary": counts["dictionary"],
                  "dropped_as_held_out": len(found) - len(kept)}
    if dictionary != "none":
        provenance["dictionary_source"] = {**CEDICT_SOURCE, "entries": dictionary}
    return pairs, provenance


def chinese_lexicon(split: Split, direction: str) -> list[str]:
    """The words of the training records' own segmentation (for a user's pairs: of the HSK training split)."""
    records = training_records(split, direction)
    if not records:
        pairs, provenance = load_pairs(None)
        records = training_records(split_pairs(pairs, direction, split.seed, 0.1, provenance), direction)
    return sorted({word for record in records for word, _ in record.words})


def build_units(args: argparse.Namespace, split: Split, direction: str, train_pairs: Sequence[tuple[str, str]],
                saved: dict[str, Any] | None) -> dict[str, Units]:
    """Each language's units, as the flags ask (learned from the training pairs), or as the saved run had them."""
    english_side = 1 if direction == "zh-en" else 0
    units: dict[str, Units] = {}
    if saved and "zh_lexicon" in saved:
        units["zh"] = ChineseWords.from_json(saved["zh_lexicon"])
    elif not saved and args.chinese_units == "words":
        units["zh"] = ChineseWords(chinese_lexicon(split, direction))
    else:
        units["zh"] = Characters()
    if saved and "en_bpe" in saved:
        units["en"] = EnglishSubwords.from_json(saved["en_bpe"])
    elif not saved and args.english_units == "bpe":
        units["en"] = EnglishSubwords.train((pair[english_side] for pair in train_pairs), args.bpe_vocab_size)
    else:
        units["en"] = EnglishWords()
    return units


def units_files(units: dict[str, Units]) -> dict[str, str]:
    """The files of units learned from data, by ``config["tokenizer"]["files"]`` key, name and content."""
    return {key: unit for key, unit in (("zh_lexicon", units["zh"]), ("en_bpe", units["en"]))
            if isinstance(unit, ChineseWords | EnglishSubwords)}


class Batches:
    """Batches of (source ids, ``<bos> target ids <eos>``), reshuffled every epoch; with ``length_buckets``
    sentences of similar length share a batch, so the decoder loop rarely runs over padding.
    """

    def __init__(self, pairs: Sequence[tuple[str, str]], source_units: Units, target_units: Units,
                 source_vocab: WordVocab, target_vocab: WordVocab, batch_size: int, length_buckets: bool = True):
        self.examples = [(encode(source_units.tokens(s), source_vocab),
                          [BOS_ID, *encode(target_units.tokens(t), target_vocab), EOS_ID])
                         for s, t in pairs]
        self.examples = [e for e in self.examples if e[0]]
        self.batch_size = batch_size
        self.length_buckets = length_buckets

    def __len__(self) -> int:
        return -(-len(self.examples) // self.batch_size)

    def epoch(self, rng: random.Random | None) -> list[list[int]]:
        """Each batch's example indices, grouped by source length (or shuffled, without length buckets)."""
        if self.length_buckets or rng is None:
            return length_grouped([len(source) for source, _ in self.examples], self.batch_size, rng)
        order = list(range(len(self.examples)))
        rng.shuffle(order)
        return [order[i:i + self.batch_size] for i in range(0, len(order), self.batch_size)]

    def pad(self, indices: Sequence[int], device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
        """(source, target) id tensors of these examples."""
        return (pad_batch([self.examples[i][0] for i in indices], device),
                pad_batch([self.examples[i][1] for i in indices], device))

    def predicted(self, indices: Sequence[int]) -> int:
        """Target tokens the decoder predicts for these examples: all but each target's ``<bos>``."""
        return sum(len(self.examples[i][1]) - 1 for i in indices)


# ---- training -----------------------------------------------------------------------------------------


# `python -m training all` trains this family's checkpoints side by side, one process per core.
ONE_THREAD = True


def one_thread_unless_asked(command: Callable[[argparse.Namespace], T]) -> Callable[[argparse.Namespace], T]:
    """Run ``command`` with one intra-op thread unless TORCH_THREADS says otherwise.

    A decoder step is a few small matrix products; split over threads they gain little, and on shared
    cores the threads' synchronisation made a training step 5-10x slower than one thread did.
    """

    @functools.wraps(command)
    def wrapper(args: argparse.Namespace) -> T:
        if os.environ.get("TORCH_THREADS"):
            return command(args)
        before = torch.get_num_threads()
        torch.set_num_threads(1)
        try:
            return command(args)
        finally:
            torch.set_num_threads(before)

    return wrapper


@torch.no_grad()
def validation_loss(model: Seq2Seq | Transformer, batches: Batches, device: torch.device) -> float:
    """Token-weighted mean cross-entropy with the reference fed in (teacher forcing 1)."""
    total, count = 0.0, 0
    for indices in batches.epoch(None):
        _, loss = model(*batches.pad(indices, device))
        tokens = batches.predicted(indices)
        total += loss.item() * tokens
        count += tokens
    return total / max(count, 1)


def dropped_words(source: torch.Tensor, probability: float, generator: torch.Generator) -> torch.Tensor:
    """``source`` with each real token read as ``<unk>`` with ``probability`` (word dropout): the encoder
    learns to translate around words it does not know, and cannot lean on any one word alone."""
    if not probability:
        return source
    dropped = torch.rand(source.shape, generator=generator).to(source.device) < probability
    return source.masked_fill(dropped & (source != PAD_ID), UNK_ID)


class TranslationTask:
    """Cross-entropy of the next target token (label-smoothed), teacher-forced, on batches reshuffled every
    epoch; validated by the loss on the validation pairs and the BLEU and chrF of their greedy translations."""

    def __init__(self, model: Seq2Seq | Transformer, train: Batches, validation: Batches,
                 validation_pairs: list[tuple[str, str]], translator: Callable[[nn.Module], Translator],
                 args: argparse.Namespace, device: torch.device):
        self.model, self.train, self.validation, self.device = model, train, validation, device
        self.validation_pairs, self.translator = validation_pairs, translator
        self.seed = args.seed
        # The training loss's settings: the Transformer reads every reference token at once; the recurrent
        # decoder may read its own guesses instead.
        self.objective = {"label_smoothing": args.label_smoothing}
        if not isinstance(model, Transformer):
            self.objective["teacher_forcing"] = args.teacher_forcing
        self.word_dropout = args.word_dropout
        self.generator = torch.Generator().manual_seed(args.seed)

    def batches(self) -> Iterator[loop.Batch[list[int]]]:
        rng = random.Random(self.seed)
        while True:
            for indices in self.train.epoch(rng):
                yield loop.Batch(indices, len(indices), self.train.predicted(indices))

    def loss(self, model: nn.Module, indices: list[int], rows: list[int]) -> torch.Tensor:
        """A piece's mean loss counts by its share of the batch's target tokens (a plain mean of the pieces'
        means would weigh short sentences more)."""
        mine = [indices[r] for r in rows]
        source, target = self.train.pad(mine, self.device)
        _, loss = model(dropped_words(source, self.word_dropout, self.generator), target, **self.objective)
        return loss * (self.train.predicted(mine) / self.train.predicted(indices))

    def validate(self, model: nn.Module) -> dict[str, float]:
        translator = self.translator(model)
        hypotheses = translations(translator, [s for s, _ in self.validation_pairs])
        scores = corpus_scores(hypotheses, [t for _, t in self.validation_pairs], translator.target_language)
        return {"val_loss": validation_loss(model, self.validation, self.device), "val_bleu": scores["bleu"],
                "val_chrf": scores["chrf"]}


def build_model(args: argparse.Namespace, source_vocab_size: int, target_vocab_size: int
                ) -> tuple[Seq2Seq | Transformer, Seq2SeqConfig | TransformerConfig]:
    if args.arch == "transformer":
        config = TransformerConfig(source_vocab_size, target_vocab_size, args.dim, args.n_layers, args.n_heads,
                                   args.ffn_dim, args.dropout, tie_embeddings=args.tie_embeddings)
        return Transformer(config), config
    config = Seq2SeqConfig(source_vocab_size, target_vocab_size, args.embedding_dim, args.hidden_dim,
                           args.cell, args.attention, args.bidirectional, args.dropout, args.tie_embeddings)
    return Seq2Seq(config), config


@dataclass
class Fitted:
    translator: Translator
    trained: loop.Trained
    steps_per_epoch: int
    files: dict[str, str]  # the learned units' files: config["tokenizer"]["files"] key -> content
    extra_pairs: dict[str, Any]


def fit(run: loop.Run, split: Split, direction: str, args: argparse.Namespace) -> Fitted:
    """Train on ``split.train`` (and the extra pairs the flags ask for), evaluated on ``split.validation``;
    returns the model ``--select`` keeps."""
    source_language, target_language = languages(direction)
    train_pairs = split.train[: args.max_train_pairs] if args.max_train_pairs else split.train
    extras, extra_provenance = extra_pairs(split, direction, args.glosses, args.dictionary)
    if args.concatenate:
        extra_provenance["concatenated"] = round(args.concatenate * len(train_pairs))
    train_pairs = [*train_pairs, *concatenations(train_pairs, args.concatenate, direction, args.seed), *extras]
    units = build_units(args, split, direction, train_pairs, run.saved)
    source_units, target_units = units[source_language], units[target_language]
    if run.saved:  # the vocabularies the saved weights were trained with
        source_vocab, target_vocab = (WordVocab(**json.loads(run.saved[key])) for key in ("source_vocab",
                                                                                          "target_vocab"))
    else:
        source_vocab = build_vocab((source_units.tokens(s) for s, _ in train_pairs), args.min_count)
        target_vocab = build_vocab((target_units.tokens(t) for _, t in train_pairs), args.min_count)
    train_batches = Batches(train_pairs, source_units, target_units, source_vocab, target_vocab, args.batch_size,
                            args.length_buckets)
    val_batches = Batches(split.validation, source_units, target_units, source_vocab, target_vocab, 256)
    model, config = build_model(args, len(source_vocab), len(target_vocab))
    model = model.to(run.device)

    def translator(model: nn.Module) -> Translator:
        return Translator(model, source_vocab, target_vocab, direction, run.device, source_units, target_units)

    epoch = len(train_batches)
    settings = loop.Settings(
        loop.total_steps(args, epoch), loop.Schedule(args.lr, args.min_lr, args.warmup_steps, args.decay),
        eval_interval=epoch, average_last=args.average_last,
        selection=loop.Selection(args.select, maximize=args.select != "val_loss", patience=args.patience))
    files = {key: unit.to_json() for key, unit in units_files(units).items()}
    task = TranslationTask(model, train_batches, val_batches, split.validation, translator, args, run.device)
    trained = run.fit(task, settings, rebuild={"model_config": asdict(config), "source_vocab": source_vocab.to_json(),
                                               "target_vocab": target_vocab.to_json(), **files})
    return Fitted(translator(model.eval()), trained, epoch, files, extra_provenance)


# ---- scoring --------------------------------------------------------------------------------------------


def bucket_of(length: int, edges: Sequence[int]) -> str:
    """Label of the source-length bucket holding ``length`` (edges are inclusive upper bounds)."""
    lower = 1
    for edge in edges:
        if length <= edge:
            return f"{lower}-{edge}"
        lower = edge + 1
    return f"{lower}+"


def metrics_of(target_language: str) -> tuple[Any, Any]:
    """sacreBLEU's BLEU and chrF as every figure of this project is scored: lower-cased, and BLEU with the
    ``zh`` tokenizer for Chinese (it has no spaces to split words at), the default ``13a`` for English."""
    import sacrebleu

    return (sacrebleu.BLEU(tokenize="zh" if target_language == "zh" else "13a", lowercase=True),
            sacrebleu.CHRF(lowercase=True))


def corpus_scores(hypotheses: Sequence[str], references: Sequence[str], target_language: str) -> dict[str, Any]:
    """Corpus BLEU, chrF, and BLEU's brevity penalty and hypothesis/reference length ratio."""
    bleu, chrf = metrics_of(target_language)
    result = bleu.corpus_score(list(hypotheses), [list(references)])
    character_f = chrf.corpus_score(list(hypotheses), [list(references)])
    return {"bleu": round(result.score, 2), "chrf": round(character_f.score, 2),
            "brevity_penalty": round(result.bp, 4), "length_ratio": round(result.ratio, 4),
            "bleu_signature": str(bleu.get_signature()), "chrf_signature": str(chrf.get_signature())}


def translations(translator: Translator, sources: Sequence[str], options: TranslationOptions = TranslationOptions(),
                 batch_size: int = 128) -> list[str]:
    """The translations of ``sources``, decoded ``batch_size`` at a time."""
    return [r.translation for start in range(0, len(sources), batch_size)
            for r in translator.translate(sources[start:start + batch_size], options)]


def score(translator: Translator, pairs: Sequence[tuple[str, str]],
          options: TranslationOptions = TranslationOptions()) -> dict[str, Any]:
    """``corpus_scores`` of the translations of ``pairs``, overall and BLEU by source-length bucket."""
    hypotheses = translations(translator, [s for s, _ in pairs], options)
    references = [t for _, t in pairs]
    bleu, _ = metrics_of(translator.target_language)
    edges = BUCKET_EDGES[translator.source_language]
    groups: dict[str, list[int]] = defaultdict(list)
    for i, (source, _) in enumerate(pairs):
        groups[bucket_of(len(tokenize(source, translator.source_language)), edges)].append(i)
    buckets = {}
    for label in sorted(groups, key=lambda b: int(b.split("-")[0].rstrip("+"))):
        idx = groups[label]
        buckets[label] = {
            "sentences": len(idx),
            "bleu": round(bleu.corpus_score([hypotheses[i] for i in idx], [[references[i] for i in idx]]).score, 2),
        }
    return {
        **corpus_scores(hypotheses, references, translator.target_language),
        "sentences": len(pairs),
        "decoding": ("greedy" if options.beam_size == 1
                     else f"beam {options.beam_size}, length penalty {options.length_penalty}"),
        "bleu_by_source_length": buckets,
        "examples": [{"source": s, "reference": t, "translation": h}
                     for (s, t), h in list(zip(pairs, hypotheses, strict=True))[:5]],
    }


# ---- the command ------------------------------------------------------------------------------------------


def resolve_arguments(args: argparse.Namespace) -> argparse.Namespace:
    """The profile of ``--arch`` (by default the direction's) applied; a flag of the other architecture is an
    error, not silently ignored."""
    args.arch = args.arch or DEFAULT_ARCH[args.direction]
    other = "recurrent" if args.arch == "transformer" else "transformer"
    if given := [flag for flag in ARCH_ONLY[other] if getattr(args, flag) is not None]:
        raise ValueError(f"--{given[0].replace('_', '-')} is a setting of --arch {other}, not {args.arch}")
    profiles = TRANSFORMER_PROFILES if args.arch == "transformer" else PROFILES
    return loop.resolve(args, {**DEFAULTS, **profiles[args.profile]})


def default_name(direction: str, arch: str) -> str:
    """The direction for its default architecture (``DEFAULT_ARCH``), else the direction and the architecture."""
    return direction if arch == DEFAULT_ARCH[direction] else f"{direction}-{arch}"


def architecture(args: argparse.Namespace) -> str:
    if args.arch == "transformer":
        return (f"Transformer encoder-decoder, {args.n_layers}+{args.n_layers} layers, {args.n_heads} heads, "
                f"{args.dim} wide")
    return (f"{'bidirectional ' if args.bidirectional else ''}{args.cell.upper()} encoder-decoder, "
            f"{args.attention} attention")


def model_record(model: Seq2Seq | Transformer, direction: str) -> dict[str, Any]:
    """config.json's ``model``: what ``models.pipelines.translation.load`` builds the model from."""
    if isinstance(model, Transformer):
        return {**model.config.to_dict(), "arch": "transformer", "direction": direction}
    return model_config_dict(model.config, direction)


@one_thread_unless_asked
def train(args: argparse.Namespace) -> list[Path]:
    resolve_arguments(args)
    if args.corpus is not None:
        raise ValueError("seq2seq trains on sentence pairs: pass --pairs FILE.tsv, not --corpus")
    name = checkpoint_name(args, FAMILY, default_name(args.direction, args.arch), args.pairs)
    pairs, provenance = load_pairs(args.pairs)
    split = split_pairs(pairs, args.direction, args.split_seed, args.val_fraction, provenance)
    log.info("seq2seq-%s: %d train / %d validation / %d test pairs", name, len(split.train),
             len(split.validation), len(split.test))
    with loop.Run(args, checkpoint_id_of(FAMILY, name)) as run:
        run.restore(args, MODEL_FIELDS[args.arch])
        fitted = fit(run, split, args.direction, args)
        if not run.is_main:
            return []
        translator, best, epoch = fitted.translator, fitted.trained.best or {}, fitted.steps_per_epoch
        metrics = {"validation_loss": best.get("val_loss"), "best_epoch": round(best.get("step", 0) / epoch, 2),
                   "epochs": round(fitted.trained.steps / epoch, 2), "validation": score(translator, split.validation),
                   "test": score(translator, split.test)}
        log.info("seq2seq-%s: validation BLEU %.2f, chrF %.2f; test BLEU %.2f, chrF %.2f", name,
                 metrics["validation"]["bleu"], metrics["validation"]["chrf"], metrics["test"]["bleu"],
                 metrics["test"]["chrf"])
        files = {UNITS_FILES[key]: content for key, content in fitted.files.items()}
        return [run.save(loop.Record({
            "id": checkpoint_id_of(FAMILY, name), "family": FAMILY, "name": name,
            "architecture": architecture(args),
            "model": model_record(translator.model, args.direction),
            "tokenizer": {"type": "WordVocab", "file": SOURCE_VOCAB,
                          "files": {"source": SOURCE_VOCAB, "target": TARGET_VOCAB,
                                    **{key: UNITS_FILES[key] for key in fitted.files}},
                          "units": {translator.source_language: translator.source_units.kind,
                                    translator.target_language: translator.target_units.kind},
                          "specials": list(SPECIALS)},
            "data": {**split.provenance, "trained_on": ["train"],
                     "train_pairs_used": args.max_train_pairs or len(split.train), "extra_pairs": fitted.extra_pairs},
            "split_seed": split.seed,
        }, {SOURCE_VOCAB: translator.source_vocab.to_json(), TARGET_VOCAB: translator.target_vocab.to_json(), **files},
            weights=transformer_weights if args.arch == "transformer" else nn.Module.state_dict),
            fitted.trained, metrics)]


@one_thread_unless_asked
def evaluate(args: argparse.Namespace) -> dict[str, Any]:
    if args.grid:
        return grid(args)
    name = args.name or args.direction
    path = Path(args.out) / checkpoint_id_of(FAMILY, name)
    if not path.is_dir():
        command = f"python -m training seq2seq --direction {args.direction}" + (f" --name {name}" if args.name else "")
        raise FileNotFoundError(f"no checkpoint {path}; train it with `{command}`")
    checkpoint = load_checkpoint(path)
    device = pick_device(args.device)
    translator = load(checkpoint, device)
    options = TranslationOptions(beam_size=args.beam_size, length_penalty=args.length_penalty,
                                 min_length=args.min_length)
    if args.heatmap is not None:
        if not args.text:
            raise ValueError("--heatmap needs --text")
        result = translator.translate([args.text], options)[0]
        args.heatmap.parent.mkdir(parents=True, exist_ok=True)
        args.heatmap.write_bytes(attention_png(result, title=f"{checkpoint.id}: {result.translation}"))
        return {"heatmap": str(args.heatmap), "translation": result.translation,
                "source_tokens": result.source_tokens, "target_tokens": result.target_tokens}
    data = checkpoint.config["data"]
    pairs, provenance = load_pairs(Path(data["file"]) if "file" in data else None)
    split = split_pairs(pairs, translator.direction, checkpoint.config["split_seed"],
                        data["split"]["fraction_test"], provenance)
    key = args.split + ("" if args.beam_size == 1 else f"_beam_{args.beam_size}")
    metrics = {**checkpoint.metrics, key: score(translator, getattr(split, args.split), options)}
    update_metrics(path, metrics)
    return metrics


# ---- the grid ------------------------------------------------------------------------------------------


def grid(args: argparse.Namespace) -> dict[str, Any]:
    """Every row of ``GRID_ROWS`` (or ``--rows``) once per seed, at ``GRID_FLAGS`` on one split, trained into
    ``<out>/.seq2seq-grid`` (hidden from the service) by ``--jobs`` processes; test BLEU and chrF, overall,
    by source length and, with ``--concatenated``, on test pairs joined n at a time."""
    rows = args.rows or list(GRID_ROWS)
    out = Path(args.out) / ".seq2seq-grid"
    flags = [*GRID_FLAGS, "--split-seed", str(args.split_seed), "--direction", args.direction, "--device", args.device,
             "--clock", args.clock, "--out", str(out), *(["--pairs", str(args.pairs)] if args.pairs else []),
             *(["--concatenate", str(args.concatenate)] if args.concatenate else [])]
    names = {(row, seed): f"{args.direction}-{row.replace(' ', '-')}-seed{seed}" for row in rows for seed in args.seeds}
    commands = [[sys.executable, "-m", "training", "seq2seq", *flags, *GRID_ROWS[row], "--seed", str(seed),
                 "--name", name] for (row, seed), name in names.items()]
    run_side_by_side(commands, args.jobs)
    runs = []
    for (row, seed), name in names.items():
        checkpoint = load_checkpoint(out / checkpoint_id_of(FAMILY, name))
        result = checkpoint.metrics["test"]
        run = {"row": row, "seed": seed, "bleu": result["bleu"], "chrf": result["chrf"],
               "validation_bleu": checkpoint.metrics["validation"]["bleu"], "steps": checkpoint.metrics["steps"],
               "seconds": checkpoint.config["training"]["seconds"], "parameters": checkpoint.metrics["parameters"],
               "bleu_by_source_length": {b: v["bleu"] for b, v in result["bleu_by_source_length"].items()},
               "sentences_by_source_length": {b: v["sentences"] for b, v in result["bleu_by_source_length"].items()}}
        if args.concatenated > 1:
            translator = load(checkpoint, pick_device(args.device))
            pairs, provenance = load_pairs(args.pairs)
            test = split_pairs(pairs, args.direction, args.split_seed, 0.1, provenance).test
            run["bleu_by_sentences_joined"] = {"1": result["bleu"], **{
                str(n): score(translator, joined_test(test, n, args.direction))["bleu"]
                for n in range(2, args.concatenated + 1)}}
        runs.append(run)
    report = {"direction": args.direction, "split_seed": args.split_seed, "flags": flags, "seeds": args.seeds,
              "test_sentences": checkpoint.metrics["test"]["sentences"], "runs": runs}
    print(grid_markdown(report))
    if args.report is not None:
        args.report.parent.mkdir(parents=True, exist_ok=True)
        args.report.write_text(json.dumps(report, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    return report


def run_side_by_side(commands: Sequence[list[str]], jobs: int) -> None:
    """Run the commands, ``jobs`` at a time; stop at the first that fails."""
    env = {**os.environ, "PROGRESS": "0"}
    pending, running = list(commands), []
    while pending or running:
        while pending and len(running) < jobs:
            command = pending.pop(0)
            log.info("%s", " ".join(command[1:]))
            running.append(subprocess.Popen(command, env=env))
        time.sleep(1)
        for process in [p for p in running if p.poll() is not None]:
            running.remove(process)
            if process.returncode != 0:
                for other in running:
                    other.terminate()
                raise RuntimeError(f"{' '.join(process.args[1:])} failed with status {process.returncode}")


def mean_std(values: Sequence[float]) -> str:
    """``mean ± std`` (sample standard deviation) to one decimal."""
    mean = sum(values) / len(values)
    std = (sum((v - mean) ** 2 for v in values) / (len(values) - 1)) ** 0.5 if len(values) > 1 else 0.0
    return f"{mean:.1f} ± {std:.1f}"


def grid_markdown(report: dict[str, Any]) -> str:
    """One row per grid row, each figure the mean ± std over its seeds: BLEU and chrF on the test split, then
    BLEU by source length and, when measured, by the number of test sentences joined."""
    runs = report["runs"]
    rows = list(dict.fromkeys(r["row"] for r in runs))
    buckets = list(runs[0]["bleu_by_source_length"])
    counts = runs[0]["sentences_by_source_length"]
    joins = list(runs[0].get("bleu_by_sentences_joined", {}))
    head = ["row", "seeds", "BLEU", "chrF", "steps", *(f"BLEU {b} ({counts[b]})" for b in buckets),
            *(f"BLEU ×{n}" for n in joins[1:])]
    lines = ["| " + " | ".join(head) + " |", "|---|" + "---:|" * (len(head) - 1)]
    for row in rows:
        mine = [r for r in runs if r["row"] == row]
        cells = [row, str(len(mine)), mean_std([r["bleu"] for r in mine]), mean_std([r["chrf"] for r in mine]),
                 f"{sum(r['steps'] for r in mine) / len(mine):,.0f}"]
        cells += [mean_std([r["bleu_by_source_length"][b] for r in mine]) for b in buckets]
        cells += [mean_std([r["bleu_by_sentences_joined"][n] for r in mine]) for n in joins[1:]]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)
