"""evaluate() and skipped_metrics() (neuralnets.eval.harness)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from neuralnets.data.spikedata import SpikeData
from neuralnets.eval import fewshot as F
from neuralnets.eval import harness as H
from neuralnets.eval import metrics as M
from neuralnets.eval import regression as R


def make_data(n_trials=24, t_obs=8, n_fwd=3, n_in=4, n_out=2, seed=0, **extra) -> SpikeData:
    """A small SpikeData with every optional field, built from arrays."""
    rng = np.random.default_rng(seed)
    t, n = t_obs + n_fwd, n_in + n_out
    rates = rng.uniform(0.2, 2.0, size=(n_trials, t, n))  # (trials, T, N) counts per bin
    fields = dict(
        spikes=rng.poisson(rates).astype(np.float32),
        bin_size=0.01,
        n_heldin=n_in,
        n_fwd=n_fwd,
        split=np.array(["train", "train", "val", "test"] * (n_trials // 4)),
        behavior=rng.standard_normal((n_trials, t_obs, 2)),
        condition=np.arange(n_trials) % 3,
        rates=rates,
        latents=rng.standard_normal((n_trials, t, 3)),
        name="tiny",
    )
    fields.update(extra)
    return SpikeData(**fields)


def test_evaluate_returns_every_metric_and_matches_the_metric_functions():
    data = make_data()
    rng = np.random.default_rng(1)
    rates = rng.uniform(0.2, 2.0, size=data.spikes.shape)
    out = H.evaluate(rates, data, "test", latents=rng.standard_normal((data.n_trials, data.n_bins, 5)))
    inputs = ("input_corr", "input_readout_r2")
    assert list(out) == [k for k in M.METRICS if k not in inputs]  # all but the input metrics, in table order
    te = data.indices("test")
    assert out["co_bps"] == pytest.approx(M.co_bps(rates[te], data.spikes[te], 4, 3), abs=1e-12)
    assert out["fp_bps"] == pytest.approx(M.fp_bps(rates[te], data.spikes[te], 3), abs=1e-12)
    assert out["bps_heldin"] == pytest.approx(M.bits_per_spike(rates[te, :8, :4], data.spikes[te, :8, :4]))
    assert out["rate_r2"] == pytest.approx(M.rate_r2(rates[te], data.rates[te]))
    assert all(isinstance(v, float) for v in out.values())


def test_evaluate_ground_truth_is_perfect_on_rate_and_latent_r2():
    data = make_data()
    out = H.evaluate(data.rates, data, "test", latents=data.latents[:, :5])  # latents over fewer bins
    assert out["rate_r2"] == pytest.approx(1.0)
    assert out["latent_r2"] == pytest.approx(1.0)


def test_evaluate_leaves_out_what_cannot_be_computed():
    data = make_data(n_fwd=0, n_out=0, behavior=None, condition=None, rates=None, latents=None)
    rates = np.ones(data.spikes.shape)
    assert set(H.evaluate(rates, data, "test")) == {"bps_heldin"}
    reasons = H.skipped_metrics(data, "test")
    assert reasons["co_bps"] == "no held-out neurons"
    assert reasons["fp_bps"] == "no forward-prediction bins"
    assert "latent_r2" not in H.evaluate(make_data().rates, make_data(), "test")  # no model latents given


def test_unrecorded_forward_bins_and_behaviour_splits():
    data = make_data()
    observed = np.ones(data.spikes.shape, dtype=bool)
    test = data.split == "test"
    observed[test, 8:] = False  # like NLB eval trials: no forward bins
    spikes = data.spikes.copy()
    spikes[test, 8:] = 0
    data2 = make_data(spikes=spikes, observed=observed)
    data2.meta["behavior_splits"] = ["train", "val"]  # the test trials' behaviour is not data
    rates = np.random.default_rng(2).uniform(0.2, 2.0, size=data.spikes.shape)
    out = H.evaluate(rates, data2, "test")
    assert "fp_bps" not in out and "vel_r2" not in out and "co_bps" in out
    assert "recorded" in H.skipped_metrics(data2, "test")["fp_bps"]
    assert "vel_r2" in H.evaluate(rates, data2, "val")
    # the test trials' behaviour never enters the fit
    beh = data2.behavior.copy()
    beh[test] = 1e6
    data3 = make_data(spikes=spikes, observed=observed, behavior=beh)
    data3.meta["behavior_splits"] = ["train", "val"]
    assert H.evaluate(rates, data3, "val")["vel_r2"] == pytest.approx(
        H.evaluate(rates, data2, "val")["vel_r2"]
    )


def test_evaluate_rejects_a_shape_mismatch_naming_both_shapes():
    data = make_data()
    with pytest.raises(ValueError, match=r"\(24, 11, 5\).*\(24, 11, 6\)"):
        H.evaluate(np.ones((24, 11, 5)), data)


def test_evaluate_accepts_torch_tensors():
    data = make_data()
    rates = np.random.default_rng(3).uniform(0.2, 2.0, size=data.spikes.shape).astype(np.float32)
    a = H.evaluate(rates, data, "test")
    b = H.evaluate(torch.from_numpy(rates), data, "test")
    assert a == pytest.approx(b, abs=1e-9)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_evaluate_on_gpu_matches_cpu():
    data = make_data()
    rates = np.random.default_rng(4).uniform(0.2, 2.0, size=data.spikes.shape).astype(np.float32)
    cpu = H.evaluate(rates, data, "test", latents=data.latents)
    gpu = H.evaluate(
        torch.from_numpy(rates).cuda(), data, "test", latents=torch.from_numpy(data.latents).cuda()
    )
    assert gpu == pytest.approx(cpu, abs=1e-8)


def test_evaluate_reports_bad_rates_with_the_global_trial_index():
    data = make_data()
    rates = np.ones(data.spikes.shape)
    rates[5, 2, 1] = np.nan  # trial 5 is a train trial: the vel R² fit would read it
    with pytest.raises(ValueError, match=r"rates has non-finite values .* \(5, 2, 1\)"):
        H.evaluate(rates, data, "test")


# ---------------------------------------------------------------------------------------------- NLB metrics
def test_evaluate_vel_and_psth_follow_nlb_on_hand_computed_references():
    from test_eval_metrics import _nlb_vel_r2, psth_reference

    data = make_data()
    rates = np.random.default_rng(20).uniform(0.2, 2.0, size=data.spikes.shape)
    out = H.evaluate(rates, data, "test")
    tr, te = data.indices("train"), data.indices("test")
    want_vel, _ = _nlb_vel_r2(rates[tr, :8], data.behavior[tr], rates[te, :8], data.behavior[te])
    assert out["vel_r2"] == pytest.approx(want_vel, abs=1e-9)
    # PSTH R²: all 6 neurons, target over all 24 trials of each condition (not only the 6 test trials)
    want_psth = psth_reference(
        rates[te, :8], data.condition[te], data.spikes[:, :8].astype(float), data.condition, 0.01, 50.0
    )
    assert out["psth_r2"] == pytest.approx(want_psth, abs=1e-12)


def test_evaluate_float32_rates_score_as_their_float64_values():
    data = make_data()
    rates = np.random.default_rng(22).uniform(0.2, 2.0, size=data.spikes.shape).astype(np.float32)
    latents = np.random.default_rng(23).standard_normal((data.n_trials, data.n_bins, 3)).astype(np.float32)
    single = H.evaluate(torch.from_numpy(rates), data, "test", latents=torch.from_numpy(latents))
    double = H.evaluate(rates.astype(np.float64), data, "test", latents=latents.astype(np.float64))
    assert single.keys() == double.keys() and "psth_r2" in single
    assert single == double  # the metrics convert exactly what they use to float64


def test_evaluate_keeps_the_earlier_variants_behind_named_options():
    data = make_data()
    rates = np.random.default_rng(21).uniform(0.2, 2.0, size=data.spikes.shape)
    tr, te = data.indices("train"), data.indices("test")
    old = H.evaluate(rates, data, "test", alphas=M.LEGACY_ALPHAS, vel_cv="trials", psth_variant="heldout")
    assert old["vel_r2"] == pytest.approx(
        R.vel_r2(
            rates[tr, :8], data.behavior[tr], rates[te, :8], data.behavior[te], M.LEGACY_ALPHAS, cv="trials"
        )
    )
    assert old["psth_r2"] == pytest.approx(
        M.psth_r2(
            rates[te, :8, 4:], data.spikes[te, :8, 4:], data.condition[te], 0.01, constant_target="drop"
        )
    )
    assert old["psth_r2"] != pytest.approx(H.evaluate(rates, data, "test")["psth_r2"], abs=1e-6)
    with pytest.raises(ValueError, match="psth_variant"):
        H.evaluate(rates, data, "test", psth_variant="held-out")


def test_evaluate_fewshot_co_bps_needs_latents_over_the_observed_bins():
    data = make_data()
    rates = np.random.default_rng(22).uniform(0.2, 2.0, size=data.spikes.shape)
    z = np.random.default_rng(23).standard_normal((data.n_trials, data.n_bins, 3))
    out = H.evaluate(rates, data, "test", latents=z)
    tr, te = data.indices("train"), data.indices("test")
    want = F.fewshot_co_bps(z[tr, :8], data.spikes[tr, :8, 4:], z[te, :8], data.spikes[te, :8, 4:])
    assert out["fewshot_co_bps"] == pytest.approx(want, abs=1e-12)
    assert "fewshot_co_bps" not in H.evaluate(rates, data, "test")
    assert H.skipped_metrics(data, "test")["fewshot_co_bps"] == "no model latents given"
    short = z[:, :5]
    assert "do not cover the 8 observed bins" in H.skipped_metrics(data, "test", short)["fewshot_co_bps"]
    with pytest.raises(ValueError, match=r"latents have shape \(3, 11, 3\)"):
        H.evaluate(rates, data, "test", latents=z[:3])


def test_evaluate_input_corr_compares_known_and_inferred_inputs_on_the_split():
    t_obs = 30  # enough bins for the lagged read-out (leads 3 + lags 10)
    rng = np.random.default_rng(30)
    pulses = (rng.uniform(size=(24, t_obs + 3, 1)) < 0.2).astype(np.float64)  # (trials, T, U=1)
    data = make_data(t_obs=t_obs, inputs=pulses, behavior=rng.standard_normal((24, t_obs, 2)))
    rates = data.rates
    inferred = np.zeros((24, t_obs, 2))  # (trials, T_obs, U'): the pulse 2 bins later, split over 2 dims
    inferred[:, 2:, 0], inferred[:, 2:, 1] = 3 * pulses[:, : t_obs - 2, 0], -4 * pulses[:, : t_obs - 2, 0]
    out = H.evaluate(rates, data, "test", inputs=inferred)
    assert out["input_corr"] == pytest.approx(1.0, abs=1e-12)
    te = data.indices("test")
    assert out["input_corr"] == pytest.approx(M.input_corr(pulses[te, :t_obs], inferred[te]), abs=1e-12)
    assert list(out)[-4:] == ["bps_heldin", "input_corr", "input_readout_r2", "rate_r2"]  # METRICS order
    want = M.input_readout_r2(pulses[te, :t_obs], inferred[te])
    assert out["input_readout_r2"] == pytest.approx(want, abs=1e-12) and want > 0.9
    assert H.skipped_metrics(data, "test")["input_corr"] == "no inferred inputs given"
    assert H.skipped_metrics(data, "test")["input_readout_r2"] == "no inferred inputs given"
    no_known = H.skipped_metrics(make_data(), "test", inputs=inferred)["input_corr"]
    assert no_known == "no known inputs in the data"
    silent = make_data(t_obs=t_obs, inputs=np.zeros_like(pulses))  # an input-free system: skipped, no error
    assert "never vary" in H.skipped_metrics(silent, "test", inputs=inferred)["input_corr"]
    assert "input_corr" not in H.evaluate(silent.rates, silent, "test", inputs=inferred)
    assert "must both cover 15 bins" in H.skipped_metrics(data, "test", inputs=inferred[:, :5])["input_corr"]
    with pytest.raises(ValueError, match=r"inputs have shape \(3, 30, 2\)"):
        H.evaluate(rates, data, "test", inputs=inferred[:3])


def test_evaluate_skips_fewshot_co_bps_on_request():
    data = make_data()
    z = np.random.default_rng(31).standard_normal((data.n_trials, data.n_bins, 3))
    full = H.evaluate(data.rates, data, "test", latents=z)
    quick = H.evaluate(data.rates, data, "test", latents=z, fewshot=False)
    assert "fewshot_co_bps" in full and "fewshot_co_bps" not in quick
    assert quick == {k: v for k, v in full.items() if k != "fewshot_co_bps"}
    reason = H.skipped_metrics(data, "test", z, fewshot=False)["fewshot_co_bps"]
    assert reason == "skipped on request (fewshot=False)"


def test_evaluate_splits_equals_evaluate_per_split_and_fits_the_train_side_once(monkeypatch):
    """Scoring val and test in one call gives each split's `evaluate` numbers exactly, with the few-shot
    read-outs and the velocity ridge fitted once (they only read the train trials)."""
    data = make_data(observed=np.random.default_rng(5).uniform(size=(24, 11, 6)) > 0.1)
    rates = np.random.default_rng(6).uniform(0.2, 2.0, size=data.spikes.shape)
    z = np.random.default_rng(7).standard_normal((data.n_trials, data.n_bins, 3))
    want = {s: H.evaluate(rates, data, s, latents=z) for s in ("val", "test")}
    calls = {"fewshot": 0, "vel": 0}
    fit_fewshot, fit_vel = H.fit_fewshot, H.fit_vel

    def counted(name, fn):
        def wrapper(*args, **kwargs):
            calls[name] += 1
            return fn(*args, **kwargs)

        return wrapper

    monkeypatch.setattr(H, "fit_fewshot", counted("fewshot", fit_fewshot))
    monkeypatch.setattr(H, "fit_vel", counted("vel", fit_vel))
    got = H.evaluate_splits(rates, data, ("val", "test"), z)
    assert got == want and "fewshot_co_bps" in got["test"] and "vel_r2" in got["test"]
    assert calls == {"fewshot": 1, "vel": 1}
    with pytest.raises(ValueError, match="unknown split 'nope'"):
        H.evaluate_splits(rates, data, ("val", "nope"), z)


def test_fewshot_and_vel_halves_compose_to_the_metrics():
    data = make_data()
    rng = np.random.default_rng(8)
    z, x = rng.standard_normal((24, 8, 3)), rng.standard_normal((24, 8, 5))
    y = data.spikes[:, :8, 4:]
    tr, te = data.indices("train"), data.indices("test")
    readout = F.fit_fewshot(z[tr], y[tr], k=3, n_resamples=4)
    assert readout.weights.shape == (4, 3, 2) and readout.mu.shape == (4, 1, 3)
    assert readout.score(z[te], y[te]) == F.fewshot_co_bps(z[tr], y[tr], z[te], y[te], k=3, n_resamples=4)
    with pytest.raises(ValueError, match="do not match the train ones"):
        readout.score(z[te, :, :2], y[te])
    beh = data.behavior
    w, b = R.fit_vel(x[tr], beh[tr])
    assert w.shape == (5, 2) and b.shape == (2,)
    assert R.vel_r2_score(w, b, x[te], beh[te]) == R.vel_r2(x[tr], beh[tr], x[te], beh[te])


def test_psth_r2_reuses_the_smoothed_target_of_all_conditions():
    data = make_data()
    rates = np.random.default_rng(9).uniform(0.2, 2.0, size=data.spikes.shape)
    cache: dict = {}
    for split in ("val", "test"):
        idx = data.indices(split)
        args = (rates[idx], data.spikes[idx], data.condition[idx], data.bin_size)
        target = dict(target_spikes=data.spikes, target_condition=data.condition)
        want = M.psth_r2(*args, **target)
        assert M.psth_r2(*args, **target, target_cache=cache) == pytest.approx(want, abs=1e-12)
        assert cache["psth"][0].shape == (3, *data.spikes.shape[1:])  # every condition, smoothed once
