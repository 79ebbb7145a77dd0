"""Runs you can trust (issue 12): kills, clashes, divergence, damaged files and user mistakes give a
clear error or a correct result, and nothing is lost."""

from __future__ import annotations

import errno
import json
import multiprocessing
import os
import shutil as _shutil
import signal as _signal
import subprocess
import sys
import time as _time
from pathlib import Path
from types import SimpleNamespace as _NS

import numpy as np
import pytest
import pytorch_lightning as pl
import torch
from omegaconf import OmegaConf
from pytorch_lightning.callbacks import ModelCheckpoint
from test_training import TINY_DATA, lorenz_tiny, tiny_cfg
from tiny import TINY_LFADS

import neuralnets.training.build as build_mod
import neuralnets.training.finish as finish_mod
import neuralnets.training.run as run_mod
from neuralnets import load_pretrained as _load_pretrained
from neuralnets.data.formats.lfads_h5 import save_lfads_h5
from neuralnets.data.loaders import load
from neuralnets.errors import (
    EXIT_INTERRUPTED,
    CheckpointError,
    ConfigError,
    DataError,
    DivergenceError,
    RunInterrupted,
    RunStatusError,
)
from neuralnets.eval.cli import compare_main, eval_main
from neuralnets.runs import (
    atomic_path,
    claim_run_dir,
    create_run_dir,
    read_predictions,
    read_status,
    write_metrics,
    write_status,
)
from neuralnets.training.train import NothingToDo, prepare_config, train

REPO = Path(__file__).resolve().parents[1]
STEPS_PER_EPOCH = 2  # 24 train trials of lorenz_tiny at batch 16


class _Stop(pl.Callback):
    """Raises `exc` at batch 1 of epoch `epoch` (a kill part-way through that epoch)."""

    def __init__(self, epoch: int, exc: BaseException):
        self.epoch, self.exc = epoch, exc

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        if trainer.current_epoch == self.epoch and batch_idx == 1:
            raise self.exc


def _with_callback(monkeypatch, callback: pl.Callback) -> None:
    real = build_mod.build_callbacks
    monkeypatch.setattr(build_mod, "build_callbacks", lambda *a: [*real(*a), callback])


def _resume(cfg, run: Path, *overrides: str) -> dict:
    resumed = prepare_config(OmegaConf.merge(cfg, {"resume": str(run)}), run, [f"resume={run}", *overrides])
    return train(resumed, run)


def _scalar_steps(run: Path, tag: str) -> list[int]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(run), size_guidance={"scalars": 0})
    acc.Reload()
    return [e.step for e in acc.Scalars(tag)]


