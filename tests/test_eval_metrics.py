"""Metric functions pinned on hand-worked cases (neuralnets.eval.metrics)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from neuralnets.eval import fewshot as F
from neuralnets.eval import metrics as M
from neuralnets.eval import regression as R

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
    assert R.vel_r2(rates[:20], beh[:20], rates[20:], beh[20:]) > 0.999
    # rates unrelated to behaviour cannot decode it
    other = rng.uniform(0.0, 2.0, size=rates.shape)
    assert R.vel_r2(other[:20], beh[:20], other[20:], beh[20:]) < 0.05


def test_ridge_cv_chooses_alpha_from_train_only():
    rng = np.random.default_rng(6)
    x = rng.standard_normal((20, 5, 4))
    y = x @ rng.standard_normal((4, 1)) + 0.5 * rng.standard_normal((20, 5, 1))
    w, b, alpha = R.ridge_cv(x, y, alphas=(1e-3, 1e3))
    assert alpha == 1e-3  # a huge penalty cannot win on data with a real linear signal
    assert w.shape == (4, 1) and b.shape == (1,)


def test_latent_r2_invariant_to_invertible_linear_transform():
    rng = np.random.default_rng(7)
    true = rng.standard_normal((40, 10, 3))  # (trials, T, L)
    model = true @ rng.standard_normal((3, 4)) + 0.3 * rng.standard_normal((40, 10, 4))  # noisy, K = 4
    ref = R.latent_r2(model[:30], true[:30], model[30:], true[30:])
    a = rng.standard_normal((4, 4)) + 3 * np.eye(4)
    moved = model @ a + np.array([1.0, -2.0, 0.5, 3.0])
    assert R.latent_r2(moved[:30], true[:30], moved[30:], true[30:]) == pytest.approx(ref, abs=1e-9)
    assert 0.3 < ref < 1.0
    exact = true @ rng.standard_normal((3, 3)) + 1.0
    assert R.latent_r2(exact[:30], true[:30], exact[30:], true[30:]) == pytest.approx(1.0, abs=1e-9)


# ---------------------------------------------------------------------------------------------- NLB
# Expected values below are computed in the test from the published definitions with numpy/scipy/sklearn.
def test_only_exact_zero_rates_are_floored():
    y = np.array([[[1.0], [1.0]]])  # (1 trial, 2 bins, 1 neuron); ȳ = 1: LL(ȳ) = −2
    for tiny in (1e-12, 1e-300):  # positive rates below the floor are used as they are
        lam = np.array([[[tiny], [2.0]]])
        expected = ((math.log(tiny) - tiny) + (math.log(2.0) - 2.0) + 2.0) / (2 * LN2)
        assert M.bits_per_spike(lam, y) == pytest.approx(expected, rel=1e-12)
        assert M.poisson_ll(lam, y) == pytest.approx(math.log(tiny) - tiny + math.log(2.0) - 2.0, rel=1e-12)
    assert M.bits_per_spike(np.array([[[1e-12], [2.0]]]), y) < M.bits_per_spike(np.array([[[0.0], [2.0]]]), y)
    floored = M.floor_zero_rates(torch.tensor([0.0, 1e-12, 0.5], dtype=torch.float64))
    assert floored.tolist() == [M.RATE_FLOOR, 1e-12, 0.5]


def test_r2_columns_match_sklearn_including_constant_targets():
    from sklearn.metrics import r2_score

    rng = np.random.default_rng(10)
    true = rng.standard_normal((12, 4))
    true[:, 2] = 3.0  # constant target, predicted badly -> 0
    true[:, 3] = 0.0  # constant target, predicted exactly -> 1
    pred = true + 0.3 * rng.standard_normal((12, 4))
    pred[:, 3] = 0.0
    ours = M.r2_columns_sklearn(torch.tensor(pred), torch.tensor(true)).numpy()
    np.testing.assert_allclose(ours, r2_score(true, pred, multioutput="raw_values"), atol=1e-12)
    assert ours[2] == 0.0 and ours[3] == 1.0
    # weights pick rows, like sklearn on the selected rows
    keep = np.arange(12) % 3 != 0
    w = torch.tensor(np.repeat(keep[:, None], 4, axis=1), dtype=torch.float64)
    ours_w = M.r2_columns_sklearn(torch.tensor(pred), torch.tensor(true), w).numpy()
    np.testing.assert_allclose(ours_w, r2_score(true[keep], pred[keep], multioutput="raw_values"), atol=1e-12)


def _nlb_vel_r2(x_tr, y_tr, x_ev, y_ev):
    """NLB's decoder with sklearn: GridSearchCV(Ridge(), alpha logspace(-4, 0, 9)), default 5-fold KFold."""
    from sklearn.linear_model import Ridge
    from sklearn.metrics import r2_score
    from sklearn.model_selection import GridSearchCV

    flat = lambda a: a.reshape(-1, a.shape[-1])  # noqa: E731  (trials*T, F) in trial order
    gs = GridSearchCV(Ridge(), {"alpha": np.logspace(-4, 0, 9)}).fit(flat(x_tr), flat(y_tr))
    return r2_score(flat(y_ev), gs.predict(flat(x_ev))), gs.best_params_["alpha"]


