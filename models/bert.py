"""BERT (Devlin et al., 2018): a bidirectional Transformer encoder pretrained by masked-language
modelling (MLM) and next-sentence prediction (NSP).

Read top to bottom like the paper: the config, the input embeddings (token + position + segment), one
encoder layer (multi-head self-attention, GELU feed-forward, residuals with post-layer-norm), the encoder
stack with its ``[CLS]`` pooler, the two pretraining heads, the pretraining model, and the classification
model that reuses the pretrained encoder. The fill-mask and next-sentence pipelines that answer with the
two heads are ``models.pipelines.fill_mask`` and ``models.pipelines.next_sentence``.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as F
from tokenizers import Tokenizer

from models.attention import AttentionRecorder, SelfAttention
from models.checkpoint import Checkpoint

# The special tokens, in the order they are given to the WordPiece trainer, so they take ids 0..4.
PAD, UNK, CLS, SEP, MASK = "[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"
SPECIAL_TOKENS = (PAD, UNK, CLS, SEP, MASK)
TOKENIZER_FILE = "tokenizer.json"
# Label for positions that carry no MLM target (the cross-entropy ignore_index).
IGNORE = -100
# NSP labels follow the original and Hugging Face: 0 = B really follows A, 1 = B is a random sentence.
IS_NEXT, NOT_NEXT = 0, 1
NORMS = ("post", "pre")


@dataclass
class BertConfig:
    vocab_size: int
    max_position: int = 128  # longest input, [CLS] and [SEP]s included: the learned position table's size
    dim: int = 256
    n_layers: int = 4
    n_heads: int = 4
    ffn_dim: int = 1024
    dropout: float = 0.1
    type_vocab_size: int = 2  # segments: sentence A = 0, sentence B = 1
    layer_norm_eps: float = 1e-12
    pad_id: int = 0
    norm: str = "post"  # "post": BERT's LN(x + sublayer(x)); "pre": x + sublayer(LN(x)), a final LN on top

    def __post_init__(self) -> None:
        if self.dim % self.n_heads:
            raise ValueError(f"dim {self.dim} is not divisible by n_heads {self.n_heads}")
        if self.norm not in NORMS:
            raise ValueError(f"norm {self.norm!r} is not one of {NORMS}")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> BertConfig:
        return cls(**values)


class BertEmbeddings(nn.Module):
    """Input representation = token embedding + learned position embedding + segment embedding."""

    def __init__(self, config: BertConfig):
        super().__init__()
        self.token = nn.Embedding(config.vocab_size, config.dim, padding_idx=config.pad_id)
        self.position = nn.Embedding(config.max_position, config.dim)
        self.segment = nn.Embedding(config.type_vocab_size, config.dim)
        self.norm = nn.LayerNorm(config.dim, eps=config.layer_norm_eps)
        self.dropout = nn.Dropout(config.dropout)

    def forward(self, input_ids: torch.Tensor, segment_ids: torch.Tensor) -> torch.Tensor:
        positions = torch.arange(input_ids.size(1), device=input_ids.device)
        x = self.token(input_ids) + self.position(positions)[None] + self.segment(segment_ids)
        return self.dropout(self.norm(x))


class FeedForward(nn.Module):
    """Position-wise FFN(x) = W₂ GELU(W₁ x + b₁) + b₂."""

    def __init__(self, config: BertConfig):
        super().__init__()
        self.fc1 = nn.Linear(config.dim, config.ffn_dim)
        self.fc2 = nn.Linear(config.ffn_dim, config.dim)
        self.dropout = nn.Dropout(config.dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.dropout(self.fc2(F.gelu(self.fc1(x))))


class EncoderLayer(nn.Module):
    """One encoder layer as in BERT (post-norm): x = LN(x + Attn(x)); x = LN(x + FFN(x)); or pre-norm
    (Xiong et al., 2020): x = x + Attn(LN(x)); x = x + FFN(LN(x)), whose residual path is never normalised,
    so the gradient reaches the lower layers undiminished.

    The attention is multi-head bidirectional self-attention (``models.attention``); padding keys are
    masked out.
    """

    def __init__(self, config: BertConfig):
        super().__init__()
        self.pre_norm = config.norm == "pre"
        self.attention = SelfAttention(config.dim, config.n_heads, config.dropout)
        self.attention_norm = nn.LayerNorm(config.dim, eps=config.layer_norm_eps)
        self.ffn = FeedForward(config)
        self.ffn_norm = nn.LayerNorm(config.dim, eps=config.layer_norm_eps)

    def forward(self, x: torch.Tensor, keep: torch.Tensor, recorder: AttentionRecorder | None = None
                ) -> torch.Tensor:
        """``keep`` (B, 1, 1, T) is True where a key may be attended to."""
        if self.pre_norm:
            x = x + self.attention(self.attention_norm(x), keep, recorder=recorder)
            return x + self.ffn(self.ffn_norm(x))
        x = self.attention_norm(x + self.attention(x, keep, recorder=recorder))
        return self.ffn_norm(x + self.ffn(x))


class BertModel(nn.Module):
    """The encoder: embeddings, a stack of layers, and the pooler (dense + tanh on ``[CLS]``) that
    summarises the whole input for sentence-level heads (NSP, classification)."""

    def __init__(self, config: BertConfig):
        super().__init__()
        self.config = config
        self.embeddings = BertEmbeddings(config)
        self.layers = nn.ModuleList(EncoderLayer(config) for _ in range(config.n_layers))
        # Pre-norm layers leave their sum unnormalised: one LayerNorm on top gives the heads what post-norm's
        # last LN gives them.
        self.final_norm = nn.LayerNorm(config.dim, eps=config.layer_norm_eps) if config.norm == "pre" else None
        self.pooler = nn.Linear(config.dim, config.dim)

    def forward(
        self,
        input_ids: torch.Tensor,
        segment_ids: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        recorder: AttentionRecorder | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """``input_ids`` (B, T) -> (hidden states (B, T, dim), pooled ``[CLS]`` (B, dim)).

        ``segment_ids`` defaults to all sentence A; ``attention_mask`` (B, T, 1 = real token) defaults
        to every non-``[PAD]`` token. With ``recorder`` every layer's attention weights are recorded
        (``models.attention``), keyed by its ``attention`` module.
        """
        if input_ids.size(1) > self.config.max_position:
            raise ValueError(f"input of {input_ids.size(1)} tokens; the model has {self.config.max_position} "
                             "positions")
        if segment_ids is None:
            segment_ids = torch.zeros_like(input_ids)
        if attention_mask is None:
            attention_mask = input_ids != self.config.pad_id
        keep = attention_mask.bool()[:, None, None, :]
        x = self.embeddings(input_ids, segment_ids)
        for layer in self.layers:
            x = layer(x, keep, recorder)
        if self.final_norm is not None:
            x = self.final_norm(x)
        pooled = torch.tanh(self.pooler(x[:, 0]))
        return x, pooled


EMBEDDING_STD = 0.02


def sinusoids(n_positions: int, dim: int) -> torch.Tensor:
    """Vaswani et al.'s position signals: sin/cos pairs at geometric frequencies, (n_positions, dim)."""
    position = torch.arange(n_positions, dtype=torch.float32)[:, None]
    frequency = 10000.0 ** (-torch.arange(0, dim, 2, dtype=torch.float32) / dim)
    table = torch.zeros(n_positions, dim)
    table[:, 0::2] = torch.sin(position * frequency)
    table[:, 1::2] = torch.cos(position * frequency)[:, : dim // 2]
    return table


@torch.no_grad()
def init_weights(module: nn.Module) -> None:
    """Initialisation, two choices departing from BERT's N(0, 0.02) everywhere, both because a narrow
    model trained for minutes otherwise sits for thousands of steps predicting unigram frequencies:

    - linear layers draw N(0, 1/fan_in): 0.02 is 1/√fan_in only for fan_in ≈ 2500, so at our widths it
      makes attention nearly uniform and slow to learn to look at neighbouring words;
    - the learned position table starts as sinusoids (scaled to the token embeddings' norm), so
      relative offsets are readable from the first step, and positions used only by the long-sequence
      phase of pretraining start from a sensible value.
    """
    if isinstance(module, nn.Linear):
        nn.init.normal_(module.weight, std=module.in_features ** -0.5)
        if module.bias is not None:
            nn.init.zeros_(module.bias)
    elif isinstance(module, nn.Embedding):
        nn.init.normal_(module.weight, std=EMBEDDING_STD)
        if module.padding_idx is not None:
            module.weight[module.padding_idx].zero_()
    elif isinstance(module, nn.LayerNorm):
        nn.init.ones_(module.weight)
        nn.init.zeros_(module.bias)
    elif isinstance(module, BertEmbeddings):  # after its children: apply() visits them first
        table = module.position.weight
        # A sinusoid row has norm √(dim/2), an N(0, σ²) row σ√dim: scale by σ√2 to match.
        table.copy_(sinusoids(*table.shape) * EMBEDDING_STD * 2**0.5)


@dataclass
class MLMCandidates:
    """Sampled softmax (Jean et al., 2015), a training-time shortcut: the decoder scores only these token
    ids (sorted, every target among them) rather than the whole vocabulary. Each logit is lowered by the log
    of the probability that its token is a candidate, so that a rare token, seldom among them, is pushed
    down as often in expectation as the full softmax pushes it."""

    ids: torch.Tensor  # (C,) sorted token ids
    log_inclusion: torch.Tensor  # (C,) log P(the id is drawn among the candidates)

    def index_of(self, tokens: torch.Tensor) -> torch.Tensor:
        """Each token's column among the candidates' logits."""
        return torch.searchsorted(self.ids, tokens)


class MaskedLMHead(nn.Module):
    """Predicts the original token at a position: dense + GELU + LN, then a decoder onto the vocabulary."""

    def __init__(self, config: BertConfig):
        super().__init__()
        self.transform = nn.Linear(config.dim, config.dim)
        self.norm = nn.LayerNorm(config.dim, eps=config.layer_norm_eps)
        self.bias = nn.Parameter(torch.zeros(config.vocab_size))

    def forward(self, h: torch.Tensor, token_embedding: torch.Tensor, candidates: MLMCandidates | None = None
                ) -> torch.Tensor:
        # Weight tying: the decoder is the input embedding matrix, so a token is read and written with the
        # same vector (fewer parameters, better small-data MLM), as in BERT. Passing it in, rather than
        # registering it twice, keeps one copy in the state dict and an honest parameter count.
        features = self.norm(F.gelu(self.transform(h)))
        if candidates is None:
            return F.linear(features, token_embedding, self.bias)
        ids = candidates.ids
        return F.linear(features, token_embedding[ids], self.bias[ids]) - candidates.log_inclusion


class BertForPreTraining(nn.Module):
    """The encoder with its two pretraining heads: MLM on every position, NSP on the pooled ``[CLS]``."""

    def __init__(self, config: BertConfig):
        super().__init__()
        self.config = config
        self.bert = BertModel(config)
        self.mlm = MaskedLMHead(config)
        self.nsp = nn.Linear(config.dim, 2)
        self.apply(init_weights)

    def forward(
        self,
        input_ids: torch.Tensor,
        segment_ids: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        mlm_labels: torch.Tensor | None = None,
        nsp_labels: torch.Tensor | None = None,
        mlm_candidates: MLMCandidates | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        """Returns ``(mlm_logits, nsp_logits (B, 2), loss)``.

        Without ``mlm_labels`` the MLM logits cover every position, (B, T, vocab). With them (original
        token at selected positions, ``IGNORE`` elsewhere) the head runs on the selected positions only,
        (N_selected, vocab) in row-major order: the other ~85% would cost a vocabulary-sized matmul each
        just to be ignored. With ``mlm_candidates`` too, the vocabulary axis is the candidates' (sampled
        softmax, for training). ``loss`` = MLM cross-entropy + NSP cross-entropy (either when its labels
        are given), else None.
        """
        hidden, pooled = self.bert(input_ids, segment_ids, attention_mask)
        nsp_logits = self.nsp(pooled)
        embedding = self.bert.embeddings.token.weight
        loss = None
        if mlm_labels is None:
            mlm_logits = self.mlm(hidden, embedding)
        else:
            selected = mlm_labels != IGNORE
            mlm_logits = self.mlm(hidden[selected], embedding, mlm_candidates)
            targets = mlm_labels[selected]
            if mlm_candidates is not None:
                targets = mlm_candidates.index_of(targets)
            loss = F.cross_entropy(mlm_logits.float(), targets)
        if nsp_labels is not None:
            nsp_loss = F.cross_entropy(nsp_logits.float(), nsp_labels)
            loss = nsp_loss if loss is None else loss + nsp_loss
        return mlm_logits, nsp_logits, loss


POOLINGS = ("cls", "mean")


class BertForSequenceClassification(nn.Module):
    """The pretrained encoder with a linear classifier on the passage's vector: the pooled ``[CLS]``
    (fine-tuning, §4.1) or, with ``pooling="mean"``, the mean of the last layer's states over the passage's
    tokens (as Sentence-BERT pools; Reimers and Gurevych, 2019)."""

    def __init__(self, config: BertConfig, num_labels: int, classifier_dropout: float | None = None,
                 pooling: str = "cls"):
        super().__init__()
        if pooling not in POOLINGS:
            raise ValueError(f"pooling must be one of {', '.join(POOLINGS)}, got {pooling!r}")
        self.config = config
        self.num_labels = num_labels
        self.pooling = pooling
        self.bert = BertModel(config)
        self.dropout = nn.Dropout(config.dropout if classifier_dropout is None else classifier_dropout)
        self.classifier = nn.Linear(config.dim, num_labels)
        self.apply(init_weights)

    def forward(
        self,
        input_ids: torch.Tensor,
        segment_ids: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        labels: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """``input_ids`` (B, T) -> (logits (B, num_labels), cross-entropy loss or None).

        A row longer than the model's positions is consecutive windows of ``max_position`` ids, each its own
        ``[CLS] … [SEP]`` (``models.classifier.SubwordEncoder`` cuts a long text so): its logits are the mean
        of its windows' logits. A window of padding only (the tail of a row shorter than the batch's
        longest) is not read.
        """
        rows, width = input_ids.shape
        size = min(width, self.config.max_position)
        n_windows = -(-width // size)

        def windows(values: torch.Tensor, fill: int = 0) -> torch.Tensor:  # (B, T) -> (B · n_windows, size)
            return F.pad(values.long(), (0, n_windows * size - width), value=fill).reshape(rows * n_windows, size)

        window_ids = windows(input_ids, self.config.pad_id)
        read = window_ids[:, 0] != self.config.pad_id
        states, pooled = self.bert(window_ids[read], None if segment_ids is None else windows(segment_ids)[read],
                                   None if attention_mask is None else windows(attention_mask)[read])
        if self.pooling == "mean":
            real = (window_ids[read] != self.config.pad_id).unsqueeze(-1).to(states.dtype)
            pooled = (states * real).sum(dim=1) / real.sum(dim=1).clamp(min=1)
        window_logits = pooled.new_zeros(rows * n_windows, self.num_labels)
        window_logits[read] = self.classifier(self.dropout(pooled)).to(window_logits.dtype)
        counts = read.reshape(rows, n_windows).sum(dim=1, keepdim=True).clamp(min=1)
        logits = window_logits.reshape(rows, n_windows, -1).sum(dim=1) / counts
        loss = None if labels is None else F.cross_entropy(logits.float(), labels)
        return logits, loss

    @classmethod
    def from_pretrained(
        cls, checkpoint: Checkpoint, num_labels: int, **kwargs: Any
    ) -> BertForSequenceClassification:
        """The encoder (embeddings, layers, pooler) of a ``bert`` pretraining checkpoint; a fresh head."""
        model = cls(BertConfig.from_dict(checkpoint.config["model"]), num_labels, **kwargs)
        encoder = {k.removeprefix("bert."): v for k, v in checkpoint.state_dict.items()
                   if k.startswith("bert.")}
        model.bert.load_state_dict(encoder)
        return model


def load_tokenizer(checkpoint: Checkpoint) -> Tokenizer:
    """The checkpoint's WordPiece tokenizer, with its ``[CLS] A [SEP] B [SEP]`` post-processor."""
    return Tokenizer.from_file(str(checkpoint.file(checkpoint.config["tokenizer"]["file"])))


def load(checkpoint: Checkpoint, device: torch.device) -> BertForPreTraining:
    """The pretraining model of a ``bert`` checkpoint (encoder and both heads), ready for inference."""
    model = BertForPreTraining(BertConfig.from_dict(checkpoint.config["model"]))
    model.load_state_dict(checkpoint.state_dict)
    return model.to(device).eval()
