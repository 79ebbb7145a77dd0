"""runs.recorded_run: the one context every command makes and records a run directory through."""

from __future__ import annotations

import re

import pytest

from neuralnets.errors import RunStatusError
from neuralnets.runs import read_status, recorded_run, run_lock, write_status
from tests.test_package_layout import _modules


def test_a_failing_block_is_recorded_failed_on_one_line(tmp_path):
    with pytest.raises(ValueError), recorded_run(tmp_path / "run") as run_dir:
        raise ValueError("bad\nvalue")
    status = read_status(run_dir)
    assert status["status"] == "failed" and status["error"] == "ValueError: bad value"


def test_an_interrupted_block_is_recorded_interrupted(tmp_path):
    with pytest.raises(KeyboardInterrupt), recorded_run((tmp_path, "name")) as run_dir:
        raise KeyboardInterrupt
    assert run_dir == tmp_path / "name" and read_status(run_dir)["status"] == "interrupted"


def test_a_status_the_block_recorded_is_kept_and_the_run_is_locked_meanwhile(tmp_path):
    with pytest.raises(RuntimeError), recorded_run(tmp_path / "run") as run_dir:
        with pytest.raises(RunStatusError, match="refusing to train it twice"), run_lock(run_dir):
            pass
        write_status(run_dir, "diverged", error="loss is nan")
        raise RuntimeError("after the divergence was recorded")
    status = read_status(run_dir)
    assert (status["status"], status["error"]) == ("diverged", "loss is nan")
    with pytest.raises(FileExistsError, match="already holds a run"), recorded_run(run_dir):
        pass


def test_only_the_run_owner_claims_locks_or_spells_the_status_error():
    """Commands make runs through recorded_run: nobody claims, locks or formats the error by hand."""
    by_hand = re.compile(r"\b(claim_run_dir|create_run_dir|run_lock)\(|join\(f\"\{type\(err\)")
    offenders = [
        name
        for name, path in _modules().items()
        if name != "neuralnets.runs" and by_hand.search(path.read_text())
    ]
    assert offenders == []


def test_settling_a_run_still_held_at_the_deadline_records_nothing(tmp_path):
    import time

    from neuralnets.runs import create_run_dir, settle_run

    run_dir = create_run_dir(tmp_path, "run")
    with run_lock(run_dir):  # its process still holds it
        assert settle_run(run_dir, time.monotonic() + 0.3, SystemExit("gone")) is False
    assert read_status(run_dir)["status"] == "running"
    assert settle_run(run_dir, time.monotonic(), SystemExit("gone")) is True  # let go: recorded
    assert read_status(run_dir)["status"] == "interrupted"
