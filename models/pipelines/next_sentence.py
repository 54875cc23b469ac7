"""Next-sentence prediction: BERT's NSP head, the probability that one sentence follows another."""

from __future__ import annotations

import torch
from tokenizers import Tokenizer

from models.bert import IS_NEXT, BertForPreTraining
from models.pipelines.fill_mask import check_length


class NextSentence:
    """A pretrained BERT and its tokenizer, reading ``[CLS] A [SEP] B [SEP]``."""

    def __init__(self, model: BertForPreTraining, tokenizer: Tokenizer, device: torch.device):
        self.model = model.to(device).eval()
        self.tokenizer = tokenizer
        self.device = device

    @torch.inference_mode()
    def probability(self, text_a: str, text_b: str) -> float:
        """P(``text_b`` follows ``text_a``) from the NSP head."""
        encoding = self.tokenizer.encode(text_a, text_b)
        check_length(len(encoding.ids), self.model.config.max_position)
        input_ids = torch.tensor([encoding.ids], device=self.device)
        segment_ids = torch.tensor([encoding.type_ids], device=self.device)
        _, nsp_logits, _ = self.model(input_ids, segment_ids)
        return nsp_logits[0].float().softmax(dim=-1)[IS_NEXT].item()

