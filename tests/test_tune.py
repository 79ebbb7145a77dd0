"""`neuralnets-tune`: a tiny successive-halving study on tiny Lorenz, its outputs, and resume."""

from __future__ import annotations

import csv
import json

import pytest
from hydra import compose, initialize_config_dir
from tiny import TINY_LFADS

from neuralnets.runs import read_run
from neuralnets.training.build import CONFIG_DIR
from neuralnets.training.module import ConfigError
from neuralnets.training.tune import search_space, tune

pytest.importorskip("optuna")

TINY = [
    *(
        f"data.load_kwargs.{k}={v}"
        for k, v in dict(n_trials=40, n_neurons=12, n_heldout=4, n_bins=16, n_fwd=4).items()
    ),
    *TINY_LFADS,
    "model.kl_ramp_steps=10",
    "model.l2_ramp_steps=10",
    "trainer.log_every_n_steps=1",
    "tune.max_epochs=2",
    "tune.min_epochs=1",
]


def _cfg(tmp_path, *overrides: str):
    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
        return compose("tune", overrides=[*TINY, f"tune.dir={tmp_path / 'study'}", *overrides])


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
