"""`neuralnets-ensemble`: mean rates of runs on the same data, k chosen on val, an ordinary run dir."""

from __future__ import annotations

import numpy as np
import pytest

from neuralnets import runs
from neuralnets.data.loaders import load
from neuralnets.eval.cli import eval_main
from neuralnets.eval.harness import evaluate
from neuralnets.training.ensemble import choose_members, ensemble, main

KWARGS = {"n_trials": 40, "n_neurons": 12, "n_heldout": 4, "n_bins": 16, "n_fwd": 4, "seed": 0}


@pytest.fixture(scope="module")
def data():
    return load("lorenz", **KWARGS)


def _fake_run(path, data, noise: float, seed: int, kwargs=KWARGS):
    """A finished run directory whose rates are the true rates times log-normal noise."""
    rng = np.random.default_rng(seed)
    rates = data.rates * np.exp(noise * rng.standard_normal(data.rates.shape) - noise**2 / 2)  # mean-1 noise
    path.mkdir()
    runs.write_predictions(path, {"rates": rates.astype(np.float32)})
    extra = {"model": "Fake", "data": "lorenz", "data_source": "lorenz", "data_kwargs": kwargs}
    runs.write_metrics(evaluate(rates, data, "test"), path, extra=extra)
    return path


def test_ensemble_averages_the_best_members_on_val(tmp_path, data):
    members = [_fake_run(tmp_path / f"m{i}", data, noise, i) for i, noise in enumerate((0.6, 0.6, 3.0))]
    record = ensemble(members, tmp_path / "ens")
    scores = [m["val_co_bps"] for m in record["members"]]
    assert scores[2] < min(scores[:2])  # the noisy member ranks last...
    assert record["k"] == 2 and [m["chosen"] for m in record["members"]] == [True, True, False]
    curve = record["val_co_bps_by_k"]
    assert curve["2"] == max(curve.values()) and record["val_metrics"]["co_bps"] == pytest.approx(curve["2"])
    mean = (runs.read_predictions(members[0])["rates"] + runs.read_predictions(members[1])["rates"]) / 2
    np.testing.assert_allclose(runs.read_predictions(tmp_path / "ens")["rates"], mean, rtol=1e-5)
    on_disk = runs.read_run(tmp_path / "ens")
    assert on_disk["k"] == 2 and len(on_disk["members"]) == 3
    assert runs.read_status(tmp_path / "ens")["status"] == "finished"
    assert on_disk["metrics"]["co_bps"] > max(runs.read_run(m)["metrics"]["co_bps"] for m in members)
    assert list((tmp_path / "ens").glob("events.out.tfevents*"))  # a TensorBoard hparams row
    assert eval_main([str(tmp_path / "ens")]) == 0  # neuralnets-eval reads it like a trained run
    # a fixed k takes the best k on val
    assert choose_members([runs.read_predictions(m)["rates"] for m in members], data, 1)[0] == [
        int(np.argmax(scores))
    ]


def test_ensemble_refuses_mixed_data_used_outputs_and_bad_k(tmp_path, data, capsys):
    a, b = _fake_run(tmp_path / "a", data, 0.3, 0), _fake_run(tmp_path / "b", data, 0.3, 1)
    other = _fake_run(tmp_path / "other", data, 0.3, 2, kwargs={**KWARGS, "seed": 1})
    assert main([str(a), str(other), "--out", str(tmp_path / "x")]) == 2
    assert "data_kwargs" in capsys.readouterr().err and not (tmp_path / "x").exists()
    assert main([str(a), str(b), "--out", str(tmp_path / "x"), "--k", "5"]) == 2
    assert "--k 5: expected 'auto' or 1..2" in capsys.readouterr().err
    assert main([str(a), str(b), "--out", str(a)]) == 2
    assert "refusing to overwrite" in capsys.readouterr().err
