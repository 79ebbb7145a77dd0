"""Metric functions pinned on hand-worked cases (neuralnets.eval.metrics)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from neuralnets.eval import metrics as M

LN2 = math.log(2.0)


# ---------------------------------------------------------------------------------------------- bits/spike
def test_perfect_prediction_one_neuron_two_bins_is_one_bit_per_spike():
    # y = (0, 2), λ = y. LL(λ) = 0 + (2 ln 2 − 2) = 2 ln 2 − 2 (the 0·ln 0 term is 0);
    # null ȳ = 1: LL(ȳ) = (0 − 1) + (0 − 1) = −2. bps = 2 ln 2 / (2 spikes · ln 2) = 1.
    y = np.array([[[0.0], [2.0]]])  # (1 trial, 2 bins, 1 neuron)
    assert M.bits_per_spike(y, y) == pytest.approx(1.0, abs=1e-12)


def test_two_neurons_two_bins_by_hand():
    y = np.array([[[1.0, 0.0], [3.0, 1.0]]])  # (1, 2 bins, 2 neurons)
    lam = np.array([[[0.5, 0.2], [2.0, 1.5]]])
    # neuron A: y = (1, 3), ȳ = 2; neuron B: y = (0, 1), ȳ = 0.5
    ll_model = (1 * math.log(0.5) - 0.5) + (3 * math.log(2.0) - 2.0) + (0 - 0.2) + (1 * math.log(1.5) - 1.5)
    ll_null = (1 * math.log(2.0) - 2.0) + (3 * math.log(2.0) - 2.0) + (0 - 0.5) + (1 * math.log(0.5) - 0.5)
    expected = (ll_model - ll_null) / (5 * LN2)
    assert M.bits_per_spike(lam, y) == pytest.approx(expected, abs=1e-12)
    # poisson_ll is the full log-likelihood, log(y!) included: log 1! + log 3! + log 0! + log 1! = log 6
    assert M.poisson_ll(lam, y) == pytest.approx(ll_model - math.log(6.0), abs=1e-12)


def test_constant_prediction_at_each_neurons_mean_is_exactly_zero():
    rng = np.random.default_rng(0)
    y = rng.poisson(rng.uniform(0.1, 2.0, size=7), size=(5, 11, 7)).astype(float)  # (trials, T, N)
    ybar = y.mean(axis=(0, 1))
    lam = np.broadcast_to(ybar, y.shape)
    assert M.bits_per_spike(lam, y) == pytest.approx(0.0, abs=1e-12)
    # any other constant is worse than the mean
    assert M.bits_per_spike(lam * 1.3, y) < 0


def test_zero_predicted_rate_is_floored_in_the_log():
    # y = (1, 1), λ = (0, 2). LL(λ) = ln(1e-9) − 0 + ln 2 − 2; ȳ = 1: LL(ȳ) = −2.
    y = np.array([[[1.0], [1.0]]])
    lam = np.array([[[0.0], [2.0]]])
    expected = (math.log(M.RATE_FLOOR) + math.log(2.0)) / (2 * LN2)
    assert M.bits_per_spike(lam, y) == pytest.approx(expected, abs=1e-9)
    # A zero rate where there is no spike costs nothing (xlogy): same as predicting the silent bin exactly.
    y2 = np.array([[[0.0], [2.0]]])
    assert M.bits_per_spike(np.array([[[0.0], [2.0]]]), y2) == pytest.approx(1.0, abs=1e-12)


def test_neuron_with_no_spikes_contributes_minus_its_predicted_rate():
    # neuron A: y = (2, 0), λ = ȳ = 1 (zero contribution vs null); neuron B: silent, λ = 0.3 each bin.
    y = np.array([[[2.0, 0.0], [0.0, 0.0]]])
    lam = np.array([[[1.0, 0.3], [1.0, 0.3]]])
    # LL difference = B's −0.6 (its null ȳ = 0 gives 0); 2 spikes
    assert M.bits_per_spike(lam, y) == pytest.approx(-0.6 / (2 * LN2), abs=1e-12)


def test_no_spikes_at_all_is_an_error():
    with pytest.raises(ValueError, match="no spike"):
        M.bits_per_spike(np.ones((2, 3, 4)), np.zeros((2, 3, 4)))


@pytest.mark.parametrize(
    ("bad", "match"),
    [
        (float("nan"), "rates has non-finite"),
        (float("inf"), "rates has non-finite"),
        (-0.1, "rates has negative"),
    ],
)
def test_bad_rates_raise_naming_the_problem(bad, match):
    lam = np.ones((2, 3, 4))
    lam[1, 2, 3] = bad
    with pytest.raises(ValueError, match=match) as err:
        M.bits_per_spike(lam, np.ones((2, 3, 4)))
    assert "(1, 2, 3)" in str(err.value)


def test_nan_spikes_and_shape_mismatch_raise():
    y = np.ones((2, 3, 4))
    y[0, 0, 0] = np.nan
    with pytest.raises(ValueError, match="spikes has non-finite"):
        M.bits_per_spike(np.ones((2, 3, 4)), y)
    with pytest.raises(ValueError, match=r"\(2, 3, 4\).*\(2, 3, 5\)"):
        M.bits_per_spike(np.ones((2, 3, 4)), np.ones((2, 3, 5)))


def test_torch_and_numpy_inputs_agree():
    rng = np.random.default_rng(1)
    y = rng.poisson(1.0, size=(4, 6, 3)).astype(np.float32)
    lam = rng.uniform(0.2, 2.0, size=y.shape).astype(np.float32)
    ref = M.bits_per_spike(lam, y)
    assert M.bits_per_spike(torch.from_numpy(lam), torch.from_numpy(y)) == pytest.approx(ref, abs=1e-12)
    assert M.bits_per_spike(torch.from_numpy(lam), y) == pytest.approx(ref, abs=1e-12)
    assert isinstance(ref, float)


def test_masked_entries_are_ignored():
    rng = np.random.default_rng(2)
    y = rng.poisson(1.0, size=(3, 5, 2)).astype(float)
    lam = rng.uniform(0.5, 1.5, size=y.shape)
    mask = np.ones(y.shape, dtype=bool)
    mask[2, 3:, :] = False
    ref = M.bits_per_spike(lam, y, mask)
    y2, lam2 = y.copy(), lam.copy()
    y2[~mask] = 7.0
    lam2[~mask] = np.nan  # not even validated there
    assert M.bits_per_spike(lam2, y2, mask) == pytest.approx(ref, abs=1e-12)
    # ȳ is the mean over recorded entries only: equal to scoring the recorded entries as a flat list
    flat = M.bits_per_spike(lam[mask].reshape(1, -1, 2), y[mask].reshape(1, -1, 2))
    assert ref == pytest.approx(flat, abs=1e-12)


def test_co_bps_and_fp_bps_score_the_right_blocks():
    rng = np.random.default_rng(3)
    y = rng.poisson(1.0, size=(4, 10, 5)).astype(float)  # 3 held-in, 2 held-out; 7 observed, 3 forward bins
    lam = rng.uniform(0.5, 1.5, size=y.shape)
    assert M.co_bps(lam, y, n_heldin=3, n_fwd=3) == pytest.approx(
        M.bits_per_spike(lam[:, :7, 3:], y[:, :7, 3:]), abs=1e-12
    )
    assert M.fp_bps(lam, y, n_fwd=3) == pytest.approx(M.bits_per_spike(lam[:, 7:], y[:, 7:]), abs=1e-12)
    # changing anything outside the block leaves the metric unchanged
    lam2 = lam.copy()
    lam2[:, :, :3] = 9.0
    lam2[:, 7:] = 9.0
    assert M.co_bps(lam2, y, 3, 3) == pytest.approx(M.co_bps(lam, y, 3, 3), abs=1e-12)
    with pytest.raises(ValueError, match="held-out"):
        M.co_bps(lam, y, n_heldin=5)
    with pytest.raises(ValueError, match="forward"):
        M.fp_bps(lam, y, n_fwd=0)


# ---------------------------------------------------------------------------------------------- R²
def test_rate_r2_perfect_and_mean():
    rng = np.random.default_rng(4)
    true = rng.uniform(0.1, 2.0, size=(6, 8, 3))
    assert M.rate_r2(true, true) == pytest.approx(1.0, abs=1e-12)
    mean = np.broadcast_to(true.mean(axis=(0, 1)), true.shape)
    assert M.rate_r2(mean, true) == pytest.approx(0.0, abs=1e-12)
    # neuron-averaged: one perfect neuron (1) and one at its mean (0) average to 0.5
    pred = true[..., :2].copy()
    pred[..., 1] = true[..., 1].mean()
    assert M.rate_r2(pred, true[..., :2]) == pytest.approx(0.5, abs=1e-12)


def test_r2_constant_target_columns_are_left_out():
    true = np.stack([np.arange(6.0), np.full(6, 2.0)], axis=-1)[None]  # (1, 6, 2); column 2 constant
    assert M.r2_score(true, true) == pytest.approx(1.0)
    with pytest.raises(ValueError, match="constant"):
        M.r2_score(np.zeros((1, 6, 1)), np.full((1, 6, 1), 2.0))


def test_psth_r2_constructed_case():
    # 2 conditions x 3 trials, 20 bins, 1 neuron: spikes constant in time within a trial (1 in A, 3 in B),
    # so the normalised smoothing keeps them exactly (edges included).
    cond = np.array([0, 0, 0, 1, 1, 1])
    spikes = np.where(cond == 0, 1.0, 3.0)[:, None, None] * np.ones((6, 20, 1))
    exact = spikes.copy()
    assert M.psth_r2(exact, spikes, cond, bin_size=0.01, sigma_ms=30) == pytest.approx(1.0, abs=1e-12)
    flat = np.full_like(spikes, 2.0)  # the grand mean: R² = 0
    assert M.psth_r2(flat, spikes, cond, 0.01, 30) == pytest.approx(0.0, abs=1e-12)
    half = np.where(cond == 0, 1.5, 2.5)[:, None, None] * np.ones((6, 20, 1))
    # SS_res = 0.25 per (cond, bin), SS_tot = 1 per (cond, bin): R² = 0.75
    assert M.psth_r2(half, spikes, cond, 0.01, 30) == pytest.approx(0.75, abs=1e-12)
    # averaging is per condition: trial-level noise that cancels within a condition does not matter
    noisy = exact.copy()
    noisy[0] += 0.5
    noisy[1] -= 0.5
    assert M.psth_r2(noisy, spikes, cond, 0.01, 30) == pytest.approx(1.0, abs=1e-12)


def test_vel_r2_perfect_linear_readout():
    rng = np.random.default_rng(5)
    rates = rng.uniform(0.0, 2.0, size=(30, 12, 6))  # (trials, T, N)
    w, b = rng.standard_normal((6, 2)), np.array([0.5, -1.0])
    beh = rates @ w + b  # (trials, T, 2)
    assert M.vel_r2(rates[:20], beh[:20], rates[20:], beh[20:]) > 0.999
    # rates unrelated to behaviour cannot decode it
    other = rng.uniform(0.0, 2.0, size=rates.shape)
    assert M.vel_r2(other[:20], beh[:20], other[20:], beh[20:]) < 0.05


def test_ridge_cv_chooses_alpha_from_train_only():
    rng = np.random.default_rng(6)
    x = rng.standard_normal((20, 5, 4))
    y = x @ rng.standard_normal((4, 1)) + 0.5 * rng.standard_normal((20, 5, 1))
    w, b, alpha = M.ridge_cv(x, y, alphas=(1e-3, 1e3))
    assert alpha == 1e-3  # a huge penalty cannot win on data with a real linear signal
    assert w.shape == (4, 1) and b.shape == (1,)


def test_latent_r2_invariant_to_invertible_linear_transform():
    rng = np.random.default_rng(7)
    true = rng.standard_normal((40, 10, 3))  # (trials, T, L)
    model = true @ rng.standard_normal((3, 4)) + 0.3 * rng.standard_normal((40, 10, 4))  # noisy, K = 4
    ref = M.latent_r2(model[:30], true[:30], model[30:], true[30:])
    a = rng.standard_normal((4, 4)) + 3 * np.eye(4)
    moved = model @ a + np.array([1.0, -2.0, 0.5, 3.0])
    assert M.latent_r2(moved[:30], true[:30], moved[30:], true[30:]) == pytest.approx(ref, abs=1e-9)
    assert 0.3 < ref < 1.0
    exact = true @ rng.standard_normal((3, 3)) + 1.0
    assert M.latent_r2(exact[:30], true[:30], exact[30:], true[30:]) == pytest.approx(1.0, abs=1e-9)
