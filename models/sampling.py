"""From next-token logits to text: sampling controls, stop sequences, and the protocol a model offers.

Every autoregressive language model here shares this file. A model only has to be a ``LanguageModel``:
``start`` reads a prompt and returns a ``DecodingSession`` (feed one token per row, get next-token
logits back, drop finished rows). ``models.pipelines.text_generation.TextGenerator`` then provides
temperature / top-k / top-p / repetition-penalty sampling, seeds, ``n`` samples decoded as one batch,
stop sequences and a stream of text pieces that a caller can abandon at any point.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import torch

from models.tokenizers import TextTokenizer

MIN_TEMPERATURE = 1e-4
# The range of each control, here once: SamplingParams checks it and the service's request schema states it.
MAX_TEMPERATURE = 2.0
MAX_TOP_K = 1_000_000  # larger than any vocabulary here; any k at or past the vocabulary size filters nothing
MIN_REPETITION_PENALTY, MAX_REPETITION_PENALTY = 0.01, 10.0
MAX_SEED = 2**63 - 1


@dataclass(frozen=True)
class SamplingParams:
    """How to choose each next token; the defaults sample from the model's own distribution.

    ``temperature`` 0 means greedy decoding. ``top_k`` 0 and ``top_p`` 1 switch those filters off.
    ``repetition_penalty`` > 1 makes tokens already in the prompt or output less likely (CTRL's
    rule: positive logits divided by it, negative ones multiplied).
    """

    max_new_tokens: int = 64
    temperature: float = 1.0
    top_k: int = 0
    top_p: float = 1.0
    repetition_penalty: float = 1.0
    stop: tuple[str, ...] = ()
    seed: int | None = None
    n: int = 1

    def __post_init__(self) -> None:
        checks = {
            "max_new_tokens must be at least 1": self.max_new_tokens >= 1,
            f"temperature must be in [0, {MAX_TEMPERATURE:g}]": 0.0 <= self.temperature <= MAX_TEMPERATURE,
            f"top_k must be 0 (off) up to {MAX_TOP_K}": 0 <= self.top_k <= MAX_TOP_K,
            "top_p must be in (0, 1]": 0.0 < self.top_p <= 1.0,
            f"repetition_penalty must be in [{MIN_REPETITION_PENALTY:g}, {MAX_REPETITION_PENALTY:g}]":
                MIN_REPETITION_PENALTY <= self.repetition_penalty <= MAX_REPETITION_PENALTY,
            "stop sequences must be non-empty strings": all(isinstance(s, str) and s for s in self.stop),
            f"seed must be in [0, {MAX_SEED}]": self.seed is None or 0 <= self.seed <= MAX_SEED,
            "n must be at least 1": self.n >= 1,
        }
        for message, ok in checks.items():
            if not ok:
                raise ValueError(message)


# ---- choosing the next token --------------------------------------------------------------------


def apply_repetition_penalty(logits: torch.Tensor, seen: torch.Tensor, penalty: float) -> torch.Tensor:
    """Make tokens marked in ``seen`` (rows, vocab) less likely; ``penalty`` 1 leaves logits as they are."""
    if penalty == 1.0:
        return logits
    penalised = torch.where(logits > 0, logits / penalty, logits * penalty)
    return torch.where(seen, penalised, logits)


def filter_top_k(logits: torch.Tensor, k: int) -> torch.Tensor:
    """Keep the ``k`` largest logits of each row (ties at the k-th value survive); the rest get -inf."""
    if k <= 0 or k >= logits.size(-1):
        return logits
    kth = torch.topk(logits, k, dim=-1).values[..., -1:]
    return logits.masked_fill(logits < kth, float("-inf"))


def filter_top_p(logits: torch.Tensor, p: float) -> torch.Tensor:
    """Nucleus filtering: keep the smallest set of most likely tokens whose probability reaches ``p``."""
    if p >= 1.0:
        return logits
    sorted_logits, order = torch.sort(logits, dim=-1, descending=True)
    probs = torch.softmax(sorted_logits, dim=-1)
    # A token is dropped when the tokens ranked above it already reach p; the top one always stays.
    drop_sorted = (torch.cumsum(probs, dim=-1) - probs) >= p
    drop_sorted[..., 0] = False  # even when p rounds to 0 in float32
    drop = torch.zeros_like(drop_sorted).scatter(-1, order, drop_sorted)
    return logits.masked_fill(drop, float("-inf"))


def sample_next(logits: torch.Tensor, params: SamplingParams, generator: torch.Generator | None = None,
                seen: torch.Tensor | None = None) -> torch.Tensor:
    """One token id per row of ``logits`` (rows, vocab), chosen as ``params`` say, on the CPU.

    Sampling runs on the CPU whatever the model's device: the random stream is a CPU generator, so a
    seed gives the same text on any device, and one row of logits is small to move.
    """
    logits = logits.float().cpu()
    if seen is not None:
        logits = apply_repetition_penalty(logits, seen, params.repetition_penalty)
    if params.temperature == 0.0:
        return torch.argmax(logits, dim=-1)
    # Dividing by a vanishing temperature would overflow to inf (and softmax to NaN); below this floor
    # the distribution is already all but greedy.
    logits = filter_top_k(logits / max(params.temperature, MIN_TEMPERATURE), params.top_k)
    logits = filter_top_p(logits, params.top_p)
    probs = torch.softmax(logits, dim=-1)
    return torch.multinomial(probs, 1, generator=generator).squeeze(-1)


def make_generator(seed: int | None) -> torch.Generator:
    """A private random stream: the same seed gives the same text; no seed draws a fresh one."""
    generator = torch.Generator()
    if seed is None:
        generator.seed()
    else:
        generator.manual_seed(seed)
    return generator


# ---- from token ids to text ---------------------------------------------------------------------


class StopMatcher:
    """Finds where the first stop sequence ends in text fed piece by piece (Knuth–Morris–Pratt).

    For each stop sequence it keeps how long a prefix of it the text read so far ends with, so every
    character costs amortised constant work per stop sequence, however long the text and the stops:
    a generation's stop checking is linear in its length, never quadratic.
    """

    def __init__(self, stops: tuple[str, ...]):
        self.stops = stops
        self.fallback = [_fallback(s) for s in stops]
        self.matched = [0] * len(stops)

    def feed(self, piece: str) -> int | None:
        """Read ``piece``; the number of its characters up to the end of the first stop sequence that
        completes in it, or None."""
        for end, char in enumerate(piece, start=1):
            for i, stop in enumerate(self.stops):
                k = self.matched[i]
                while k and stop[k] != char:
                    k = self.fallback[i][k - 1]
                k = k + 1 if stop[k] == char else 0
                if k == len(stop):
                    return end
                self.matched[i] = k
        return None

    @property
    def partial(self) -> int:
        """Characters at the end of the text so far that could begin a stop sequence."""
        return max(self.matched, default=0)


def _fallback(pattern: str) -> list[int]:
    """KMP's failure function: for each prefix of ``pattern``, its longest proper prefix that is also a suffix."""
    table = [0] * len(pattern)
    k = 0
    for i in range(1, len(pattern)):
        while k and pattern[i] != pattern[k]:
            k = table[k - 1]
        if pattern[i] == pattern[k]:
            k += 1
        table[i] = k
    return table


