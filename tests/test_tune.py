"""`neuralnets-tune`: tiny Optuna studies on tiny Lorenz in a journal file: outputs and resume, two
worker processes on one study, a member really pruned, a diverging member, a killed worker, and a
SLURM-style array of workers through the submitit launcher's local mode."""

from __future__ import annotations

import csv
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from tiny import TINY_DATA, TINY_LFADS

from neuralnets.config import compose
from neuralnets.errors import ConfigError, NeuralnetsError
from neuralnets.runs import read_run, read_status
from neuralnets.training.study import WorkerLock, open_storage, search_space, study_name
from neuralnets.training.tune import ReportAndPrune, _join_overrides_ok, tune

optuna = pytest.importorskip("optuna")
REPO = Path(__file__).resolve().parents[1]

TINY = [
    *TINY_DATA,
    *TINY_LFADS,
    "threads=1",
    "model.kl_ramp_steps=10",
    "model.l2_ramp_steps=10",
    "trainer.log_every_n_steps=1",
    "tune.max_epochs=2",
    "tune.min_epochs=1",
]
TRAINED = {"complete", "pruned"}


def _cfg(tmp_path, *overrides: str):
    return compose([*TINY, f"tune.dir={tmp_path / 'study'}", *overrides], config_name="tune")


def _trials(cfg) -> list:
    """The study's trials as Optuna stores them, in trial-number order."""
    study = optuna.load_study(study_name=study_name(cfg), storage=open_storage(cfg))
    return sorted(study.get_trials(deepcopy=False), key=lambda t: t.number)


def test_tune_runs_members_writes_a_leaderboard_and_resumes(tmp_path):
    cfg = _cfg(tmp_path, "tune.n_trials=2")
    rows = tune(cfg)
    study = tmp_path / "study"
    assert len(rows) == 2 and {r["status"] for r in rows} <= {"complete", "pruned"}
    trials = _trials(cfg)
    assert [t.number for t in trials] == [0, 1] and (study / "journal.log").is_file()
    space = {p["key"] for p in search_space(cfg)}
    assert space == set(trials[0].params) and "module.coordinated_dropout" in space
    for t in trials:  # each member is an ordinary run with its hyperparameters applied
        run_dir = study / t.user_attrs["run_dir"]
        run = read_run(run_dir)
        assert read_status(run_dir)["status"] == "finished"
        assert t.user_attrs["status"] in TRAINED and t.state.is_finished()
        assert len(t.intermediate_values) >= 1  # val co-bps reported every epoch
        best = max(t.intermediate_values.values())
        assert best == pytest.approx(run["monitor"]["val/co_bps"])  # the checkpoint the run scored
        assert run["val_metrics"]["co_bps"] is not None and run["model"] == "LFADS"
        assert list(run_dir.glob("events.out.tfevents*"))
        cfg_text = (run_dir / "config.yaml").read_text()
        assert f"lr: {t.params['module.lr']}" in cfg_text and "tune_member" in cfg_text
    with open(study / "leaderboard.csv") as f:
        table = list(csv.DictReader(f))
    assert [r["member"] for r in table] == [r["member"] for r in rows]
    assert {"module.lr", "val/co_bps", "epochs_trained", "status", "run_dir"} <= set(table[0])
    assert "| member |" in (study / "leaderboard.md").read_text()
    if rows[0]["status"] == "complete":
        assert (study / "best").resolve() == (study / "members" / rows[0]["member"]).resolve()
    assert not list((study / "workers").glob("*.lock"))  # the worker let go of its lock
    # the same command with a larger budget continues the study: one more member, the two kept
    rows = tune(_cfg(tmp_path, "tune.n_trials=3"))
    assert [t.number for t in _trials(cfg)] == [0, 1, 2] and len(rows) == 3
    assert tune(_cfg(tmp_path, "tune.n_trials=3")) == rows  # budget reached: nothing trained
    # a different study in the same directory is refused, naming the setting
    with pytest.raises(ConfigError, match="model.gen_dim=16.*model.gen_dim=8"):
        tune(_cfg(tmp_path, "tune.n_trials=3", "model.gen_dim=8"))