# (seed, noise) pairs include cases where shuffled folds would choose another alpha (seeds 2, 10, 21).
@pytest.mark.parametrize(("seed", "noise"), [(11, 3.0), (11, 30.0), (2, 0.5), (10, 0.5), (21, 0.5)])
def test_vel_r2_equals_sklearn_gridsearch_ridge(seed, noise):
    rng = np.random.default_rng(seed)
    x = rng.poisson(1.0, size=(23, 9, 15)).astype(float)  # (trials, T, N): 207 rows, folds of 42/41
    beh = x @ rng.standard_normal((15, 2)) + noise * rng.standard_normal((23, 9, 2))
    beh += np.linspace(0, 3, 23)[:, None, None]  # a drift over trials: unshuffled folds matter
    want, alpha = _nlb_vel_r2(x[:17], beh[:17], x[17:], beh[17:])
    assert R.vel_r2(x[:17], beh[:17], x[17:], beh[17:]) == pytest.approx(want, abs=1e-9)
    assert R.ridge_cv(x[:17], beh[:17])[2] == pytest.approx(alpha)


def test_vel_r2_constant_behaviour_dimension_scores_zero_as_sklearn():
    from sklearn.metrics import r2_score

    rng = np.random.default_rng(12)
    x = rng.uniform(0, 2, size=(20, 6, 5))
    beh = np.stack([x @ rng.standard_normal(5), np.ones((20, 6))], axis=-1)  # dim 2 constant everywhere
    beh[15:, :, 1] = 2.0  # ... but a different constant on the eval trials: prediction (≈1) is wrong -> 0
    want, _ = _nlb_vel_r2(x[:15], beh[:15], x[15:], beh[15:])
    got = R.vel_r2(x[:15], beh[:15], x[15:], beh[15:])
    assert got == pytest.approx(want, abs=1e-9)
    # sklearn's per-dimension scores: the decodable dim near 1, the constant one exactly 0, averaged
    from sklearn.linear_model import Ridge

    flat = lambda a: a.reshape(-1, a.shape[-1])  # noqa: E731
    alpha = R.ridge_cv(x[:15], beh[:15])[2]
    pred = Ridge(alpha=alpha).fit(flat(x[:15]), flat(beh[:15])).predict(flat(x[15:]))
    raw = r2_score(flat(beh[15:]), pred, multioutput="raw_values")
    assert raw[1] == 0.0 and raw[0] > 0.99 and got == pytest.approx(raw.mean(), abs=1e-9)