class TextAssembler:
    """Turns one sample's token ids into text that is safe to show, cutting at the first stop sequence.

    Byte-level tokens can end inside a UTF-8 character, so decoded text that ends in U+FFFD is held
    back until the character completes. Text that could be the start of a stop sequence is held back
    too, so a stream never shows part of a stop sequence that is then cut.
    """

    def __init__(self, tokenizer: TextTokenizer, stop: tuple[str, ...] = ()):
        self.tokenizer = tokenizer
        self.stops = StopMatcher(stop)
        self.ids: list[int] = []
        self.text = ""  # decoded so far, complete characters only
        self.shown = 0  # characters of self.text already handed out
        self.stopped = False
        self._prefix = 0  # ids[_prefix:_read] decode to the tail of self.text
        self._read = 0

    def push(self, token: int) -> str:
        """Add one token; return the new text that may be shown (often empty)."""
        self.ids.append(token)
        before = self.tokenizer.decode(self.ids[self._prefix:self._read])
        after = self.tokenizer.decode(self.ids[self._prefix:])
        if len(after) <= len(before) or after.endswith("\ufffd"):
            return ""
        self._prefix, self._read = self._read, len(self.ids)
        return self._add_text(after[len(before):])

    def finish(self) -> str:
        """Whatever is still held back, once no more tokens will come."""
        out = ""
        if not self.stopped and self._read < len(self.ids):
            before = self.tokenizer.decode(self.ids[self._prefix:self._read])
            after = self.tokenizer.decode(self.ids[self._prefix:])
            self._read = len(self.ids)
            out = self._add_text(after[len(before):])
        out += self.text[self.shown:]
        self.shown = len(self.text)
        return out

    def _add_text(self, piece: str) -> str:
        end = self.stops.feed(piece)
        if end is None:
            self.text += piece
            held = self.stops.partial
        else:
            self.text += piece[:end]
            self.text = self.text[:len(self.text) - self._stop_length()]
            self.stopped = True
            held = 0
        visible = len(self.text) - held
        out = self.text[self.shown:visible] if visible > self.shown else ""
        self.shown = max(self.shown, visible)
        return out

    def _stop_length(self) -> int:
        """The longest stop sequence the text now ends with (the one that just completed)."""
        return max(len(s) for s in self.stops.stops if self.text.endswith(s))


# ---- what a language model offers ---------------------------------------------------------------


class DecodingSession(Protocol):
    """A model's running state while it continues one prompt in ``rows`` parallel samples."""

    def step(self, tokens: torch.Tensor) -> torch.Tensor:
        """Feed one token per row (rows,); return next-token logits (rows, vocab)."""
        ...

    def keep(self, rows: torch.Tensor) -> None:
        """Keep only these rows (indices into the current rows), dropping finished samples."""
        ...


class LanguageModel(Protocol):
    """What a model offers to be sampled from: read a prompt once, continue it in ``rows`` samples; and,
    to score a text, its next-token logits at every position from one reading."""

    def start(self, prompt: list[int], rows: int) -> tuple[DecodingSession, torch.Tensor]:
        """A session continuing ``prompt`` in ``rows`` rows, and the first next-token logits (rows, vocab)."""
        ...

    def next_token_logits(self, tokens: list[int]) -> torch.Tensor:
        """Row t: the logits for the token that follows ``tokens[:t + 1]`` (len(tokens), vocab)."""
        ...
