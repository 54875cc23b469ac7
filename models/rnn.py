"""Recurrent networks from their equations: the Elman RNN, the LSTM and the GRU.

The simple recurrent network keeps one hidden state and reads one input per step::

    h_t = f(U h_{t-1} + W x_t + b),    y_t = V h_t                      (f = tanh or ReLU)

With f = ReLU, ``U`` starts at the identity (the IRNN; Le et al., 2015): the state is first carried
forward unchanged and each step adds its input's share, so the gradient neither vanishes nor explodes
through the early steps, as it does through a random ``U``.

The LSTM adds a memory cell ``c`` written and read through three gates (σ the logistic function,
⊙ the elementwise product)::

    f_t = σ(W_f x_t + U_f h_{t-1} + b_f)          forget gate: how much of c_{t-1} to keep
    i_t = σ(W_i x_t + U_i h_{t-1} + b_i)          input gate: how much of the candidate to write
    g_t = tanh(W_g x_t + U_g h_{t-1} + b_g)       candidate memory
    o_t = σ(W_o x_t + U_o h_{t-1} + b_o)          output gate: how much of the cell to show
    c_t = f_t ⊙ c_{t-1} + i_t ⊙ g_t
    h_t = o_t ⊙ tanh(c_t)

The GRU merges cell and hidden state and uses two gates::

    r_t = σ(W_r x_t + U_r h_{t-1} + b_r)          reset gate: how much past enters the candidate
    z_t = σ(W_z x_t + U_z h_{t-1} + b_z)          update gate: how much of h_{t-1} to keep
    n_t = tanh(W_n x_t + b_Wn + r_t ⊙ (U_n h_{t-1} + b_Un))
    h_t = z_t ⊙ h_{t-1} + (1 - z_t) ⊙ n_t

The cells below are those equations, one time step each. ``W`` and ``U`` hold every gate's matrix
stacked in the order torch's fused kernels use (LSTM: i, f, g, o; GRU: r, z, n), and each cell keeps
torch's two biases (``b_W`` beside ``W x``, ``b_U`` beside ``U h``): for the RNN and LSTM only their
sum matters, but the GRU's reset gate multiplies ``U_n h + b_Un`` alone. The models train and
serve with the fused ``nn.RNN`` / ``nn.LSTM`` / ``nn.GRU`` layers (one kernel for the whole
sequence); ``cells_of`` views such a layer's own Parameters as cells, so the two paths cannot drift
apart, and the tests check they agree. Generation, one token at a time, runs the cells: with a single
step there is nothing for the fused kernel to fuse.

Two models share the recurrence: ``RNNClassifier`` (embed → recur → pool over time → ``V``) and
``RNNLanguageModel`` (embed → recur → ``V`` at every step, predicting the next token).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

from models.checkpoint import Checkpoint
from models.subword import word_embedding, word_ids

CELLS = ("rnn", "lstm", "gru")
NONLINEARITIES = {"tanh": torch.tanh, "relu": torch.relu}  # the Elman RNN's f; the gated cells' is tanh
PAD_ID = 0

# An LSTM's state is (h, c); the RNN's and GRU's is h alone. Shapes (layers, batch, hidden).
State = torch.Tensor | tuple[torch.Tensor, torch.Tensor]


# ---- cells: one time step of each equation set ------------------------------------------------------


class _Cell(nn.Module):
    """Holds ``W`` (gates·H × I), ``U`` (gates·H × H) and the biases ``b_W``, ``b_U`` (gates·H)."""

    def __init__(self, W: nn.Parameter, U: nn.Parameter, b_W: nn.Parameter, b_U: nn.Parameter):
        super().__init__()
        self.W, self.U, self.b_W, self.b_U = W, U, b_W, b_U

    @property
    def hidden_size(self) -> int:
        return self.U.shape[1]


class RNNCell(_Cell):
    def __init__(self, W: nn.Parameter, U: nn.Parameter, b_W: nn.Parameter, b_U: nn.Parameter,
                 nonlinearity: str = "tanh"):
        super().__init__(W, U, b_W, b_U)
        self.f = NONLINEARITIES[nonlinearity]

    def forward(self, x: torch.Tensor, h: torch.Tensor) -> torch.Tensor:
        # h_t = f(U h_{t-1} + W x_t + b)
        return self.f(F.linear(h, self.U, self.b_U) + F.linear(x, self.W, self.b_W))


class LSTMCell(_Cell):
    def forward(
        self, x: torch.Tensor, state: tuple[torch.Tensor, torch.Tensor]
    ) -> tuple[torch.Tensor, torch.Tensor]:
        h, c = state
        # W x_t + U h_{t-1} + b for the four gates at once, then split: i, f, g, o.
        i, f, g, o = (F.linear(x, self.W, self.b_W) + F.linear(h, self.U, self.b_U)).chunk(4, dim=-1)
        i, f, o = torch.sigmoid(i), torch.sigmoid(f), torch.sigmoid(o)  # input, forget, output gates
        g = torch.tanh(g)  # candidate memory
        c = f * c + i * g  # forget part of the old memory, write part of the candidate
        h = o * torch.tanh(c)  # show part of the memory
        return h, c


class GRUCell(_Cell):
    def forward(self, x: torch.Tensor, h: torch.Tensor) -> torch.Tensor:
        # The input's and the state's share of each gate (r, z, n), biases included.
        x_r, x_z, x_n = F.linear(x, self.W, self.b_W).chunk(3, dim=-1)
        h_r, h_z, h_n = F.linear(h, self.U, self.b_U).chunk(3, dim=-1)
        r = torch.sigmoid(x_r + h_r)  # reset gate
        z = torch.sigmoid(x_z + h_z)  # update gate
        n = torch.tanh(x_n + r * h_n)  # candidate: the reset gate scales the past's share
        return z * h + (1 - z) * n


_CELL_CLASSES: dict[str, type[_Cell]] = {"rnn": RNNCell, "lstm": LSTMCell, "gru": GRUCell}
_FUSED: dict[str, type[nn.RNNBase]] = {"rnn": nn.RNN, "lstm": nn.LSTM, "gru": nn.GRU}


def fused_layer(cell: str, input_size: int, hidden_size: int, num_layers: int, dropout: float,
                bidirectional: bool = False, nonlinearity: str = "tanh") -> nn.RNNBase:
    """torch's fused multi-layer recurrence for ``cell`` (batch first; dropout between layers; with
    ``bidirectional`` a second recurrence reads each layer's input backwards, its states beside the first's).
    The RNN's ``nonlinearity`` may be relu, its ``U`` then starting at the identity (IRNN)."""
    if cell not in _FUSED:
        raise ValueError(f"cell must be one of {', '.join(CELLS)}, got {cell!r}")
    check_nonlinearity(cell, nonlinearity)
    options = {"nonlinearity": nonlinearity} if cell == "rnn" else {}
    layer = _FUSED[cell](input_size, hidden_size, num_layers=num_layers, batch_first=True,
                         dropout=dropout if num_layers > 1 else 0.0, bidirectional=bidirectional, **options)
    if nonlinearity == "relu":
        for name, U in layer.named_parameters():
            if name.startswith("weight_hh"):
                nn.init.eye_(U)
    return layer


