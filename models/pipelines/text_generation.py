"""Text generation: a language model and its tokenizer, prompt text in, sampled continuations out.

The GPT and the recurrent language models are both ``LanguageModel``s (``models.sampling``), so one
generator serves them all: temperature / top-k / top-p / repetition-penalty sampling, seeds, ``n``
samples decoded as one batch, stop sequences, and a stream of text pieces that a caller can abandon
at any point. Requests decode in a ``DecodeBatch``: alone, or continuously batched with others, each
joining and leaving between decode steps with its own options and random stream.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field

import torch

from models import gpt, rnn
from models.checkpoint import Checkpoint
from models.pipelines.errors import InvalidInput
from models.sampling import (
    DecodingSession,
    LanguageModel,
    SamplingParams,
    TextAssembler,
    make_generator,
    sample_next,
)
from models.tokenizers import TextTokenizer, load_text_tokenizer


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


@dataclass
class TokenLogprobs:
    """How likely a language model finds each token of a text, in OpenAI's completion ``logprobs`` shape.

    ``token_logprobs[t]`` is log P(token t | tokens before it), and ``top_logprobs[t]`` the most likely
    tokens at that position with theirs, the token itself always among them; both are None for the first
    token, which has nothing before it. ``text_offset[t]`` is where token t begins, in characters of the
    text.
    """

    tokens: list[str]
    token_logprobs: list[float | None]
    top_logprobs: list[dict[str, float] | None]
    text_offset: list[int]

    def since(self, start: int) -> TokenLogprobs:
        """The entries from token ``start`` on (offsets still count from the text's beginning)."""
        return TokenLogprobs(self.tokens[start:], self.token_logprobs[start:], self.top_logprobs[start:],
                             self.text_offset[start:])


class Collector:
    """Adds up a stream's pieces into one ``Completion`` per sample, however the pieces arrive."""

    def __init__(self, n: int):
        self.texts = [""] * n
        self.finished: dict[int, Completion] = {}

    def add(self, piece: Piece) -> None:
        self.texts[piece.index] += piece.text
        if piece.finish_reason is not None:
            self.finished[piece.index] = Completion(self.texts[piece.index], piece.finish_reason, piece.tokens)

    def completions(self) -> list[Completion]:
        """The finished samples, in sample order."""
        return [self.finished[i] for i in sorted(self.finished)]


class Generation:
    """One request's samples while they decode: its options, its own random stream, its text so far.

    Each of its rows (one per sample still going) gets its tokens from this generation's random stream
    and options, whatever else shares the batch: a seeded request draws the same numbers alone or in
    company. ``advance`` takes its rows' next-token logits and returns the new text.
    """

    def __init__(self, tokenizer: TextTokenizer, prompt_ids: list[int], params: SamplingParams):
        self.tokenizer = tokenizer
        self.prompt_ids = prompt_ids
        self.params = params
        self.random = make_generator(params.seed)
        self.assemblers = [TextAssembler(tokenizer, params.stop) for _ in range(params.n)]
        self.active = list(range(params.n))  # the sample index of each of its rows
        self.steps = 0  # tokens each of its rows has generated
        self.seen: torch.Tensor | None = None  # (rows, vocab): tokens a repetition penalty applies to
        self.error: Exception | None = None  # what ended it, if something failed

    @property
    def rows(self) -> int:
        return len(self.active)

    @property
    def finished(self) -> bool:
        return not self.active

    def begin(self, vocab_size: int) -> None:
        """Called once its prompt is read: the prompt's tokens count as seen for the repetition penalty."""
        if self.params.repetition_penalty != 1.0:
            self.seen = torch.zeros(self.params.n, vocab_size, dtype=torch.bool)
            self.seen[:, torch.tensor(self.prompt_ids)] = True

    def advance(self, logits: torch.Tensor) -> tuple[list[Piece], list[int], torch.Tensor]:
        """Sample a token for each row from ``logits`` (rows, vocab): the new pieces of text, the rows that
        go on (indices into its rows) and their tokens, to feed the model next."""
        params = self.params
        tokens = sample_next(logits, params, self.random, self.seen)
        self.steps += 1
        eos = self.tokenizer.eos_id
        pieces: list[Piece] = []
        still: list[int] = []
        for row, index in enumerate(self.active):
            token = int(tokens[row])
            assembler = self.assemblers[index]
            if token == eos:
                pieces.append(Piece(index, assembler.finish(), "stop", len(assembler.ids) + 1))
                continue
            text = assembler.push(token)
            if assembler.stopped:
                pieces.append(Piece(index, text, "stop", len(assembler.ids)))
            elif self.steps == params.max_new_tokens:
                pieces.append(Piece(index, text + assembler.finish(), "length", len(assembler.ids)))
            else:
                if text:
                    pieces.append(Piece(index, text))
                still.append(row)
        kept = torch.tensor(still, dtype=torch.long)
        tokens = tokens[kept]
        self.active = [self.active[r] for r in still]
        if self.seen is not None:
            self.seen = self.seen[kept]
            self.seen[torch.arange(len(still)), tokens] = True
        return pieces, still, tokens

    def fail(self, error: Exception) -> None:
        self.error = error
        self.active = []


class DecodeBatch:
    """Generations that share one decoding session: each ``step`` advances every row of every one by a token.

    A generation ``join``s between steps (its prompt read on its own, its rows then added to the
    session's) and leaves when it finishes, fails or is dropped (``leave``), so a batch runs as long as
    anything is generating, with whatever is generating. Rows sit in the order generations joined, each
    generation's rows together.
    """

    def __init__(self, model: LanguageModel):
        self.model = model
        self.generations: list[Generation] = []
        self.session: DecodingSession | None = None
        self.logits: torch.Tensor | None = None  # (rows, vocab): every row's next-token logits

    @property
    def rows(self) -> int:
        return sum(g.rows for g in self.generations)

    @torch.no_grad()
    def join(self, generation: Generation) -> None:
        session, logits = self.model.start(generation.prompt_ids, generation.params.n)
        generation.begin(logits.size(-1))
        if self.session is None or self.logits is None:
            self.session, self.logits = session, logits
        else:
            self.session.extend(session)
            self.logits = torch.cat([self.logits, logits])
        self.generations.append(generation)

    def leave(self, generation: Generation) -> None:
        """Drop a generation that is no longer wanted (its client left, its time ran out)."""
        if generation in self.generations:
            start = self._starts()[self.generations.index(generation)]
            rows = [r for r in range(self.rows) if not start <= r < start + generation.rows]
            self.generations.remove(generation)
            self._keep(rows)

    @torch.no_grad()
    def step(self) -> list[tuple[Generation, list[Piece]]]:
        """One token for every row: each generation's new pieces, in join order. Finished generations leave."""
        if self.logits is None or self.session is None:
            return []
        rows = self.rows
        out: list[tuple[Generation, list[Piece]]] = []
        kept: list[int] = []
        tokens: list[torch.Tensor] = []
        for generation, start in zip(self.generations, self._starts(), strict=True):
            try:
                pieces, still, next_tokens = generation.advance(self.logits[start:start + generation.rows])
            except Exception as e:  # a failure in one request's sampling ends that request only
                generation.fail(e)
                pieces, still, next_tokens = [], [], torch.empty(0, dtype=torch.long)
            kept += [start + row for row in still]
            tokens.append(next_tokens)
            out.append((generation, pieces))
        self.generations = [g for g in self.generations if not g.finished]
        if len(kept) < rows:
            self._keep(kept)
        if self.session is not None:
            self.logits = self.session.step(torch.cat(tokens))
        return out

    def _starts(self) -> list[int]:
        starts, row = [], 0
        for generation in self.generations:
            starts.append(row)
            row += generation.rows
        return starts

    def _keep(self, rows: list[int]) -> None:
        if not rows:
            self.session, self.logits = None, None
        elif self.session is not None and self.logits is not None:
            index = torch.tensor(rows, dtype=torch.long)
            self.session.keep(index)
            self.logits = self.logits[index.to(self.logits.device)]


class TextGenerator:
    """A language model with its tokenizer.

    ``stream`` yields ``Piece``s as they are decoded, so a caller that stops iterating (a client
    that disconnected) stops the computation after the current token. ``generate`` collects them.
    Both decode one request in a ``DecodeBatch`` of its own: the same path a request takes when it
    shares a batch with others (``app.scheduler``).
    """

    def __init__(self, model: LanguageModel, tokenizer: TextTokenizer):
        self._model = model
        self.tokenizer = tokenizer
        # The most characters one token decodes to: with max_new_tokens, it bounds a reply's length.
        self.longest_token = max(len(tokenizer.decode([i])) for i in range(tokenizer.vocab_size))

    @property
    def context(self) -> int | None:
        """The most tokens the model reads at once (a GPT's positions); None for a recurrent model."""
        return getattr(self._model.config, "block_size", None)

    def encode_prompt(self, prompt: str | list[int]) -> list[int]:
        """A prompt's token ids: text is encoded, ids are checked against the vocabulary."""
        ids = self.tokenizer.encode(prompt) if isinstance(prompt, str) else self.check_ids(prompt)
        if not ids:
            raise InvalidInput("the prompt encodes to no tokens")
        return ids

    def generation(self, prompt_ids: list[int], params: SamplingParams) -> Generation:
        """A request's generation, ready to join a ``DecodeBatch`` of this model."""
        return Generation(self.tokenizer, prompt_ids, params)

    def batch(self) -> DecodeBatch:
        """An empty batch of this model, for generations to join."""
        return DecodeBatch(self._model)

    def check_ids(self, ids: list[int]) -> list[int]:
        outside = [i for i in ids if not 0 <= i < self.tokenizer.vocab_size]
        if outside:
            raise InvalidInput(f"token id {outside[0]} is outside the vocabulary (ids 0 to "
                               f"{self.tokenizer.vocab_size - 1})")
        return ids

    def token_texts(self, ids: list[int]) -> list[str]:
        """Each token as text on its own (a token holding part of a UTF-8 character shows U+FFFD)."""
        return [self.tokenizer.decode([i]) for i in ids]

    def text_offsets(self, ids: list[int]) -> list[int]:
        """Where each token begins in the decoded text, in characters: the characters begun before it."""
        offsets, characters = [], 0
        for token_id in ids:
            offsets.append(characters)
            characters += sum(1 for b in self.tokenizer.token_bytes(token_id) if b & 0xC0 != 0x80)
        return offsets

    @torch.no_grad()
    def score(self, ids: list[int], top: int) -> TokenLogprobs:
        """The log-probability of each token after those before it, and the ``top`` likeliest tokens at each
        position, from one forward pass over ``ids``: the model's own distribution, before any sampling
        control, whatever decoding would have done."""
        self.check_ids(ids)
        logprobs = torch.log_softmax(self._model.next_token_logits(ids)[:-1].float(), dim=-1).cpu()
        following = torch.tensor(ids[1:], dtype=torch.long)
        chosen = logprobs.gather(1, following[:, None])[:, 0].tolist()
        best_values, best_ids = logprobs.topk(min(top, logprobs.size(-1)), dim=-1)
        tokens = self.token_texts(ids)
        top_logprobs: list[dict[str, float] | None] = [None]
        for t, (values, candidates) in enumerate(zip(best_values.tolist(), best_ids.tolist(), strict=True)):
            alternatives = dict(zip(self.token_texts(candidates), values, strict=True))
            top_logprobs.append({**alternatives, tokens[t + 1]: chosen[t]})
        return TokenLogprobs(tokens, [None, *chosen], top_logprobs, self.text_offsets(ids))

    def stream(self, prompt: str | list[int], params: SamplingParams) -> Iterator[Piece]:
        prompt_ids = self.encode_prompt(prompt) if isinstance(prompt, str) else prompt
        generation = self.generation(prompt_ids, params)
        batch = self.batch()
        batch.join(generation)
        while not generation.finished:
            for _, pieces in batch.step():
                yield from pieces
        if generation.error is not None:
            raise generation.error

    def generate(self, prompt: str, params: SamplingParams) -> Completions:
        prompt_ids = self.encode_prompt(prompt)
        return Completions(collect(self.stream(prompt_ids, params), params.n), prompt_tokens=len(prompt_ids))


def joined(pieces: list[Piece]) -> list[Piece]:
    """Consecutive pieces of one generation as one piece per sample: their text joined, the last one's finish."""
    texts: dict[int, str] = {}
    finished: dict[int, Piece] = {}
    for piece in pieces:
        texts[piece.index] = texts.get(piece.index, "") + piece.text
        if piece.finish_reason is not None:
            finished[piece.index] = piece
    out = []
    for index, text in texts.items():
        last = finished.get(index)
        if text or last is not None:
            out.append(Piece(index, text, last.finish_reason, last.tokens) if last else Piece(index, text))
    return out


def collect(pieces: Iterable[Piece], n: int) -> list[Completion]:
    collector = Collector(n)
    for piece in pieces:
        collector.add(piece)
    return collector.completions()


# family -> the model file's loader
LANGUAGE_MODELS: dict[str, Callable[[Checkpoint, torch.device], gpt.GPT | rnn.RNNLanguageModel]] = {
    "gpt": gpt.load,
    "lm": rnn.load,
}


def load(checkpoint: Checkpoint, device: torch.device) -> TextGenerator:
    """A ``gpt`` or ``lm-<cell>`` checkpoint's model with its tokenizer, ready to sample."""
    model = LANGUAGE_MODELS[checkpoint.family](checkpoint, device)
    return TextGenerator(model, load_text_tokenizer(checkpoint, model.config.vocab_size))
