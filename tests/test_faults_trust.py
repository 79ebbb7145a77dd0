"""Runs you can trust, round three (issue 32, items 2, 5 and 7): a resume that changes the model, a
resume's CSV log, huge or complex arrays declared in HDF5 files, an ensemble member with NaN rates, a
model card that disagrees with its checkpoint, and altered predictions. Each test failed on ea81628."""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import h5py
import numpy as np
import pytest
from test_ensemble import KWARGS, _fake_run
from test_faults import _cli, _error_lines, _resume
from test_training import tiny_cfg

from neuralnets import load_pretrained
from neuralnets.data.formats.lfads_h5 import load_lfads_h5
from neuralnets.data.formats.nlb_h5 import load_nlb_h5
from neuralnets.data.loaders import load
from neuralnets.errors import EXIT_USER_ERROR, CheckpointError, ConfigError, DataError, RunStatusError
from neuralnets.eval.cli import eval_main
from neuralnets.pretrained.registry import bundled_dir
from neuralnets.runs import read_status, write_predictions
from neuralnets.training.ensemble import ensemble
from neuralnets.training.ensemble import main as ensemble_main
from neuralnets.training.train import train


def _files(run: Path) -> dict[str, bytes]:
    """Every file of the run directory but its lock, by relative path."""
    return {
        str(p.relative_to(run)): p.read_bytes() for p in run.rglob("*") if p.is_file() and p.name != ".lock"
    }


# ----- item 2: a resume that changes the model is refused before the run is touched; logs are kept
@pytest.fixture(scope="module")
def csv_run(tmp_path_factory) -> Path:
    run = tmp_path_factory.mktemp("csv") / "run"
    train(tiny_cfg("trainer.max_epochs=1", "callbacks.figures=false", "logger=csv"), run)
    return run


def test_a_resume_that_changes_the_model_is_refused_and_the_run_is_untouched(csv_run, tmp_path):
    run = Path(shutil.copytree(csv_run, tmp_path / "run"))
    before = _files(run)
    cfg = tiny_cfg("logger=csv")
    with pytest.raises(
        ConfigError, match=r"model\.gen_dim=32, but the run was trained with model\.gen_dim=16"
    ) as err:
        _resume(cfg, run, "model.gen_dim=32", "trainer.max_epochs=2")
    assert "\n" not in str(err.value)
    with pytest.raises(ConfigError, match=r"data\.load_kwargs\.n_bins"):
        _resume(cfg, run, "data.load_kwargs.n_bins=20", "trainer.max_epochs=2")
    assert _files(run) == before and read_status(run)["status"] == "finished"


def test_the_resume_command_with_another_model_is_one_line_and_exit_2(csv_run, tmp_path):
    run = Path(shutil.copytree(csv_run, tmp_path / "run"))
    before = _files(run)
    out = _cli(f"resume={run}", "model.gen_dim=32", "trainer.max_epochs=2")  # the probe
    lines = _error_lines(out.stderr)
    assert out.returncode == EXIT_USER_ERROR and len(lines) == 1 and "model.gen_dim=32" in lines[0], (
        out.stderr
    )
    assert "Traceback" not in out.stderr and _files(run) == before


def test_a_resume_appends_to_the_csv_log(csv_run, tmp_path):
    run = Path(shutil.copytree(csv_run, tmp_path / "run"))
    with open(run / "metrics.csv") as f:
        first = list(csv.DictReader(f))
    assert first
    _resume(tiny_cfg("logger=csv"), run, "trainer.max_epochs=2", "threads=1")  # free to change on resume
    with open(run / "metrics.csv") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) > len(first)
    for old, new in zip(first, rows, strict=False):  # the first segment's rows are kept as they were
        assert {k: v for k, v in new.items() if k in old and v} == {k: v for k, v in old.items() if v}
    assert max(int(r["epoch"]) for r in rows if r.get("epoch")) == 1


# ----- item 5 and 7: arrays are checked from their metadata before they are read
def _nlb_file(path: Path, **extra) -> Path:
    rng = np.random.default_rng(0)
    with h5py.File(path, "w") as f:
        f["train_spikes_heldin"] = rng.poisson(1.0, (6, 5, 3)).astype(np.int64)
        f["train_spikes_heldout"] = rng.poisson(1.0, (6, 5, 2)).astype(np.int64)
        for key, make in extra.items():
            make(f, key)
    return path


def _huge(f, key):  # ~4 TB declared, nothing stored: a 19 KB file
    f.create_dataset(key, shape=(6, 5, 2**35), dtype=np.float32, chunks=(1, 1, 1024))


