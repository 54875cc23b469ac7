"""Answers computed in the test process from a checkpoint on disk, to hold the service's answers against.

Each checkpoint is read with the model files' own loading code (the network, its tokenizer or vocabularies;
never the pipelines the service answers with); the answer is then computed here another way than the
service computes it (brute force, one input at a time, recomputing instead of caching), so a service that
mixes up inputs, drops an option or answers from the wrong model disagrees. Every import of model code used
for that lives in this file.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from tokenizers import Tokenizer
from torch import nn

from models import bert, classifier, gpt, rnn, seq2seq, word2vec
from models.beam import BeamOptions
from models.checkpoint import Checkpoint, load_checkpoint
from models.tokenizers import WordVocab, load_text_tokenizer

CPU = torch.device("cpu")


def _checkpoint(root: Path, checkpoint_id: str) -> Checkpoint:
    return load_checkpoint(Path(root) / checkpoint_id)


# ---- word2vec --------------------------------------------------------------------------------------


@dataclass
class Vectors:
    words: list[str]
    unit: np.ndarray  # one unit-length row per word, float64

    def row(self, word: str) -> np.ndarray:
        return self.unit[self.words.index(word)]


def word_vectors(root: Path, checkpoint_id: str) -> Vectors:
    checkpoint = _checkpoint(root, checkpoint_id)
    vectors = word2vec.load(checkpoint).input_embeddings.weight.detach().double().numpy()
    words = WordVocab.from_file(checkpoint.file(word2vec.VOCAB_FILE)).itos
    return Vectors(list(words), vectors / np.linalg.norm(vectors, axis=1, keepdims=True))


def cosine(vectors: Vectors, word_a: str, word_b: str) -> float:
    return float(vectors.row(word_a) @ vectors.row(word_b))


def nearest(vectors: Vectors, positive: list[str], negative: list[str], topn: int) -> list[tuple[str, float]]:
    """Every word scored against the normalised sum of ±unit vectors (3CosAdd), sorted, query words left out."""
    query = sum(vectors.row(w) for w in positive) - sum((vectors.row(w) for w in negative), np.zeros(1))
    query = query / np.linalg.norm(query)
    scored = [(word, float(vectors.unit[i] @ query)) for i, word in enumerate(vectors.words)
              if word not in positive and word not in negative]
    return sorted(scored, key=lambda pair: -pair[1])[:topn]


# ---- BERT --------------------------------------------------------------------------------------------


@dataclass
class Bert:
    model: bert.BertForPreTraining
    tokenizer: Tokenizer


def fill_mask_model(root: Path, checkpoint_id: str = "bert") -> Bert:
    checkpoint = _checkpoint(root, checkpoint_id)
    return Bert(bert.load(checkpoint, CPU), bert.load_tokenizer(checkpoint))


@torch.no_grad()
def is_next_probability(model: Bert, text_a: str, text_b: str) -> float:
    """The NSP head's softmax at index 0 for ``[CLS] a [SEP] b [SEP]``, segments 0 then 1: the checkpoint
    format's convention, the original's and Hugging Face's (0 = B follows A), written out rather than read
    from ``models.bert`` so that a swapped constant there is caught."""
    encoding = model.tokenizer.encode(text_a, text_b)
    assert encoding.tokens[0] == bert.CLS and encoding.type_ids[-1] == 1
    _, nsp_logits, _ = model.model(torch.tensor([encoding.ids]), torch.tensor([encoding.type_ids]))
    return float(nsp_logits[0].double().softmax(-1)[0])


@torch.no_grad()
def mask_probabilities(model: Bert, text: str) -> list[torch.Tensor]:
    """For each ``[MASK]`` of one text alone (no padding), the MLM head's probabilities over the vocabulary."""
    encoding = model.tokenizer.encode(text)
    mlm_logits, _, _ = model.model(torch.tensor([encoding.ids]), torch.tensor([encoding.type_ids]))
    return [mlm_logits[0, i].double().softmax(-1) for i, token in enumerate(encoding.tokens) if token == bert.MASK]


# ---- classifiers ---------------------------------------------------------------------------------------


@dataclass
class Classifier:
    model: nn.Module
    encoder: classifier.WordEncoder | classifier.SubwordEncoder
    labels: list[str]


def text_classifier(root: Path, checkpoint_id: str) -> Classifier:
    checkpoint = _checkpoint(root, checkpoint_id)
    return Classifier(classifier.load(checkpoint, CPU), classifier.load_encoder(checkpoint),
                      list(checkpoint.config["labels"]))


@torch.no_grad()
def class_probabilities(model: Classifier, text: str) -> dict[str, float]:
    """One text alone, unpadded, through the network: every label's probability."""
    logits, _ = model.model(torch.tensor([model.encoder.encode(text)]))
    return dict(zip(model.labels, logits[0].double().softmax(-1).tolist(), strict=True))


# ---- seq2seq -------------------------------------------------------------------------------------------


@dataclass
class Translator:
    model: seq2seq.Seq2Seq
    source_vocab: WordVocab
    target_vocab: WordVocab
    source_units: seq2seq.Units  # how the checkpoint reads its source language

    def source_ids(self, text: str) -> torch.Tensor:
        return torch.tensor([seq2seq.encode(self.source_units.tokens(text), self.source_vocab)])


