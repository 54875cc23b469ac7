"""The text classifiers, whichever network is inside: MLP, TextCNN, RNN/LSTM/GRU or BERT.

The networks live in their own files and share one contract: padded token ids (B, T) in, ``(logits,
loss)`` out. This file holds what sits around them: the word vocabulary with its padding and
unknown-word ids (or BERT's WordPiece tokenizer), padding a batch, and the loader that rebuilds a
``clf-<arch>`` checkpoint's network. ``models.pipelines.classification`` answers with it.
"""

from __future__ import annotations

import itertools
import json
import re
from collections.abc import Collection, Iterable, Sequence
from typing import Any

import torch
from tokenizers import Tokenizer
from torch import nn

from models.checkpoint import Checkpoint
from models.cnn import CNNConfig, TextCNN
from models.mlp import MLPClassifier, MLPConfig
from models.rnn import CELLS, RNNClassifier, RNNClassifierConfig
from models.subword import NO_NGRAM, spelled
from models.tokenizers import WORD_PATTERN, WordVocab, words

VOCAB_FILE = "vocab.json"
KNOWN_WORDS_FILE = "known_words.json"  # a BERT classifier's words, when it reads the others as [MASK]
PAD, UNK = "<pad>", "<unk>"  # ids 0 and 1: the word-level networks' PAD_ID is 0
Token = int | tuple[int, ...]  # a word id, or a spelled word (models.subword.spelled)
ARCHITECTURES = ("mlp", "cnn", *CELLS)  # word-level; "bert" brings its own tokenizer
_WORD_MODELS: dict[str, tuple[type, type[nn.Module]]] = {
    "mlp": (MLPConfig, MLPClassifier),
    "cnn": (CNNConfig, TextCNN),
    **{cell: (RNNClassifierConfig, RNNClassifier) for cell in CELLS},
}


def config_class(architecture: str) -> type:
    """The config dataclass of a word-level architecture (its fields are the trainer's flags)."""
    if architecture not in _WORD_MODELS:
        raise ValueError(f"unknown classifier architecture {architecture!r}; known: {', '.join(ARCHITECTURES)}")
    return _WORD_MODELS[architecture][0]


def build_model(architecture: str, hyperparameters: dict[str, Any]) -> nn.Module:
    """The network of ``architecture`` from its config fields (``config["model"]`` of a checkpoint)."""
    if architecture == "bert":
        from models.bert import BertConfig, BertForSequenceClassification

        values = dict(hyperparameters)
        num_classes, dropout = values.pop("num_classes"), values.pop("classifier_dropout", None)
        pooling = values.pop("classifier_pooling", "cls")  # a checkpoint from before the choice read [CLS]
        return BertForSequenceClassification(BertConfig.from_dict(values), num_classes, classifier_dropout=dropout,
                                             pooling=pooling)
    config_type, model_type = _WORD_MODELS.get(architecture, (None, None))
    if config_type is None:
        raise ValueError(f"unknown classifier architecture {architecture!r}; known: {', '.join(ARCHITECTURES)}, bert")
    return model_type(config_type(**hyperparameters))


def build_vocab(texts: Iterable[str], min_count: int, allowed: Collection[str] | None = None) -> WordVocab:
    """The training texts' words seen at least ``min_count`` times (and in ``allowed``, when given), after the
    padding and unknown ids."""
    counted = WordVocab.build((words(t) for t in texts), min_count=min_count)
    kept = [(w, c) for w, c in zip(counted.itos, counted.counts, strict=True) if allowed is None or w in allowed]
    return WordVocab([PAD, UNK, *(w for w, _ in kept)], [0, 0, *(c for _, c in kept)])


class WordEncoder:
    """Text → word ids; unknown words stay as ``<unk>`` (how many there are still tells a model something).
    With ``char_ngrams`` (a model with a ``SubwordEmbedding``) each word is a spelled token instead, its id and
    its n-grams' buckets, so an unknown word keeps its spelling (``models.subword.spelled``)."""

    pad_id = 0

    def __init__(self, vocab: WordVocab, max_len: int, char_ngrams: Sequence[int] = (), ngram_buckets: int = 0):
        if vocab.itos[:2] != [PAD, UNK]:
            raise ValueError(f"a classifier vocabulary starts with {PAD} and {UNK}")
        self.vocab = vocab
        self.max_len = max_len
        self.unk_id = vocab.stoi[UNK]
        self.ngrams = (char_ngrams[0], char_ngrams[1]) if char_ngrams else None
        self.ngram_buckets = ngram_buckets

    def encode(self, text: str) -> list[Token]:
        found = words(text)[: self.max_len] or [""]  # a text with no words still gets an answer: <unk>
        if self.ngrams is None:
            return [self.vocab.stoi.get(w, self.unk_id) for w in found]
        return [spelled(self.vocab.stoi.get(w, self.unk_id), w, self.ngrams, self.ngram_buckets) for w in found]


# A word as ``words`` finds it, found in the text as written, so that it can be replaced in place.
_WORD_IN_TEXT = re.compile(WORD_PATTERN.pattern, re.IGNORECASE)