def test_two_worker_processes_share_one_study(tmp_path):
    cfg = _cfg(tmp_path, "tune.n_trials=3", "tune.workers=2")
    rows = tune(cfg)
    trials = _trials(cfg)
    assert [t.number for t in trials] == [0, 1, 2] and len(rows) == 3  # the budget over both workers
    assert all(t.user_attrs["status"] in TRAINED and t.intermediate_values for t in trials)
    assert len({t.user_attrs["worker"] for t in trials}) == 2  # both workers trained members
    assert len({t.params["module.lr"] for t in trials}) == 3  # each drew its own values
    for t in trials:
        assert read_status(tmp_path / "study" / t.user_attrs["run_dir"])["status"] == "finished"


def test_a_member_is_really_pruned(tmp_path):
    # No co-bps reaches 1e9: the floor prunes the member after tune.min_epochs=1 of its 3 epochs.
    cfg = _cfg(tmp_path, "tune.n_trials=1", "tune.max_epochs=3", "tune.prune_worse_than=1e9")
    rows = tune(cfg)
    (trial,) = _trials(cfg)
    assert trial.state == optuna.trial.TrialState.PRUNED and trial.user_attrs["status"] == "pruned"
    assert list(trial.intermediate_values) == [0]  # reported once, then stopped
    status = read_status(tmp_path / "study" / "members" / "000")
    assert status["status"] == "finished" and status["pruned"] is True and status["epochs"] == 1
    assert rows[0]["status"] == "pruned" and rows[0]["epochs_trained"] == 1
    assert not (tmp_path / "study" / "best").exists()  # no complete member to point at


def test_a_diverging_member_is_recorded_and_the_study_goes_on(tmp_path):
    space = tmp_path / "absurd.yaml"  # learning rates that make the loss non-finite within a few steps
    space.write_text("params:\n  - {key: module.lr, low: 1.0e+3, high: 1.0e+4, log: true}\n")
    cfg = _cfg(
        tmp_path,
        f"tune.space={space}",
        "tune.n_trials=2",
        "tune.max_epochs=6",
        "module.divergence_min_steps=4",
    )
    rows = tune(cfg)
    trials = _trials(cfg)
    assert len(trials) == 2  # the first member diverged and the study went on to the second
    for t in trials:
        assert t.user_attrs["status"] == "diverged" and t.state == optuna.trial.TrialState.PRUNED
        assert "DivergenceError" in t.user_attrs["error"]
        status = read_status(tmp_path / "study" / t.user_attrs["run_dir"])
        assert status["status"] == "diverged" and "non-finite" in status["error"]
    assert [r["status"] for r in rows] == ["diverged", "diverged"]


def test_failed_members_are_recorded_and_a_worker_stops_after_too_many_in_a_row(tmp_path):
    # No training batch: every member fails after its run directory was made ("no optimizer step").
    cfg = _cfg(tmp_path, "+trainer.limit_train_batches=0", "tune.n_trials=4", "tune.max_failures_in_row=2")
    with pytest.raises(NeuralnetsError, match="2 members in a row failed .*no optimizer step"):
        tune(cfg)
    trials = _trials(cfg)
    assert len(trials) == 2  # the worker stopped; the other two members were never started
    assert [r["status"] for r in csv.DictReader(open(tmp_path / "study" / "leaderboard.csv"))] == [
        "failed"
    ] * 2
    for t in trials:
        assert t.state == optuna.trial.TrialState.FAIL and t.user_attrs["status"] == "failed"
        status = read_status(tmp_path / "study" / t.user_attrs["run_dir"])
        assert status["status"] == "failed" and "no optimizer step" in status["error"]


def _start_cli(args: list[str]) -> subprocess.Popen:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    return subprocess.Popen(
        [sys.executable, "-m", "neuralnets.training.tune", *args],
        cwd=REPO,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )


def test_a_killed_workers_member_is_failed_and_the_study_completes(tmp_path):
    member = tmp_path / "study" / "members" / "000"
    proc = _start_cli([*TINY, f"tune.dir={tmp_path / 'study'}", "tune.n_trials=2"])
    try:
        deadline = time.monotonic() + 240
        while not (member / "status.json").is_file() or read_status(member)["status"] != "running":
            assert proc.poll() is None, proc.communicate()[0][-3000:]
            assert time.monotonic() < deadline, "the worker never started a member"
            time.sleep(0.02)
    finally:
        os.killpg(proc.pid, signal.SIGKILL)  # mid-member: no chance to record anything
        proc.communicate()
    cfg = _cfg(tmp_path, "tune.n_trials=2")
    (lost,) = _trials(cfg)
    assert lost.state == optuna.trial.TrialState.RUNNING  # what the killed worker left behind
    rows = tune(cfg)  # the same command again
    trials = _trials(cfg)
    assert trials[0].state == optuna.trial.TrialState.FAIL and "status" not in trials[0].user_attrs
    status = read_status(member)
    assert status["status"] == "failed" and "died during training" in status["error"]
    # the lost member does not use up the budget: two members trained after it
    assert [t.user_attrs.get("status") in TRAINED for t in trials] == [False, True, True]
    assert rows[-1]["status"] == "lost" and rows[-1]["member"] == "000" and len(rows) == 3


@pytest.mark.slow
def test_an_array_of_workers_through_the_submitit_launcher(tmp_path):
    """The documented SLURM-array command, with submitit's local executor instead of SLURM: two jobs,
    each its own process and worker, share the study."""
    pytest.importorskip("hydra_plugins.hydra_submitit_launcher")
    study = tmp_path / "study"
    args = ["-m", "hydra/launcher=slurm_local", "tune.worker=range(2)", *TINY, f"tune.dir={study}"]
    proc = _start_cli([*args, "tune.n_trials=3"])
    out, _ = proc.communicate(timeout=600)
    assert proc.returncode == 0, out[-4000:]
    trials = _trials(_cfg(tmp_path, "tune.n_trials=3"))
    assert len(trials) == 3
    assert all(t.user_attrs["status"] in TRAINED and t.intermediate_values for t in trials)
    assert len({t.user_attrs["worker"] for t in trials}) == 2  # each job a worker of its own
    assert len([p for p in (study / ".submitit").iterdir() if p.name != "%j"]) == 2  # two submitit jobs


def test_tune_refuses_bad_settings(tmp_path):
    with pytest.raises(ConfigError, match="tune.n_trials=0"):
        tune(_cfg(tmp_path, "tune.n_trials=0"))
    with pytest.raises(ConfigError, match="tune.workers=0"):
        tune(_cfg(tmp_path, "tune.workers=0"))
    space = tmp_path / "space.yaml"
    space.write_text("params:\n  - {key: model.no_such, low: 0.0, high: 1.0}\n")
    with pytest.raises(ConfigError, match="'model.no_such' is not a setting"):
        tune(_cfg(tmp_path, f"tune.space={space}", "tune.dir=" + str(tmp_path / "other")))
    with pytest.raises(ConfigError, match="holds no study yet"):
        tune(_cfg(tmp_path, "tune.join=true", "tune.dir=" + str(tmp_path / "empty")))
    with pytest.raises(ConfigError, match="only .* may be set, got \\['model=rnn'\\]"):
        _join_overrides_ok(["tune.join=true", "tune.dir=x", "tune.workers=2", "model=rnn"])
    with pytest.raises(ConfigError, match="got \\['tune.n_trials=9'\\]"):  # the study's budget rules
        _join_overrides_ok(["tune.join=true", "tune.dir=x", "tune.n_trials=9"])
    _join_overrides_ok(["tune.join=true", "tune.dir=x", "tune.storage=sqlite:///x.db", "tune.worker=3"])
    planted = tmp_path / "planted"
    planted.mkdir()
    (planted / "study.yaml").write_text("seed: ${oc.env:HOME}\n")
    with pytest.raises(ConfigError, match="study.yaml: a resolver interpolation"):
        tune(_cfg(tmp_path, "tune.join=true", f"tune.dir={planted}"))
    with pytest.raises(ConfigError, match="tune.storage=nosuchdb://x: cannot open it"):
        open_storage(_cfg(tmp_path, "tune.storage=nosuchdb://x"))