def check_nonlinearity(cell: str, nonlinearity: str) -> None:
    if nonlinearity not in NONLINEARITIES or (cell != "rnn" and nonlinearity != "tanh"):
        raise ValueError(f"nonlinearity must be tanh or relu for the rnn cell, tanh for lstm and gru; "
                         f"got {nonlinearity!r} for {cell}")


def cell_name(layer: nn.RNNBase) -> str:
    return next(name for name, kind in _FUSED.items() if type(layer) is kind)


def cells_of(layer: nn.RNNBase) -> list[_Cell]:
    """One cell per layer of a fused (unidirectional, biased) layer, sharing its Parameters."""
    if layer.bidirectional or not layer.bias:
        raise ValueError("cells_of reads unidirectional layers with biases")
    kind = _CELL_CLASSES[cell_name(layer)]
    options = {"nonlinearity": layer.nonlinearity} if kind is RNNCell else {}
    return [
        kind(*(getattr(layer, f"{name}_l{k}") for name in ("weight_ih", "weight_hh", "bias_ih", "bias_hh")),
             **options)
        for k in range(layer.num_layers)
    ]


def unroll(cells: list[_Cell], x: torch.Tensor, state: State | None = None) -> tuple[torch.Tensor, State]:
    """Run a stack of cells over ``x`` (B, T, I) step by step, as the fused layer does in one call.

    Returns the top layer's outputs (B, T, H) and the final state in the fused layer's layout. No
    dropout between layers: this path serves inference and checks the fused one.
    """
    batch, steps = x.shape[:2]
    lstm = isinstance(cells[0], LSTMCell)
    if state is None:
        zeros = x.new_zeros(len(cells), batch, cells[0].hidden_size)
        state = (zeros, zeros.clone()) if lstm else zeros
    layer_input = x
    final_h, final_c = [], []
    for k, cell in enumerate(cells):
        s = (state[0][k], state[1][k]) if lstm else state[k]
        outputs = []
        for t in range(steps):
            s = cell(layer_input[:, t], s)
            outputs.append(s[0] if lstm else s)
        layer_input = torch.stack(outputs, dim=1)
        final_h.append(s[0] if lstm else s)
        if lstm:
            final_c.append(s[1])
    h_n = torch.stack(final_h)
    return layer_input, ((h_n, torch.stack(final_c)) if lstm else h_n)


