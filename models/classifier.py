"""The text classifiers, whichever network is inside: MLP, TextCNN, RNN/LSTM/GRU or BERT.

The networks live in their own files and share one contract: padded token ids (B, T) in, ``(logits,
loss)`` out. This file holds what sits around them: the word vocabulary with its padding and
unknown-word ids (or BERT's WordPiece tokenizer), padding a batch, and the loader that rebuilds a
``clf-<arch>`` checkpoint's network. ``models.pipelines.classification`` answers with it.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import torch
from tokenizers import Tokenizer
from torch import nn

from models.checkpoint import Checkpoint
from models.cnn import CNNConfig, TextCNN
from models.mlp import MLPClassifier, MLPConfig
from models.rnn import CELLS, RNNClassifier, RNNClassifierConfig
from models.subword import SubwordEmbedding
from models.tokenizers import WordVocab, words

VOCAB_FILE = "vocab.json"
PAD, UNK = "<pad>", "<unk>"  # ids 0 and 1: the word-level networks' PAD_ID is 0
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


def build_model(architecture: str, hyperparameters: dict[str, Any], vocab: WordVocab | None = None) -> nn.Module:
    """The network of ``architecture`` from its config fields (``config["model"]`` of a checkpoint); a word-level
    one with character n-grams spells ``vocab``'s words."""
    if architecture == "bert":
        from models.bert import BertConfig, BertForSequenceClassification

        values = dict(hyperparameters)
        num_classes, dropout = values.pop("num_classes"), values.pop("classifier_dropout", None)
        return BertForSequenceClassification(BertConfig.from_dict(values), num_classes, classifier_dropout=dropout)
    config_type, model_type = _WORD_MODELS.get(architecture, (None, None))
    if config_type is None:
        raise ValueError(f"unknown classifier architecture {architecture!r}; known: {', '.join(ARCHITECTURES)}, bert")
    model = model_type(config_type(**hyperparameters))
    if isinstance(model.embedding, SubwordEmbedding):
        if vocab is None:
            raise ValueError("a classifier with character n-grams needs its vocabulary to spell")
        # Padding and unknown have no spelling: their vectors are their own.
        model.embedding.spell(["" if w in (PAD, UNK) else w for w in vocab.itos])
    return model


def build_vocab(texts: Iterable[str], min_count: int) -> WordVocab:
    """The training texts' words seen at least ``min_count`` times, after the padding and unknown ids."""
    counted = WordVocab.build((words(t) for t in texts), min_count=min_count)
    return WordVocab([PAD, UNK, *counted.itos], [0, 0, *counted.counts])


class WordEncoder:
    """Text → word ids; unknown words stay as ``<unk>`` (how many there are still tells a model something)."""

    pad_id = 0

    def __init__(self, vocab: WordVocab, max_len: int):
        if vocab.itos[:2] != [PAD, UNK]:
            raise ValueError(f"a classifier vocabulary starts with {PAD} and {UNK}")
        self.vocab = vocab
        self.max_len = max_len
        self.unk_id = vocab.stoi[UNK]

    def encode(self, text: str) -> list[int]:
        ids = [self.vocab.stoi.get(w, self.unk_id) for w in words(text)[: self.max_len]]
        return ids or [self.unk_id]  # a text with no words still gets an answer


class SubwordEncoder:
    """Text → ``[CLS] … [SEP]`` WordPiece ids, cut to the model's positions (BERT)."""

    def __init__(self, tokenizer: Tokenizer, max_len: int):
        self.tokenizer = tokenizer
        self.max_len = max_len
        self.pad_id = tokenizer.token_to_id("[PAD]")
        # Truncation keeps [CLS] and [SEP]: the post-processor adds them within max_len.
        tokenizer.enable_truncation(max_len)

    def encode(self, text: str) -> list[int]:
        return self.tokenizer.encode(text).ids


def pad_batch(encoded: list[list[int]], pad_id: int) -> torch.Tensor:
    ids = torch.full((len(encoded), max(map(len, encoded))), pad_id, dtype=torch.long)
    for row, seq in enumerate(encoded):
        ids[row, : len(seq)] = torch.tensor(seq)
    return ids


def load_encoder(checkpoint: Checkpoint) -> WordEncoder | SubwordEncoder:
    """The text-to-ids encoder a ``clf-<arch>`` checkpoint names in ``config["tokenizer"]``."""
    spec = checkpoint.config["tokenizer"]
    if spec["type"] == "wordpiece":
        return SubwordEncoder(Tokenizer.from_file(str(checkpoint.file(spec["file"]))), spec["max_len"])
    return WordEncoder(WordVocab.from_file(checkpoint.file(spec["file"])), spec["max_len"])


def load(checkpoint: Checkpoint, device: torch.device) -> nn.Module:
    """The network of a ``clf-<arch>`` checkpoint, its weights loaded, ready for inference on ``device``."""
    config = checkpoint.config
    if len(config["labels"]) != config["model"]["num_classes"]:
        raise ValueError(f"{len(config['labels'])} labels for {config['model']['num_classes']} classes")
    spec = config["tokenizer"]
    vocab = WordVocab.from_file(checkpoint.file(spec["file"])) if spec["type"] == "word" else None
    model = build_model(config["architecture"], config["model"], vocab)
    model.load_state_dict(checkpoint.state_dict)
    return model.to(device).eval()
