"""Beam search and greedy search over a batch of sentences, for any decoder that can step a set of
hypotheses (beam search as Hugging Face's ``generate`` runs it), the recurrent and the Transformer
translators alike.

A hypothesis is scored by its log-probability over a length penalty, log p(Y) / lp(|Y|), with
lp(|Y|) = ((5 + |Y|) / 6) ** length_penalty (Wu et al., 2016): 0 ranks by raw log-probability, which
favours short outputs; larger values favour longer ones. ``|Y|`` counts the tokens a hypothesis has
produced, its closing ``<eos>`` included, for finished and live hypotheses alike.

Each step extends the live hypotheses by every token, keeps the 2k best extensions, moves those ending
in ``<eos>`` among the k best to the finished set (which keeps its k best), and carries on with the k
best of the others. The search stops when k hypotheses have finished and the best live one, scored as
if it finished now, cannot beat the worst of them (Hugging Face's default, ``early_stopping=False``),
or at ``max_length``, where the live hypotheses are scored as they stand. It does not stop as soon as
any k hypotheses have finished: short ones finish first, and a longer one still alive may be better.
"""

from __future__ import annotations

import heapq
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import torch

# (parents, tokens) -> log-probabilities (len(parents), V): the decoder keeps, in this order, the state
# of each row of its previous step named in ``parents``, feeds it the token in ``tokens``, and returns
# each new row's distribution over the next token.
Step = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]

# tokens (B,) -> (logits (B, V), the step's attention over the source or None): the decoder reads one
# token per row and keeps its own state.
GreedyStep = Callable[[torch.Tensor], tuple[torch.Tensor, torch.Tensor | None]]


@dataclass(frozen=True)
class BeamOptions:
    beam_size: int
    max_length: int  # most tokens, <eos> included
    min_length: int = 0  # fewest tokens before <eos>
    length_penalty: float = 0.6


def length_penalty(length: int, alpha: float) -> float:
    """lp(|Y|) = ((5 + |Y|) / 6) ** alpha."""
    return ((5 + length) / 6) ** alpha


@dataclass(order=True)
class Hypothesis:
    score: float  # log p / lp(len(tokens)), the ranking
    log_prob: float = field(compare=False)
    tokens: list[int] = field(compare=False)  # <eos> excluded
    rows: list[int] = field(compare=False)  # the decoder row whose distribution gave each produced token
    finished: bool = field(compare=False)  # ended with <eos> (else cut at max_length)

    def along(self, per_step: list[torch.Tensor], source_length: int) -> torch.Tensor:
        """What each step recorded (rows first, the source last) at the rows this hypothesis went through, one
        per token it produced, cut to its sentence's ``source_length``: (len(tokens), ..., source_length)."""
        if not self.tokens:
            return per_step[0].new_zeros(0, *per_step[0].shape[1:-1], source_length)
        rows = self.rows[:len(self.tokens)]
        return torch.stack([per_step[t][row, ..., :source_length] for t, row in enumerate(rows)])


class Finished:
    """The k best finished hypotheses (a min-heap on score: the worst is at the top)."""

    def __init__(self, k: int):
        self.k, self.heap = k, []

    def __len__(self) -> int:
        return len(self.heap)

    @property
    def worst(self) -> float:
        return self.heap[0].score

    def add(self, hypothesis: Hypothesis) -> None:
        if len(self.heap) < self.k:
            heapq.heappush(self.heap, hypothesis)
        elif hypothesis.score > self.worst:
            heapq.heapreplace(self.heap, hypothesis)

    def best(self) -> Hypothesis:
        return max(self.heap)


class _Search:
    """One sentence's search: its live hypotheses, in the order of its rows in the next step, and its k best
    finished ones."""

    def __init__(self, options: BeamOptions):
        self.options = options
        self.finished = Finished(options.beam_size)
        self.live = [Hypothesis(0.0, 0.0, [], [], False)]
        self.done = options.max_length == 0

    def extend(self, length: int, scores: list[float], indices: list[int], vocab: int, first_row: int,
               eos: int) -> list[int]:
        """One step from the best extensions of the live hypotheses, best first: ``indices`` into (live, vocab)
        flattened, the step's rows of this sentence starting at ``first_row``. Returns, per new live hypothesis,
        its parent among the live ones (none once the search has ended)."""
        k, alpha = self.options.beam_size, self.options.length_penalty
        extended: list[Hypothesis] = []
        parents: list[int] = []
        for rank, (score, index) in enumerate(zip(scores[:2 * k], indices[:2 * k], strict=True)):
            if score == float("-inf"):
                break
            parent, token = divmod(index, vocab)
            before = self.live[parent]
            grown = Hypothesis(score / length_penalty(length, alpha), score, before.tokens,
                               before.rows + [first_row + parent], True)
            if token == eos:
                if rank < k:  # an <eos> below the k best would not have been kept alive either
                    self.finished.add(grown)
            elif len(extended) < k:
                grown.tokens, grown.finished = before.tokens + [token], False
                extended.append(grown)
                parents.append(parent)
        self.live = extended
        if length == self.options.max_length:  # cut: the live hypotheses compete as they stand
            for hypothesis in extended:
                self.finished.add(hypothesis)
            self.done = True
        else:
            self.done = not extended or (len(self.finished) == k
                                         and self.finished.worst >= max(h.score for h in extended))
        return [] if self.done else parents

    def best(self) -> Hypothesis:
        if len(self.finished) == 0:  # max_length 0
            return Hypothesis(0.0, 0.0, [], [], False)
        return self.finished.best()


