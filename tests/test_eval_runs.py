"""The run directory (neuralnets.runs): metrics.json, predictions.h5, atomic writes, the dataset of a run."""

from __future__ import annotations

import json
from types import SimpleNamespace

import h5py
import numpy as np
import pytest
import torch

from neuralnets import runs


def test_write_metrics_merges_and_touches_nothing_else(tmp_path):
    (tmp_path / "other.txt").write_text("keep me")
    runs.write_metrics({"co_bps": 0.1}, tmp_path, extra={"model": "m", "data": "d", "train_time_s": 3.0})
    runs.write_metrics({"co_bps": 0.2, "vel_r2": float("nan")}, tmp_path, extra={"split": "test"})
    saved = json.loads((tmp_path / runs.METRICS_FILE).read_text())
    assert saved == {
        "model": "m",
        "data": "d",
        "train_time_s": 3.0,
        "split": "test",
        "metrics": {"co_bps": 0.2, "vel_r2": None},
    }
    assert sorted(p.name for p in tmp_path.iterdir()) == ["metrics.json", "other.txt"]  # no temp file left
    assert (tmp_path / "other.txt").read_text() == "keep me"
    run = runs.read_run(tmp_path)
    assert run["model"] == "m" and run["n_parameters"] is None and run["run_dir"] == str(tmp_path)


def test_write_metrics_refuses_a_corrupt_file_and_leaves_it(tmp_path):
    (tmp_path / runs.METRICS_FILE).write_text("{not json")
    with pytest.raises(ValueError, match="metrics.json exists but is not valid JSON"):
        runs.write_metrics({"co_bps": 0.1}, tmp_path)
    assert (tmp_path / runs.METRICS_FILE).read_text() == "{not json"


def test_read_run_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        runs.read_run(tmp_path / "nope")
    with pytest.raises(FileNotFoundError, match="metrics.json not found"):
        runs.read_run(tmp_path)
    (tmp_path / runs.METRICS_FILE).write_text(json.dumps({"model": "m"}))
    with pytest.raises(ValueError, match=r"\['data', 'metrics'\]"):
        runs.read_run(tmp_path)


def test_atomic_path_leaves_the_old_file_on_failure(tmp_path):
    target = tmp_path / "f.txt"
    target.write_text("old")
    with pytest.raises(RuntimeError), runs.atomic_path(target) as tmp:
        tmp.write_text("half")
        raise RuntimeError("killed mid-write")
    assert target.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["f.txt"]
    with runs.atomic_path(target) as tmp:
        assert tmp.parent == tmp_path and tmp != target
        tmp.write_text("new")
    assert target.read_text() == "new"


def test_predictions_round_trip_from_arrays(tmp_path):
    rates = np.random.default_rng(5).uniform(size=(3, 4, 2))  # float64 in, float32 stored
    path = runs.write_predictions(tmp_path, {"rates": rates, "latents": torch.tensor(rates[..., :1])})
    assert path == tmp_path / runs.PREDICTIONS_FILE
    pred = runs.read_predictions(tmp_path)
    assert sorted(pred) == ["latents", "rates"] and pred["rates"].dtype == np.float32
    np.testing.assert_array_equal(pred["rates"], rates.astype(np.float32))
    np.testing.assert_array_equal(pred["latents"], rates[..., :1].astype(np.float32))
    with pytest.raises(FileExistsError, match="refusing to overwrite"):
        runs.write_predictions(tmp_path, {"rates": rates})
    with pytest.raises(ValueError, match="need 'rates'"):
        runs.write_predictions(tmp_path / "other", {"latents": rates})
    assert not (tmp_path / "other" / runs.PREDICTIONS_FILE).exists()


def test_predictions_written_chunk_by_chunk(tmp_path):
    rates = np.random.default_rng(6).uniform(size=(7, 4, 2)).astype(np.float32)
    chunks = ((s, {"rates": rates[s : s + 3], "inputs": rates[s : s + 3, :, :1]}) for s in (0, 3, 6))
    runs.write_predictions(tmp_path, chunks, n_trials=7)
    with h5py.File(tmp_path / runs.PREDICTIONS_FILE, "r") as f:
        assert f["rates"].chunks[0] == 3 and f.attrs["n_trials"] == 7
    pred = runs.read_predictions(tmp_path / runs.PREDICTIONS_FILE)
    np.testing.assert_array_equal(pred["rates"], rates)
    np.testing.assert_array_equal(pred["inputs"], rates[:, :, :1])
    with pytest.raises(ValueError, match="needs n_trials"):
        runs.write_predictions(tmp_path / "b", iter([(0, {"rates": rates})]))
    with pytest.raises(ValueError, match="does not fit 5 trials"):
        runs.write_predictions(tmp_path / "c", iter([(0, {"rates": rates})]), n_trials=5)
    assert not (tmp_path / "c" / runs.PREDICTIONS_FILE).exists()  # a failed write leaves nothing


def test_predict_chunks_streams_a_model_and_restores_its_mode(tmp_path):
    class Fake(torch.nn.Module):
        def predict_batches(self, heldin, batch_size):
            self.eval()
            for s in range(0, len(heldin), batch_size):
                x = torch.as_tensor(heldin[s : s + batch_size])
                yield s, SimpleNamespace(rates=x.exp(), latents=x[..., :1], inputs=None)

    model = Fake().train()
    heldin = np.random.default_rng(7).uniform(size=(5, 3, 2)).astype(np.float32)
    data = SimpleNamespace(heldin_obs=heldin, n_trials=5)
    runs.write_predictions(tmp_path, runs.predict_chunks(model, data, batch_size=2), data.n_trials)
    assert model.training
    pred = runs.read_predictions(tmp_path)
    assert sorted(pred) == ["latents", "rates"]
    np.testing.assert_allclose(pred["rates"], np.exp(heldin), rtol=1e-6)


def test_read_predictions_legacy_and_plain_files(tmp_path):
    rates = np.random.default_rng(8).uniform(size=(3, 4, 2)).astype(np.float32)
    np.savez(tmp_path / runs.LEGACY_PREDICTIONS_FILE, rates=rates)  # an older run directory
    pred = runs.read_predictions(tmp_path)
    assert list(pred) == ["rates"]
    np.testing.assert_array_equal(pred["rates"], rates)
    np.save(tmp_path / "r.npy", rates)
    np.testing.assert_array_equal(runs.read_predictions(tmp_path / "r.npy")["rates"], rates)
    np.savez(tmp_path / "bad.npz", x=rates)
    with pytest.raises(ValueError, match="no array 'rates'"):
        runs.read_predictions(tmp_path / "bad.npz")
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="holds no predictions file"):
        runs.read_predictions(tmp_path / "empty")
    (tmp_path / "x.txt").write_text("")
    with pytest.raises(ValueError, match=r"x.txt: a predictions file must be"):
        runs.read_predictions(tmp_path / "x.txt")


def test_load_run_data_uses_data_source_and_kwargs():
    kwargs = {"seed": 3, "n_trials": 8, "n_bins": 12, "n_fwd": 2}
    data = runs.load_run_data({"data": "label", "data_source": "lorenz", "data_kwargs": kwargs})
    assert data.spikes.shape[:2] == (8, 12)
    with pytest.raises(ValueError, match="'data_kwargs' of run r must be an object"):
        runs.load_run_data({"data": "lorenz", "data_kwargs": [1], "run_dir": "r"})
