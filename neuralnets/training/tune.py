"""`neuralnets-tune`: tune a model for a dataset with Optuna (TPE + successive halving), on any number
of worker processes and machines sharing one study.

    neuralnets-tune model=lfads data=mc_maze_small tune.n_trials=48 tune.workers=4
    neuralnets-tune tune.dir=runs/tune/lfads_mc_maze_small tune.join=true     # one more worker, anywhere

Members are sampled by TPE over the ranges of `configs/tune/<model>.yaml`; each reports `tune.metric`
on the validation trials every epoch and Optuna's `SuccessiveHalvingPruner` stops the weak ones early
(test trials are never seen). The study lives in an Optuna storage that every worker shares: a journal
file in the tune directory by default, or an RDB URL (`tune.storage=sqlite:///...`, `postgresql://...`).
The tune directory (`tune.dir`, default `runs/tune/<model>_<data>`) holds

    study.yaml       the study's config (what every worker trains; a joining worker reads it)
    journal.log      the Optuna study (journal storage; `optuna-dashboard journal.log` shows it)
    members/NNN/     each member as an ordinary run directory (status.json, config, TensorBoard, metrics)
    workers/         one lock file per live worker: the trials of a worker whose lock is free are lost
    leaderboard.md   member, hyperparameters, best val metric, epochs trained, status (also .csv)
    best -> members/NNN   the best complete member

Rerunning the same command continues the study until it holds `tune.n_trials` members (over all
workers; a member lost with its killed worker does not count). A member that diverges is recorded
`diverged` (status.json) and pruned in the study, one that fails with a `NeuralnetsError` `failed`
(a failed trial); the study goes on. SIGTERM/SIGINT stops the tuner (exit 75): a member in training
keeps its last.ckpt and is recorded `interrupted`, not counted. The search space's content is recorded
in study.yaml (`tune.space_params`): an edited space file is refused. The journal is checked when it is
opened (`training.journal`; `tune.repair_journal=true` repairs it). Docs: docs/tuning.md.
"""

from __future__ import annotations

import contextlib
import logging
import math
import multiprocessing
import os
import signal
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import hydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, OmegaConf

from neuralnets.cli import hydra_task, run_cli
from neuralnets.config import CONFIG_DIR
from neuralnets.errors import (
    EXIT_INTERRUPTED,
    EXIT_USER_ERROR,
    ConfigError,
    DivergenceError,
    NeuralnetsError,
    RunInterrupted,
)
from neuralnets.eval.tables import write_rows
from neuralnets.runs import error_line, write_status
from neuralnets.training.run import run_training
from neuralnets.training.study import (
    LEADERBOARD,
    MEMBERS,
    STUDY_CONFIG,
    WORKER_KEYS,
    WorkerLock,
    _locked,
    _optuna,
    fail_lost_trials,
    is_integer,
    member_config,
    open_storage,
    record_study_config,
    repair_study_journal,
    search_space,
    study_name,
    study_space,
    worker_threads,
)
from neuralnets.training.tune_report import (  # noqa: F401 - re-exported: moved out of this module
    STATES,
    ReportAndPrune,
    _link_best,
    _maximised,
    counted,
    leaderboard_rows,
    member_state,
)

log = logging.getLogger(__name__)


def train_member(cfg: DictConfig, run_dir: Path, reporter: ReportAndPrune) -> float:
    """Train member `cfg` into the new run directory `run_dir` (the `neuralnets-train` lifecycle: its
    status.json ends finished, failed or diverged), `reporter` reporting to its trial every epoch.
    Returns its best maximised `tune.metric`; raises `optuna.TrialPruned` when the pruner stopped it,
    `DivergenceError` or another `NeuralnetsError` when it diverged or failed."""
    run_training(cfg, run_dir, callbacks=[reporter])
    if reporter.pruned:
        write_status(run_dir, "finished", pruned=True)  # stopped early by the pruner, then scored
        raise _optuna().TrialPruned(f"pruned after {len(reporter.values)} epochs")
    return reporter.best


# ----------------------------------------------------------------------------- the study and its workers