def test_vel_r2_legacy_variant_is_trial_cv_with_the_wide_grid():
    from sklearn.linear_model import Ridge
    from sklearn.metrics import r2_score

    rng = np.random.default_rng(13)
    x = rng.poisson(1.0, size=(20, 8, 6)).astype(float)
    beh = x @ rng.standard_normal((6, 2)) + 2.0 * rng.standard_normal((20, 8, 2))
    tr, ev = slice(0, 14), slice(14, None)
    # by hand: folds = a seeded permutation of the 14 train trials in 5 parts, uniform-average R² per fold
    folds = np.array_split(np.random.default_rng(0).permutation(14), 5)
    flat = lambda a: a.reshape(-1, a.shape[-1])  # noqa: E731
    means = []
    for a in M.LEGACY_ALPHAS:
        scores = []
        for f in folds:
            rest = np.setdiff1d(np.arange(14), f)
            fit = Ridge(alpha=a).fit(flat(x[rest]), flat(beh[rest]))
            scores.append(r2_score(flat(beh[f]), fit.predict(flat(x[f]))))
        means.append(np.mean(scores))
    best = M.LEGACY_ALPHAS[int(np.argmax(means))]
    want = r2_score(flat(beh[ev]), Ridge(alpha=best).fit(flat(x[tr]), flat(beh[tr])).predict(flat(x[ev])))
    got = R.vel_r2(x[tr], beh[tr], x[ev], beh[ev], alphas=M.LEGACY_ALPHAS, cv="trials")
    assert got == pytest.approx(want, abs=1e-9)
    assert R.ridge_cv(x[tr], beh[tr], M.LEGACY_ALPHAS, cv="trials")[2] == best
    with pytest.raises(ValueError, match="cv must be one of"):
        R.vel_r2(x[tr], beh[tr], x[ev], beh[ev], cv="shuffled")


def psth_reference(rates_ev, cond_ev, spikes_all, cond_all, bin_size, sigma_ms):
    """NLB PSTH R² from the definition: numpy/scipy/sklearn, no masks."""
    from scipy.ndimage import gaussian_filter1d
    from sklearn.metrics import r2_score

    sigma = sigma_ms / 1000 / bin_size
    ones = np.ones(spikes_all.shape)
    smooth = gaussian_filter1d(spikes_all, sigma, axis=1, mode="constant") / gaussian_filter1d(
        ones, sigma, axis=1, mode="constant"
    )
    labels = np.unique(cond_ev)
    pred = np.concatenate([rates_ev[cond_ev == c].mean(0) for c in labels])  # (C*T, N)
    true = np.concatenate([smooth[cond_all == c].mean(0) for c in labels])
    return r2_score(true, pred)  # uniform average over neurons, sklearn's constant-target rule


def test_psth_r2_targets_all_trials_of_a_condition_and_keeps_constant_neurons():
    rng = np.random.default_rng(14)
    n_trials, t, n = 12, 15, 4
    cond = np.arange(n_trials) % 3
    spikes = rng.poisson(1.5, size=(n_trials, t, n)).astype(float)
    spikes[:, :, 3] = 0.0  # a silent neuron: constant (zero) target
    ev = np.arange(n_trials) >= 6  # the evaluated trials: 2 per condition
    rates = rng.uniform(0.5, 2.5, size=(n_trials, t, n))
    kw = dict(bin_size=0.02, sigma_ms=40.0)
    want = psth_reference(rates[ev], cond[ev], spikes, cond, **kw)
    got = M.psth_r2(rates[ev], spikes[ev], cond[ev], **kw, target_spikes=spikes, target_condition=cond)
    assert got == pytest.approx(want, abs=1e-12)
    # the silent neuron scores 0 (predicted > 0), not dropped: the mean is over 4 neurons
    three = psth_reference(rates[ev][..., :3], cond[ev], spikes[..., :3], cond, **kw)
    assert got == pytest.approx(3 * three / 4, abs=1e-12)
    # ... and 1 when predicted exactly 0
    rates0 = rates.copy()
    rates0[..., 3] = 0.0
    got0 = M.psth_r2(rates0[ev], spikes[ev], cond[ev], **kw, target_spikes=spikes, target_condition=cond)
    assert got0 == pytest.approx((3 * three + 1) / 4, abs=1e-12)
    # the target uses the non-evaluated trials too: changing one of them changes the score
    spikes2 = spikes.copy()
    spikes2[0, :, 0] += 5.0  # trial 0 is not evaluated
    moved = M.psth_r2(rates[ev], spikes[ev], cond[ev], **kw, target_spikes=spikes2, target_condition=cond)
    assert moved == pytest.approx(psth_reference(rates[ev], cond[ev], spikes2, cond, **kw), abs=1e-12)
    assert moved != pytest.approx(got, abs=1e-6)
    # the legacy variant (target = the evaluated trials, constant neurons dropped) ignores trial 0
    legacy = M.psth_r2(rates[ev], spikes[ev], cond[ev], **kw, constant_target="drop")
    ref = psth_reference(rates[ev][..., :3], cond[ev], spikes[ev][..., :3], cond[ev], **kw)
    assert legacy == pytest.approx(ref, abs=1e-12)


