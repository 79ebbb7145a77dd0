"""Baselines scored by the harness (neuralnets.eval.baselines)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from neuralnets.data.spikedata import SpikeData
from neuralnets.data.synthetic import lorenz
from neuralnets.errors import DataError
from neuralnets.eval import baselines as B
from neuralnets.eval.harness import evaluate


@pytest.fixture(scope="module")
def small_lorenz() -> SpikeData:
    return lorenz(n_trials=120, seed=3)


def test_smooth_spikes_keeps_constants_and_skips_unrecorded_bins():
    y = np.full((2, 30, 3), 2.0)
    np.testing.assert_allclose(B.smooth_spikes(y, None, 0.01, 50.0), 2.0, atol=1e-12)  # edges included
    mask = np.ones(y.shape, dtype=bool)
    mask[:, 10:15] = False
    y2 = y.copy()
    y2[:, 10:15] = 0.0  # unrecorded bins stored as 0 must not pull the estimate down
    np.testing.assert_allclose(B.smooth_spikes(y2, mask, 0.01, 50.0), 2.0, atol=1e-12)


def test_fit_poisson_glm_recovers_known_weights():
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(20000, 3, generator=gen, dtype=torch.float64)
    w_true = torch.tensor([[0.5, -0.3], [0.0, 0.4], [-0.2, 0.1]], dtype=torch.float64)
    b_true = torch.tensor([0.2, -0.5], dtype=torch.float64)
    y = torch.poisson(torch.exp(x @ w_true + b_true), generator=gen)
    w, b = B.fit_poisson_glm(x, y, torch.ones_like(y), alpha=0.0)
    torch.testing.assert_close(w, w_true, atol=0.03, rtol=0)
    torch.testing.assert_close(b, b_true, atol=0.03, rtol=0)


def test_glm_beats_mean_rates_and_true_rates_beat_glm_on_lorenz(small_lorenz):
    d = small_lorenz
    rows = {r.name: evaluate(r.rates, d, "test", r.latents) for r in B.run_baselines(d)}
    assert set(rows) == {"smoothing_glm", "mean_rates", "condition_average", "true_rates"}
    assert rows["condition_average"]["co_bps"] > rows["mean_rates"]["co_bps"] + 0.05  # conditions matter
    assert abs(rows["mean_rates"]["co_bps"]) < 0.05  # the null row sits near 0
    assert rows["smoothing_glm"]["co_bps"] > rows["mean_rates"]["co_bps"] + 0.1
    assert rows["true_rates"]["co_bps"] > rows["smoothing_glm"]["co_bps"]
    assert rows["true_rates"]["rate_r2"] == pytest.approx(1.0)
    assert rows["true_rates"]["latent_r2"] == pytest.approx(1.0)


def test_smoothing_glm_never_looks_at_test_trials(small_lorenz):
    d = small_lorenz
    fit = B.fit_smoothing_glm(d)
    assert fit.selected_on == "val trials" and fit.alpha in B.DEFAULT_GLM_ALPHAS
    spikes = d.spikes.copy()
    test = d.split == "test"
    spikes[test, :, d.n_heldin :] = 0.0  # wipe the test trials' held-out (and forward) data
    spikes[test, d.n_obs :] = 0.0
    d2 = SpikeData(spikes=spikes, bin_size=d.bin_size, n_heldin=d.n_heldin, n_fwd=d.n_fwd, split=d.split)
    np.testing.assert_allclose(B.smoothing_glm(d2), fit.rates, rtol=1e-5, atol=1e-9)


def test_glm_alpha_by_cross_validation_without_val_trials(small_lorenz):
    d = small_lorenz
    split = np.where(d.split == "val", "train", d.split)
    d2 = SpikeData(spikes=d.spikes, bin_size=d.bin_size, n_heldin=d.n_heldin, n_fwd=d.n_fwd, split=split)
    fit = B.fit_smoothing_glm(d2, alpha=(1e-2, 1e2))
    assert fit.selected_on == "3-fold CV on train trials"
    assert fit.alpha == 1e-2 and fit.alpha_scores[1e-2] > fit.alpha_scores[1e2]


def test_mean_rates_give_zero_co_bps_on_their_own_trials():
    rng = np.random.default_rng(0)
    spikes = rng.poisson(1.0, size=(8, 6, 4)).astype(np.float32)
    d = SpikeData(spikes=spikes, bin_size=0.01, n_heldin=2, split=np.array(["train"] * 6 + ["test"] * 2))
    # n_fwd = 0: the train mean over all bins is exactly the null model of the train trials
    assert evaluate(B.mean_rates(d), d, "train")["co_bps"] == pytest.approx(0.0, abs=1e-12)


def test_true_rates_need_ground_truth():
    d = SpikeData(spikes=np.ones((4, 3, 2)), bin_size=0.01)
    with pytest.raises(DataError, match="no ground-truth rates"):
        B.true_rates(d)
    assert [r.name for r in B.run_baselines(d, ["mean_rates"])] == ["mean_rates"]
    with pytest.raises(ValueError, match="unknown baseline"):
        B.run_baselines(d, ["oracle"])


def _conditioned() -> SpikeData:
    """8 trials x 4 bins (3 observed + 1 forward) x 3 neurons (2 held-in); conditions 0/1/2 (2: test only)."""
    rng = np.random.default_rng(0)
    spikes = rng.poisson(2.0, size=(8, 4, 3)).astype(float)
    observed = np.ones(spikes.shape, dtype=bool)
    observed[7, 1, 2] = False  # one unrecorded train entry: not a zero in the average
    spikes[7, 1, 2] = 0.0
    return SpikeData(
        spikes=spikes,
        bin_size=0.01,
        n_heldin=2,
        n_fwd=1,
        split=np.array(["train"] * 4 + ["val", "test", "test", "train"]),
        observed=observed,
        condition=np.array([0, 0, 1, 1, 0, 1, 2, 0]),
    )


def test_condition_average_is_the_mean_of_the_train_trials_of_each_condition():
    d = _conditioned()
    fit = B.fit_condition_average(d, sigma_ms=1e-3)  # a kernel narrower than a bin: no smoothing
    y = d.spikes
    np.testing.assert_allclose(fit.rates[5], (y[2] + y[3]) / 2, rtol=1e-6)  # condition 1: trials 2, 3
    cond0 = (y[0] + y[1] + y[7]) / 3
    cond0[1, 2] = (y[0, 1, 2] + y[1, 1, 2]) / 2  # trial 7 did not record this entry
    np.testing.assert_allclose(fit.rates[4], cond0, rtol=1e-6)
    train_sum = y[[0, 1, 2, 3, 7]].sum(0)
    train_n = np.full((4, 3), 5.0)
    train_n[1, 2] = 4.0
    np.testing.assert_allclose(fit.rates[6], train_sum / train_n, rtol=1e-6)  # unseen condition 2
    assert fit.unseen_conditions == [2] and fit.selected_on == "fixed"


def test_condition_average_picks_the_width_on_val_and_never_reads_test_trials():
    d = _conditioned()
    fit = B.fit_condition_average(d, sigma_ms=(5.0, 20.0))
    assert fit.selected_on == "val trials" and set(fit.sigma_scores) == {5.0, 20.0}
    assert fit.sigma_ms == max(fit.sigma_scores, key=fit.sigma_scores.get)
    d.spikes[5:7] += 7.0  # the test trials
    np.testing.assert_array_equal(B.fit_condition_average(d, sigma_ms=(5.0, 20.0)).rates, fit.rates)
    row = [r for r in B.baseline_rows(d, "val") if r["model"] == "baseline/condition_average"][0]
    assert row["info"]["all_trial_mean_for_conditions"] == [2] and np.isfinite(row["metrics"]["co_bps"])


def test_condition_average_is_skipped_without_conditions(caplog):
    d = SpikeData(spikes=np.ones((4, 3, 2)), bin_size=0.01, split=np.array(["train"] * 3 + ["test"]))
    with caplog.at_level("WARNING", logger="neuralnets.eval.baselines"):
        assert [r.name for r in B.run_baselines(d)] == ["smoothing_glm", "mean_rates"]
        assert B.run_baselines(d, ["condition_average"]) == []
    assert "condition_average skipped: dataset 'data' has no trial conditions" in caplog.text
    with pytest.raises(DataError, match="has no 'condition'"):
        B.fit_condition_average(d)


# ------------------------------------------------------------------------------------------- GLM fit
def _lbfgs_one_output(x, y, w, alpha):
    """Reference: the previous L-BFGS fit, one output at a time, converged far past its old tolerance."""
    n = w.sum().clamp(min=1.0)
    wt = torch.zeros(x.shape[1], dtype=x.dtype, requires_grad=True)
    b = torch.log(((w * y).sum() / n).clamp(min=B.GLM_FLOOR)).clone().requires_grad_(True)
    opt = torch.optim.LBFGS(
        [wt, b], max_iter=2000, tolerance_grad=1e-12, tolerance_change=0, line_search_fn="strong_wolfe"
    )

    def closure():
        opt.zero_grad()
        eta = (x @ wt + b).clamp(max=30.0)
        loss = (w * (torch.exp(eta) - y * eta)).sum() / n + 0.5 * alpha * (wt**2).sum()
        loss.backward()
        return loss

    for _ in range(3):
        opt.step(closure)
    return wt.detach(), b.detach()


@pytest.mark.parametrize("alpha", [0.0, 0.1])
def test_batched_glm_matches_a_per_output_fit(small_lorenz, alpha):
    d = small_lorenz
    train = d.indices("train")
    feats = torch.as_tensor(B.smooth_spikes(d.heldin_obs[train], None, d.bin_size, 50.0))
    x = feats.reshape(-1, d.n_heldin)
    x = (x - x.mean(0)) / x.std(0)
    y = torch.as_tensor(d.spikes[train, : d.n_obs, d.n_heldin :], dtype=torch.float64).reshape(
        -1, d.n_heldout
    )
    w = torch.ones_like(y)
    w[::7, 0] = 0.0  # an unrecorded entry or two
    weights, bias = B.fit_poisson_glm(x, y, w, alpha)  # all outputs at once
    for j in range(d.n_heldout):
        wj, bj = _lbfgs_one_output(x, y[:, j], w[:, j], alpha)
        torch.testing.assert_close(weights[:, j], wj, atol=1e-6, rtol=0)
        torch.testing.assert_close(bias[j], bj, atol=1e-6, rtol=0)
    # Leading dimensions are independent problems: two copies give the single fit twice.
    wb, bb = B.fit_poisson_glm(torch.stack([x, x]), torch.stack([y, y]), torch.stack([w, w]), alpha)
    torch.testing.assert_close(wb, torch.stack([weights, weights]), atol=1e-9, rtol=0)
    torch.testing.assert_close(bb, torch.stack([bias, bias]), atol=1e-9, rtol=0)


def test_glm_warm_start_reaches_the_same_fit(small_lorenz):
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(3000, 5, generator=gen, dtype=torch.float64)
    y = torch.poisson(torch.exp(0.3 * x[:, :2] - 1.0), generator=gen)  # (3000, 2)
    cold = B.fit_poisson_glm(x, y, torch.ones_like(y), 0.01)
    start = B.fit_poisson_glm(x, y, torch.ones_like(y), 1.0)
    warm = B.fit_poisson_glm(x, y, torch.ones_like(y), 0.01, init=start)
    for a, b in zip(cold, warm, strict=True):
        torch.testing.assert_close(a, b, atol=1e-9, rtol=0)


# ---------------------------------------------------------------------------------------------- cache
def _counting(monkeypatch):
    calls = []
    real = B.iter_baselines

    def counted(*args, **kwargs):
        calls.append(1)
        return real(*args, **kwargs)

    monkeypatch.setattr(B, "iter_baselines", counted)
    return calls


def test_baseline_rows_are_computed_once_per_data_split_and_options(small_lorenz, monkeypatch):
    calls = _counting(monkeypatch)
    d = small_lorenz
    first = B.baseline_rows(d, "test", names=["mean_rates", "smoothing_glm"], data_label="a")
    again = B.baseline_rows(d, "test", names=["mean_rates", "smoothing_glm"], data_label="b")
    assert len(calls) == 1  # the second call read the cache
    assert [r["data"] for r in again] == ["b", "b"]
    assert [{k: v for k, v in r.items() if k != "data"} for r in again] == [
        {k: v for k, v in r.items() if k != "data"} for r in first
    ]
    B.baseline_rows(d, "val", names=["mean_rates", "smoothing_glm"])  # another split
    B.baseline_rows(d, "test", names=["mean_rates"])  # other baselines
    B.baseline_rows(d, "test", names=["mean_rates", "smoothing_glm"], load_options={"seed": 4})
    B.baseline_rows(d, "test", names=["mean_rates", "smoothing_glm"], alpha=0.1)  # other GLM options
    spikes = d.spikes.copy()
    spikes[0, 0, 0] += 1.0  # one count more
    d2 = SpikeData(spikes=spikes, bin_size=d.bin_size, n_heldin=d.n_heldin, n_fwd=d.n_fwd, split=d.split)
    B.baseline_rows(d2, "test", names=["mean_rates", "smoothing_glm"])
    assert len(calls) == 6
    B.baseline_rows(d, "test", names=["mean_rates", "smoothing_glm"], cache=False)
    assert len(calls) == 7


def test_a_corrupt_or_tampered_cache_entry_is_recomputed(small_lorenz, monkeypatch, tmp_path, caplog):
    monkeypatch.setenv("NEURALNETS_BASELINE_CACHE", str(tmp_path / "cache"))
    calls = _counting(monkeypatch)
    scores = lambda: B.baseline_rows(small_lorenz, "test", names=["mean_rates"])[0]["metrics"]  # noqa: E731
    first = scores()
    (entry,) = (tmp_path / "cache").glob("*.json")
    assert not [p for p in (tmp_path / "cache").iterdir() if p != entry]  # no temporary file left
    good = entry.read_text()
    entry.write_text(good[: len(good) // 2])  # a torn write
    assert scores() == first and len(calls) == 2 and "corrupt" in caplog.text
    assert scores() == first and len(calls) == 2  # the entry was replaced by a good one
    tampered = json.loads(entry.read_text())
    tampered["rows"][0]["metrics"]["co_bps"] = 9.0  # valid JSON, stale digest
    entry.write_text(json.dumps(tampered))
    assert scores() == first and len(calls) == 3 and "digest" in caplog.text


def test_an_unwritable_cache_never_fails_the_rows(small_lorenz, monkeypatch, tmp_path):
    blocker = tmp_path / "not_a_folder"
    blocker.write_text("")
    monkeypatch.setenv("NEURALNETS_BASELINE_CACHE", str(blocker))
    rows = B.baseline_rows(small_lorenz, "test", names=["mean_rates"])
    assert rows[0]["model"] == "baseline/mean_rates"


def test_baseline_cache_location(monkeypatch, tmp_path):
    monkeypatch.delenv("NEURALNETS_BASELINE_CACHE")
    monkeypatch.setenv("NEURALNETS_CACHE_DIR", str(tmp_path / "root"))
    assert B.baseline_cache_dir() == tmp_path / "root" / "baselines"
    monkeypatch.delenv("NEURALNETS_CACHE_DIR")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert B.baseline_cache_dir() == tmp_path / "xdg" / "neuralnets" / "baselines"


def test_smooth_spikes_in_trial_chunks_equals_the_whole_array_filter():
    from scipy.ndimage import gaussian_filter1d

    rng = np.random.default_rng(0)
    y = rng.poisson(1.0, size=(300, 20, 3)).astype(np.float32)  # more trials than one chunk
    recorded = rng.random(y.shape) > 0.2
    for mask in (None, np.ones(y.shape, dtype=bool), recorded):
        w = np.ones(y.shape) if mask is None else mask.astype(np.float64)
        num = gaussian_filter1d(y * w, 2.5, axis=1, mode="constant")
        den = gaussian_filter1d(w, 2.5, axis=1, mode="constant")
        expected = np.divide(num, den, out=np.zeros_like(num), where=den > 1e-12)
        np.testing.assert_array_equal(B.smooth_spikes(y, mask, 0.02, 50.0), expected)


def test_glm_fits_outputs_in_blocks_with_the_same_result(monkeypatch):
    """Outputs are independent problems: fitting them a block at a time (bounded memory on large data)
    gives the all-at-once fit, with or without a warm start and leading batch dimensions."""
    import neuralnets.eval.glm as G

    gen = torch.Generator().manual_seed(2)
    x = torch.randn(2, 400, 4, generator=gen, dtype=torch.float64)  # (R, S, F)
    y = torch.poisson(torch.exp(0.4 * x[..., :1].repeat(1, 1, 5) - 0.5), generator=gen)  # (R, S, J=5)
    w = (torch.rand(y.shape, generator=gen) > 0.1).to(torch.float64)
    whole = G.fit_poisson_glm(x, y, w, 0.1)
    start = G.fit_poisson_glm(x, y, w, 1.0)
    monkeypatch.setattr(G, "OUTPUT_BLOCK_ELEMENTS", 2 * 400 * 2)  # blocks of 2 outputs: 2 + 2 + 1
    for got, want in (
        (G.fit_poisson_glm(x, y, w, 0.1), whole),
        (G.fit_poisson_glm(x, y, w, 0.1, init=start), whole),
    ):
        assert got[0].shape == (2, 4, 5) and got[1].shape == (2, 5)
        torch.testing.assert_close(got[0], want[0], atol=1e-9, rtol=0)
        torch.testing.assert_close(got[1], want[1], atol=1e-9, rtol=0)


def test_large_blocks_returned_is_a_safe_context(small_lorenz):
    """Inside it, memory behaves as usual (it only tells glibc how to place large blocks): a baseline
    computed inside gives the same rates as outside."""
    want = B.mean_rates(small_lorenz)
    with B.large_blocks_returned() as applied:
        got = B.mean_rates(small_lorenz)
    assert isinstance(applied, bool)
    np.testing.assert_array_equal(got, want)