def run_worker(cfg: DictConfig, index: int = 0) -> None:
    """One worker: take members from the study until it holds `tune.n_trials` (or `tune.timeout_s`
    passes), training each in this process (`tune.population=K`: K at a time, as one population)."""
    if int(cfg.tune.get("population") or 0) > 0:
        from neuralnets.training.tune_population import run_population_worker

        return run_population_worker(cfg, index)
    optuna = _optuna()
    t = cfg.tune
    tune_dir = Path(t.dir)
    space = study_space(cfg)
    cfg, threads = worker_threads(cfg)
    start, failures_in_row = time.monotonic(), 0
    with WorkerLock(tune_dir) as me, _signals_noted() as stop:
        study = optuna.load_study(study_name=study_name(cfg), storage=open_storage(cfg))
        # Each worker its own sampler seed: two workers never draw the same first members.
        seed = int(t.seed) + len(study.trials) + 1009 * (int(t.worker) * int(t.workers) + index)
        study.sampler = optuna.samplers.TPESampler(seed=seed, n_startup_trials=5)
        study.pruner = optuna.pruners.SuccessiveHalvingPruner(
            min_resource=int(t.min_epochs), reduction_factor=int(t.reduction_factor)
        )
        log.info("worker %s (%d threads) joins study %s", me.name, threads, study.study_name)
        while t.get("timeout_s") is None or time.monotonic() - start < float(t.timeout_s):
            if stop:  # SIGTERM/SIGINT while no member trained (training turns them into RunInterrupted)
                raise RunInterrupted(
                    f"neuralnets-tune stopped by {stop[0]} between members; rerun the command to continue"
                )
            # The budget check and the new trial, one worker at a time.
            with _locked(tune_dir / ".study.lock"):
                fail_lost_trials(study, tune_dir)
                # the study's budget: that of the latest command that started or continued it
                if counted(study) >= int(study.user_attrs.get("n_trials", t.n_trials)):
                    break
                trial = study.ask()
                trial.set_user_attr("worker", me.name)
            status, error = _run_member(cfg, study, trial, space)
            failures_in_row = failures_in_row + 1 if status == "failed" else 0
            if failures_in_row >= int(t.max_failures_in_row):
                raise NeuralnetsError(
                    f"{failures_in_row} members in a row failed (last: member {trial.number:03d}: {error}); "
                    f"this worker stops (tune.max_failures_in_row={t.max_failures_in_row})"
                )


@contextlib.contextmanager
def _signals_noted() -> Iterator[list[str]]:
    """While the block runs, SIGTERM and SIGINT are noted in the yielded list (never raised mid-write
    of the study's journal); the worker stops at its next member. Main thread only."""
    noted: list[str] = []
    if threading.current_thread() is not threading.main_thread():
        yield noted
        return

    def note(signum: int, frame: Any) -> None:
        noted.append(signal.Signals(signum).name)

    previous = {s: signal.signal(s, note) for s in (signal.SIGTERM, signal.SIGINT)}
    try:
        yield noted
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)


def suggest(trial: Any, param: dict[str, Any], default: Any) -> int | float:
    """The trial's value of one searched key: an int for an integer setting (`study.is_integer`: a size
    sampled as a float would reach the model as 4.0), else a float."""
    key, low, high, log = param["key"], param["low"], param["high"], bool(param.get("log"))
    if is_integer(param, default):
        return trial.suggest_int(key, math.ceil(low), math.floor(high), log=log)
    return trial.suggest_float(key, low, high, log=log)


