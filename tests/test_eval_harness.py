"""evaluate(), the run-directory contract and TensorBoard logging (neuralnets.eval.harness)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from neuralnets.data.spikedata import SpikeData
from neuralnets.eval import harness as H
from neuralnets.eval import metrics as M


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
    assert list(out) == list(H.METRICS)  # all seven, in table order
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


# ---------------------------------------------------------------------------------------------- run dirs
def test_write_metrics_merges_and_touches_nothing_else(tmp_path):
    (tmp_path / "other.txt").write_text("keep me")
    H.write_metrics({"co_bps": 0.1}, tmp_path, extra={"model": "m", "data": "d", "train_time_s": 3.0})
    H.write_metrics({"co_bps": 0.2, "vel_r2": float("nan")}, tmp_path, extra={"split": "test"})
    saved = json.loads((tmp_path / H.METRICS_FILE).read_text())
    assert saved == {
        "model": "m",
        "data": "d",
        "train_time_s": 3.0,
        "split": "test",
        "metrics": {"co_bps": 0.2, "vel_r2": None},
    }
    assert (tmp_path / "other.txt").read_text() == "keep me"
    run = H.read_run(tmp_path)
    assert run["model"] == "m" and run["n_parameters"] is None and run["run_dir"] == str(tmp_path)


def test_read_run_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        H.read_run(tmp_path / "nope")
    with pytest.raises(FileNotFoundError, match="metrics.json not found"):
        H.read_run(tmp_path)
    (tmp_path / H.METRICS_FILE).write_text(json.dumps({"model": "m"}))
    with pytest.raises(ValueError, match=r"\['data', 'metrics'\]"):
        H.read_run(tmp_path)


def test_predictions_round_trip(tmp_path):
    rates = np.random.default_rng(5).uniform(size=(3, 4, 2)).astype(np.float32)
    H.save_predictions(tmp_path, rates, latents=rates[..., :1])
    r, z = H.load_predictions(tmp_path)
    np.testing.assert_array_equal(r, rates)
    np.testing.assert_array_equal(z, rates[..., :1])
    with pytest.raises(FileExistsError):
        H.save_predictions(tmp_path, rates)
    np.savez(tmp_path / "r.npz", rates=rates)
    np.save(tmp_path / "r.npy", rates)
    assert H.load_predictions(tmp_path / "r.npz")[1] is None
    np.testing.assert_array_equal(H.load_predictions(tmp_path / "r.npy")[0], rates)
    np.savez(tmp_path / "bad.npz", x=rates)
    with pytest.raises(ValueError, match="no array 'rates'"):
        H.load_predictions(tmp_path / "bad.npz")


# ---------------------------------------------------------------------------------------------- TensorBoard
def _read_events(logdir):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(logdir))
    acc.Reload()
    return acc


def test_log_to_tensorboard_with_summary_writer(tmp_path):
    from torch.utils.tensorboard import SummaryWriter

    with SummaryWriter(log_dir=str(tmp_path)) as writer:
        H.log_to_tensorboard(
            writer, {"model": "lfads", "cfg": {"lr": 1e-3}}, {"co_bps": 0.25, "vel_r2": float("nan")}
        )
    acc = _read_events(tmp_path)
    assert acc.Tags()["scalars"] == ["hp/co_bps"]  # NaN metrics are not logged
    assert acc.Scalars("hp/co_bps")[0].value == pytest.approx(0.25)
    # the hparams plugin's experiment/session summaries name the flattened hyperparameters and metrics
    content = b"".join(acc.PluginTagToContent("hparams").values())
    assert b"cfg.lr" in content and b"hp/co_bps" in content


def test_log_to_tensorboard_with_lightning_logger(tmp_path):
    from pytorch_lightning.loggers import TensorBoardLogger

    logger = TensorBoardLogger(str(tmp_path), name="run", version=0, default_hp_metric=False)
    H.log_to_tensorboard(logger, {"model": "ndt"}, {"co_bps": 0.3})
    logger.finalize("success")
    acc = _read_events(tmp_path / "run" / "version_0")
    assert acc.Scalars("hp/co_bps")[0].value == pytest.approx(0.3)


def test_log_to_tensorboard_rejects_other_objects():
    with pytest.raises(TypeError, match="SummaryWriter"):
        H.log_to_tensorboard(object(), {}, {"co_bps": 0.1})


def test_format_table_adds_baseline_rows_and_notes_missing_data():
    data = make_data()
    record = {"model": "m", "data": "tiny", "split": "test", "metrics": H.evaluate(data.rates, data, "test")}
    record.update(train_time_s=2.0, n_parameters=7)
    lines = H.format_table([record], baselines=True, data=data).splitlines()
    assert lines[0].startswith("| model | data | split | co_bps |")
    assert [line.split(" | ")[0] for line in lines[2:]] == [
        "| m",
        "| baseline/smoothing_glm",
        "| baseline/mean_rates",
        "| baseline/true_rates",
    ]
    text = H.format_table([dict(record, data_source="/no/such/file.npz")], baselines=True)
    assert "no baseline rows for '/no/such/file.npz'" in text


def test_evaluate_reports_bad_rates_with_the_global_trial_index():
    data = make_data()
    rates = np.ones(data.spikes.shape)
    rates[5, 2, 1] = np.nan  # trial 5 is a train trial: the vel R² fit would read it
    with pytest.raises(ValueError, match=r"rates has non-finite values .* \(5, 2, 1\)"):
        H.evaluate(rates, data, "test")