class SubwordEncoder:
    """Text → WordPiece ids read by BERT as up to ``windows`` consecutive windows of ``max_len`` (the model's
    positions), each its own ``[CLS] … [SEP]``, concatenated: every window but the last is exactly ``max_len``
    long, which is how ``BertForSequenceClassification`` tells them apart. Text beyond them is cut (``windows``
    None: every window of the text, for training to draw from).

    With ``known_words``, any other word is read as ``[MASK]``, as the word-level networks read a word outside
    their vocabulary as ``<unk>``: the names of one training play then teach no genre that an unseen play's
    names could not."""

    def __init__(self, tokenizer: Tokenizer, max_len: int, windows: int | None = 1,
                 known_words: Collection[str] | None = None):
        self.tokenizer = tokenizer
        self.max_len = max_len
        self.windows = windows
        self.known_words = frozenset(known_words) if known_words is not None else None
        self.pad_id = tokenizer.token_to_id("[PAD]")
        self.cls_id, self.sep_id = tokenizer.token_to_id("[CLS]"), tokenizer.token_to_id("[SEP]")
        self.window_tokens = max_len - 2  # text per window, between its [CLS] and [SEP]

    def mask_unknown_words(self, text: str) -> str:
        """``text`` with every word outside ``known_words`` replaced by ``[MASK]`` (all of them known: as it is)."""
        known = self.known_words
        if known is None:
            return text
        return _WORD_IN_TEXT.sub(lambda m: m.group(0) if m.group(0).lower() in known else "[MASK]", text)

    def encode(self, text: str) -> list[int]:
        pieces = self.tokenizer.encode(self.mask_unknown_words(text), add_special_tokens=False).ids
        if self.windows is not None:
            pieces = pieces[:self.window_tokens * self.windows]
        starts = range(0, max(1, len(pieces)), self.window_tokens)
        return [i for start in starts for i in (self.cls_id, *pieces[start:start + self.window_tokens], self.sep_id)]


def pad_batch(encoded: Sequence[Sequence[Token]], pad_id: int) -> torch.Tensor:
    """Ids (B, T) padded with ``pad_id``, or spelled tokens (B, T, 1 + n-grams) padded with zeros (``pad_id``
    must be 0 then: ``SubwordEmbedding``'s padding word and its no-n-gram bucket)."""
    if not isinstance(encoded[0][0], tuple):
        ids = torch.full((len(encoded), max(map(len, encoded))), pad_id, dtype=torch.long)
        for row, seq in enumerate(encoded):
            ids[row, : len(seq)] = torch.tensor(seq)
        return ids
    if pad_id != NO_NGRAM:
        raise ValueError(f"spelled tokens pad with {NO_NGRAM}, got pad_id {pad_id}")
    tokens = [token for seq in encoded for token in seq]
    values = torch.tensor(list(itertools.chain.from_iterable(tokens)))
    sizes = torch.tensor([len(token) for token in tokens])
    lengths = torch.tensor([len(seq) for seq in encoded])
    ids = torch.zeros(len(encoded), int(lengths.max()), int(sizes.max()), dtype=torch.long)
    # Where each value goes: its token's row and position (row r holds lengths[r] tokens from position 0),
    # and its column within the token. One scatter rather than a padded copy of every token.
    rows = torch.repeat_interleave(torch.arange(len(encoded)), lengths)
    positions = torch.arange(len(tokens)) - torch.repeat_interleave(torch.cumsum(lengths, 0) - lengths, lengths)
    columns = torch.arange(len(values)) - torch.repeat_interleave(torch.cumsum(sizes, 0) - sizes, sizes)
    ids[torch.repeat_interleave(rows, sizes), torch.repeat_interleave(positions, sizes), columns] = values
    return ids


def load_encoder(checkpoint: Checkpoint) -> WordEncoder | SubwordEncoder:
    """The text-to-ids encoder a ``clf-<arch>`` checkpoint names in ``config["tokenizer"]``."""
    spec = checkpoint.config["tokenizer"]
    if spec["type"] == "wordpiece":
        # A checkpoint from before windows reads the first window only; one from before known words, every word.
        known = spec.get("known_words")
        return SubwordEncoder(Tokenizer.from_file(str(checkpoint.file(spec["file"]))), spec["max_len"],
                              spec.get("windows", 1),
                              json.loads(checkpoint.file(known).read_text("utf-8")) if known else None)
    model = checkpoint.config["model"]
    return WordEncoder(WordVocab.from_file(checkpoint.file(spec["file"])), spec["max_len"],
                       model.get("char_ngrams", ()), model.get("ngram_buckets", 0))


def load(checkpoint: Checkpoint, device: torch.device) -> nn.Module:
    """The network of a ``clf-<arch>`` checkpoint, its weights loaded, ready for inference on ``device``."""
    config = checkpoint.config
    if len(config["labels"]) != config["model"]["num_classes"]:
        raise ValueError(f"{len(config['labels'])} labels for {config['model']['num_classes']} classes")
    model = build_model(config["architecture"], config["model"])
    model.load_state_dict(checkpoint.state_dict)
    return model.to(device).eval()