def masked_psth_reference(rates_ev, mask_ev, cond_ev, spikes_all, mask_all, cond_all, bin_size, sigma_ms):
    """NLB PSTH R² with recorded-entry masks, from the definition, one trial and one neuron at a time."""
    from scipy.ndimage import gaussian_filter1d
    from sklearn.metrics import r2_score

    sigma = sigma_ms / 1000 / bin_size
    smooth = np.zeros(spikes_all.shape)
    for i in range(spikes_all.shape[0]):  # normalised convolution of each trial's recorded bins
        m = mask_all[i].astype(float)
        y = np.where(m > 0, spikes_all[i], 0.0).astype(float)
        num = gaussian_filter1d(y, sigma, axis=0, mode="constant")
        den = gaussian_filter1d(m, sigma, axis=0, mode="constant")
        smooth[i] = np.where(den > 1e-12, num / np.where(den > 1e-12, den, 1.0), 0.0)
    scores = []
    for j in range(rates_ev.shape[2]):
        pred, true = [], []
        for c in np.unique(cond_ev):
            for t in range(rates_ev.shape[1]):
                on_p = mask_ev[cond_ev == c, t, j]
                on_t = mask_all[cond_all == c, t, j]
                if on_p.any() and on_t.any():  # both sides have a recorded trial
                    pred.append(rates_ev[cond_ev == c, t, j][on_p].mean())
                    true.append(smooth[cond_all == c, t, j][on_t].mean())
        if pred:
            scores.append(r2_score(true, pred))
    return float(np.mean(scores))


@pytest.mark.parametrize("chunk", [4, 1000])
def test_psth_r2_with_masks_matches_the_definition_in_chunks(monkeypatch, chunk):
    rng = np.random.default_rng(31)
    n_trials, t, n = 23, 12, 3
    cond = rng.integers(0, 4, size=n_trials)
    spikes = rng.poisson(1.2, size=(n_trials, t, n)).astype(np.float32)
    mask = rng.random((n_trials, t, n)) > 0.15
    mask[rng.random(n_trials) < 0.3, -4:, :] = False  # some trials end early
    mask[cond == 2, 0, 1] = False  # an entry no trial of condition 2 recorded
    spikes[~mask] = np.nan  # unrecorded entries are never read
    ev = np.flatnonzero(np.arange(n_trials) % 3 == 0)  # the evaluated trials (a split)
    rates = rng.uniform(0.3, 2.0, size=(n_trials, t, n))
    kw = dict(bin_size=0.02, sigma_ms=35.0)
    monkeypatch.setattr(M, "PSTH_TRIAL_CHUNK", chunk)
    got = M.psth_r2(
        rates[ev],
        spikes[ev],
        cond[ev],
        mask=mask[ev],
        **kw,
        target_spikes=spikes,
        target_condition=cond,
        target_mask=mask,
    )
    want = masked_psth_reference(rates[ev], mask[ev], cond[ev], spikes, mask, cond, **kw)
    assert got == pytest.approx(want, abs=1e-10)
    # the earlier variant: target = the evaluated trials themselves
    own = M.psth_r2(rates[ev], spikes[ev], cond[ev], mask=mask[ev], **kw)
    assert own == pytest.approx(
        masked_psth_reference(rates[ev], mask[ev], cond[ev], spikes[ev], mask[ev], cond[ev], **kw), abs=1e-10
    )
    assert own != pytest.approx(got, abs=1e-6)


