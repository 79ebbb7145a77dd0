"""Coordinated dropout, SBTT masks, masked means and spike augmentations."""

import pytest
import torch

from neuralnets.nn.augmentations import (
    augment_spikes,
    coordinated_dropout,
    expand_heldin_mask,
    masked_mean,
    masked_trial_sum,
    sbtt_mask,
)


def test_coordinated_dropout_masks_and_scaling():
    x = torch.arange(1.0, 1 + 4 * 50 * 6).reshape(4, 50, 6)  # all non-zero
    g = torch.Generator().manual_seed(0)
    masked, loss_mask = coordinated_dropout(x, 0.3, generator=g)
    assert masked.shape == x.shape and loss_mask.dtype == torch.bool
    # dropped (loss mask True) are zero in the input; kept are scaled by 1/(1-rate) and not scored
    assert (masked[loss_mask] == 0).all()
    torch.testing.assert_close(masked[~loss_mask], x[~loss_mask] / 0.7)
    frac = loss_mask.float().mean().item()
    assert 0.25 < frac < 0.35
    # reproducible with the same generator seed
    masked2, loss_mask2 = coordinated_dropout(x, 0.3, generator=torch.Generator().manual_seed(0))
    assert torch.equal(loss_mask, loss_mask2) and torch.equal(masked, masked2)


def test_coordinated_dropout_preserves_expected_input():
    torch.manual_seed(0)
    x = torch.full((200, 20, 10), 2.0)
    masked, _ = coordinated_dropout(x, 0.5)
    assert masked.mean().item() == pytest.approx(2.0, rel=0.03)


def test_coordinated_dropout_rate_zero_is_off_and_bad_rate():
    x = torch.rand(2, 3, 4)
    masked, loss_mask = coordinated_dropout(x, 0.0)
    assert torch.equal(masked, x) and loss_mask.all()
    for bad in (-0.1, 1.0):
        with pytest.raises(ValueError, match="rate"):
            coordinated_dropout(x, bad)


def test_expand_heldin_mask():
    m = torch.zeros(2, 3, 4, dtype=torch.bool)
    full = expand_heldin_mask(m, 5, 6)
    assert full.shape == (2, 5, 6)
    assert not full[:, :3, :4].any()
    assert full[:, 3:].all() and full[:, :, 4:].all()
    with pytest.raises(ValueError):
        expand_heldin_mask(m, 2, 6)


def test_sbtt_mask():
    spikes = torch.zeros(2, 3, 4)
    assert sbtt_mask(None, spikes).all() and sbtt_mask(None, spikes).shape == spikes.shape
    obs = torch.rand(2, 3, 4) > 0.5
    assert torch.equal(sbtt_mask(obs, spikes), obs)
    with pytest.raises(ValueError, match="observed"):
        sbtt_mask(obs[:, :2], spikes)


def test_masked_mean_exact_and_ignores_unselected_nonfinite():
    v = torch.tensor([[[1.0, 2.0], [3.0, float("nan")]]])
    m = torch.tensor([[[True, False], [True, False]]])
    assert masked_mean(v, m).item() == pytest.approx(2.0)
    v = torch.tensor([[[1.0, 2.0], [3.0, 6.0]]])
    assert masked_mean(v, torch.ones_like(m)).item() == pytest.approx(3.0)


def test_masked_mean_empty_mask_is_zero_with_zero_gradients():
    v = torch.randn(2, 3, 4, requires_grad=True)
    out = masked_mean(v, torch.zeros(2, 3, 4, dtype=torch.bool))
    assert out.item() == 0.0
    out.backward()
    assert torch.equal(v.grad, torch.zeros_like(v))


def test_masked_trial_sum_full_mask_equals_per_trial_sum():
    torch.manual_seed(0)
    v = torch.rand(3, 5, 7)
    full = torch.ones(3, 5, 7, dtype=torch.bool)
    torch.testing.assert_close(masked_trial_sum(v, full), v.sum(dim=(1, 2)).mean())
    # half the entries with a constant value: the estimate is still the full per-trial sum
    c = torch.full((3, 5, 7), 0.5)
    half = torch.rand(3, 5, 7) > 0.5
    assert masked_trial_sum(c, half).item() == pytest.approx(0.5 * 35)


def test_augment_spikes_drops_adds_and_shifts_whole_counts():
    torch.manual_seed(0)
    x = torch.full((200, 30, 10), 4.0)  # (B, T_obs, N_in)
    assert torch.equal(augment_spikes(x, 0.0, 0.0, 0), x)
    dropped = augment_spikes(x, 0.25, 0.0, 0)
    assert torch.equal(dropped, dropped.round()) and (dropped <= x).all()
    assert abs(dropped.mean().item() - 3.0) < 0.05  # each of the 4 spikes kept with probability 0.75
    added = augment_spikes(x, 0.0, 0.1, 0) - x
    assert set(added.unique().tolist()) == {0.0, 1.0} and abs(added.mean().item() - 0.1) < 0.01
    ramp = torch.arange(1.0, 31.0)[None, :, None].expand(200, 30, 10)  # (B, T_obs, N_in): bin t holds t+1
    shifted = augment_spikes(ramp, 0.0, 0.0, 3)
    shift = shifted[:, 10, 0] - 11  # each trial moved by one whole shift, zeros shifted in at the edge
    assert set(shift.tolist()) == {-3.0, -2.0, -1.0, 0.0, 1.0, 2.0, 3.0}
    for b in range(200):
        s = int(shift[b])
        expected = (torch.arange(1.0, 31.0) + s).where(
            (torch.arange(30) + s >= 0) & (torch.arange(30) + s < 30), 0.0
        )
        assert torch.equal(shifted[b, :, 0], expected)
    with pytest.raises(ValueError, match="drop_rate must be in"):
        augment_spikes(x, 1.0, 0.0, 0)
    with pytest.raises(ValueError, match=r"max_shift must be in \[0, 29\]"):
        augment_spikes(x, 0.0, 0.0, 30)
