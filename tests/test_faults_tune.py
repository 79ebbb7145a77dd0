"""Runs you can trust, round three (issue 32, items 1, 3 and 4): `neuralnets-tune` stopped by SIGTERM,
a damaged Optuna journal, an edited search-space file. Each test failed on ea81628."""

from __future__ import annotations

import contextlib
import os
import signal
import time
from pathlib import Path

import pytest
import pytorch_lightning as pl
from test_tune import TINY, _start_cli, _trials

import neuralnets.training.build as build_mod
import neuralnets.training.tune as tune_mod
from neuralnets.config import compose
from neuralnets.errors import EXIT_INTERRUPTED, ConfigError, RunInterrupted
from neuralnets.runs import read_status
from neuralnets.training.tune import tune

optuna = pytest.importorskip("optuna")


def _cfg(tmp_path: Path, *overrides: str):
    return compose(
        [*TINY, f"tune.dir={tmp_path / 'study'}", "tune.max_epochs=1", *overrides], config_name="tune"
    )


# ----- item 1: SIGTERM stops the tuner; the member is interrupted (resumable), not failed
class _SigTerm(pl.Callback):
    """Sends this process SIGTERM at the second training batch (a scheduler preempting the job)."""

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        if batch_idx == 1:
            os.kill(os.getpid(), signal.SIGTERM)


def test_sigterm_stops_the_tuner_and_a_rerun_continues_the_study(tmp_path, monkeypatch):
    real = build_mod.build_callbacks
    monkeypatch.setattr(build_mod, "build_callbacks", lambda *a: [*real(*a), _SigTerm()])
    cfg = _cfg(tmp_path, "tune.n_trials=2")
    with pytest.raises(RunInterrupted) as err:
        tune(cfg)
    assert err.value.exit_code == EXIT_INTERRUPTED and "rerun" in str(err.value)
    monkeypatch.undo()
    (trial,) = _trials(cfg)  # the tuner stopped: no second member was started
    assert trial.user_attrs["status"] == "interrupted"
    member = tmp_path / "study" / "members" / "000"
    status = read_status(member)
    assert status["status"] == "interrupted" and "resume=" in status["error"]
    assert (member / "checkpoints" / "last.ckpt").is_file()  # resumable with neuralnets-train resume=
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL
    rows = tune(_cfg(tmp_path, "tune.n_trials=2"))  # the same command continues the study
    states = {r["member"]: r["status"] for r in rows}
    assert states["000"] == "interrupted" and len(rows) == 3  # not counted: two members trained after it
    assert sorted(s for m, s in states.items() if m != "000") == ["complete", "complete"]


def test_sigterm_between_members_stops_the_tuner(tmp_path, monkeypatch):
    real = tune_mod._run_member

    def then_sigterm(*args):
        result = real(*args)
        os.kill(os.getpid(), signal.SIGTERM)  # while no member trains
        return result

    monkeypatch.setattr(tune_mod, "_run_member", then_sigterm)
    cfg = _cfg(tmp_path, "tune.n_trials=3")
    with pytest.raises(RunInterrupted, match="SIGTERM"):
        tune(cfg)
    assert [t.user_attrs["status"] for t in _trials(cfg)] == ["complete"]
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL


def test_sigterm_to_the_tune_command_reaches_its_workers_and_exits_75(tmp_path):
    """The issue's probe from the command line, with two worker processes: SIGTERM to the command
    (not to its workers) is passed on; each member in training is interrupted; exit 75. No member
    can be pruned before the signal (first rung at epoch 500): a pruned first member would let its
    worker start a third before the signal, a race with nothing to do with the probe."""
    study = tmp_path / "study"
    proc = _start_cli(
        [
            *TINY,
            f"tune.dir={study}",
            "tune.n_trials=4",
            "tune.workers=2",
            "tune.max_epochs=500",
            "tune.min_epochs=500",
        ]
    )
    try:
        deadline = time.monotonic() + 300
        while len(list(study.glob("members/*/checkpoints/last.ckpt"))) < 2:
            assert proc.poll() is None, proc.communicate()[0][-3000:]
            assert time.monotonic() < deadline, "the workers never saved a checkpoint"
            time.sleep(0.2)
        proc.send_signal(signal.SIGTERM)
        out = proc.communicate(timeout=120)[0]
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)  # its workers too, had the signal not reached them
    assert proc.returncode == EXIT_INTERRUPTED, out[-3000:]
    assert "rerun the command" in out.strip().splitlines()[-1]
    cfg = _cfg(tmp_path, "tune.n_trials=4", "tune.workers=2")
    assert [t.user_attrs["status"] for t in _trials(cfg)] == ["interrupted", "interrupted"]
    for member in study.glob("members/*"):
        assert read_status(member)["status"] == "interrupted"


