"""Decoding a translation token by token, greedy or by beam search, for any encoder–decoder.

A model offers ``start(source) -> DecoderSession``: the session holds the encoded source and the decoder's
state for each of its rows (one per sentence, or one per hypothesis of a beam). ``step`` feeds one token
per row and returns the next-token logits with each row's attention over the source; ``select`` keeps,
reorders or repeats rows. The attention a step returns is (rows, ..., source): (rows, source) for one
alignment, (rows, layers, heads, source) for a Transformer's every head. ``Tokens`` names the ids that
start and end a translation in the model's target vocabulary.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import torch


@dataclass(frozen=True)
class Tokens:
    bos: int  # fed first
    eos: int  # ends a hypothesis


class DecoderSession(Protocol):
    def step(self, tokens: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Feed ``tokens`` (rows,); return next-token logits (rows, vocab) and attention (rows, ..., S) or None."""
        ...

    def select(self, rows: torch.Tensor) -> None:
        """Keep these rows (indices into the current ones; a repeated index copies a row), in this order."""
        ...


@torch.no_grad()
def greedy(session: DecoderSession, source_lengths: list[int], max_length: int, tokens: Tokens,
           device: torch.device) -> tuple[list[list[int]], list[torch.Tensor | None]]:
    """Each row's most likely next token until ``<eos>`` or ``max_length``: per row the token ids (no
    ``<eos>``) and its attention (T, ..., its source length) or None."""
    batch = len(source_lengths)
    y = torch.full((batch,), tokens.bos, dtype=torch.long, device=device)
    done = torch.zeros(batch, dtype=torch.bool, device=device)
    outputs, alphas = [], []
    for _ in range(max_length):
        logits, alpha = session.step(y)
        y = logits.argmax(-1)
        outputs.append(y)
        alphas.append(alpha)
        done |= y == tokens.eos
        if done.all():
            break
    ids = torch.stack(outputs, 1).tolist()
    attention = torch.stack(alphas, 1).float().cpu() if alphas[0] is not None else None
    results, maps = [], []
    for i, row in enumerate(ids):
        n = row.index(tokens.eos) if tokens.eos in row else len(row)
        results.append(row[:n])
        maps.append(attention[i, :n, ..., :source_lengths[i]] if attention is not None else None)
    return results, maps


@torch.no_grad()
def beam_search(session: DecoderSession, beam_size: int, max_length: int, length_penalty: float, tokens: Tokens,
                device: torch.device) -> tuple[list[int], torch.Tensor | None]:
    """One sentence (a session of one row): the best hypothesis by log-probability / lp(|Y|), and its
    attention (T, ..., S) or None.

    lp(|Y|) = ((5 + |Y|) / 6) ** length_penalty (Wu et al., 2016): 0 ranks by raw log-probability, which
    favours short outputs; larger values favour longer ones.
    """
    k = beam_size
    session.select(torch.zeros(k, dtype=torch.long, device=device))
    y = torch.full((k,), tokens.bos, dtype=torch.long, device=device)
    # Only the first beam is alive at the start, or the k beams would be k copies of one hypothesis.
    scores = torch.full((k,), float("-inf"), device=device)
    scores[0] = 0.0
    history = torch.zeros(k, 0, dtype=torch.long, device=device)
    alphas: torch.Tensor | None = None
    finished: list[tuple[float, list[int], torch.Tensor | None]] = []

    def lp(length: int) -> float:
        return ((5 + length) / 6) ** length_penalty

    for t in range(max_length):
        logits, alpha = session.step(y)
        log_probs = torch.log_softmax(logits.float(), -1) + scores.unsqueeze(1)
        top_scores, top = log_probs.flatten().topk(min(2 * k, log_probs.numel()))
        beams, words = top // log_probs.size(1), top % log_probs.size(1)
        if alpha is not None:
            step = alpha.float().unsqueeze(1)
            alphas = step if alphas is None else torch.cat([alphas, step], 1)
        # The k best candidates: those ending in <eos> are finished; the others stay alive, topped up from
        # the next best so that k hypotheses keep going.
        keep = []
        candidates = zip(top_scores.tolist(), beams.tolist(), words.tolist(), strict=True)
        for rank, (score, beam, token) in enumerate(candidates):
            if score == float("-inf"):
                break
            if token == tokens.eos:
                if rank < k:
                    finished.append((score / lp(t + 1), history[beam].tolist(),
                                     alphas[beam] if alphas is not None else None))
            elif len(keep) < k:
                keep.append((score, beam, token))
        if len(finished) >= k or not keep:
            break
        index = torch.tensor([b for _, b, _ in keep], device=device)
        y = torch.tensor([tok for _, _, tok in keep], device=device)
        scores = torch.full((k,), float("-inf"), device=device)
        scores[: len(keep)] = torch.tensor([s for s, _, _ in keep], device=device)
        # Fewer than k survivors: pad with copies of the first, kept dead by their -inf score.
        index = torch.cat([index, index[:1].expand(k - len(keep))])
        y = torch.cat([y, y[:1].expand(k - len(keep))])
        session.select(index)
        history = torch.cat([history[index], y.unsqueeze(1)], 1)
        alphas = alphas[index] if alphas is not None else None
    if not finished:  # max_length reached first: rank the hypotheses still alive the same way
        finished = [(scores[b].item() / lp(history.size(1)), history[b].tolist(),
                     alphas[b] if alphas is not None else None)
                    for b in range(k) if scores[b] > float("-inf")]
    _, ids, alpha_map = max(finished, key=lambda f: f[0])
    return ids, alpha_map[: len(ids)].cpu() if alpha_map is not None else None
