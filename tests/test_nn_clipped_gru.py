"""Clipped GRU: matches hand-written GRU equations, clips, runs sequences, bidirectional encoder."""

import pytest
import torch

from neuralnets.nn.clipped_gru import BidirectionalGRU, ClippedGRU, ClippedGRUCell


def _hand_step(cell: ClippedGRUCell, x, h, reset_after: bool):
    """The GRU equations written out gate by gate from the cell's weights (rows [r, u, c])."""
    H = cell.hidden_size
    Wi, Wh, bi, bh = cell.weight_ih, cell.weight_hh, cell.bias_ih, cell.bias_hh
    Wir, Wiu, Wic = Wi[:H], Wi[H : 2 * H], Wi[2 * H :]
    Whr, Whu, Whc = Wh[:H], Wh[H : 2 * H], Wh[2 * H :]
    bir, biu, bic = bi[:H], bi[H : 2 * H], bi[2 * H :]
    bhr, bhu, bhc = bh[:H], bh[H : 2 * H], bh[2 * H :]
    r = torch.sigmoid(x @ Wir.T + bir + h @ Whr.T + bhr)
    u = torch.sigmoid(x @ Wiu.T + biu + h @ Whu.T + bhu)
    if reset_after:
        c = torch.tanh(x @ Wic.T + bic + r * (h @ Whc.T + bhc))
    else:
        c = torch.tanh(x @ Wic.T + bic + (r * h) @ Whc.T + bhc)
    return u * h + (1 - u) * c


@pytest.mark.parametrize("reset_after", [True, False])
def test_cell_matches_hand_written_gru(reset_after):
    torch.manual_seed(0)
    cell = ClippedGRUCell(3, 5, clip_value=5.0, reset_after=reset_after)
    with torch.no_grad():  # non-trivial biases so every bias term is exercised
        cell.bias_ih.normal_()
        cell.bias_hh.normal_()
    x, h = torch.randn(4, 3), 0.5 * torch.randn(4, 5)
    expected = _hand_step(cell, x, h, reset_after)
    assert expected.abs().max() < 5.0  # small values: clipping inactive
    torch.testing.assert_close(cell(x, h), expected)


def test_reset_variants_differ():
    torch.manual_seed(0)
    a = ClippedGRUCell(3, 5, reset_after=True)
    b = ClippedGRUCell(3, 5, reset_after=False)
    b.load_state_dict(a.state_dict())
    with torch.no_grad():
        a.bias_hh.normal_()
        b.bias_hh.copy_(a.bias_hh)
    x, h = torch.randn(2, 3), torch.randn(2, 5)
    assert not torch.allclose(a(x, h), b(x, h))


def test_update_gate_bias_initialised_to_one():
    cell = ClippedGRUCell(3, 4)
    torch.testing.assert_close(cell.bias_ih[4:8], torch.ones(4))
    torch.testing.assert_close(cell.bias_ih[:4], torch.zeros(4))
    torch.testing.assert_close(cell.bias_hh, torch.zeros(12))


def test_cell_clips_hidden_state():
    torch.manual_seed(0)
    cell = ClippedGRUCell(2, 3, clip_value=5.0)
    with torch.no_grad():
        cell.bias_ih[3:6].fill_(20.0)  # u ≈ 1: the state is carried over ...
    h = torch.tensor([[40.0, -40.0, 1.0]])  # ... so these large values would survive unclipped
    out = cell(torch.zeros(1, 2), h)
    assert out[0, 0] == 5.0 and out[0, 1] == -5.0
    assert abs(out[0, 2] - 1.0) < 1e-3  # within range: untouched
    unclipped = ClippedGRUCell(2, 3, clip_value=None)
    unclipped.load_state_dict(cell.state_dict())
    assert unclipped(torch.zeros(1, 2), h)[0, 0] > 39.0


def test_invalid_arguments():
    with pytest.raises(ValueError, match="clip_value"):
        ClippedGRUCell(2, 3, clip_value=0.0)
    with pytest.raises(ValueError, match="hidden_size"):
        ClippedGRUCell(2, 0)


def test_sequence_runner_matches_cell_loop():
    torch.manual_seed(0)
    rnn = ClippedGRU(3, 4, clip_value=5.0)
    x, h0 = torch.randn(2, 6, 3), torch.randn(2, 4)
    out = rnn(x, h0)
    assert out.shape == (2, 6, 4)
    h = h0
    for t in range(6):
        h = rnn.cell(x[:, t], h)
        torch.testing.assert_close(out[:, t], h)
    # h0=None means zeros
    torch.testing.assert_close(rnn(x), rnn(x, torch.zeros(2, 4)))
    with pytest.raises(ValueError, match="expects input"):
        rnn(torch.randn(2, 6, 5))


def test_cell_with_zero_input_size_is_autonomous():
    cell = ClippedGRUCell(0, 4)
    h = torch.randn(3, 4)
    out = cell(torch.zeros(3, 0), h)
    assert out.shape == (3, 4) and torch.isfinite(out).all()


def test_bidirectional_encoder_outputs_and_final_state():
    torch.manual_seed(0)
    enc = BidirectionalGRU(3, 4)
    x = torch.randn(2, 7, 3)
    outputs, final = enc(x)
    assert outputs.shape == (2, 7, 8) and final.shape == (2, 8)
    # forward direction's final state is its output at the last bin; backward's is its output at bin 0
    torch.testing.assert_close(final[:, :4], outputs[:, -1, :4])
    torch.testing.assert_close(final[:, 4:], outputs[:, 0, 4:])
    # the forward half at bin t does not depend on later bins
    x2 = x.clone()
    x2[:, 5:] += 1.0
    out2, _ = enc(x2)
    torch.testing.assert_close(out2[:, :5, :4], outputs[:, :5, :4])
    assert not torch.allclose(out2[:, :5, 4:], outputs[:, :5, 4:])
