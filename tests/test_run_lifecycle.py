"""The run directory's owner: checkpoints and their records (`neuralnets.checkpoints`), the run lock and
the metrics.json record (`neuralnets.runs`), and the one lifecycle `training.run.run_training`."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import pytorch_lightning as pl
import torch
from test_training import tiny_cfg

from neuralnets.checkpoints import (
    commit_checkpoint,
    digest_path,
    file_sha256,
    load_checkpoint,
    partial_path,
    recorded_digests,
    run_checkpoint,
    save_checkpoint,
    verify_checkpoint,
)
from neuralnets.errors import CheckpointError, CheckpointNotFound, RunStatusError
from neuralnets.runs import MetricsRecord, read_metrics, read_run, read_status, run_lock, write_metrics
from neuralnets.training.run import RunResult, run_training


# ---------------------------------------------------------------------------------------------- checkpoints
class _Killed(BaseException):
    pass


@pytest.mark.parametrize("at", [1, 2, 3])
def test_commit_leaves_a_verified_file_whatever_step_it_dies_at(tmp_path, monkeypatch, at):
    """commit = record {new, old}, rename, record {new}: a kill at rename `at` leaves the old or the new
    file, and the record accepts it."""
    path = tmp_path / "last.ckpt"
    save_checkpoint(path, {"step": torch.tensor(1)})
    old = file_sha256(path)
    tmp = partial_path(path)
    torch.save({"step": torch.tensor(2)}, tmp)
    real, n = os.replace, []

    def dying(src, dst, *a, **k):
        n.append(dst)
        if len(n) == at:
            raise _Killed
        return real(src, dst, *a, **k)

    monkeypatch.setattr(os, "replace", dying)
    with pytest.raises(_Killed):
        commit_checkpoint(tmp, path)
    monkeypatch.undo()
    assert verify_checkpoint(path) == file_sha256(path)
    assert int(load_checkpoint(path)["step"]) == (1 if at <= 2 else 2)
    assert old in recorded_digests(path) and len(recorded_digests(path)) == (1 if at == 1 else 2)


def test_a_finished_commit_records_one_digest_and_no_partial_file(tmp_path):
    path = tmp_path / "x.ckpt"
    digest = save_checkpoint(path, {"a": torch.zeros(3)})
    assert recorded_digests(path) == [digest] == [file_sha256(path)]
    assert digest_path(path).read_text() == f"{digest}  x.ckpt\n"  # sha256sum's format
    assert not partial_path(path).exists()
    save_checkpoint(path, {"a": torch.ones(3)})
    assert recorded_digests(path) == [file_sha256(path)] != [digest]


def test_verification_refuses_a_mismatch_and_a_bad_record_even_when_trusted(tmp_path, caplog):
    path = tmp_path / "x.ckpt"
    save_checkpoint(path, {"a": torch.zeros(3)})
    torch.save({"a": torch.ones(3)}, path)
    with pytest.raises(CheckpointError, match="does not match its record"):
        verify_checkpoint(path, trust_unverified=True)
    digest_path(path).write_text("deadbeef  x.ckpt\n")
    with pytest.raises(CheckpointError, match="not a sha256 record"):
        verify_checkpoint(path, trust_unverified=True)
    digest_path(path).unlink()
    with pytest.raises(CheckpointError, match=f"no sha256 record .*sha256 {file_sha256(path)}"):
        load_checkpoint(path)
    with caplog.at_level("WARNING"):
        assert torch.equal(load_checkpoint(path, trust_unverified=True)["a"], torch.ones(3))
    assert f"trusting unverified checkpoint {path}: sha256 {file_sha256(path)}" in caplog.text
    with pytest.raises(CheckpointError, match="does not match its model card"):
        verify_checkpoint(path, "0" * 64, "its model card", trust_unverified=True)


def test_run_checkpoint_is_the_one_choice_of_best_and_last(tmp_path):
    run = tmp_path / "run"
    with pytest.raises(CheckpointNotFound, match="no checkpoint found"):
        run_checkpoint(run)
    ckpts = run / "checkpoints"
    save_checkpoint(ckpts / "last.ckpt", {})
    assert run_checkpoint(run) == run_checkpoint(run, "last") == ckpts / "last.ckpt"
    save_checkpoint(ckpts / "best-epoch=3.ckpt", {})
    assert run_checkpoint(run) == ckpts / "best-epoch=3.ckpt"
    save_checkpoint(ckpts / "best-epoch=1.ckpt", {})
    write_metrics({}, run, extra={"model": "M", "data": "d", "checkpoint": "checkpoints/best-epoch=3.ckpt"})
    assert run_checkpoint(run) == ckpts / "best-epoch=3.ckpt"  # the one metrics.json names
    write_metrics({}, run, extra={"checkpoint": "../../elsewhere.ckpt"})
    with pytest.raises(CheckpointError, match="outside the run directory"):
        run_checkpoint(run)
    with pytest.raises(FileNotFoundError, match="no checkpoint at"):  # CheckpointNotFound is both
        run_checkpoint(tmp_path / "other", "last")


# ---------------------------------------------------------------------------------------------- runs
def test_run_lock_is_exclusive_and_names_its_holder(tmp_path):
    with run_lock(tmp_path) as lock:
        assert f"pid {os.getpid()}" in lock.read_text()
        with pytest.raises(RunStatusError, match=rf"{tmp_path} is being trained by pid {os.getpid()} on "):
            with run_lock(tmp_path):
                pass
    with run_lock(tmp_path):  # released when the block ends
        pass


def test_metrics_record_is_validated_on_read(tmp_path):
    write_metrics({"co_bps": 0.3}, tmp_path, extra={"model": "LFADS", "data": "lorenz", "val_metrics": {}})
    record = read_metrics(tmp_path)
    assert isinstance(record, MetricsRecord) and record.metrics == {"co_bps": 0.3}
    assert record.split == "test" and record.extra == {"val_metrics": {}}
    assert read_run(tmp_path) == {**record.to_dict(), "run_dir": str(tmp_path)}
    for bad, message in [
        ({"model": 3}, "'model' has the wrong type"),
        ({"n_parameters": "many"}, "'n_parameters' has the wrong type"),
        ({"metrics": {"co_bps": "high"}}, "'metrics' must be an object of metric name -> number"),
    ]:
        payload = {"model": "M", "data": "d", "metrics": {}, **bad}
        (tmp_path / "metrics.json").write_text(json.dumps(payload))
        with pytest.raises(ValueError, match=message):
            read_metrics(tmp_path)


# ---------------------------------------------------------------------------------------------- lifecycle
class _StopAfter(pl.Callback):
    """Stops training after epoch `epoch` as a pruner does (`trainer.should_stop`)."""

    def __init__(self, epoch: int):
        self.epoch = epoch

    def on_validation_end(self, trainer, pl_module):
        if trainer.current_epoch >= self.epoch and not trainer.sanity_checking:
            trainer.should_stop = True


class _Fail(pl.Callback):
    def on_train_epoch_end(self, trainer, pl_module):
        raise RuntimeError("the member's own bug")


def test_a_tune_member_is_one_call_returning_status_and_monitor(tmp_path):
    cfg = tiny_cfg("trainer.max_epochs=5", "callbacks.figures=false")
    result = run_training(cfg, tmp_path / "m0", callbacks=[_StopAfter(0)], raise_on_failure=False)
    assert isinstance(result, RunResult) and result.finished and result.epochs == 1
    assert result.monitor == pytest.approx(result.record["monitor"]["val/loss"])
    assert result.record["metrics"]["co_bps"] == read_run(result.run_dir)["metrics"]["co_bps"]
    assert result.run_dir == (tmp_path / "m0").resolve() and read_status(result.run_dir)["epochs"] == 1

    failed = run_training(tiny_cfg(), tmp_path / "m1", callbacks=[_Fail()], raise_on_failure=False)
    assert failed.status == "failed" and "the member's own bug" in failed.error and failed.record == {}
    assert read_status(failed.run_dir)["status"] == "failed"
    diverged = run_training(
        tiny_cfg("module.lr=1e3", "module.divergence_min_steps=4", "trainer.max_epochs=20"),
        tmp_path / "m2",
        raise_on_failure=False,
    )
    assert diverged.status == "diverged" and read_status(diverged.run_dir)["status"] == "diverged"
    with pytest.raises(RuntimeError, match="own bug"):  # the default: failures raise
        run_training(tiny_cfg(), tmp_path / "m3", callbacks=[_Fail()])
    assert Path(tmp_path / "m3" / "config.yaml").is_file()


def test_every_bundled_model_has_its_digest_in_the_package():
    from neuralnets.pretrained.registry import (
        BUNDLED_SHA256,
        CHECKPOINT_FILE,
        CHECKPOINTS_DIR,
        list_pretrained,
    )

    assert sorted(BUNDLED_SHA256) == list_pretrained()
    for name, digest in BUNDLED_SHA256.items():
        assert file_sha256(CHECKPOINTS_DIR / name / CHECKPOINT_FILE) == digest, name
