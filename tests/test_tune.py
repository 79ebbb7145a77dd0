"""`neuralnets-tune`: a tiny successive-halving study on tiny Lorenz, its outputs, and resume."""

from __future__ import annotations

import csv
import json
from types import SimpleNamespace

import pytest
import torch
from tiny import TINY_DATA, TINY_LFADS

from neuralnets.config import compose
from neuralnets.errors import ConfigError
from neuralnets.runs import read_run, read_status
from neuralnets.training.tune import ReportAndPrune, search_space, tune

pytest.importorskip("optuna")

TINY = [
    *TINY_DATA,
    *TINY_LFADS,
    "model.kl_ramp_steps=10",
    "model.l2_ramp_steps=10",
    "trainer.log_every_n_steps=1",
    "tune.max_epochs=2",
    "tune.min_epochs=1",
]


def _cfg(tmp_path, *overrides: str):
    return compose([*TINY, f"tune.dir={tmp_path / 'study'}", *overrides], config_name="tune")


def test_tune_runs_members_writes_a_leaderboard_and_resumes(tmp_path):
    rows = tune(_cfg(tmp_path, "tune.n_trials=2"))
    study = tmp_path / "study"
    assert len(rows) == 2 and {r["status"] for r in rows} <= {"complete", "pruned"}
    trials = json.loads((study / "trials.json").read_text())["trials"]
    assert [t["number"] for t in trials] == [0, 1]
    space = {p["key"] for p in search_space(_cfg(tmp_path))}
    assert space == set(trials[0]["params"]) and "module.coordinated_dropout" in space
    for t in trials:  # each member is an ordinary run with its hyperparameters applied
        run = read_run(t["run_dir"])
        assert read_status(t["run_dir"])["status"] == "finished"
        assert len(t["values"]) == t["epochs_trained"] >= 1  # val co-bps reported every epoch
        assert t["best"] == pytest.approx(run["monitor"]["val/co_bps"])
        assert run["val_metrics"]["co_bps"] is not None and run["model"] == "LFADS"
        assert list((study / "members" / f"{t['number']:03d}").glob("events.out.tfevents*"))
        cfg_text = (study / "members" / f"{t['number']:03d}" / "config.yaml").read_text()
        assert f"lr: {t['params']['module.lr']}" in cfg_text and "tune_member" in cfg_text
    with open(study / "leaderboard.csv") as f:
        table = list(csv.DictReader(f))
    assert [r["member"] for r in table] == [r["member"] for r in rows]
    assert {"module.lr", "val/co_bps", "epochs_trained", "status"} <= set(table[0])
    assert "| member |" in (study / "leaderboard.md").read_text()
    if rows[0]["status"] == "complete":
        assert (study / "best").resolve() == (study / "members" / rows[0]["member"]).resolve()
    # the same command with a larger budget continues the study: one more member, the two kept
    rows = tune(_cfg(tmp_path, "tune.n_trials=3"))
    trials = json.loads((study / "trials.json").read_text())["trials"]
    assert [t["number"] for t in trials] == [0, 1, 2] and len(rows) == 3
    assert tune(_cfg(tmp_path, "tune.n_trials=3")) == rows  # budget reached: nothing trained


def test_tune_refuses_bad_settings(tmp_path):
    with pytest.raises(ConfigError, match="tune.n_trials=0"):
        tune(_cfg(tmp_path, "tune.n_trials=0"))
    space = tmp_path / "space.yaml"
    space.write_text("params:\n  - {key: model.no_such, low: 0.0, high: 1.0}\n")
    with pytest.raises(ConfigError, match="'model.no_such' is not a setting"):
        tune(_cfg(tmp_path, f"tune.space={space}"))


def test_report_and_prune_reports_each_epoch_and_stops_when_told():
    class Trial:
        def __init__(self):
            self.reports = []

        def report(self, value, step):
            self.reports.append((step, value))

        def should_prune(self):
            return len(self.reports) >= 2

    trainer = SimpleNamespace(sanity_checking=False, callback_metrics={}, current_epoch=0, should_stop=False)
    cb = ReportAndPrune(Trial(), "val/loss")
    cb.on_validation_end(trainer, None)  # nothing logged yet: nothing reported
    for epoch, loss in enumerate((3.0, 2.0)):
        trainer.current_epoch, trainer.callback_metrics = epoch, {"val/loss": torch.tensor(loss)}
        cb.on_validation_end(trainer, None)
    assert cb.trial.reports == [(0, -3.0), (1, -2.0)]  # a loss is maximised negated
    assert cb.pruned and trainer.should_stop
