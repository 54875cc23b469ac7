"""From next-token logits to text: sampling controls, stop sequences and streamed decoding.

Every autoregressive language model here shares this file. A model only has to offer a
``DecodingSession`` (feed one token per row, get next-token logits back, drop finished rows) and a
``start`` function (prompt ids in, session and first logits out); ``TextGenerator`` then provides
temperature / top-k / top-p / repetition-penalty sampling, seeds, ``n`` samples decoded as one batch,
stop sequences and a stream of text pieces that a caller can abandon at any point.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Protocol

import torch

from models.tokenizers import TextTokenizer

MIN_TEMPERATURE = 1e-4


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
            "temperature must be in [0, 2]": 0.0 <= self.temperature <= 2.0,
            "top_k must be 0 (off) or positive": self.top_k >= 0,
            "top_p must be in (0, 1]": 0.0 < self.top_p <= 1.0,
            "repetition_penalty must be in [0.01, 10]": 0.01 <= self.repetition_penalty <= 10.0,
            "stop sequences must be non-empty strings": all(isinstance(s, str) and s for s in self.stop),
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


class TextAssembler:
    """Turns one sample's token ids into text that is safe to show, cutting at the first stop sequence.

    Byte-level tokens can end inside a UTF-8 character, so decoded text that ends in U+FFFD is held
    back until the character completes. Text that could be the start of a stop sequence is held back
    too, so a stream never shows part of a stop sequence that is then cut.
    """

    def __init__(self, tokenizer: TextTokenizer, stop: tuple[str, ...] = ()):
        self.tokenizer = tokenizer
        self.stop = stop
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
        start = max(0, len(self.text) - max((len(s) for s in self.stop), default=0) + 1)
        self.text += piece
        hits = [i for i in (self.text.find(s, start) for s in self.stop) if i >= 0]
        if hits:
            self.text = self.text[:min(hits)]
            self.stopped = True
            held = 0
        else:
            held = max((k for s in self.stop for k in range(1, len(s)) if self.text.endswith(s[:k])),
                       default=0)
        visible = len(self.text) - held
        out = self.text[self.shown:visible] if visible > self.shown else ""
        self.shown = max(self.shown, visible)
        return out


# ---- the generation loop ------------------------------------------------------------------------


class DecodingSession(Protocol):
    """A model's running state while it continues one prompt in ``rows`` parallel samples."""

    def step(self, tokens: torch.Tensor) -> torch.Tensor:
        """Feed one token per row (rows,); return next-token logits (rows, vocab)."""
        ...

    def keep(self, rows: torch.Tensor) -> None:
        """Keep only these rows (indices into the current rows), dropping finished samples."""
        ...


# prompt ids, number of rows -> (session, next-token logits (rows, vocab))
StartFn = Callable[[list[int], int], tuple[DecodingSession, torch.Tensor]]


@dataclass(frozen=True)
class Piece:
    """A stretch of new text for sample ``index``; its last piece carries ``finish_reason``.

    ``finish_reason`` is ``"stop"`` (a stop sequence or the end-of-text token) or ``"length"``
    (``max_new_tokens`` reached); ``tokens`` then counts the tokens that sample generated.
    """

    index: int
    text: str
    finish_reason: str | None = None
    tokens: int = 0


@dataclass
class Completion:
    text: str
    finish_reason: str
    tokens: int


@dataclass
class Completions:
    results: list[Completion]
    prompt_tokens: int
    completion_tokens: int = field(init=False)

    def __post_init__(self) -> None:
        self.completion_tokens = sum(r.tokens for r in self.results)


class TextGenerator:
    """A language model with its tokenizer: prompt text in, sampled continuations out.

    ``stream`` yields ``Piece``s as they are decoded, so a caller that stops iterating (a client
    that disconnected) stops the computation after the current token. ``generate`` collects them.
    """

    def __init__(self, start: StartFn, tokenizer: TextTokenizer, context_length: int | None = None,
                 model: torch.nn.Module | None = None):
        self.start = start
        self.tokenizer = tokenizer
        self.context_length = context_length  # None: no limit (a recurrent model)
        self.model = model

    def encode_prompt(self, prompt: str) -> list[int]:
        ids = self.tokenizer.encode(prompt)
        if not ids:
            raise ValueError("the prompt encodes to no tokens")
        return ids

    @torch.no_grad()
    def stream(self, prompt: str | list[int], params: SamplingParams) -> Iterator[Piece]:
        prompt_ids = self.encode_prompt(prompt) if isinstance(prompt, str) else prompt
        generator = make_generator(params.seed)
        session, logits = self.start(prompt_ids, params.n)
        seen = None
        if params.repetition_penalty != 1.0:
            seen = torch.zeros(params.n, logits.size(-1), dtype=torch.bool)
            seen[:, torch.tensor(prompt_ids)] = True
        assemblers = [TextAssembler(self.tokenizer, params.stop) for _ in range(params.n)]
        active = list(range(params.n))  # sample index of each session row
        eos = self.tokenizer.eos_id
        for step in range(1, params.max_new_tokens + 1):
            tokens = sample_next(logits, params, generator, seen)
            still: list[int] = []
            for row, index in enumerate(active):
                token = int(tokens[row])
                assembler = assemblers[index]
                if token == eos:
                    yield Piece(index, assembler.finish(), "stop", len(assembler.ids) + 1)
                    continue
                text = assembler.push(token)
                if assembler.stopped:
                    yield Piece(index, text, "stop", len(assembler.ids))
                elif step == params.max_new_tokens:
                    yield Piece(index, text + assembler.finish(), "length", len(assembler.ids))
                else:
                    if text:
                        yield Piece(index, text)
                    still.append(row)
            if not still:
                return
            if len(still) < len(active):
                rows = torch.tensor(still)
                session.keep(rows)
                tokens = tokens[rows]
                seen = seen[rows] if seen is not None else None
                active = [active[r] for r in still]
            if seen is not None:
                seen[torch.arange(len(active)), tokens] = True
            logits = session.step(tokens)

    def generate(self, prompt: str, params: SamplingParams) -> Completions:
        prompt_ids = self.encode_prompt(prompt)
        texts = [""] * params.n
        results: list[Completion | None] = [None] * params.n
        for piece in self.stream(prompt_ids, params):
            texts[piece.index] += piece.text
            if piece.finish_reason is not None:
                results[piece.index] = Completion(texts[piece.index], piece.finish_reason, piece.tokens)
        return Completions([r for r in results if r is not None], prompt_tokens=len(prompt_ids))