# ---- classifier -------------------------------------------------------------------------------------


@dataclass
class RNNClassifierConfig:
    vocab_size: int
    num_classes: int
    cell: str = "lstm"
    embed_dim: int = 128
    hidden_size: int = 128
    num_layers: int = 1
    dropout: float = 0.3
    pooling: str = "mean"  # over time: "last" (h_T), "max" or "mean" of every h_t
    bidirectional: bool = False  # each h_t the forward state beside the backward one (which reads t..T)
    nonlinearity: str = "tanh"  # the rnn cell's f: tanh, or relu with U starting at the identity (IRNN)
    char_ngrams: tuple[int, ...] = ()  # (shortest, longest): add character n-grams (models/subword.py)
    ngram_buckets: int = 0  # hashed n-gram vectors, with char_ngrams

    def __post_init__(self) -> None:
        self.char_ngrams = tuple(self.char_ngrams)
        if self.cell not in CELLS:
            raise ValueError(f"cell must be one of {', '.join(CELLS)}, got {self.cell!r}")
        if self.pooling not in ("last", "max", "mean"):
            raise ValueError(f"pooling must be last, max or mean, got {self.pooling!r}")
        check_nonlinearity(self.cell, self.nonlinearity)


class RNNClassifier(nn.Module):
    """Token ids (B, T), padded with ``PAD_ID`` (or spelled tokens (B, T, 1 + n-grams), see
    ``models.subword``), in; class logits out."""

    def __init__(self, config: RNNClassifierConfig):
        super().__init__()
        self.config = config
        self.embedding = word_embedding(config.vocab_size, config.embed_dim, PAD_ID, config.char_ngrams,
                                        config.ngram_buckets)
        self.rnn = fused_layer(config.cell, config.embed_dim, config.hidden_size, config.num_layers,
                               config.dropout, config.bidirectional, config.nonlinearity)
        self.dropout = nn.Dropout(config.dropout)
        self.V = nn.Linear(config.hidden_size * (2 if config.bidirectional else 1), config.num_classes)

    def forward(
        self, inputs: torch.Tensor, targets: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Class logits (B, classes) and, with ``targets`` (B,), their mean cross-entropy."""
        mask = word_ids(inputs) != PAD_ID
        lengths = mask.sum(dim=1).clamp_min(1)
        h = self._states(self.dropout(self.embedding(inputs)), lengths)
        if self.config.pooling == "last":
            # h_T at each passage's end; bidirectional, the backward half's last state is the one at t = 1.
            h_T = h[torch.arange(len(h), device=h.device), lengths - 1]
            pooled = torch.cat([h_T[:, :self.config.hidden_size], h[:, 0, self.config.hidden_size:]], dim=-1)
        elif self.config.pooling == "max":
            pooled = h.masked_fill(~mask.unsqueeze(-1), float("-inf")).amax(dim=1)
        else:
            pooled = (h * mask.unsqueeze(-1)).sum(dim=1) / lengths.unsqueeze(-1)
        logits = self.V(self.dropout(pooled))
        return logits, (None if targets is None else F.cross_entropy(logits.float(), targets))

    def _states(self, x: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        """h_t at every position (B, T, directions · H). Padding sits after each passage, so a forward
        recurrence never sees it at real positions; a backward one would start in it, so it reads the
        passages packed, each from its own last word."""
        if not self.config.bidirectional:
            return self.rnn(x)[0]
        packed = pack_padded_sequence(x, lengths.cpu(), batch_first=True, enforce_sorted=False)
        return pad_packed_sequence(self.rnn(packed)[0], batch_first=True, total_length=x.shape[1])[0]


# ---- language model ---------------------------------------------------------------------------------


@dataclass
class RNNLanguageModelConfig:
    vocab_size: int
    cell: str = "lstm"
    embed_dim: int = 128
    hidden_size: int = 256
    num_layers: int = 2
    dropout: float = 0.1
    tie_weights: bool = False  # share the embedding with V (needs embed_dim == hidden_size)

    def __post_init__(self) -> None:
        if self.cell not in CELLS:
            raise ValueError(f"cell must be one of {', '.join(CELLS)}, got {self.cell!r}")
        if self.tie_weights and self.embed_dim != self.hidden_size:
            raise ValueError("tie_weights needs embed_dim == hidden_size")


class RNNLanguageModel(nn.Module):
    """Next-token prediction: y_t = V h_t scores the token that follows ``inputs[:, t]``."""

    def __init__(self, config: RNNLanguageModelConfig):
        super().__init__()
        self.config = config
        self.embedding = nn.Embedding(config.vocab_size, config.embed_dim)
        self.rnn = fused_layer(config.cell, config.embed_dim, config.hidden_size, config.num_layers,
                               config.dropout)
        self.dropout = nn.Dropout(config.dropout)
        self.V = nn.Linear(config.hidden_size, config.vocab_size)
        if config.tie_weights:
            # Input and output embeddings of the same tokens (Press & Wolf, 2017): fewer parameters.
            self.V.weight = self.embedding.weight

    def run(self, inputs: torch.Tensor, state: State | None = None) -> tuple[torch.Tensor, State]:
        """Logits (B, T, vocab) for a whole sequence with the fused layer, and the state after it."""
        h, state = self.rnn(self.dropout(self.embedding(inputs)), state)
        return self.V(self.dropout(h)), state

    def forward(
        self, inputs: torch.Tensor, targets: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Logits (B, T, vocab) from a zero state, and the mean cross-entropy against ``targets``."""
        logits, _ = self.run(inputs)
        loss = None
        if targets is not None:
            loss = F.cross_entropy(logits.flatten(0, 1).float(), targets.flatten())
        return logits, loss

    @torch.no_grad()
    def step(self, inputs: torch.Tensor, state: State | None = None) -> tuple[torch.Tensor, State]:
        """Logits for the token after the last of ``inputs`` (B, T), and the state to continue from.

        A prompt goes through the fused layer in one call; the tokens generated after it come one
        per call, and for a single step the equation cells are as fast, so they run it.
        """
        if inputs.shape[1] > 1:
            logits, state = self.run(inputs, state)
            return logits[:, -1], state
        h, state = unroll(cells_of(self.rnn), self.embedding(inputs), state)
        return self.V(h[:, -1]), state

    @torch.no_grad()
    def next_token_logits(self, tokens: list[int]) -> torch.Tensor:
        """Row t holds the logits for the token that follows ``tokens[:t + 1]`` (len(tokens), vocab)."""
        logits, _ = self.run(torch.tensor([tokens], dtype=torch.long, device=self.V.weight.device))
        return logits[0]

    def start(self, prompt: list[int], rows: int = 1) -> tuple[RNNSession, torch.Tensor]:
        """Read ``prompt`` once; return a session continuing it in ``rows`` samples, and first logits.

        A ``models.sampling.LanguageModel``: the same sampling controls as every language model here.
        """
        logits, state = self.step(torch.tensor([prompt], dtype=torch.long, device=self.V.weight.device))
        session = RNNSession(self, state)
        session.keep(torch.zeros(rows, dtype=torch.long))  # the prompt's state, once per sample
        return session, logits.expand(rows, -1)


class RNNSession:
    """Decoding state of ``rows`` samples: all a recurrent model carries is its state, so the context
    never fills up, each token costs the same, and rows of different prompts decode together as they are."""

    def __init__(self, model: RNNLanguageModel, state: State):
        self.model = model
        self.state = state

    def step(self, tokens: torch.Tensor) -> torch.Tensor:
        logits, self.state = self.model.step(tokens.to(self.model.V.weight.device)[:, None], self.state)
        return logits

    def keep(self, rows: torch.Tensor) -> None:
        """Keep these rows of the state (batch is its second dimension); a repeated index copies a row."""
        rows = rows.to(self.model.V.weight.device)
        if isinstance(self.state, tuple):
            self.state = tuple(s[:, rows] for s in self.state)
        else:
            self.state = self.state[:, rows]

    def extend(self, other: RNNSession) -> None:
        """Add ``other``'s rows after these: each row's state is all it carries, wherever its prompt ended."""
        if isinstance(self.state, tuple) and isinstance(other.state, tuple):
            self.state = tuple(torch.cat(pair, dim=1) for pair in zip(self.state, other.state, strict=True))
        elif isinstance(self.state, torch.Tensor) and isinstance(other.state, torch.Tensor):
            self.state = torch.cat([self.state, other.state], dim=1)
        else:
            raise TypeError("sessions of different cells cannot be joined")


def load(checkpoint: Checkpoint, device: torch.device) -> RNNLanguageModel:
    """The model of an ``lm-<cell>`` checkpoint, its weights loaded, ready for inference on ``device``."""
    model = RNNLanguageModel(RNNLanguageModelConfig(**checkpoint.config["model"]))
    model.load_state_dict(checkpoint.state_dict)
    return model.to(device).eval()