def beam_search(step: Step, bos: int, eos: int, options: Sequence[BeamOptions], device: torch.device | None = None
                ) -> list[Hypothesis]:
    """The best hypothesis of each source sentence, ``options[i]`` saying how to search sentence i.

    The sentences are searched together: one step runs the live hypotheses of every sentence still
    searching as one batch of rows, each sentence's rows side by side (the first step has one row per
    sentence, row i for sentence i), and a sentence leaves the batch when its search ends. Each sentence
    ranks, finishes and stops as it would alone.
    """
    searches = [_Search(o) for o in options]
    log_probs = step(torch.arange(len(searches), device=device),
                     torch.full((len(searches),), bos, dtype=torch.long, device=device))
    active = [(search, i) for i, search in enumerate(searches) if not search.done]  # with its first row
    length = 1  # the tokens an extension has produced, its new one included
    while active:
        scores, indices = _best_extensions(log_probs, active, length, eos)
        parents: list[int] = []
        following: list[tuple[_Search, int]] = []
        for (search, first_row), row_scores, row_indices in zip(active, scores, indices, strict=True):
            chosen = search.extend(length, row_scores, row_indices, log_probs.size(1), first_row, eos)
            if not search.done:
                following.append((search, len(parents)))
                parents += [first_row + parent for parent in chosen]
        active = following
        if active:
            tokens = [h.tokens[-1] for search, _ in active for h in search.live]
            log_probs = step(torch.tensor(parents, device=device), torch.tensor(tokens, device=device))
            length += 1
    return [search.best() for search in searches]


def _best_extensions(log_probs: torch.Tensor, active: list[tuple[_Search, int]], length: int, eos: int
                     ) -> tuple[list[list[float]], list[list[int]]]:
    """Per active search, the 2k best extensions of its live hypotheses: log p of the hypothesis so far plus
    the next token's, best first, and each one's index into (live, vocabulary) flattened. The searches are
    padded to the widest one's rows with -inf, so one ``topk`` ranks them all."""
    widest = max(len(search.live) for search, _ in active)
    vocab = log_probs.size(1)
    rows = [first + j for search, first in active for j in range(len(search.live))]
    slots = torch.tensor([i * widest + j for i, (search, _) in enumerate(active) for j in range(len(search.live))],
                         device=log_probs.device)
    steps = log_probs.new_full((len(active) * widest, vocab), float("-inf"), dtype=torch.float32)
    steps[slots] = log_probs[rows].float()
    so_far = steps.new_full((len(active) * widest,), float("-inf"))
    so_far[slots] = torch.tensor([h.log_prob for search, _ in active for h in search.live], device=steps.device)
    steps = steps.view(len(active), widest, vocab)
    if early := [i for i, (search, _) in enumerate(active) if length <= search.options.min_length]:
        steps[early, :, eos] = float("-inf")
    candidates = (so_far.view(len(active), widest, 1) + steps).view(len(active), -1)
    k = max(search.options.beam_size for search, _ in active)
    scores, indices = candidates.topk(min(2 * k, candidates.size(1)))
    return scores.tolist(), indices.tolist()


def greedy_search(step: GreedyStep, batch: int, bos: int, eos: int, max_length: int, min_length: int = 0,
                  device: torch.device | None = None) -> tuple[list[list[int]], torch.Tensor | None]:
    """Every row's likeliest next token, until every row has produced ``eos`` or ``max_length`` steps: per row
    its tokens (``eos`` excluded, at least ``min_length`` of them unless ``max_length`` cuts first), and the
    steps' attention stacked along dimension 1, (B, T, ...), or None when the decoder has none."""
    y = torch.full((batch,), bos, dtype=torch.long, device=device)
    done = torch.zeros_like(y, dtype=torch.bool)
    tokens, attention = [], []
    for t in range(max_length):
        logits, weights = step(y)
        if t < min_length:
            logits[:, eos] = float("-inf")
        y = logits.argmax(-1)
        tokens.append(y)
        attention.append(weights)
        done |= y == eos
        if done.all():
            break
    ids = torch.stack(tokens, 1).tolist()
    maps = torch.stack(attention, 1).float().cpu() if attention[0] is not None else None
    return [row[:row.index(eos)] if eos in row else row for row in ids], maps
