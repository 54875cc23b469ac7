"""The RNN, LSTM and GRU cells written from their equations compute what torch's fused layers do."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from models.rnn import (
    GRUCell,
    LSTMCell,
    RNNCell,
    RNNClassifier,
    RNNClassifierConfig,
    RNNLanguageModel,
    RNNLanguageModelConfig,
    cells_of,
    fused_layer,
    unroll,
)


def random_layer(cell: str, input_size: int = 5, hidden_size: int = 7, num_layers: int = 2,
                 nonlinearity: str = "tanh") -> nn.RNNBase:
    torch.manual_seed(0)
    layer = fused_layer(cell, input_size, hidden_size, num_layers, dropout=0.0, nonlinearity=nonlinearity)
    with torch.no_grad():
        for p in layer.parameters():  # wider than torch's default init, so the gates saturate too
            p.uniform_(-1.0, 1.0)
    return layer.double().eval()


def random_state(cell: str, num_layers: int = 2, batch: int = 3, hidden_size: int = 7):
    h = torch.randn(num_layers, batch, hidden_size, dtype=torch.double)
    return (h, torch.randn_like(h)) if cell == "lstm" else h


@pytest.mark.parametrize("cell", ["rnn", "lstm", "gru", "irnn"])
@pytest.mark.parametrize("with_state", [False, True])
def test_cells_equal_the_fused_layer_with_the_same_weights(cell: str, with_state: bool) -> None:
    if cell == "irnn":
        layer, cell = random_layer("rnn", nonlinearity="relu"), "rnn"
        assert cells_of(layer)[0].f is torch.relu
    else:
        layer = random_layer(cell)
    x = torch.randn(3, 11, 5, dtype=torch.double)
    state = random_state(cell) if with_state else None
    expected_out, expected_state = layer(x, state)
    out, final = unroll(cells_of(layer), x, state)
    torch.testing.assert_close(out, expected_out, atol=1e-5, rtol=0)
    if cell == "lstm":
        for got, want in zip(final, expected_state, strict=True):
            torch.testing.assert_close(got, want, atol=1e-5, rtol=0)
    else:
        torch.testing.assert_close(final, expected_state, atol=1e-5, rtol=0)


@pytest.mark.parametrize("cell", ["rnn", "lstm", "gru"])
def test_cells_match_in_float32_too(cell: str) -> None:
    layer = random_layer(cell).float()
    x = torch.randn(4, 20, 5)
    torch.testing.assert_close(unroll(cells_of(layer), x)[0], layer(x)[0], atol=1e-5, rtol=0)


def test_cells_share_the_fused_layers_parameters() -> None:
    layer = random_layer("lstm")
    cell = cells_of(layer)[1]
    assert cell.W is layer.weight_ih_l1 and cell.U is layer.weight_hh_l1
    with torch.no_grad():
        layer.bias_hh_l1.add_(1.0)  # a change to the fused layer is a change to the cell
    assert torch.equal(cell.b_U, layer.bias_hh_l1)


def test_rnn_cell_is_the_elman_equation() -> None:
    W, U, b_W, b_U = (torch.randn(*shape, dtype=torch.double) for shape in ((4, 3), (4, 4), (4,), (4,)))
    x, h = torch.randn(2, 3, dtype=torch.double), torch.randn(2, 4, dtype=torch.double)
    expected = torch.tanh(h @ U.T + x @ W.T + b_W + b_U)
    torch.testing.assert_close(RNNCell(W, U, b_W, b_U)(x, h), expected)
    rectified = torch.relu(h @ U.T + x @ W.T + b_W + b_U)
    torch.testing.assert_close(RNNCell(W, U, b_W, b_U, nonlinearity="relu")(x, h), rectified)


def test_irnn_starts_from_the_identity_and_carries_its_state() -> None:
    layer = fused_layer("rnn", 3, 4, num_layers=2, dropout=0.0, nonlinearity="relu")
    for k in range(2):
        assert torch.equal(getattr(layer, f"weight_hh_l{k}"), torch.eye(4))
    assert not torch.equal(fused_layer("rnn", 3, 4, 1, 0.0).weight_hh_l0, torch.eye(4))  # tanh keeps torch's
    cell = cells_of(layer)[0]
    with torch.no_grad():
        for parameter in (cell.W, cell.b_W, cell.b_U):
            parameter.zero_()
    h = torch.rand(2, 4)  # non-negative, as a ReLU state is: a step with no input returns it unchanged
    torch.testing.assert_close(cell(torch.randn(2, 3), h), h)


@pytest.mark.parametrize(("cell", "nonlinearity"), [("rnn", "sigmoid"), ("lstm", "relu"), ("gru", "relu")])
def test_a_nonlinearity_the_cell_lacks_is_refused(cell: str, nonlinearity: str) -> None:
    with pytest.raises(ValueError, match="nonlinearity"):
        RNNClassifierConfig(vocab_size=10, num_classes=3, cell=cell, nonlinearity=nonlinearity)
    with pytest.raises(ValueError, match="nonlinearity"):
        fused_layer(cell, 3, 4, 1, 0.0, nonlinearity=nonlinearity)


def test_padding_after_a_passage_changes_nothing_for_the_irnn_classifier() -> None:
    torch.manual_seed(0)
    model = RNNClassifier(RNNClassifierConfig(vocab_size=20, num_classes=3, cell="rnn", embed_dim=6,
                                              hidden_size=5, nonlinearity="relu")).eval()
    assert model.rnn.nonlinearity == "relu"
    ids = torch.tensor([[3, 4, 5, 0, 0], [6, 7, 8, 9, 10]])
    logits, _ = model(ids)
    torch.testing.assert_close(logits[0], model(ids[:1, :3])[0][0])


def test_lstm_forget_gate_closed_and_input_gate_open_overwrites_the_memory() -> None:
    hidden = 2
    W = torch.zeros(4 * hidden, 1, dtype=torch.double)
    U = torch.zeros(4 * hidden, hidden, dtype=torch.double)
    # Gate order i, f, g, o: i and o saturated open, f saturated shut, candidate g = tanh(1).
    b = torch.tensor([50.0] * hidden + [-50.0] * hidden + [1.0] * hidden + [50.0] * hidden, dtype=torch.double)
    cell = LSTMCell(W, U, b, torch.zeros_like(b))
    c_prev = torch.full((1, hidden), 123.0, dtype=torch.double)
    h, c = cell(torch.zeros(1, 1, dtype=torch.double), (torch.zeros(1, hidden, dtype=torch.double), c_prev))
    torch.testing.assert_close(c, torch.full_like(c, torch.tanh(torch.tensor(1.0)).item()))
    torch.testing.assert_close(h, torch.tanh(c))


def test_gru_update_gate_open_keeps_the_previous_state() -> None:
    hidden = 3
    W = torch.randn(3 * hidden, 2, dtype=torch.double) * 0.1
    U = torch.randn(3 * hidden, hidden, dtype=torch.double) * 0.1
    b_W = torch.zeros(3 * hidden, dtype=torch.double)
    b_W[hidden:2 * hidden] = 50.0  # z ≈ 1: h_t = z h_{t-1} + (1 - z) n ≈ h_{t-1}
    cell = GRUCell(W, U, b_W, torch.zeros_like(b_W))
    h_prev = torch.randn(1, hidden, dtype=torch.double)
    torch.testing.assert_close(cell(torch.randn(1, 2, dtype=torch.double), h_prev), h_prev)


@pytest.mark.parametrize("cell", ["rnn", "lstm", "gru"])
def test_language_model_step_continues_the_fused_forward(cell: str) -> None:
    torch.manual_seed(0)
    model = RNNLanguageModel(RNNLanguageModelConfig(vocab_size=11, cell=cell, embed_dim=6, hidden_size=8)).eval()
    tokens = torch.randint(0, 11, (2, 9))
    logits, _ = model(tokens)
    # The prompt through the fused layer, then one token at a time through the cells.
    step_logits, state = model.step(tokens[:, :5])
    torch.testing.assert_close(step_logits, logits[:, 4], atol=1e-5, rtol=0)
    for t in range(5, 9):
        step_logits, state = model.step(tokens[:, t:t + 1], state)
        torch.testing.assert_close(step_logits, logits[:, t], atol=1e-5, rtol=0)
