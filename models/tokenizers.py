"""Tokenizers shared by training and the service.

``WordVocab`` is a frequency-ordered word vocabulary saved as ``vocab.json``; subword tokenizers
(WordPiece, byte-level BPE) are `tokenizers` library objects saved as ``tokenizer.json``.
Language models take a ``TextTokenizer``: ``ByteBPETokenizer`` (that ``tokenizer.json``) or
``CharTokenizer`` (``chars.json``), both with ``encode``, ``decode``, ``vocab_size`` and ``eos_id``.
"""

from __future__ import annotations

import json
import re
from collections import Counter
from collections.abc import Iterable
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from models.checkpoint import Checkpoint

# Lower-cased words with an optional inner apostrophe ("o'er", "ne'er"), the corpus's word unit.
WORD_PATTERN = re.compile(r"[a-z]+(?:'[a-z]+)?")


def words(text: str) -> list[str]:
    return WORD_PATTERN.findall(text.lower())


class WordVocab:
    """Words ordered by descending count, with their counts (word2vec needs them for sampling)."""

    def __init__(self, itos: list[str], counts: list[int]):
        if len(itos) != len(counts):
            raise ValueError("itos and counts differ in length")
        self.itos = itos
        self.counts = counts
        self.stoi = {w: i for i, w in enumerate(itos)}

    @classmethod
    def build(cls, sentences: Iterable[list[str]], min_count: int = 1) -> WordVocab:
        counter: Counter[str] = Counter()
        for sentence in sentences:
            counter.update(sentence)
        # Ties broken alphabetically so the same corpus always yields the same ids.
        kept = sorted(((w, c) for w, c in counter.items() if c >= min_count), key=lambda wc: (-wc[1], wc[0]))
        return cls([w for w, _ in kept], [c for _, c in kept])

    def __len__(self) -> int:
        return len(self.itos)

    def __contains__(self, word: str) -> bool:
        return word in self.stoi

    def encode(self, sentence: list[str]) -> list[int]:
        """Ids of the in-vocabulary words; out-of-vocabulary words are dropped."""
        return [self.stoi[w] for w in sentence if w in self.stoi]

    def to_json(self) -> str:
        return json.dumps({"itos": self.itos, "counts": self.counts}, ensure_ascii=False)

    @classmethod
    def from_file(cls, path: Path) -> WordVocab:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
        return cls(list(data["itos"]), [int(c) for c in data["counts"]])


# ---- tokenizers for language models: ids in, text out ---------------------------------------------

END_OF_TEXT = "<|endoftext|>"
UNKNOWN_CHAR = "\ufffd"


class CharTokenizer:
    """One id per character seen in training, for models compared in bits per character.

    Id 0 stands for any character absent from the training text, so every prompt can be encoded;
    it decodes to U+FFFD. There is no end-of-text id: a character model writes until it is stopped.
    """

    type = "char"
    file_name = "chars.json"
    eos_id: int | None = None

    def __init__(self, chars: list[str]):
        if len(set(chars)) != len(chars) or any(len(c) != 1 for c in chars):
            raise ValueError("chars must be distinct single characters")
        self.itos = [UNKNOWN_CHAR, *chars]
        self.stoi = {c: i for i, c in enumerate(self.itos) if i > 0}

    @classmethod
    def train(cls, texts: Iterable[str]) -> CharTokenizer:
        seen: set[str] = set()
        for text in texts:
            seen.update(text)
        return cls(sorted(seen - {UNKNOWN_CHAR}))

    @property
    def vocab_size(self) -> int:
        return len(self.itos)

    def encode(self, text: str) -> list[int]:
        return [self.stoi.get(c, 0) for c in text]

    def decode(self, ids: Iterable[int]) -> str:
        return "".join(self.itos[i] for i in ids)

    def token_bytes(self, token_id: int) -> bytes:
        """The UTF-8 bytes token ``token_id`` stands for."""
        return self.itos[token_id].encode()

    def to_json(self) -> str:
        return json.dumps({"type": self.type, "chars": self.itos[1:]}, ensure_ascii=False)

    @classmethod
    def from_json(cls, text: str) -> CharTokenizer:
        return cls(list(json.loads(text)["chars"]))