def test_psth_r2_names_the_target_chunk_with_a_bad_value(monkeypatch):
    monkeypatch.setattr(M, "PSTH_TRIAL_CHUNK", 4)
    x = np.ones((4, 5, 2))
    target = np.ones((10, 5, 2))
    target[6, 1, 0] = -1.0
    with pytest.raises(ValueError, match=r"target_spikes\[4:8\] has negative values .* \(2, 1, 0\)"):
        M.psth_r2(x, x, np.arange(4), 0.01, target_spikes=target, target_condition=np.arange(10) % 4)


def test_psth_r2_argument_errors():
    x = np.ones((4, 5, 2))
    with pytest.raises(ValueError, match="target_condition has shape"):
        M.psth_r2(x, x, np.arange(4), 0.01, target_spikes=np.ones((6, 5, 2)), target_condition=np.arange(4))
    with pytest.raises(ValueError, match=r"target_spikes have shape \(6, 5, 3\)"):
        M.psth_r2(x, x, np.arange(4), 0.01, target_spikes=np.ones((6, 5, 3)), target_condition=np.arange(6))
    with pytest.raises(ValueError, match="constant_target"):
        M.psth_r2(x, x, np.arange(4), 0.01, constant_target="nan")


# ---------------------------------------------------------------------------------------------- few-shot
def _fewshot_case(seed=15, n_trials=60, t=20, k_lat=3, n_out=4):
    rng = np.random.default_rng(seed)
    z = np.cumsum(rng.standard_normal((n_trials, t, k_lat)), axis=1) / 3  # smooth latents (trials, T, K)
    w = rng.standard_normal((k_lat, n_out)) * 0.6
    rates = np.exp(z @ w + 0.2)  # held-out rates determined exactly by the latents
    return z, rates, rng.poisson(rates).astype(float)


def test_fewshot_co_bps_with_all_trials_equals_a_sklearn_poisson_glm():
    from sklearn.linear_model import PoissonRegressor

    z, _, y = _fewshot_case(n_trials=30)
    tr, ev = slice(0, 12), slice(12, None)
    got = F.fewshot_co_bps(z[tr], y[tr], z[ev], y[ev], k=12, alpha=0.0)  # k = all 12: one fit
    x = z[tr].reshape(-1, 3)
    mu, sd = x.mean(0), x.std(0, ddof=1)
    pred = np.empty(y[ev].shape)
    for j in range(y.shape[2]):
        glm = PoissonRegressor(alpha=0.0, tol=1e-12, max_iter=10_000).fit(
            (x - mu) / sd, y[tr][..., j].ravel()
        )
        pred[..., j] = glm.predict((z[ev].reshape(-1, 3) - mu) / sd).reshape(y[ev].shape[:2])
    # co-bps of those rates, from the definition
    yy = y[ev]
    ybar = yy.mean(axis=(0, 1))
    ll = lambda lam: (yy * np.log(lam) - lam).sum()  # noqa: E731  (log y! cancels)
    want = (ll(pred) - ll(np.broadcast_to(ybar, yy.shape))) / (yy.sum() * LN2)
    assert got == pytest.approx(want, abs=1e-5)


def test_fewshot_co_bps_rewards_latents_that_determine_the_heldout_rates():
    z, rates, y = _fewshot_case()
    tr, ev = slice(0, 40), slice(40, None)
    true_bps = M.bits_per_spike(rates[ev], y[ev])
    good = F.fewshot_co_bps(z[tr], y[tr], z[ev], y[ev], k=16, n_resamples=5)
    assert good == pytest.approx(true_bps, abs=0.05)
    noise = np.random.default_rng(16).standard_normal(z.shape)
    bad = F.fewshot_co_bps(noise[tr], y[tr], noise[ev], y[ev], k=16, n_resamples=5)
    assert bad < good - 0.2
    # extraneous latent dimensions cost in the few-shot fit
    extra = np.concatenate([z, 2 * np.random.default_rng(17).standard_normal(z.shape[:2] + (12,))], axis=-1)
    assert F.fewshot_co_bps(extra[tr], y[tr], extra[ev], y[ev], k=4, n_resamples=5) < F.fewshot_co_bps(
        z[tr], y[tr], z[ev], y[ev], k=4, n_resamples=5
    )
    # seeded: the same call gives the same number, another seed another draw
    assert F.fewshot_co_bps(z[tr], y[tr], z[ev], y[ev], k=4, n_resamples=3) == F.fewshot_co_bps(
        z[tr], y[tr], z[ev], y[ev], k=4, n_resamples=3
    )
    with pytest.raises(ValueError, match="need k >= 1"):
        F.fewshot_co_bps(z[tr], y[tr], z[ev], y[ev], k=0)