def translator(root: Path, checkpoint_id: str) -> Translator:
    checkpoint = _checkpoint(root, checkpoint_id)
    source_vocab, target_vocab = seq2seq.load_vocabularies(checkpoint)
    source_language = checkpoint.config["model"]["direction"].split("-")[0]
    return Translator(seq2seq.load(checkpoint, CPU), source_vocab, target_vocab,
                      seq2seq.load_units(checkpoint, source_language))


@torch.no_grad()
def greedy_translation(model: Translator, text: str, max_length: int, min_length: int = 1
                       ) -> tuple[list[str], torch.Tensor | None]:
    """One sentence alone, one decoder step at a time, the most probable token each time until ``<eos>``
    (never before ``min_length`` tokens, the service's default 1): the target tokens and the attention rows
    (target x source)."""
    source = model.source_ids(text)
    net = model.model
    memory, keys, mask, state, feed = net.start(source)
    fixed = seq2seq.hidden(state)
    y = torch.tensor([seq2seq.BOS_ID])
    tokens: list[str] = []
    rows = []
    for t in range(max_length):
        state, feed, alpha = net.decoder.step(y, state, feed, memory, keys, mask, fixed)
        logits = net.decoder.logits(feed)
        if t < min_length:
            logits[:, seq2seq.EOS_ID] = float("-inf")
        y = logits.argmax(-1)
        if int(y) == seq2seq.EOS_ID:
            break
        tokens.append(model.target_vocab.itos[int(y)])
        rows.append(alpha)
    attention = torch.cat(rows)[:, : source.size(1)] if rows and rows[0] is not None else None
    return tokens, attention


@torch.no_grad()
def translation_score(model: Translator, text: str, target: list[str], ended: bool,
                      length_penalty: float) -> float:
    """log P(target [<eos>] | text) by teacher forcing, over lp = ((5 + |Y|) / 6) ** length_penalty, with
    |Y| counting the ``<eos>`` when the output ended with one (Wu et al., 2016)."""
    source = model.source_ids(text)
    ids = [model.target_vocab.stoi[t] for t in target] + ([seq2seq.EOS_ID] if ended else [])
    net = model.model
    memory, keys, mask, state, feed = net.start(source)
    fixed = seq2seq.hidden(state)
    y = torch.tensor([seq2seq.BOS_ID])
    total = 0.0
    for token in ids:
        state, feed, _ = net.decoder.step(y, state, feed, memory, keys, mask, fixed)
        total += float(torch.log_softmax(net.decoder.logits(feed).double(), -1)[0, token])
        y = torch.tensor([token])
    return total / ((5 + len(ids)) / 6) ** length_penalty


def untrained_seq2seq_weights(model_config: dict, seed: int = 0) -> dict[str, torch.Tensor]:
    """Freshly initialised weights of the seq2seq model ``model_config`` (``direction`` included) describes."""
    torch.manual_seed(seed)
    fields = {k: v for k, v in model_config.items() if k != "direction"}
    return seq2seq.Seq2Seq(seq2seq.Seq2SeqConfig(**fields)).state_dict()


@torch.no_grad()
def beam_translation(model: Translator, text: str, beam_size: int, max_length: int,
                     length_penalty: float, min_length: int = 1) -> list[str]:
    """The model's own beam search on one sentence: its target tokens."""
    [ids], _ = model.model.beam_search(model.source_ids(text), [BeamOptions(beam_size, max_length, min_length,
                                                                           length_penalty)])
    return [model.target_vocab.itos[i] for i in ids]


# ---- language models -----------------------------------------------------------------------------------


@dataclass
class LanguageModel:
    """A loaded language model seen from outside: its tokenizer, and logits of every position of a sequence
    computed from scratch (no cache, no carried state)."""

    tokenizer: object
    logits: Callable[[list[int]], torch.Tensor]  # ids -> next-token logits after the last id
    eos_id: int | None


def language_model(root: Path, checkpoint_id: str) -> LanguageModel:
    checkpoint = _checkpoint(root, checkpoint_id)
    family = checkpoint.family
    net = (gpt.load if family == "gpt" else rnn.load)(checkpoint, CPU)
    tokenizer = load_text_tokenizer(checkpoint, net.config.vocab_size)

    @torch.no_grad()
    def logits(ids: list[int]) -> torch.Tensor:
        inputs = torch.tensor([ids])
        if family == "gpt":
            assert len(ids) <= net.config.block_size, "recomputation is exact only within the context"
            return net(inputs)[0][0, -1]
        return net.run(inputs)[0][0, -1]  # the fused layer over the whole sequence, from a zero state

    return LanguageModel(tokenizer, logits, tokenizer.eos_id)


def greedy_continuation(lm: LanguageModel, prompt: str, max_new_tokens: int,
                        repetition_penalty: float = 1.0) -> tuple[str, int, str]:
    """Greedy decoding by recomputing every position for every new token: (text, tokens, finish reason).

    A repetition penalty divides the positive logits (multiplies the negative ones) of every token already
    in the prompt or the output."""
    prompt_ids = lm.tokenizer.encode(prompt)
    ids = list(prompt_ids)
    for _ in range(max_new_tokens):
        logits = lm.logits(ids).float()
        seen = torch.tensor(sorted(set(ids)))
        penalised = logits[seen]
        logits[seen] = torch.where(penalised > 0, penalised / repetition_penalty, penalised * repetition_penalty)
        token = int(logits.argmax())
        if token == lm.eos_id:
            new = ids[len(prompt_ids):]
            return lm.tokenizer.decode(new), len(new) + 1, "stop"
        ids.append(token)
    new = ids[len(prompt_ids):]
    return lm.tokenizer.decode(new), len(new), "length"