def byte_symbols() -> dict[str, int]:
    """Byte-level BPE's alphabet (GPT-2's): one printable character per byte, so a vocabulary of strings can
    hold any bytes. Printable Latin-1 bytes stand for themselves; the others, in order, for U+0100 onwards."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    others = [b for b in range(256) if b not in printable]
    return {**{chr(b): b for b in printable}, **{chr(256 + i): b for i, b in enumerate(others)}}


BYTE_OF_SYMBOL = byte_symbols()


class ByteBPETokenizer:
    """GPT-2's byte-level BPE, trained with the `tokenizers` library and saved as its ``tokenizer.json``.

    Bytes, not characters, are the base alphabet, so any text encodes without an unknown token.
    ``<|endoftext|>`` separates documents in training and ends a generation when sampled.
    """

    type = "byte_bpe"
    file_name = "tokenizer.json"

    def __init__(self, backend: Any):
        self.backend = backend  # a tokenizers.Tokenizer
        self.eos_id: int | None = backend.token_to_id(END_OF_TEXT)

    @classmethod
    def train(cls, texts: Iterable[str], vocab_size: int) -> ByteBPETokenizer:
        from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

        backend = Tokenizer(models.BPE())
        backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
        backend.decoder = decoders.ByteLevel()
        trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=[END_OF_TEXT],
                                      initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
                                      show_progress=False)
        backend.train_from_iterator(texts, trainer)
        return cls(backend)

    @property
    def vocab_size(self) -> int:
        return self.backend.get_vocab_size()

    def encode(self, text: str) -> list[int]:
        return self.backend.encode(text).ids

    def encode_batch(self, texts: list[str]) -> list[list[int]]:
        return [e.ids for e in self.backend.encode_batch(texts)]

    def decode(self, ids: Iterable[int]) -> str:
        return self.backend.decode(list(ids), skip_special_tokens=False)

    def token_bytes(self, token_id: int) -> bytes:
        """The bytes token ``token_id`` stands for (one of them may be part of a UTF-8 character)."""
        token = self.backend.id_to_token(token_id)
        if token_id == self.eos_id:
            return token.encode()
        return bytes(BYTE_OF_SYMBOL[symbol] for symbol in token)

    def to_json(self) -> str:
        return self.backend.to_str()

    @classmethod
    def from_json(cls, text: str) -> ByteBPETokenizer:
        from tokenizers import Tokenizer

        return cls(Tokenizer.from_str(text))


TextTokenizer = CharTokenizer | ByteBPETokenizer
TEXT_TOKENIZERS: dict[str, type[CharTokenizer] | type[ByteBPETokenizer]] = {
    CharTokenizer.type: CharTokenizer,
    ByteBPETokenizer.type: ByteBPETokenizer,
}


def load_text_tokenizer(checkpoint: Checkpoint, vocab_size: int) -> TextTokenizer:
    """The tokenizer a checkpoint names in ``config["tokenizer"]`` (``{"type": ..., "file": ...}``),
    refused unless it has the model's ``vocab_size`` ids."""
    spec = checkpoint.config["tokenizer"]
    if spec["type"] not in TEXT_TOKENIZERS:
        raise ValueError(f"unknown tokenizer type {spec['type']!r}; known: {', '.join(TEXT_TOKENIZERS)}")
    tokenizer = TEXT_TOKENIZERS[spec["type"]].from_json(checkpoint.file(spec["file"]).read_text(encoding="utf-8"))
    if tokenizer.vocab_size != vocab_size:
        raise ValueError(f"tokenizer has {tokenizer.vocab_size} ids, the model {vocab_size}")
    return tokenizer