# ---------------------------------------------------------------------------------------------- input_corr
def _pearson_max_lag(
    u: np.ndarray, mag: np.ndarray, max_lag: int, max_lead: int = M.INPUT_CORR_MAX_LEAD
) -> float:
    """Reference: for each lag -max_lead..max_lag, np.corrcoef over the pooled (trial, bin) pairs with both
    bins inside the trial; max over lags."""
    t = u.shape[1]
    rs = []
    for lag in range(-max_lead, max_lag + 1):
        src = np.arange(t)[(np.arange(t) + lag >= 0) & (np.arange(t) + lag < t)]  # bins t with t + lag inside
        rs.append(np.corrcoef(u[:, src].ravel(), mag[:, src + lag].ravel())[0, 1])
    return max(rs)


def test_input_corr_and_readout_search_leads_too():
    rng = np.random.default_rng(45)
    u = (rng.uniform(size=(30, 40, 1)) < 0.1) * rng.choice([-1.0, 1.0], size=(30, 40, 1))  # signed pulses
    z = np.zeros((30, 40, 2))  # inferred inputs acting 2 bins BEFORE each pulse
    z[:, :-2, 0] = u[:, 2:, 0]
    assert M.input_corr(u, z) == pytest.approx(1.0, abs=1e-12)  # default search includes leads
    assert M.input_corr(u, z, max_lead=0) < 0.5  # lags 0..10 only: the lead is missed
    assert M.input_readout_r2(u, z) > 0.95
    assert M.input_readout_r2(u, z, max_lead=0) < 0.2
    with pytest.raises(ValueError, match="max_lead=30"):
        M.input_corr(u, z, max_lead=30)


def test_input_corr_is_one_for_a_delayed_copy_at_the_right_lag():
    rng = np.random.default_rng(40)
    u = (rng.uniform(size=(20, 40, 1)) < 0.1) * rng.uniform(1, 2, size=(20, 40, 1))  # (trials, T, 1) pulses
    z = np.zeros((20, 40, 3))  # inferred inputs: the pulse 4 bins later, sign and direction mixed
    z[:, 4:] = u[:, :-4] * np.array([0.6, -0.8, 0.0])  # L2 norm = the pulse
    assert M.input_corr(u, z, max_lag=10) == pytest.approx(1.0, abs=1e-12)
    assert M.input_corr(u, z, max_lag=3) < 0.5  # the right lag is out of reach
    want = _pearson_max_lag(u[..., 0], np.linalg.norm(z, axis=2), 3)
    assert M.input_corr(u, z, max_lag=3) == pytest.approx(want, abs=1e-12)


def test_input_corr_of_noise_is_near_zero_and_matches_a_hand_computation():
    rng = np.random.default_rng(41)
    u = rng.standard_normal((200, 30, 2))  # (trials, T, U)
    z = rng.standard_normal((200, 30, 4))
    got = M.input_corr(u, z, max_lag=5)
    assert abs(got) < 0.05
    mag = np.linalg.norm(z, axis=2)
    want = np.mean([_pearson_max_lag(np.abs(u[..., i]), mag, 5) for i in range(2)])
    assert got == pytest.approx(want, abs=1e-12)


def test_input_corr_leaves_out_constant_inputs_and_rejects_bad_shapes():
    rng = np.random.default_rng(42)
    u = np.stack([rng.standard_normal((6, 20)), np.zeros((6, 20))], axis=2)  # second input never varies
    z = rng.standard_normal((6, 20, 2))
    mag = np.linalg.norm(z, axis=2)
    want = _pearson_max_lag(np.abs(u[..., 0]), mag, 2)
    assert M.input_corr(u, z, max_lag=2) == pytest.approx(want, abs=1e-12)
    assert M.input_corr(u, np.ones((6, 20, 2)), max_lag=2) == 0.0  # constant magnitude: r = 0
    with pytest.raises(ValueError, match="input_corr is undefined"):
        M.input_corr(np.zeros((6, 20, 1)), z)
    with pytest.raises(ValueError, match="same trials and bins"):
        M.input_corr(u, z[:, :10])
    with pytest.raises(ValueError, match="max_lag=19"):
        M.input_corr(u, z, max_lag=19)