def test_a_huge_declared_array_is_refused_before_it_is_read(tmp_path):
    path = _nlb_file(tmp_path / "huge.h5", train_behavior=_huge)
    assert path.stat().st_size < 100_000
    with pytest.raises(DataError, match=r"train_behavior.*\(6, 5, 34359738368\).*TiB") as err:
        load_nlb_h5(path)
    assert str(path) in str(err.value)
    lfads = tmp_path / "huge_lfads.h5"
    with h5py.File(lfads, "w") as f:
        f["train_encod_data"] = np.ones((6, 5, 3), dtype=np.int64)
        _huge(f, "train_behavior")
    with pytest.raises(DataError, match="train_behavior.*TiB"):
        load_lfads_h5(lfads, bin_size=0.01)


def test_a_declared_shape_that_does_not_fit_is_refused_before_it_is_read(tmp_path, monkeypatch):
    def wrong_trials(f, key):
        f.create_dataset(key, shape=(7, 5, 2), dtype=np.float32)

    path = _nlb_file(tmp_path / "wrong.h5", train_behavior=wrong_trials)
    read = []
    real = h5py.Dataset.__getitem__
    monkeypatch.setattr(h5py.Dataset, "__getitem__", lambda self, i: read.append(self.name) or real(self, i))
    with pytest.raises(DataError, match=r"train_behavior.*\(7, 5, 2\).*expected \(6, 5, \*\)"):
        load_nlb_h5(path)
    assert "/train_behavior" not in read


def test_complex_counts_are_refused_not_cast(tmp_path):
    path = tmp_path / "complex.h5"
    with h5py.File(path, "w") as f:
        f["train_spikes_heldin"] = (np.ones((6, 5, 3)) + 1j).astype(np.complex64)
        f["train_spikes_heldout"] = np.ones((6, 5, 2), dtype=np.int64)
    with pytest.raises(DataError, match="train_spikes_heldin.*complex64"):
        load_nlb_h5(path)


# ----- item 7: ensemble members, model cards, predictions
@pytest.fixture(scope="module")
def lorenz_data():
    return load("lorenz", **KWARGS)


def test_an_ensemble_member_with_nan_rates_is_named(tmp_path, lorenz_data):
    good = _fake_run(tmp_path / "good", lorenz_data, 0.3, 0)
    bad = _fake_run(tmp_path / "bad", lorenz_data, 0.3, 1)
    rates = lorenz_data.rates.astype(np.float32)
    rates[3, 2, 1] = np.nan
    write_predictions(bad, {"rates": rates}, replace=True)
    with pytest.raises(DataError, match=rf"{bad}.*not finite") as err:
        ensemble([good, bad], tmp_path / "ens")
    assert "trial 3" in str(err.value)
    assert not (tmp_path / "ens").exists()


def test_altered_predictions_are_refused_by_ensemble_and_eval(tmp_path, lorenz_data, capsys):
    a = _fake_run(tmp_path / "a", lorenz_data, 0.3, 0)
    b = _fake_run(tmp_path / "b", lorenz_data, 0.3, 1)
    assert (b / "predictions.h5.sha256").is_file()  # recorded when written
    with h5py.File(b / "predictions.h5", "r+") as f:
        f["rates"][0, 0, 0] = 123.0
    with pytest.raises(RunStatusError, match=rf"{b}/predictions.h5.*sha256.*does not match"):
        ensemble([a, b], tmp_path / "ens")
    assert ensemble_main([str(a), str(b), "--out", str(tmp_path / "ens2")]) == 2
    assert "does not match" in capsys.readouterr().err
    assert eval_main([str(b)]) == 2
    assert "does not match" in capsys.readouterr().err
    (b / "predictions.h5.sha256").unlink()  # no record at all: refused unless trusted
    assert ensemble_main([str(a), str(b), "--out", str(tmp_path / "ens3")]) == 2
    assert "no sha256 record" in capsys.readouterr().err
    assert ensemble_main([str(a), str(b), "--out", str(tmp_path / "ens4"), "--trust-unverified"]) == 0


@pytest.mark.parametrize("where", ["model", "config"])
def test_a_model_card_that_names_another_model_than_its_checkpoint_is_refused(tmp_path, where):
    folder = Path(shutil.copytree(bundled_dir("lfads_lorenz"), tmp_path / "mine"))
    card = json.loads((folder / "model_card.json").read_text())
    assert load_pretrained(folder).card["model"] == "LFADS"  # the copy loads as it is
    if where == "model":
        card["model"] = "NDT"
    else:
        card["config"]["model"] = {"_target_": "neuralnets.models.ndt.NDT", "d_model": 32}
    (folder / "model_card.json").write_text(json.dumps(card))
    with pytest.raises(CheckpointError, match=r"model_card.json.*NDT.*checkpoint.*LFADS"):
        load_pretrained(folder)
