"""Inferred-input events: thresholds chosen on train trials, rising crossings, one-to-one matching
with known input events, event-aligned averages, trial events kept by the loaders."""

from __future__ import annotations

import numpy as np
import pytest

from neuralnets.analysis.inputs import (
    choose_threshold,
    detect_events,
    detect_input_events,
    detect_peaks,
    event_aligned,
    event_precision_recall,
    input_magnitude,
    input_verdict,
    known_events,
    null_inputs,
    peak_heights,
    require_inputs,
    threshold_from_null,
    trial_events,
)
from neuralnets.data.spikedata import SpikeData
from neuralnets.errors import AnalysisError
from neuralnets.models import create_model


def _kicks(seed: int = 0, n: int = 40, t: int = 50):
    """Signed kicks (trials, T, 1) and inferred inputs that mark each kick 2 bins later, with noise."""
    rng = np.random.default_rng(seed)
    kicks = (rng.uniform(size=(n, t)) < 0.05) * rng.choice([-1.0, 1.0], size=(n, t))
    inferred = np.zeros((n, t, 2))
    inferred[:, 2:, 0] = 2.0 * kicks[:, :-2]
    inferred += 0.1 * rng.standard_normal(inferred.shape)
    return kicks[..., None], inferred


def test_signed_kicks_are_detected_with_high_precision_and_recall():
    u, z = _kicks()
    train, test = np.arange(30), np.arange(30, 40)
    thr = choose_threshold(input_magnitude(z[train]))
    assert 0.1 < thr < 2.0  # above the noise, below the kicks
    detected = detect_events(input_magnitude(z[test]), thr)
    known = known_events(u[test])
    n_pulses = int((u[test] != 0).sum())
    assert 0.85 * n_pulses <= len(known) <= n_pulses  # pulses < 3 bins apart are one event
    score = event_precision_recall(detected, known, tolerance_bins=2)
    assert score.precision > 0.9 and score.recall > 0.85  # kicks in adjacent bins make one event
    assert score.median_lag_bins == 2.0
    exact = event_precision_recall(detected, known, tolerance_bins=0)  # exact bins: the 2-bin lag misses
    assert exact.n_matched < score.n_matched / 2  # (only coincidences: kicks 2 bins apart)
    delayed = event_precision_recall(detected, known, tolerance_bins=0, max_delay=2)
    assert delayed.n_matched == score.n_matched


def test_matching_is_one_to_one_and_per_trial_by_hand():
    detected = np.array([[0, 5], [0, 6], [1, 5], [2, 9]])
    known = np.array([[0, 5], [1, 20], [2, 10]])
    s = event_precision_recall(detected, known, tolerance_bins=1)
    # (0,5)-(0,5) and (2,9)-(2,10); (0,6) finds no second known event; trial 1's bins are too far apart
    assert (s.n_matched, s.n_detected, s.n_known) == (2, 4, 3)
    assert s.precision == pytest.approx(0.5) and s.recall == pytest.approx(2 / 3)
    empty = event_precision_recall(np.zeros((0, 2)), known)
    assert empty.n_matched == 0 and np.isnan(empty.precision) and empty.recall == 0.0


def test_detect_events_are_rising_crossings():
    m = np.array([[0, 2, 2, 0, 3, 0], [5, 5, 0, 0, 0, 1]], dtype=float)
    assert detect_events(m, 1.0).tolist() == [[0, 1], [0, 4], [1, 0], [1, 5]]


def test_event_aligned_average_by_hand():
    m = np.arange(12, dtype=float).reshape(2, 6)  # trial 0: 0..5, trial 1: 6..11
    lags, mean, sem = event_aligned(m, np.array([1.0, np.nan]), before=2, after=1)
    assert lags.tolist() == [-2, -1, 0, 1]
    assert np.isnan(mean[0]) and mean[1:].tolist() == [0.0, 1.0, 2.0]  # only trial 0, bins 0..2
    lags, mean, sem = event_aligned(m, np.array([2.0, 3.0]), before=1, after=0)
    np.testing.assert_allclose(mean, [(1 + 8) / 2, (2 + 9) / 2])
    np.testing.assert_allclose(sem, [3.5 / np.sqrt(2)] * 2)


def test_trial_events_from_the_loaders_meta():
    spikes = np.zeros((3, 20, 2))
    nwb_like = SpikeData(
        spikes=spikes, bin_size=0.01, meta={"align_event": "move_onset_time", "window": [-0.05, 0.15]}
    )
    ev = trial_events(nwb_like)
    np.testing.assert_allclose(ev["move_onset_time"], [5.0, 5.0, 5.0])
    laps = SpikeData(
        spikes=spikes,
        bin_size=0.1,
        meta={"trials": "laps", "trial_start_s": [0.0, 10.0, 20.0], "lap_end_s": [1.5, 13.0, 20.4]},
    )
    ev = trial_events(laps)
    np.testing.assert_allclose(ev["lap_start"], 0.0)
    np.testing.assert_allclose(ev["lap_end"], [15.0, np.nan, 4.0])  # the second lap ends after its 20 bins
    assert trial_events(SpikeData(spikes=spikes, bin_size=0.01)) == {}


def test_models_without_inferred_inputs_are_refused_in_one_line():
    from neuralnets.data.spikedata import DataSpec

    spec = DataSpec(n_heldin=4, n_neurons=5, n_obs_bins=8, n_fwd_bins=2, bin_size=0.01)
    require_inputs(create_model("lfads", spec, co_dim=1))
    for name, opts in [("gpfa", {"latent_dim": 2}), ("ndt", {}), ("rnn", {}), ("lfads", {"co_dim": 0})]:
        with pytest.raises(AnalysisError, match="needs a model with inferred inputs") as err:
            require_inputs(create_model(name, spec, **opts))
        assert "\n" not in str(err.value)


