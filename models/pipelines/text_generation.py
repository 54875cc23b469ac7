"""Text generation: a language model and its tokenizer, prompt text in, sampled continuations out.

The GPT and the recurrent language models are both ``LanguageModel``s (``models.sampling``), so one
generator serves them all: temperature / top-k / top-p / repetition-penalty sampling, seeds, ``n``
samples decoded as one batch, stop sequences, and a stream of text pieces that a caller can abandon
at any point.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field

import torch

from models import gpt, rnn
from models.checkpoint import Checkpoint
from models.pipelines.errors import InvalidInput
from models.sampling import LanguageModel, SamplingParams, TextAssembler, make_generator, sample_next
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


class TextGenerator:
    """A language model with its tokenizer.

    ``stream`` yields ``Piece``s as they are decoded, so a caller that stops iterating (a client
    that disconnected) stops the computation after the current token. ``generate`` collects them.
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

    @torch.no_grad()
    def stream(self, prompt: str | list[int], params: SamplingParams) -> Iterator[Piece]:
        prompt_ids = self.encode_prompt(prompt) if isinstance(prompt, str) else prompt
        generator = make_generator(params.seed)
        session, logits = self._model.start(prompt_ids, params.n)
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
        return Completions(collect(self.stream(prompt_ids, params), params.n), prompt_tokens=len(prompt_ids))


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
