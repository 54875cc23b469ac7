"""Beam search's rules, on a hand-built decoder whose next-token probabilities are fixed by a table."""

from __future__ import annotations

import math

import pytest
import torch

from models.beam import BeamOptions, Hypothesis, beam_search, length_penalty

BOS, EOS, A, B, X = 0, 1, 2, 3, 4
VOCAB = 5


class TableDecoder:
    """Next-token probabilities looked up by the tokens produced so far, in one table per sentence; a prefix
    not in its table gives a near-uniform distribution that prefers nothing."""

    def __init__(self, *tables: dict[tuple[int, ...], dict[int, float]]):
        self.tables = tables
        self.rows: list[tuple[int, tuple[int, ...]]] = []  # each row's sentence and prefix
        self.calls = 0

    def distribution(self, sentence: int, prefix: tuple[int, ...]) -> torch.Tensor:
        probabilities = torch.full((VOCAB,), 1e-6)
        for token, p in self.tables[sentence].get(prefix, {EOS: 0.5, A: 0.5}).items():
            probabilities[token] = p
        probabilities[BOS] = 0.0
        return torch.log(probabilities / probabilities.sum())

    def step(self, parents: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
        self.calls += 1
        if not self.rows:  # the first call feeds <bos> to each sentence's empty hypothesis
            self.rows = [(sentence, ()) for sentence in parents.tolist()]
        else:
            self.rows = [(self.rows[p][0], self.rows[p][1] + (t,))
                         for p, t in zip(parents.tolist(), tokens.tolist(), strict=True)]
        return torch.stack([self.distribution(sentence, prefix) for sentence, prefix in self.rows])


def search(table: dict, **options) -> tuple[Hypothesis, TableDecoder]:
    decoder = TableDecoder(table)
    [best] = beam_search(decoder.step, BOS, EOS, [BeamOptions(**{"length_penalty": 0.0, **options})])
    return best, decoder


# First step: <eos> is second best and finishes at once; the second step finishes [b] too, so k = 2
# hypotheses have ended while [a, x], more likely than both, is still alive.
LATE_WINNER = {
    (): {A: 0.6, EOS: 0.3, B: 0.1},
    (A,): {X: 0.95, EOS: 0.01, B: 0.04},
    (B,): {EOS: 0.9, A: 0.1},
    (A, X): {EOS: 0.95, B: 0.05},
}


def test_search_goes_on_past_k_finished_hypotheses_while_a_live_one_can_still_beat_them():
    best, decoder = search(LATE_WINNER, beam_size=2, max_length=10)
    assert best.tokens == [A, X] and best.finished
    assert best.log_prob == pytest.approx(math.log(0.6 * 0.95 * 0.95), abs=1e-4)
    assert decoder.calls == 3  # and then it stopped: nothing alive could beat [a, x] any more


def test_search_stops_once_the_best_live_hypothesis_cannot_beat_the_worst_finished_one():
    table = {(): {EOS: 0.5, A: 0.3, B: 0.2}, (A,): {EOS: 0.5, A: 0.5}, (B,): {EOS: 0.5, A: 0.5}}
    best, decoder = search(table, beam_size=2, max_length=50)
    assert best.tokens == [] and best.finished
    # After step 2, [] and [a] have finished and the best live, [a, a] at 0.15 < 0.3, cannot catch up.
    assert decoder.calls == 2


def test_min_length_keeps_eos_out_until_that_many_tokens():
    table = {(): {EOS: 0.9, A: 0.1}, (A,): {EOS: 0.9, A: 0.1}, (A, A): {EOS: 0.9, A: 0.1}}
    assert search(table, beam_size=3, max_length=10)[0].tokens == []
    best, _ = search(table, beam_size=3, max_length=10, min_length=2)
    assert best.tokens == [A, A] and best.finished


@pytest.mark.parametrize(("cut", "winner"), [(0.49, [A]), (0.51, [A, B])])
def test_a_hypothesis_cut_at_max_length_and_a_finished_one_count_their_tokens_alike(cut, winner):
    # Both have produced two tokens at max_length 2: [a, b] cut, [a] ended by <eos>. With equal lengths
    # only the probabilities decide, whatever the length penalty.
    table = {(): {A: 1.0}, (A,): {EOS: 0.5 - (cut - 0.5), B: cut}}
    best, _ = search(table, beam_size=2, max_length=2, length_penalty=1.0)
    assert best.tokens == winner
    produced = len(best.tokens) + best.finished
    assert produced == 2
    assert best.score == pytest.approx(best.log_prob / length_penalty(produced, 1.0))


def test_max_length_bounds_the_tokens_produced():
    best, _ = search({}, beam_size=3, max_length=4, min_length=10)
    assert len(best.tokens) == 4 and not best.finished


def test_beam_of_one_follows_the_most_likely_token_at_every_step():
    best, _ = search(LATE_WINNER, beam_size=1, max_length=10)
    assert best.tokens == [A, X]


def test_sentences_searched_together_each_find_what_they_find_alone():
    stops_early = {(): {EOS: 0.5, A: 0.3, B: 0.2}, (A,): {EOS: 0.5, A: 0.5}, (B,): {EOS: 0.5, A: 0.5}}
    table_options = [(LATE_WINNER, {"beam_size": 2, "max_length": 10}),
                     (stops_early, {"beam_size": 3, "max_length": 50}),
                     ({}, {"beam_size": 2, "max_length": 4, "min_length": 10}),
                     (LATE_WINNER, {"beam_size": 1, "max_length": 0}),
                     (LATE_WINNER, {"beam_size": 1, "max_length": 10, "length_penalty": 1.0})]
    decoder = TableDecoder(*[table for table, _ in table_options])
    together = beam_search(decoder.step, BOS, EOS, [BeamOptions(**{"length_penalty": 0.0, **options})
                                                    for _, options in table_options])
    for (table, options), best in zip(table_options, together, strict=True):
        alone, _ = search(table, **options)
        assert (best.tokens, best.finished) == (alone.tokens, alone.finished)
        assert best.score == pytest.approx(alone.score)
    assert together[3].tokens == [] and not together[3].finished
    # Every step ran the sentences still searching as one batch: as many calls as the longest search.
    assert decoder.calls == max(search(table, **options)[1].calls for table, options in table_options)