def test_threshold_needs_train_magnitudes():
    with pytest.raises(AnalysisError, match="finite train-trial magnitudes"):
        choose_threshold(np.zeros((0, 5)))


# ---------------------------------------------------------------------------------------- the detector
def test_peaks_by_hand_plateaus_edges_and_separation():
    m = np.array([[3.0, 1.0, 2.0, 2.0, 1.0, 0.0, 5.0, 4.0, 4.5, 0.0]])  # (1 trial, 10 bins)
    rows, heights = peak_heights(m, min_separation=1)
    assert rows[:, 1].tolist() == [0, 2, 6, 8]  # edge peak at 0, a plateau once at its first bin
    assert heights.tolist() == [3.0, 2.0, 5.0, 4.5]
    rows, _ = peak_heights(m, min_separation=3)  # 2 is 2 bins from the higher 0, 8 from the higher 6
    assert rows[:, 1].tolist() == [0, 6]
    assert detect_peaks(m, 2.5, min_separation=3)[:, 1].tolist() == [0, 6]


def test_known_pulses_give_the_exact_answer_with_a_leading_model():
    # Pulses of either sign and varied size; the inferred magnitude is a smooth bump peaking ONE bin
    # before each pulse (a model that leads), rising from 3 bins before: the onset rule fires early.
    rng = np.random.default_rng(3)
    n, t = 20, 60
    u = np.zeros((n, t, 1))
    for tr in range(n):
        for b in rng.choice(np.arange(6, t - 6, 8), size=3, replace=False):
            u[tr, b, 0] = rng.choice([-1.0, 1.0]) * rng.uniform(0.6, 1.0)
    known = known_events(u)
    assert len(known) == 3 * n  # every pulse, the small ones too (each is over half the largest)
    bump = np.array([0.2, 0.5, 1.0, 0.5, 0.2])  # peak at offset 2 = pulse bin − 1
    mag = np.zeros((n, t))
    for tr, b in known:
        mag[tr, b - 3 : b + 2] += bump
    score = event_precision_recall(detect_peaks(mag, 0.6), known, tolerance_bins=2)
    assert (score.precision, score.recall, score.median_lag_bins) == (1.0, 1.0, -1.0)
    assert score.lag_counts() == {-2: 0, -1: 3 * n, 0: 0, 1: 0, 2: 0}
    onsets = event_precision_recall(detect_events(mag, 0.45), known, tolerance_bins=2)
    assert onsets.median_lag_bins == -2.0  # the rising edge: 2 bins before the pulse


def test_null_threshold_and_verdict_on_an_input_free_system_and_with_inputs():
    rng = np.random.default_rng(5)

    def noise(n):  # (trials, T) smooth positive noise: what a controller reports with nothing to do
        x = np.abs(rng.standard_normal((n, 80)))
        return np.apply_along_axis(lambda r: np.convolve(r, np.ones(3) / 3, mode="same"), 1, x)

    null, train = noise(200), noise(200)
    thr = threshold_from_null(null, events_per_trial=0.05)
    assert len(detect_peaks(null, thr)) <= 10  # 0.05 per trial on the null, by construction
    v = input_verdict(train, null, events_per_trial=0.05)
    assert not v.reliable and v.text.startswith("no reliable inputs found")
    assert v.real_per_trial <= 0.1  # false events per trial where there are no inputs
    with_inputs = train.copy()
    with_inputs[:, 40] += 4.0  # one real input per trial, well above the noise
    v = input_verdict(with_inputs, null, events_per_trial=0.05)
    assert v.reliable and v.text.startswith("inputs found") and v.real_per_trial >= 0.95
    with pytest.raises(AnalysisError, match="finite"):
        threshold_from_null(np.full((3, 5), np.nan))


def test_null_inputs_run_the_models_own_autonomous_dynamics():
    from neuralnets.data.spikedata import DataSpec

    spec = DataSpec(n_heldin=4, n_neurons=6, n_obs_bins=10, n_fwd_bins=2, bin_size=0.01)
    model = create_model("lfads", spec, gen_dim=8, ic_enc_dim=8, ci_enc_dim=4, con_dim=4, co_dim=2, fac_dim=3)
    heldin = np.random.default_rng(0).poisson(1.0, size=(5, 10, 4)).astype(np.float32)
    a, b = null_inputs(model, heldin, seed=1), null_inputs(model, heldin, seed=1)
    assert a.shape == (5, 10, 2) and np.isfinite(a).all()
    np.testing.assert_array_equal(a, b)  # seeded
    with pytest.raises(AnalysisError, match="inferred inputs"):
        null_inputs(create_model("rnn", spec), heldin)


def test_peaks_at_the_trial_start_are_not_input_events():
    # A controller that corrects the initial state: a bump in bin 1 of every trial, nothing else.
    rng = np.random.default_rng(6)
    null = 0.05 * np.abs(rng.standard_normal((100, 40)))
    real = 0.05 * np.abs(rng.standard_normal((100, 40)))
    real[:, 1] += 3.0
    v = input_verdict(real, null)
    assert not v.reliable and v.real_per_trial <= 0.1 and v.onset_per_trial == pytest.approx(1.0)
    assert len(detect_input_events(real, v.threshold)) <= 10
    real[:, 20] += 3.0  # and a real input mid-trial: found, at its bin
    v = input_verdict(real, null)
    events = detect_input_events(real, v.threshold)
    assert v.reliable and (events[:, 1] == 20).sum() == 100