def test_input_corr_is_sign_invariant_on_signed_pulses_where_the_signed_version_cancels():
    # Kicks of either sign (known to us), marked by the inferred inputs 2 bins later with their sign, + noise.
    rng = np.random.default_rng(43)
    kicks = (rng.uniform(size=(60, 40)) < 0.08) * rng.choice([-1.0, 1.0], size=(60, 40))  # (trials, T)
    u = kicks[..., None]  # (trials, T, 1)
    z = np.zeros((60, 40, 2))
    z[:, 2:, 0] = 1.5 * kicks[:, :-2]
    z += 0.3 * rng.standard_normal(z.shape)
    signed = _pearson_max_lag(u[..., 0], np.linalg.norm(z, axis=2), 10)  # the previous definition
    assert abs(signed) < 0.1
    assert M.input_corr(u, z) > 0.6  # magnitudes: the kicks are marked
    assert M.input_corr(-u, z) == pytest.approx(M.input_corr(u, z), abs=1e-12)
    r2 = M.input_readout_r2(u, z)  # signed read-out at lags 0..10: recovers the kicks with their signs
    assert r2 > 0.6
    assert M.input_readout_r2(u, rng.standard_normal(z.shape)) < 0.05  # noise reads out nothing


def test_input_readout_r2_by_hand_and_bad_inputs():
    rng = np.random.default_rng(44)
    z = rng.standard_normal((10, 20, 2))
    u = np.zeros((10, 20, 1))
    u[:, :-3, 0] = 2.0 * z[:, 3:, 0] - z[:, 3:, 1] + 0.5  # the input is an exact lag-3 read-out
    assert M.input_readout_r2(u, z, max_lag=3) == pytest.approx(1.0, abs=1e-3)  # ridge: almost exact
    assert M.input_readout_r2(u, z, max_lag=2) < 0.2  # lag 3 out of reach
    feats = M.lagged_features(torch.as_tensor(z), 2)
    assert feats.shape == (10, 18, 6)
    np.testing.assert_allclose(feats[:, 5, 2:4].numpy(), z[:, 6])
    feats = M.lagged_features(torch.as_tensor(z), 2, max_lead=1)  # bins 1..17: z[t-1], z[t], .., z[t+2]
    assert feats.shape == (10, 17, 8)
    np.testing.assert_allclose(feats[:, 5, 0:2].numpy(), z[:, 5])  # row 5 is bin 6
    with pytest.raises(ValueError, match="at least 2 trials"):
        M.input_readout_r2(u[:1], z[:1], max_lag=3)
    with pytest.raises(ValueError, match="input_readout_r2 is undefined"):
        M.input_readout_r2(np.zeros_like(u), z, max_lag=3)


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), -float("inf"), -1.0])
def test_check_values_ignores_bad_entries_outside_the_mask_and_names_the_first_inside(bad):
    x = torch.ones(3, 4, 2, dtype=torch.float64)
    x[1, 2, 0] = bad
    mask = torch.ones(3, 4, 2, dtype=torch.bool)
    mask[1, 2, 0] = False
    M.check_values(x, "rates", mask, nonneg=True)  # the bad entry is not scored
    if bad == -1.0:
        M.check_values(x, "rates", None, nonneg=False)  # negative is allowed when not nonneg
        match = r"rates has negative values \(first -1\.0 at index \(1, 2, 0\)\)"
    else:
        match = r"rates has non-finite values \(first .* at index \(1, 2, 0\)\)"
    with pytest.raises(ValueError, match=match):
        M.check_values(x, "rates", None, nonneg=True)
    M.check_values(torch.empty(0, 4), "empty", None, nonneg=True)