def test_a_joining_worker_trains_the_studys_own_config(tmp_path):
    """tune.join=true takes study.yaml, whatever this command's other settings say, and an RDB URL works
    as the storage."""
    db = f"sqlite:///{tmp_path / 'study.db'}"
    first = _cfg(tmp_path, "tune.n_trials=1", f"tune.storage={db}", "tune.max_epochs=1")
    tune(first)
    tune(_cfg(tmp_path, "tune.n_trials=2", f"tune.storage={db}", "tune.max_epochs=1", "tune.timeout_s=1e-9"))
    # (the budget is now 2: the latest command's; it trained nothing in its 1 ns)
    joined = _cfg(tmp_path, "tune.join=true", "tune.max_epochs=5", "model.gen_dim=8")
    rows = tune(joined)  # the storage, the epochs and the budget come from the study
    trials = _trials(first)
    assert len(trials) == 2 and len(rows) == 2 and not (tmp_path / "study" / "journal.log").exists()
    assert [len(t.intermediate_values) for t in trials] == [1, 1]  # max_epochs=1, the study's
    sizes = [read_run(tmp_path / "study" / "members" / m)["n_parameters"] for m in ("000", "001")]
    assert sizes[0] == sizes[1]  # gen_dim the study's, not this command's


def test_a_worker_lock_is_free_only_once_its_process_is_gone(tmp_path):
    with WorkerLock(tmp_path) as me:
        assert WorkerLock.alive(tmp_path, me.name) and (tmp_path / "workers" / f"{me.name}.lock").is_file()
    assert not WorkerLock.alive(tmp_path, me.name)  # let go on exit
    assert not WorkerLock.alive(tmp_path, "no-such-worker")
    # a lock held by another process, which is then killed: the OS frees it
    code = (
        "import fcntl, os, sys, time; fd = os.open(sys.argv[1], os.O_RDWR | os.O_CREAT); "
        "fcntl.flock(fd, fcntl.LOCK_EX); print('locked', flush=True); time.sleep(600)"
    )
    lock = tmp_path / "workers" / "other.lock"
    holder = subprocess.Popen([sys.executable, "-c", code, str(lock)], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        assert WorkerLock.alive(tmp_path, "other")
    finally:
        holder.kill()
        holder.wait()
    assert not WorkerLock.alive(tmp_path, "other")


def test_report_and_prune_reports_each_epoch_and_stops_when_told():
    class Trial:
        def __init__(self, prune_after: int):
            self.reports, self.prune_after = [], prune_after

        def report(self, value, step):
            self.reports.append((step, value))

        def should_prune(self):
            return len(self.reports) >= self.prune_after

    trainer = SimpleNamespace(sanity_checking=False, callback_metrics={}, current_epoch=0, should_stop=False)
    cb = ReportAndPrune(Trial(2), "val/loss")
    cb.on_validation_end(trainer, None)  # nothing logged yet: nothing reported
    for epoch, loss in enumerate((3.0, 2.0)):
        trainer.current_epoch, trainer.callback_metrics = epoch, {"val/loss": torch.tensor(loss)}
        cb.on_validation_end(trainer, None)
    assert cb.trial.reports == [(0, -3.0), (1, -2.0)]  # a loss is maximised negated
    assert cb.pruned and trainer.should_stop and cb.best == -2.0
    # the floor, in the metric's units: a loss still above 2.5 after 2 epochs is pruned
    trainer.should_stop = False
    cb = ReportAndPrune(Trial(99), "val/loss", floor=2.5, floor_epochs=2)
    for epoch, loss in enumerate((3.0, 2.7)):
        trainer.current_epoch, trainer.callback_metrics = epoch, {"val/loss": torch.tensor(loss)}
        cb.on_validation_end(trainer, None)
        assert cb.pruned == (epoch == 1)