def _run_member(
    cfg: DictConfig, study: Any, trial: Any, space: list[dict[str, Any]]
) -> tuple[str, str | None]:
    """Sample, train and record one member; returns its state (one of STATES) and error (or None)."""
    optuna = _optuna()
    t = cfg.tune
    params = {p["key"]: suggest(trial, p, OmegaConf.select(cfg, p["key"])) for p in space}
    run_dir = Path(t.dir) / MEMBERS / f"{trial.number:03d}"
    trial.set_user_attr("run_dir", str(run_dir.relative_to(t.dir)))
    reporter = ReportAndPrune(trial, t.metric, t.get("prune_worse_than"), int(t.min_epochs))
    value, error = None, None
    try:
        value = train_member(member_config(cfg, params, trial.number), run_dir, reporter)
    except optuna.TrialPruned:
        status, state = "pruned", optuna.trial.TrialState.PRUNED
    except RunInterrupted as err:  # SIGTERM/SIGINT: the member keeps its last.ckpt; the worker stops
        trial.set_user_attr("status", "interrupted")
        trial.set_user_attr("error", error_line(err))
        study.tell(trial, state=optuna.trial.TrialState.FAIL)
        raise RunInterrupted(
            f"member {trial.number:03d} {err}; neuralnets-tune stopped: rerun the command to continue the "
            "study (the member is not counted)"
        ) from None
    except (NeuralnetsError, OSError) as err:  # DivergenceError is one; OSError: e.g. a full disk
        # A diverged configuration is a bad one: pruned, so that TPE learns from the values it reported.
        diverged = isinstance(err, DivergenceError)
        status = "diverged" if diverged else "failed"
        state = optuna.trial.TrialState.PRUNED if diverged else optuna.trial.TrialState.FAIL
        error = error_line(err)
    except BaseException as err:  # a bug or an interruption: recorded, then the worker stops
        trial.set_user_attr("status", "failed")
        trial.set_user_attr("error", error_line(err))
        study.tell(trial, state=optuna.trial.TrialState.FAIL)
        raise
    else:
        status, state = "complete", optuna.trial.TrialState.COMPLETE
        if not math.isfinite(value):  # never a finite validation value: nothing to compare
            status, state, value = "failed", optuna.trial.TrialState.FAIL, None
            error = f"{t.metric} was never finite"
    trial.set_user_attr("status", status)
    if error:
        trial.set_user_attr("error", error)
    study.tell(trial, value, state=state)
    log.info("member %03d: %s %s -> %s (%s)", trial.number, params, t.metric, value, error or status)
    return status, error


def _spawned_worker(container: dict[str, Any], index: int) -> None:
    """Entry point of a worker process started by `tune.workers=N`; exits EXIT_USER_ERROR on a
    NeuralnetsError (the message logged)."""
    logging.basicConfig(level=logging.INFO, format=f"[worker {index}][%(name)s][%(levelname)s] - %(message)s")
    try:
        run_worker(OmegaConf.create(container), index)
    except RunInterrupted as err:
        log.error("%s", err)
        sys.exit(EXIT_INTERRUPTED)
    except NeuralnetsError as err:
        log.error("%s", err)
        sys.exit(EXIT_USER_ERROR)


def check_settings(t: DictConfig) -> None:
    for key in ("n_trials", "max_epochs", "min_epochs", "reduction_factor", "workers", "max_failures_in_row"):
        if not isinstance(t[key], int) or isinstance(t[key], bool) or t[key] < 1:
            raise ConfigError(f"tune.{key}={t[key]!r}: expected a whole number >= 1")
    if not isinstance(t.worker, int) or isinstance(t.worker, bool) or t.worker < 0:
        raise ConfigError(f"tune.worker={t.worker!r}: expected a whole number >= 0")
    if t.get("timeout_s") is not None and not t.timeout_s > 0:
        raise ConfigError(f"tune.timeout_s={t.timeout_s!r}: expected seconds > 0 or null")
    population = t.get("population", 0)
    if not isinstance(population, int) or isinstance(population, bool) or population < 0:
        raise ConfigError(
            f"tune.population={population!r}: expected a whole number >= 0 (0: one member at a time)"
        )


