"""Beam search over any decoder that can step a set of hypotheses, as Hugging Face's ``generate`` runs it,
and greedy search over a batch of sentences, for the recurrent and the Transformer translators alike.

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
from collections.abc import Callable
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


def beam_search(step: Step, bos: int, eos: int, options: BeamOptions, device: torch.device | None = None
                ) -> Hypothesis:
    """The best hypothesis of one source sentence."""
    k, alpha = options.beam_size, options.length_penalty
    finished = Finished(k)
    live = [Hypothesis(0.0, 0.0, [], [], False)]
    scores = torch.zeros(1, device=device)
    log_probs = step(torch.zeros(1, dtype=torch.long, device=device),
                     torch.full((1,), bos, dtype=torch.long, device=device))
    for t in range(options.max_length):
        length = t + 1  # the tokens an extension has produced, its new one included
        if t < options.min_length:
            log_probs = log_probs.clone()
            log_probs[:, eos] = float("-inf")
        candidates = (scores.unsqueeze(1) + log_probs.float()).flatten()
        top_scores, top = candidates.topk(min(2 * k, candidates.numel()))
        extended: list[tuple[Hypothesis, int]] = []
        for rank, (score, index) in enumerate(zip(top_scores.tolist(), top.tolist(), strict=True)):
            if score == float("-inf"):
                break
            parent, token = divmod(index, log_probs.size(1))
            before = live[parent]
            grown = Hypothesis(score / length_penalty(length, alpha), score, before.tokens, before.rows + [parent],
                               True)
            if token == eos:
                if rank < k:  # an <eos> below the k best would not have been kept alive either
                    finished.add(grown)
            elif len(extended) < k:
                grown.tokens, grown.finished = before.tokens + [token], False
                extended.append((grown, parent))
        if not extended:
            break
        live = [h for h, _ in extended]
        if length == options.max_length:  # cut: the live hypotheses compete as they stand
            for hypothesis in live:
                finished.add(hypothesis)
            break
        if len(finished) == k and finished.worst >= max(h.score for h in live):
            break
        scores = torch.tensor([h.log_prob for h in live], device=device)
        log_probs = step(torch.tensor([p for _, p in extended], device=device),
                         torch.tensor([h.tokens[-1] for h in live], device=device))
    if len(finished) == 0:  # max_length 0
        return Hypothesis(0.0, 0.0, [], [], False)
    return finished.best()


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