# ----- item 3: a damaged journal is named at open, never appended to, and repaired on request
@pytest.fixture(scope="module")
def _study(tmp_path_factory) -> Path:
    tmp = tmp_path_factory.mktemp("journal")
    tune(_cfg(tmp, "tune.n_trials=1"))
    return tmp


@pytest.fixture
def study(_study, tmp_path) -> Path:
    import shutil

    shutil.copytree(_study / "study", tmp_path / "study", symlinks=True)
    return tmp_path


def test_a_garbled_journal_line_is_named_at_open(study):
    journal = study / "study" / "journal.log"
    lines = journal.read_bytes().splitlines(keepends=True)
    lines[2] = b'{"op_code": 4, "worker_id": garbled\n'
    journal.write_bytes(b"".join(lines))
    with pytest.raises(ConfigError, match=rf"{journal}: line 3 is not a JSON record") as err:
        tune(_cfg(study, "tune.n_trials=2"))
    assert "\n" not in str(err.value) and "tune.repair_journal=true" in str(err.value)


def test_a_torn_last_record_is_never_appended_to_and_the_repair_keeps_every_complete_one(study):
    journal = study / "study" / "journal.log"
    whole = journal.read_bytes()
    n = whole.count(b"\n")
    torn = whole + b'{"op_code": 5, "worker_id": "x", "trial_id": 0, "st'  # a crash mid-append
    journal.write_bytes(torn)
    with pytest.raises(ConfigError, match=rf"line {n + 1} is cut short"):
        tune(_cfg(study, "tune.n_trials=2"))
    assert journal.read_bytes() == torn  # nothing appended after it
    rows = tune(_cfg(study, "tune.n_trials=2", "tune.repair_journal=true"))
    (backup,) = journal.parent.glob("journal.log.bak-*")
    assert backup.read_bytes() == torn
    assert journal.read_bytes().startswith(whole)  # every complete record kept, then the new member's
    assert len(rows) == 2 and {r["status"] for r in rows} == {"complete"}


def test_a_repair_drops_a_garbled_line_and_names_it(study, caplog):
    journal = study / "study" / "journal.log"
    lines = journal.read_bytes().splitlines(keepends=True)
    last = len(lines)
    lines[-1] = b"\x00\x00garbage\n"  # the last record (the trial's end) damaged in place
    journal.write_bytes(b"".join(lines))
    tune(_cfg(study, "tune.n_trials=1", "tune.repair_journal=true"))
    assert f"dropped line(s) [{last}]" in caplog.text
    assert journal.read_bytes().splitlines(keepends=True)[: last - 1] == lines[: last - 1]


# ----- item 4: the search space's content is part of the study's identity
def test_an_edited_search_space_is_refused_naming_what_changed(tmp_path):
    space = tmp_path / "space.yaml"
    space.write_text("params:\n  - {key: model.dropout, low: 0.0, high: 0.2}\n")
    tune(_cfg(tmp_path, f"tune.space={space}", "tune.n_trials=1"))
    space.write_text("params:\n  - {key: model.dropout, low: 0.5, high: 0.9}\n")
    with pytest.raises(ConfigError, match=r"model\.dropout.*low.*0\.0.*0\.5") as err:
        tune(_cfg(tmp_path, f"tune.space={space}", "tune.n_trials=2"))
    assert "\n" not in str(err.value) and str(space) in str(err.value)
    with pytest.raises(ConfigError, match="search space"):  # a joining worker too
        tune(_cfg(tmp_path, f"tune.space={space}", "tune.join=true"))
    assert len(_trials(_cfg(tmp_path, f"tune.space={space}"))) == 1  # nothing trained on the new range


def test_a_record_cut_short_while_the_study_runs_is_never_appended_to(tmp_path):
    from neuralnets.training.journal import open_journal

    journal = tmp_path / "journal.log"
    study = optuna.create_study(study_name="s", storage=open_journal(journal))
    study.set_user_attr("a", 1)
    torn = journal.read_bytes() + b'{"op_code": 8, "study_id": 0, "us'  # another worker killed mid-append
    journal.write_bytes(torn)
    with pytest.raises(ConfigError, match="cut short"):
        study.set_user_attr("b", 2)
    assert journal.read_bytes() == torn


def test_a_model_without_a_search_space_is_one_line_and_leaves_no_study(tmp_path):
    """GPFA's ModelFamily declares no search space: refused before the study's directory is made."""
    cfg = compose(["model=gpfa", f"tune.dir={tmp_path / 'study'}", "threads=1"], config_name="tune")
    with pytest.raises(ConfigError, match="model 'gpfa' declares no search space.*tune.space=FILE"):
        tune(cfg)
    assert not (tmp_path / "study").exists()