def tune(cfg: DictConfig) -> list[dict[str, Any]]:
    """Run (or continue, or join with `tune.join`) the study of `cfg.tune` on `tune.workers` worker
    processes; returns the leaderboard rows (also written to `<tune dir>/leaderboard.md`/.csv)."""
    optuna = _optuna()
    check_settings(cfg.tune)
    cfg = OmegaConf.create(OmegaConf.to_container(cfg, resolve=False))
    cfg.tune.dir = str(cfg.tune.dir)  # resolved here: the only ${hydra:...} of the config
    tune_dir = Path(cfg.tune.dir)
    if not cfg.tune.join:  # (a joining worker takes the study's saved config: checked below)
        search_space(cfg)  # a model without a space, or a bad space, leaves no study directory behind
    tune_dir.mkdir(parents=True, exist_ok=True)
    with _locked(tune_dir / ".study.lock"):
        cfg = record_study_config(cfg, tune_dir)
        check_settings(cfg.tune)
        if cfg.tune.get("repair_journal"):
            repair_study_journal(cfg, tune_dir)
        search_space(cfg)  # a bad space is refused before any worker starts
        study = optuna.create_study(
            study_name=study_name(cfg), storage=open_storage(cfg), direction="maximize", load_if_exists=True
        )
        study.set_user_attr("metric", str(cfg.tune.metric))  # maximised; a loss negated
        if not cfg.tune.join:  # a joining worker works to the study's budget
            study.set_user_attr("n_trials", int(cfg.tune.n_trials))
        fail_lost_trials(study, tune_dir)
    n, total = int(cfg.tune.workers), int(study.user_attrs.get("n_trials", cfg.tune.n_trials))
    log.info("%s: %d of %d members so far; %d worker(s)", tune_dir, counted(study), total, n)
    try:
        bad = _run_workers(cfg, n)
    finally:  # the leaderboard holds what was done, whatever stopped the workers
        rows = leaderboard_rows(study, cfg.tune.metric)
        write_rows(rows, tune_dir / f"{LEADERBOARD}.csv", tune_dir / f"{LEADERBOARD}.md")
        _link_best(tune_dir, rows)
    if bad:
        done = counted(study)
        message = f"{'; '.join(bad)} (its log is above); the study holds {done} of {total} members"
        if done < total:
            raise NeuralnetsError(f"{message}: rerun the command to continue it")
        log.warning("%s", message)
    return rows


def _run_workers(cfg: DictConfig, n: int) -> list[str]:
    """Run worker 0 in this process (n = 1) or n worker processes; returns what went wrong with them."""
    if n == 1:
        run_worker(cfg)
        return []
    container = OmegaConf.to_container(cfg, resolve=False)
    spawn = multiprocessing.get_context("spawn")  # a fresh interpreter each: no forked torch threads
    procs = [
        spawn.Process(target=_spawned_worker, args=(container, i), name=f"tune-worker-{i}") for i in range(n)
    ]
    with _signals_noted() as stop:  # a SIGTERM/SIGINT here is passed on to every worker
        try:
            for p in procs:
                p.start()
            passed_on: set[int] = set()
            while any(p.is_alive() for p in procs):
                for p in procs:
                    p.join(timeout=0.5)
                    if stop and p.is_alive() and p.pid not in passed_on:  # once: the worker saves and stops
                        os.kill(p.pid, signal.SIGTERM)
                        passed_on.add(p.pid)
        finally:
            for p in procs:
                if p.is_alive():
                    p.terminate()
                    p.join()
    if stop or any(p.exitcode == EXIT_INTERRUPTED for p in procs):
        raise RunInterrupted(
            "neuralnets-tune's workers were stopped; rerun the command to continue the study"
        )
    return [f"worker {i} exited with code {p.exitcode}" for i, p in enumerate(procs) if p.exitcode]


def _join_overrides_ok(overrides: list[str]) -> None:
    """With tune.join=true the study's config comes from its study.yaml: refuse other settings."""
    allowed = {*WORKER_KEYS, "tune.dir", "tune.storage", "tune.study_name"} - {"tune.n_trials"}
    other = [o for o in overrides if o.split("=", 1)[0].lstrip("+~") not in allowed]
    if other:
        raise ConfigError(
            f"tune.join=true trains the study's own config (<tune.dir>/{STUDY_CONFIG}); only "
            f"{sorted(allowed)} may be set, got {other}"
        )


@hydra.main(version_base="1.3", config_path=str(CONFIG_DIR), config_name="tune")
@hydra_task("neuralnets-tune")
def main(cfg: DictConfig) -> None:
    if cfg.tune.get("join"):
        _join_overrides_ok(list(HydraConfig.get().overrides.task))
    rows = tune(cfg)
    print((Path(cfg.tune.dir) / f"{LEADERBOARD}.md").read_text() if rows else "no members yet")
    print(f"tune directory: {cfg.tune.dir}")


def cli() -> int:
    """Entry point of `neuralnets-tune` (errors and exit codes: `neuralnets.cli.run_cli`)."""
    return run_cli("neuralnets-tune", main)


if __name__ == "__main__":
    sys.exit(cli())