# ----- 1, 4: kill, resume
def test_kill_after_epochs_without_improvement_resumes_from_the_last_epoch(tmp_path, monkeypatch):
    """The monitor improves only in epoch 0; a kill in epoch 3 resumes from the end of epoch 2 (not 0),
    TensorBoard gets no duplicate points and the training time adds up over both segments."""
    monkeypatch.setattr(
        ModelCheckpoint, "check_monitor_top_k", lambda self, trainer, current=None: trainer.current_epoch == 0
    )
    run = tmp_path / "run"
    cfg = tiny_cfg("trainer.max_epochs=5")
    _with_callback(monkeypatch, _Stop(3, RuntimeError("simulated kill")))
    with pytest.raises(RuntimeError, match="simulated kill"):
        train(cfg, run)
    monkeypatch.undo()
    assert read_status(run)["status"] == "failed"
    last = torch.load(run / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
    assert last["epoch"] == 2 and last["global_step"] == 3 * STEPS_PER_EPOCH
    first_segment_s = last["callbacks"]["TrainingClock"]["train_time_s"]
    assert first_segment_s > 0
    assert max(_scalar_steps(run, "train/loss")) >= 3 * STEPS_PER_EPOCH  # logged past the checkpoint

    record = _resume(cfg, run)
    assert record["steps"] == 5 * STEPS_PER_EPOCH
    assert record["train_time_s"] > first_segment_s
    status = read_status(run)
    assert status["status"] == "finished" and status["epochs"] == 5
    steps = _scalar_steps(run, "train/loss")
    assert len(steps) == len(set(steps)), f"duplicate TensorBoard points after resume: {sorted(steps)}"
    assert set(steps) == set(range(5 * STEPS_PER_EPOCH))


def test_ctrl_c_writes_last_checkpoint_of_the_step_reached(tmp_path, monkeypatch):
    run = tmp_path / "run"
    _with_callback(monkeypatch, _Stop(1, KeyboardInterrupt()))
    with pytest.raises(RunInterrupted, match="interrupted by SIGINT at step 3; resume="):
        train(tiny_cfg("trainer.max_epochs=3"), run)
    last = torch.load(run / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
    assert last["global_step"] == STEPS_PER_EPOCH + 1  # one step into epoch 1, not the end of epoch 0
    assert read_status(run)["status"] == "interrupted"


def test_resume_of_a_finished_run_changes_nothing_unless_asked_for_more_epochs(tmp_path):
    run = tmp_path / "run"
    cfg = tiny_cfg("trainer.max_epochs=1")
    first = train(cfg, run)
    files = ["metrics.json", "predictions.h5", first["checkpoint"], "checkpoints/last.ckpt"]
    before = {f: (run / f).read_bytes() for f in files}
    with pytest.raises(NothingToDo, match="finished run.*nothing to do"):
        _resume(cfg, run)
    with pytest.raises(NothingToDo):
        _resume(cfg, run, "trainer.max_epochs=1")
    assert {f: (run / f).read_bytes() for f in files} == before
    record = _resume(cfg, run, "trainer.max_epochs=2")
    assert record["steps"] == 2 * STEPS_PER_EPOCH and read_status(run)["epochs"] == 2
    assert record["train_time_s"] > first["train_time_s"]


# ----- 2: run directories
def _make(parent: str, queue) -> None:
    queue.put(str(create_run_dir(parent, "2026-01-01_00-00-00")))


def _claim(path: str, queue) -> None:
    try:
        claim_run_dir(path)
        queue.put("won")
    except FileExistsError:
        queue.put("refused")


def _race(target, arg: str, n: int = 6) -> list[str]:
    """`target(arg, queue)` in `n` processes started together; what they put in the queue."""
    ctx = multiprocessing.get_context("fork")  # no re-import of torch in each process
    queue = ctx.Queue()
    procs = [ctx.Process(target=target, args=(arg, queue)) for _ in range(n)]
    for p in procs:
        p.start()
    out = [queue.get(timeout=120) for _ in procs]
    for p in procs:
        p.join()
    return out


def test_runs_started_at_the_same_moment_never_share_a_directory(tmp_path):
    made = _race(_make, str(tmp_path / "runs"))
    assert len(set(made)) == len(made) and all(Path(d).is_dir() for d in made)
    assert all(read_status(d)["status"] == "running" for d in made)
    assert sorted(_race(_claim, str(tmp_path / "named"))) == ["refused"] * 5 + ["won"]


def test_two_trainings_with_the_same_clock_get_two_complete_directories(tmp_path, monkeypatch):
    monkeypatch.setattr(run_mod, "_timestamp", lambda: "2026-01-01_00-00-00")
    cfg = tiny_cfg("trainer.max_epochs=1", f"out_dir={tmp_path}")
    dirs = {Path(train(cfg)["run_dir"]) for _ in range(2)}
    assert {d.name for d in dirs} == {"2026-01-01_00-00-00", "2026-01-01_00-00-00_1"}
    for d in dirs:
        assert read_status(d)["status"] == "finished"
        assert {"config.yaml", "metrics.json", "predictions.h5", "train.log"} <= {p.name for p in d.iterdir()}
    with pytest.raises(FileExistsError, match="already holds a run"):
        train(cfg, sorted(dirs)[0])  # a named directory that holds a run is refused


# ----- 5: no step, divergence
def test_a_run_that_can_take_no_step_is_refused_before_anything_is_made(tmp_path):
    for override in ("trainer.max_epochs=0", "+trainer.max_steps=0"):
        with pytest.raises(ConfigError, match="no training step"):
            train(tiny_cfg(override, f"out_dir={tmp_path}"))
    with pytest.raises(ConfigError, match=r"module\.bogus"):
        train(tiny_cfg("+module.bogus=1", f"out_dir={tmp_path}"))
    with pytest.raises(ConfigError, match="bogus"):
        train(tiny_cfg("+model.bogus=1", f"out_dir={tmp_path}"))
    assert list(tmp_path.iterdir()) == []


def test_divergence_stops_with_status_diverged_and_the_skip_count(tmp_path):
    run = tmp_path / "run"
    cfg = tiny_cfg("module.lr=1e3", "module.divergence_min_steps=4", "trainer.max_epochs=20")
    with pytest.raises(DivergenceError, match="non-finite"):
        train(cfg, run)
    status = read_status(run)
    on_disk = json.loads((run / "metrics.json").read_text())
    assert status["status"] == "diverged" and on_disk["status"] == "diverged"
    assert on_disk["skipped_steps"] > 0.5 * on_disk["attempted_steps"] >= 2
    assert on_disk["metrics"] == {} and not (run / "predictions.h5").exists()


# ----- 3, 6: status readers
def _fake_run(path: Path, status: str | None) -> Path:
    path.mkdir(parents=True)
    write_metrics({"co_bps": 0.1}, path, extra={"model": "M", "data": "lorenz", "data_kwargs": {}})
    if status:
        write_status(path, status)
    return path


def test_compare_skips_unfinished_runs_and_still_writes_its_table(tmp_path, capsys):
    done = _fake_run(tmp_path / "done", "finished")
    legacy = _fake_run(tmp_path / "legacy", None)  # a run from before status.json
    failed = _fake_run(tmp_path / "failed", "failed")
    running = _fake_run(tmp_path / "running", "running")
    (tmp_path / "stub").mkdir()
    out = tmp_path / "table.csv"
    dirs = [done, legacy, failed, running, tmp_path / "stub"]
    assert compare_main([*map(str, dirs), "--no-baselines", "--csv", str(out)]) == 0
    err = capsys.readouterr().err
    assert err.count("skipping") == 3 and "status failed" in err and "status running" in err
    assert len(out.read_text().strip().splitlines()) == 3  # header + the two finished runs
    assert eval_main([str(failed)]) == 2
    assert "not a finished run (status failed)" in capsys.readouterr().err


def test_load_pretrained_warns_about_an_unfinished_run(tmp_path, monkeypatch):
    from neuralnets import load_pretrained

    run = tmp_path / "run"
    _with_callback(monkeypatch, _Stop(1, RuntimeError("simulated kill")))
    with pytest.raises(RuntimeError):
        train(tiny_cfg("trainer.max_epochs=2"), run)
    with pytest.warns(UserWarning, match="not a finished run \\(status failed\\)"):
        assert load_pretrained(run).n_parameters > 0


# ----- 8, 9: files
def test_run_files_get_the_usual_mode(tmp_path):
    old = os.umask(0o022)
    try:
        path = write_metrics({"x": 1.0}, tmp_path, extra={"model": "M", "data": "d"})
        with atomic_path(tmp_path / "other.txt") as tmp:
            tmp.write_text("x")
    finally:
        os.umask(old)
    assert oct(path.stat().st_mode & 0o777) == oct(0o644)
    assert oct((tmp_path / "other.txt").stat().st_mode & 0o777) == oct(0o644)


def test_disk_full_while_writing_predictions_leaves_no_partial_file(tmp_path, monkeypatch):
    real = finish_mod.predict_chunks

    def full_disk(model, data):
        chunks = real(model, data, batch_size=8)
        yield next(chunks)
        raise OSError(errno.ENOSPC, "No space left on device", "predictions.h5")

    monkeypatch.setattr(finish_mod, "predict_chunks", full_disk)
    run = tmp_path / "run"
    with pytest.raises(OSError, match="No space left"):
        train(tiny_cfg("trainer.max_epochs=1"), run)
    assert not (run / "predictions.h5").exists() and not list(run.glob(".predictions.h5.*"))
    status = read_status(run)
    assert status["status"] == "failed" and "No space left" in status["error"]
    assert (run / "checkpoints" / "last.ckpt").is_file()


def test_damaged_h5_gives_a_data_error_naming_the_file_at_every_position(tmp_path):
    src = save_lfads_h5(lorenz_tiny(), tmp_path / "small.h5")
    raw = src.read_bytes()
    escaped = {}
    for i, pos in enumerate(np.linspace(0, len(raw) - 1, 48).astype(int)):
        damaged = bytearray(raw)
        damaged[pos] ^= 0xFF
        path = tmp_path / f"damaged_{i}.h5"
        path.write_bytes(bytes(damaged))
        try:
            load(str(path))
        except DataError as err:
            assert str(path) in str(err)
        except Exception as err:  # noqa: BLE001 - what the test looks for
            escaped[int(pos)] = f"{type(err).__name__}: {err}"
    assert not escaped


# ----- 10: file data
def test_file_data_without_a_test_split_is_named_and_scored_on_val(tmp_path):
    data = lorenz_tiny()
    data.split[data.split == "test"] = "val"
    src = save_lfads_h5(data, tmp_path / "session.h5")
    cfg = tiny_cfg(
        "trainer.max_epochs=1",
        "data=file",
        f"data.source={src}",
        "data.name=session7",
        f"out_dir={tmp_path}",
        data=[],
    )
    record = train(cfg)
    run = Path(record["run_dir"])
    assert run.parent == tmp_path / "lfads_session7"
    on_disk = json.loads((run / "metrics.json").read_text())
    assert on_disk["split"] == "val" and np.isfinite(on_disk["metrics"]["co_bps"])
    assert read_status(run)["status"] == "finished"


# ----- 7: command line
def _cli(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    """`neuralnets-train ARGS` in a fresh process, as a user runs it (no debug variables set)."""
    keep = {k: v for k, v in os.environ.items() if k not in ("HYDRA_FULL_ERROR", "NEURALNETS_DEBUG")}
    cmd = [sys.executable, "-m", "neuralnets.training.train", *args]
    env = {**keep, "PYTHONPATH": str(REPO), **(env or {})}
    return subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=env, cwd=REPO)


def _error_lines(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if line.strip() and "Seed set" not in line]


def test_cli_mistakes_are_one_line_and_a_nonzero_exit(tmp_path):
    cases = {
        "module.x=1": "Could not override 'module.x'",
        "+module.x=1": "module.x",
        "+model.bogus=1": "no option(s) ['bogus']",
        "model=lfadz": "Could not find 'model/lfadz'",
        "data=file data.source=/no/such.h5 data.name=x": "/no/such.h5",
    }
    for override, message in cases.items():
        out = _cli(*override.split(), f"out_dir={tmp_path}")
        lines = _error_lines(out.stderr)
        assert out.returncode != 0 and len(lines) == 1 and message in lines[0], (override, out.stderr)
        assert "Traceback" not in out.stderr + out.stdout
    assert list(tmp_path.iterdir()) == []  # no failed start left a directory
    debug = _cli("+module.x=1", f"out_dir={tmp_path}", env={"NEURALNETS_DEBUG": "1"})
    assert debug.returncode != 0 and "Traceback" in debug.stderr


def test_cli_run_makes_one_directory_with_its_log_and_refuses_to_reuse_it(tmp_path):
    tiny = [*TINY_DATA, "data.batch_size=16", *TINY_LFADS, "trainer.max_epochs=1", "print_baselines=false"]
    out = _cli(*tiny, "trainer.enable_progress_bar=false", f"out_dir={tmp_path}")
    assert out.returncode == 0, out.stderr
    (group,) = tmp_path.iterdir()  # no train.log or .hydra beside the runs
    (run,) = group.iterdir()
    assert group.name == "lfads_lorenz" and not (run / ".hydra").exists()
    assert "LFADS" in (run / "train.log").read_text() and read_status(run)["status"] == "finished"
    again = _cli(*tiny, f"hydra.run.dir={run}")
    assert again.returncode != 0 and "already holds a run" in _error_lines(again.stderr)[-1]
    done = _cli(f"resume={run}")
    assert done.returncode == 0 and "nothing to do" in done.stdout


# ==============================================================================================
# ----- issue 22: planted native libraries, symlinks at output names, zero-length trials
# =====================================================================================================
def _c_compiler() -> str | None:
    import shutil

    return shutil.which(os.environ.get("CXX", "c++")) or shutil.which("cc")


def test_a_planted_kernel_library_with_a_matching_record_is_never_loaded(monkeypatch, tmp_path):
    """A shared library whose constructor would leave a marker, planted in the kernel cache under the name
    the kernels would have, with a sha256 record beside it that matches: it must never be dlopen'ed."""
    import hashlib
    import warnings

    from neuralnets.nn import native

    cc = _c_compiler()
    if cc is None:
        pytest.skip("no C compiler to build the planted library with")
    marker = tmp_path / "constructor-ran"
    src = tmp_path / "planted.c"
    src.write_text(
        "#include <stdio.h>\n"
        f'__attribute__((constructor)) static void planted(void) {{ FILE *f = fopen("{marker}", "w"); '
        "if (f) fclose(f); }\n"
    )
    cache = tmp_path / "cache"
    cache.mkdir(mode=0o700)
    monkeypatch.setenv("NEURALNETS_KERNEL_CACHE", str(cache))  # where earlier versions looked
    name = native._library_path().name
    planted = cache / name
    subprocess.run([cc, "-x", "c", "-shared", "-fPIC", str(src), "-o", str(planted)], check=True)
    planted.chmod(0o700)
    digest = hashlib.sha256(planted.read_bytes()).hexdigest()
    (cache / f"{name}.sha256").write_text(f"{digest}  {name}\n")
    monkeypatch.setattr(native, "_state", {})  # decide afresh in this process
    monkeypatch.setattr(native, "BUILD_DIR", tmp_path / "package" / "build", raising=False)

    def no_build(path):
        raise RuntimeError("no compiler run in this test")

    monkeypatch.setattr(native, "build", no_build)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        native.native_ops()
    assert not marker.exists(), "the planted library was loaded: its constructor ran"


def test_outputs_never_go_through_a_symlink_planted_at_the_output_name(tmp_path, capsys):
    from tiny import TINY_LORENZ

    from neuralnets.data.cli import main
    from neuralnets.eval.nlb import write_nlb_submission

    opts = [x for k, v in TINY_LORENZ.items() for x in ("-o", f"{k}={v}")]
    target = tmp_path / "elsewhere.npz"
    out = tmp_path / "out.npz"
    out.symlink_to(target)  # dangling
    assert main(["lorenz", *opts, "--save", str(out)]) == 2
    err = capsys.readouterr().err
    assert "symbolic link" in err and str(out) in err and err.count("\n") == 1
    assert not target.exists() and out.is_symlink()
    target.write_bytes(b"precious")  # a link to an existing file: neither followed nor replaced
    assert main(["lorenz", *opts, "--save", str(out)]) == 2
    assert target.read_bytes() == b"precious" and out.is_symlink()
    # the one atomic writer refuses it, so every output refuses it (here metrics and a submission)
    with pytest.raises(FileExistsError, match="symbolic link"), atomic_path(out) as tmp:
        tmp.write_text("{}")
    assert target.read_bytes() == b"precious" and out.is_symlink()
    sub = tmp_path / "sub.h5"
    sub.symlink_to(tmp_path / "nowhere.h5")
    arrays = [np.ones((2, 3, 4)), np.ones((2, 3, 1)), np.ones((1, 3, 4)), np.ones((1, 3, 1)), None, None]
    with pytest.raises(FileExistsError, match="symbolic link"):
        write_nlb_submission(sub, "mc_maze_small", *arrays)
    assert not (tmp_path / "nowhere.h5").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["elsewhere.npz", "out.npz", "sub.h5"]  # no tmp


def test_a_zero_length_nwb_trial_is_named_with_its_index_and_both_times(tmp_path):
    from datetime import datetime, timezone

    from pynwb import NWBHDF5IO, NWBFile

    from neuralnets.data.formats.nwb import load_nwb

    nwb = NWBFile(
        session_description="zero-length trial",
        identifier="z",
        session_start_time=datetime(2020, 1, 1, tzinfo=timezone.utc),
    )
    nwb.add_unit(spike_times=np.linspace(0.05, 5.95, 40))
    for k, (start, stop) in enumerate([(0.0, 1.0), (2.0, 3.0), (4.0, 4.0), (5.0, 6.0)]):
        nwb.add_trial(id=10 + k, start_time=start, stop_time=stop)
    path = tmp_path / "zero.nwb"
    with NWBHDF5IO(str(path), "w") as io:
        io.write(nwb)
    with pytest.warns(UserWarning, match="no held-out"), pytest.raises(DataError) as info:
        load_nwb(path, bin_size=0.01)
    message = str(info.value)
    assert "trial index 2 (id 12, start_time 4 s, stop_time 4 s)" in message, message
    assert str(path) in message and "\n" not in message


# ===================================================================================================
# ----- issue 22: config files cannot write outside the run directory; a saved
# config.yaml is never resolved against the environment.
# ===================================================================================================
def test_logger_and_callback_paths_cannot_leave_the_run_directory(tmp_path):
    from neuralnets.training.build import build_callbacks, build_logger, build_trainer

    run = tmp_path / "runs" / "run"
    run.mkdir(parents=True)
    data = lorenz_tiny()
    escapes = {
        "logger.name=../../..": "logger.name",
        "logger.version=../../x": "logger.version",
        "+logger.sub_dir=$HOME": "logger.sub_dir",
        "+logger.save_dir=/tmp/elsewhere": "logger.save_dir",
    }
    for override, key in escapes.items():
        with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
            build_logger(tiny_cfg(override), run)
    callbacks = {
        "+callbacks.model_checkpoint.dirpath=/tmp/elsewhere": "callbacks.model_checkpoint.dirpath",
        "callbacks.model_checkpoint.filename=../../../evil": "callbacks.model_checkpoint.filename",
    }
    for override, key in callbacks.items():
        with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
            build_callbacks(tiny_cfg(override), run, data)
    with pytest.raises(ConfigError, match=r"trainer\.default_root_dir"):
        build_trainer(tiny_cfg("+trainer.default_root_dir=/tmp/elsewhere"), run, data)
    (run / "link").symlink_to(tmp_path, target_is_directory=True)  # a link inside that leads out
    with pytest.raises(ConfigError, match=r"logger\.name='link/x' leads outside"):
        build_logger(tiny_cfg("logger.name=link/x"), run)
    # a name inside the run directory is fine, and the logger writes there
    assert Path(build_logger(tiny_cfg("logger.name=tb"), run).log_dir) == run / "tb"  # version ""
    assert sorted(p.name for p in tmp_path.iterdir()) == ["runs"]  # nothing was written beside it


def test_a_training_whose_logger_escapes_is_refused_before_anything_is_written(tmp_path):
    with pytest.raises(ConfigError, match=r"logger\.name='\.\./\.\./\.\.' leads outside the run directory"):
        train(tiny_cfg("logger.name=../../..", f"out_dir={tmp_path / 'out'}"))
    assert not any((tmp_path / "out").rglob("*.tfevents*")) and not any(tmp_path.glob("events*"))


def test_a_saved_config_is_never_resolved_against_the_environment(tmp_path, monkeypatch):
    monkeypatch.setenv("NEURALNETS_TEST_SECRET", "s3cr3t-value")
    run = tmp_path / "run"
    (run / "checkpoints").mkdir(parents=True)
    cfg = OmegaConf.to_container(tiny_cfg(), resolve=True)
    cfg["data"]["name"] = "${oc.env:NEURALNETS_TEST_SECRET}"  # written into the file by hand
    OmegaConf.save(OmegaConf.create(cfg), run / "config.yaml")
    write_status(run, "failed", error="x")
    with pytest.raises(ConfigError, match=r"data\.name holds an interpolation") as err:
        prepare_config(OmegaConf.merge(tiny_cfg(), {"resume": str(run)}), run, [f"resume={run}"])
    assert "s3cr3t" not in str(err.value)
    from neuralnets.config import load_saved_config

    with pytest.raises(ConfigError, match="interpolation"):
        load_saved_config(run / "config.yaml")
    # in a list, and a plain reference to another key, are refused as well
    (run / "config.yaml").write_text("a: [1, '${oc.env:HOME}']\nb: ${a}\n")
    with pytest.raises(ConfigError, match=r"a\.1 holds an interpolation \(2 key\(s\)"):
        load_saved_config(run / "config.yaml")
    # a config written resolved (as every run writes it) loads, values untouched
    OmegaConf.save(tiny_cfg(), run / "config.yaml", resolve=True)
    assert load_saved_config(run / "config.yaml").data.name == tiny_cfg().data.name


# =====================================================================================================
# Issue 22: checkpoint trust, kills between a checkpoint and its record, consumed runs
# checked, signals and concurrent resumes. Each test below fails on the main of before this section.
# =====================================================================================================


@pytest.fixture(scope="module")
def _finished_run(tmp_path_factory) -> Path:
    run = tmp_path_factory.mktemp("life") / "run"
    train(tiny_cfg("trainer.max_epochs=1", "callbacks.figures=false"), run)
    return run


@pytest.fixture
def finished_run(_finished_run, tmp_path) -> Path:
    """A fresh copy of a finished 1-epoch run (tests tamper with it)."""
    return Path(_shutil.copytree(_finished_run, tmp_path / "run"))


def _overwrite_tensor_bytes(path: Path) -> None:
    """8 bytes in the middle of the file (inside the weights): a checkpoint that still loads."""
    raw = bytearray(path.read_bytes())
    mid = len(raw) // 2
    raw[mid : mid + 8] = b"\x00" * 8
    path.write_bytes(bytes(raw))


def test_tampered_checkpoint_without_its_record_is_refused_everywhere(finished_run, tmp_path):
    """Resume, load_pretrained, a stitching fine-tune and a PBT restore refuse a checkpoint whose record
    was deleted (its weights overwritten); trust_unverified=True is the explicit way to accept one."""
    from neuralnets.checkpoints import copy_checkpoint, digest_path
    from neuralnets.training.stitching import load_stitched

    for ckpt in (finished_run / "checkpoints").glob("*.ckpt"):
        _overwrite_tensor_bytes(ckpt)
        digest_path(ckpt).unlink()
    last = finished_run / "checkpoints" / "last.ckpt"
    with pytest.raises(CheckpointError, match="no sha256 record"):
        _load_pretrained(finished_run)
    with pytest.raises(CheckpointError, match="no sha256 record"):
        _load_pretrained(last)
    with pytest.raises(ConfigError, match=f"{last}: no sha256 record"):
        _resume(tiny_cfg(), finished_run, "trainer.max_epochs=2")
    with pytest.raises(ConfigError, match="refusing to fine-tune from .* no sha256 record"):
        load_stitched(finished_run)
    with pytest.raises(CheckpointError, match="no sha256 record"):  # what a PBT member restores through
        copy_checkpoint(last, tmp_path / "restored.ckpt")
    assert not (tmp_path / "restored.ckpt").exists()
    assert read_status(finished_run)["status"] == "finished"  # the refused resume changed nothing


def test_bundled_model_is_checked_against_the_digest_in_the_package(tmp_path, monkeypatch):
    """A bundled folder with all-zero weights and the card's digest removed is refused: the digest is
    shipped in the package (registry.BUNDLED_SHA256), not only in the card beside the file."""
    import neuralnets.pretrained.registry as registry

    packaged = tmp_path / "checkpoints"
    folder = Path(_shutil.copytree(registry.CHECKPOINTS_DIR / "lfads_lorenz", packaged / "lfads_lorenz"))
    ckpt = torch.load(folder / "model.ckpt", weights_only=True)
    ckpt["state_dict"] = {k: torch.zeros_like(v) for k, v in ckpt["state_dict"].items()}
    torch.save(ckpt, folder / "model.ckpt")
    card = json.loads((folder / "model_card.json").read_text())
    del card["checkpoint"]["sha256"]
    (folder / "model_card.json").write_text(json.dumps(card))
    monkeypatch.setattr(registry, "CHECKPOINTS_DIR", packaged)
    with pytest.raises(CheckpointError, match="does not match the digest shipped in the package"):
        _load_pretrained("lfads_lorenz")
    moved = Path(_shutil.copytree(folder, tmp_path / "elsewhere" / "lfads_lorenz"))  # not bundled: no digest
    with pytest.raises(CheckpointError, match="no sha256 record"):
        _load_pretrained(moved)


class _Killed(BaseException):
    """A kill -9 at one point of a run (nothing after it runs: not an exception Lightning handles)."""


@pytest.mark.parametrize("at", [1, 2, 3])
def test_a_kill_between_a_checkpoint_and_its_record_leaves_a_resumable_run(finished_run, monkeypatch, at):
    """The process dies at the `at`-th rename onto last.ckpt or its record during a resumed epoch:
    whatever was renamed by then, last.ckpt matches its record and the run resumes. (The main of
    before wrote last.ckpt in place, then its record: a kill at that rename left a good last.ckpt
    refused forever.)"""
    from neuralnets.checkpoints import load_checkpoint

    real, seen = os.replace, []

    def dying_replace(src, dst, *a, **k):
        if Path(dst).name.startswith("last.ckpt") and len(seen) < at:
            seen.append(dst)
            if len(seen) == at:
                raise _Killed(f"killed while renaming {dst}")
        return real(src, dst, *a, **k)

    monkeypatch.setattr(os, "replace", dying_replace)
    with pytest.raises(_Killed):
        _resume(tiny_cfg(), finished_run, "trainer.max_epochs=2")
    monkeypatch.undo()
    last = finished_run / "checkpoints" / "last.ckpt"
    assert load_checkpoint(last)["global_step"] in (STEPS_PER_EPOCH, 2 * STEPS_PER_EPOCH)
    if at == 2:  # the rest of the positions verify the same way; one resume to the end is enough
        record = _resume(tiny_cfg(), finished_run, "trainer.max_epochs=2")
        assert record["steps"] == 2 * STEPS_PER_EPOCH and read_status(finished_run)["status"] == "finished"
        # A copied run directory resumes into last.ckpt itself, not a new `last-v1.ckpt` beside an old one.
        assert load_checkpoint(last)["global_step"] == 2 * STEPS_PER_EPOCH
        assert not list(last.parent.glob("last-v*"))


def _fake_member(path: Path, status: str) -> Path:
    from test_ensemble import KWARGS, _fake_run

    data = load("lorenz", **KWARGS)
    run = _fake_run(path, data, 0.5, len(str(path)))
    write_status(run, status)
    return run


def test_ensemble_takes_only_finished_members_and_names_the_skipped(tmp_path, capsys):
    from neuralnets.runs import read_run
    from neuralnets.training.ensemble import main as ensemble_main

    done = [_fake_member(tmp_path / f"done{i}", "finished") for i in range(2)]
    failed = _fake_member(tmp_path / "failed", "failed")
    diverged = _fake_member(tmp_path / "diverged", "diverged")
    out = tmp_path / "ens"
    assert ensemble_main([*map(str, [*done, failed, diverged]), "--out", str(out)]) == 0
    err = capsys.readouterr().err
    assert f"skipped {failed}: status failed" in err and f"skipped {diverged}: status diverged" in err
    record = read_run(out)
    assert sorted(m["run_dir"] for m in record["members"]) == sorted(map(str, done))
    assert [s["status"] for s in record["skipped"]] == ["failed", "diverged"]
    assert ensemble_main([str(done[0]), str(failed), str(diverged), "--out", str(tmp_path / "x")]) == 2
    assert "at least 2 finished runs" in capsys.readouterr().err and not (tmp_path / "x").exists()


def test_pbt_best_member_is_an_ordinary_run_with_a_verified_checkpoint(tmp_path, finished_run):
    """PBT's best goes through the run owner (claimed directory, status.json, recorded checkpoint) and
    refuses a donor checkpoint without a record."""
    import contextlib

    from test_pbt import pbt_cfg

    from neuralnets.checkpoints import digest_path, verify_checkpoint, write_digest
    from neuralnets.training.pbt import CKPT_NAME, _write_best

    cfg = pbt_cfg("trainer.max_epochs=1", "callbacks.figures=false")
    cfg.pbt.search_space = {"module": {"lr": {"low": 1e-4, "high": 1e-2, "log": True}}}
    base = OmegaConf.to_container(cfg, resolve=True)
    base.pop("hydra", None)
    donor = tmp_path / "donor"
    donor.mkdir()
    _shutil.copy(finished_run / "checkpoints" / "last.ckpt", donor / CKPT_NAME)
    write_digest(donor / CKPT_NAME)  # as a member's report writes it (neuralnets.checkpoints.save_checkpoint)
    best = _NS(  # what Ray's ResultGrid.get_best_result gives
        config={"module.lr": 3e-3},  # a searched value (module.lr itself may be `auto`)
        metrics={"val_recon": 1.5},
        checkpoint=_NS(as_directory=lambda: contextlib.nullcontext(str(donor))),
        path=str(donor),
    )
    record = _write_best(cfg, base, best, tmp_path / "best", 2.0, "val_recon")
    assert json.loads((tmp_path / "best" / "status.json").read_text())["status"] == "finished"
    assert verify_checkpoint(tmp_path / "best" / "checkpoints" / "last.ckpt")
    assert np.isfinite(record["metrics"]["co_bps"]) and record["pbt"]["val/recon"] == 1.5
    digest_path(donor / CKPT_NAME).unlink()
    with pytest.raises(CheckpointError, match="no sha256 record"):
        _write_best(cfg, base, best, tmp_path / "best2", 2.0, "val_recon")
    assert read_status(tmp_path / "best2")["status"] == "failed"


class _SigTerm(pl.Callback):
    """Sends this process SIGTERM at batch 1 of epoch `epoch` (a scheduler preempting the job)."""

    def __init__(self, epoch: int):
        self.epoch = epoch

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        if trainer.current_epoch == self.epoch and batch_idx == 1:
            os.kill(os.getpid(), _signal.SIGTERM)


def test_sigterm_saves_last_checkpoint_records_interrupted_and_resumes(tmp_path, monkeypatch):
    run = tmp_path / "run"
    _with_callback(monkeypatch, _SigTerm(1))
    with pytest.raises(RunInterrupted, match="interrupted by SIGTERM"):
        train(tiny_cfg("trainer.max_epochs=3", "callbacks.figures=false"), run)
    monkeypatch.undo()
    status = read_status(run)
    assert status["status"] == "interrupted" and "resume=" in status["error"]
    last = torch.load(run / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
    assert last["global_step"] > STEPS_PER_EPOCH  # saved in epoch 1, where the signal came
    assert _signal.getsignal(_signal.SIGTERM) is _signal.SIG_DFL  # the process's handler is given back
    record = _resume(tiny_cfg("callbacks.figures=false"), run)
    assert record["steps"] == 3 * STEPS_PER_EPOCH and read_status(run)["status"] == "finished"


def test_cli_exits_with_the_requeue_code_on_sigterm(tmp_path):
    tiny = [
        *TINY_DATA,
        "data.batch_size=16",
        *TINY_LFADS,
        "trainer.max_epochs=100000",
        "print_baselines=false",
    ]
    run = tmp_path / "run"
    cmd = [sys.executable, "-m", "neuralnets.training.train", *tiny, "trainer.enable_progress_bar=false",
           "callbacks.figures=false", "print_baselines=false", f"hydra.run.dir={run}"]  # fmt: skip
    keep = {k: v for k, v in os.environ.items() if k not in ("HYDRA_FULL_ERROR", "NEURALNETS_DEBUG")}
    proc = subprocess.Popen(
        cmd, env={**keep, "PYTHONPATH": str(REPO)}, cwd=REPO, stderr=subprocess.PIPE, text=True
    )
    try:
        deadline = _time.monotonic() + 240
        while not (run / "checkpoints" / "last.ckpt").is_file() and proc.poll() is None:
            assert _time.monotonic() < deadline, "no checkpoint written"
            _time.sleep(0.2)
        proc.send_signal(_signal.SIGTERM)
        _, stderr = proc.communicate(timeout=120)
    finally:
        proc.kill()
    assert proc.returncode == EXIT_INTERRUPTED, stderr
    assert read_status(run)["status"] == "interrupted"
    assert "interrupted by SIGTERM" in stderr.strip().splitlines()[-1]


def _hold_lock(run: str, ready, release) -> None:
    from neuralnets.runs import run_lock

    with run_lock(run):
        ready.set()
        release.wait(60)


def test_a_second_resume_of_the_same_run_is_refused_naming_the_holder(finished_run):
    import socket

    ctx = multiprocessing.get_context("fork")
    ready, release = ctx.Event(), ctx.Event()
    holder = ctx.Process(target=_hold_lock, args=(str(finished_run), ready, release))
    holder.start()
    try:
        assert ready.wait(60)
        before = read_status(finished_run)
        with pytest.raises(RunStatusError, match=rf"pid {holder.pid} on {socket.gethostname()}"):
            _resume(tiny_cfg(), finished_run, "trainer.max_epochs=2")
        assert read_status(finished_run) == before  # refused before anything was touched
    finally:
        release.set()
        holder.join()
    assert _resume(tiny_cfg(), finished_run, "trainer.max_epochs=2")["steps"] == 2 * STEPS_PER_EPOCH


def test_finishing_a_run_never_reads_its_predictions_back(tmp_path, monkeypatch):
    import h5py

    real = h5py.File

    def write_only(name, mode="r", *a, **k):
        assert mode != "r", f"{name} read back"
        return real(name, mode, *a, **k)

    monkeypatch.setattr(h5py, "File", write_only)
    record = train(tiny_cfg("trainer.max_epochs=1", "callbacks.figures=false"), tmp_path / "run")
    monkeypatch.undo()
    on_disk = read_predictions(tmp_path / "run")["rates"]
    assert np.isfinite(record["metrics"]["co_bps"]) and on_disk.shape[0] == 40
