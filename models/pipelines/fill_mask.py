"""Fill-mask: BERT's masked-language-model head, answering in the Hugging Face pipeline's item shape.

Each ``[MASK]`` is predicted independently from one forward pass (as the pipeline does), as a list of
``{score, token, token_str, sequence}``, best first; ``sequence`` shows the text with that
mask filled and any other masks left as ``[MASK]``. Many inputs share one forward pass through
``encode`` and ``fill_mask_encoded``; ``fill_mask`` is that with a batch of one.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TypedDict

import torch
from tokenizers import Tokenizer

from models.bert import CLS, MASK, SEP, UNK, BertForPreTraining
from models.pipelines.errors import InvalidInput


class Prediction(TypedDict):
    """One candidate for one mask, as the Hugging Face fill-mask pipeline gives it."""

    score: float  # probability of this token at the mask
    token: int  # vocabulary id
    token_str: str
    sequence: str  # the input with this mask filled in (lower-cased, other masks kept)


# The answer to one fill-mask input: one list per [MASK], in order, best first.
Predictions = list[list[Prediction]]


@dataclass
class MaskQuery:
    """One fill-mask input, tokenized and checked: what ``FillMask.fill_mask_encoded`` batches."""

    ids: list[int]
    masks: list[int]  # the [MASK] positions in ids
    top_k: int
    candidates: list[int] | None  # the targets' token ids; None ranks the whole vocabulary


def special_id(tokenizer: Tokenizer, token: str) -> int:
    token_id = tokenizer.token_to_id(token)
    if token_id is None:
        raise ValueError(f"tokenizer has no {token} token")
    return token_id


def check_length(n_tokens: int, max_position: int) -> None:
    """Refuse input longer than the model's learned positions."""
    if n_tokens > max_position:
        raise InvalidInput(f"input is {n_tokens} tokens long ([CLS] and [SEP] included); this model accepts at "
                           f"most {max_position} tokens")


class FillMask:
    """A pretrained BERT and its tokenizer: the most probable tokens for each ``[MASK]``."""

    def __init__(self, model: BertForPreTraining, tokenizer: Tokenizer, device: torch.device):
        self.model = model.to(device).eval()
        self.tokenizer = tokenizer
        self.device = device
        self.config = model.config
        self.mask_id = special_id(tokenizer, MASK)
        self.cls_id = special_id(tokenizer, CLS)
        self.sep_id = special_id(tokenizer, SEP)
        self._token_strs: dict[int, str] = {}

    def _target_ids(self, targets: Sequence[str]) -> list[int]:
        """Each target must be one vocabulary token (after the tokenizer's lower-casing)."""
        ids: list[int] = []
        bad: list[str] = []
        for target in targets:
            pieces = self.tokenizer.encode(target, add_special_tokens=False).tokens
            if len(pieces) == 1 and pieces[0] != UNK:
                token_id = self.tokenizer.token_to_id(pieces[0])
                if token_id not in ids:
                    ids.append(token_id)
            else:
                bad.append(f"{target!r} -> {pieces}")
        if bad:
            raise InvalidInput("targets must each be a single vocabulary token; these are not: " + "; ".join(bad))
        return ids

    def fill_mask(self, text: str, top_k: int = 5, targets: Sequence[str] | None = None) -> Predictions:
        """For each ``[MASK]`` in ``text``, in order, the ``top_k`` most probable tokens (among
        ``targets`` when given) with their probabilities and the filled-in sentence."""
        return self.fill_mask_encoded([self.encode(text, top_k, targets)])[0]

    def encode(self, text: str, top_k: int = 5, targets: Sequence[str] | None = None) -> MaskQuery:
        """Tokenize and check one input; ``InvalidInput`` says what the model cannot answer."""
        ids = self.tokenizer.encode(text).ids
        masks = [i for i, token_id in enumerate(ids) if token_id == self.mask_id]
        if not masks:
            raise InvalidInput(f"text must contain at least one {MASK} token")
        check_length(len(ids), self.config.max_position)
        return MaskQuery(ids, masks, top_k, self._target_ids(targets) if targets else None)

    @torch.inference_mode()
    def fill_mask_encoded(self, queries: list[MaskQuery]) -> list[Predictions]:
        """Every query's predictions from one forward pass. Inputs are right-padded to the longest and
        the padding is masked out of attention, so each answer is the one its input gets alone."""
        lengths = torch.tensor([len(q.ids) for q in queries])
        input_ids = torch.full((len(queries), int(lengths.max())), self.config.pad_id, dtype=torch.long)
        for row, query in enumerate(queries):
            input_ids[row, : len(query.ids)] = torch.tensor(query.ids)
        attention_mask = torch.arange(input_ids.size(1))[None] < lengths[:, None]
        hidden, _ = self.model.bert(input_ids.to(self.device), attention_mask=attention_mask.to(self.device))
        rows = [row for row, query in enumerate(queries) for _ in query.masks]
        columns = [position for query in queries for position in query.masks]
        # The MLM head only where a mask is: the vocabulary projection is the widest matmul of the pass.
        logits = self.model.mlm(hidden[rows, columns], self.model.bert.embeddings.token.weight)
        probs = logits.float().softmax(dim=-1).cpu()  # (all masks, vocab)
        chosen, start = [], 0
        for query in queries:
            chosen.append(self._top_k(query, probs[start:start + len(query.masks)]))
            start += len(query.masks)
        # Every candidate's sentence in one call to the tokenizer (measured: one decode per candidate was a
        # tenth of a batched request's CPU).
        filled = [self._filled(query, position, token) for query, masks in zip(queries, chosen, strict=True)
                  for position, candidates in zip(query.masks, masks, strict=True) for _, token in candidates]
        sequences = iter(self.tokenizer.decode_batch(filled, skip_special_tokens=False))
        return [[[Prediction(score=score, token=token, token_str=self._token_str(token), sequence=next(sequences))
                  for score, token in candidates] for candidates in masks] for masks in chosen]

    def _top_k(self, query: MaskQuery, probs: torch.Tensor) -> list[list[tuple[float, int]]]:
        """The top-k (probability, token id) of each of ``query``'s masks, from their probabilities (n_masks, vocab)."""
        if query.candidates is not None:
            candidates = torch.tensor(query.candidates)
            scores, order = probs[:, candidates].topk(min(query.top_k, len(candidates)), dim=-1)
            token_ids = candidates[order]
        else:
            scores, token_ids = probs.topk(min(query.top_k, probs.size(-1)), dim=-1)
        return [list(zip(s, t, strict=True)) for s, t in zip(scores.tolist(), token_ids.tolist(), strict=True)]

    def _filled(self, query: MaskQuery, position: int, token: int) -> list[int]:
        """The ids of a single-sentence input with one mask filled: [CLS]/[SEP] dropped, other [MASK]s kept."""
        return [token if i == position else t for i, t in enumerate(query.ids) if t not in (self.cls_id, self.sep_id)]

    def _token_str(self, token: int) -> str:
        """A token as text, decoded once per token."""
        text = self._token_strs.get(token)
        if text is None:
            text = self._token_strs[token] = self.tokenizer.decode([token])
        return text
