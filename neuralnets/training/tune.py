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
(a failed trial); the study goes on. Docs: docs/tuning.md.
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import math
import multiprocessing
import os
import re
import secrets
import socket
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import hydra
import pytorch_lightning as pl
import torch
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, OmegaConf

from neuralnets.cli import hydra_task, run_cli
from neuralnets.config import CONFIG_DIR, compose
from neuralnets.errors import EXIT_USER_ERROR, ConfigError, DivergenceError, NeuralnetsError
from neuralnets.eval.tables import write_rows
from neuralnets.runs import STATUS_FILE, atomic_path, read_status, write_status
from neuralnets.training.run import run_training

log = logging.getLogger(__name__)
STUDY_CONFIG, JOURNAL, LEADERBOARD = "study.yaml", "journal.log", "leaderboard"
MEMBERS, WORKERS = "members", "workers"
# Settings of one worker (or one invocation), free to differ between the workers of one study.
WORKER_KEYS = (
    "tune.n_trials",
    "tune.workers",
    "tune.worker",
    "tune.join",
    "tune.timeout_s",
    "tune.max_failures_in_row",
    "tune.population",
    "threads",
)
RESOLVER = re.compile(r"\$\{\s*[\w.]+\s*:")  # ${oc.env:...}, ${now:...}: plain ${key} references only
# The member states of the leaderboard, best first; `lost`: its worker died (killed) during training
# (a failed trial without a status of its own).
STATES = ("complete", "pruned", "diverged", "failed", "lost", "running")


def _optuna():
    try:
        import optuna
    except ImportError:
        raise ConfigError("neuralnets-tune needs Optuna: pip install 'neuralnets[sweep]'") from None
    return optuna


def search_space(cfg: DictConfig) -> list[dict[str, Any]]:
    """The `params` of the search-space file (`tune.space`, else `configs/tune/<model.name>.yaml`),
    each `{key, low, high, log}` with `key` an existing config key."""
    path = Path(cfg.tune.space) if cfg.tune.get("space") else CONFIG_DIR / "tune" / f"{cfg.model.name}.yaml"
    if not path.is_file():
        raise ConfigError(f"no search space {path} for model {cfg.model.name!r} (set tune.space=FILE)")
    space = (
        OmegaConf.load(path) if cfg.tune.get("space") else compose(config_name=f"tune/{cfg.model.name}").tune
    )
    params = OmegaConf.to_container(space).get("params") or []
    for p in params:
        key = p.get("key")
        if OmegaConf.select(cfg, str(key)) is None:
            raise ConfigError(f"{path}: {key!r} is not a setting of this config (model {cfg.model.name})")
        low, high = p.get("low"), p.get("high")
        if not (isinstance(low, int | float) and isinstance(high, int | float) and low < high):
            raise ConfigError(f"{path}: {key}: need numbers low < high; got low={low!r}, high={high!r}")
        if p.get("log") and low <= 0:
            raise ConfigError(f"{path}: {key}: a log scale needs low > 0; got {low}")
    return params


def _maximised(metric: str, value: float) -> float:
    """The study maximises: a loss is negated."""
    return -value if metric.endswith("loss") else value


class ReportAndPrune(pl.Callback):
    """After each validation epoch: report `metric` (maximised; a loss is negated) to the Optuna trial
    and stop training when the pruner says so, or when the value is still worse than `floor` (in the
    metric's own units) after `floor_epochs` epochs."""

    def __init__(self, trial: Any, metric: str, floor: float | None = None, floor_epochs: int = 1):
        self.trial, self.metric, self.pruned = trial, metric, False
        self.floor = None if floor is None else _maximised(metric, float(floor))
        self.floor_epochs = floor_epochs
        self.values: dict[int, float] = {}  # epoch -> maximised value

    @property
    def best(self) -> float:
        """The best maximised value reported (-inf before any)."""
        return max(self.values.values(), default=-math.inf)

    def on_validation_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if trainer.sanity_checking or self.metric not in trainer.callback_metrics:
            return
        value = _maximised(self.metric, float(trainer.callback_metrics[self.metric]))
        if not math.isfinite(value):
            value = -math.inf
        epoch = trainer.current_epoch
        self.values[epoch] = value
        self.trial.report(value, epoch)
        below = self.floor is not None and epoch + 1 >= self.floor_epochs and value < self.floor
        if below or self.trial.should_prune():
            self.pruned, trainer.should_stop = True, True


def member_config(cfg: DictConfig, params: dict[str, float], number: int) -> DictConfig:
    """The training config of member `number`: `cfg` with `params` set, `tune.max_epochs` epochs,
    the harness metric every epoch and the checkpoint on `tune.metric` (no early stopping: the pruner)."""
    member = OmegaConf.create(OmegaConf.to_container(cfg, resolve=False))  # callbacks read the keys below
    member.pop("tune")
    for key, value in params.items():
        OmegaConf.update(member, key, value)
    metric = cfg.tune.metric
    member.trainer.max_epochs = int(cfg.tune.max_epochs)
    member.callbacks.monitor = metric
    member.callbacks.mode = "min" if metric.endswith("loss") else "max"
    member.callbacks.eval_every_n_epochs = 1
    member.callbacks.early_stopping_patience = 0
    member.callbacks.figures = False
    member.print_baselines = False
    member.tune_member = {"study": str(cfg.tune.dir), "number": number, **params}
    return member


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
def open_storage(cfg: DictConfig) -> Any:
    """The study's storage: a journal file (`tune.storage` null: `<tune dir>/journal.log`, or a path), or
    an RDB URL (`sqlite:///...`, `postgresql://...`, `mysql://...`)."""
    optuna = _optuna()
    target = cfg.tune.get("storage")
    if target and "://" in str(target):
        kwargs = {"connect_args": {"timeout": 60}} if str(target).startswith("sqlite") else {}
        try:
            return optuna.storages.RDBStorage(str(target), engine_kwargs=kwargs)
        except Exception as err:  # SQLAlchemy: a bad URL, a missing driver, a server that is not there
            raise ConfigError(
                f"tune.storage={target}: cannot open it ({type(err).__name__}: {err})"
            ) from None
    path = Path(target) if target else Path(cfg.tune.dir) / JOURNAL
    path.parent.mkdir(parents=True, exist_ok=True)
    return optuna.storages.JournalStorage(optuna.storages.journal.JournalFileBackend(str(path)))


def study_name(cfg: DictConfig) -> str:
    return str(cfg.tune.get("study_name") or Path(cfg.tune.dir).resolve().name)


@contextlib.contextmanager
def _locked(path: Path, blocking: bool = True) -> Iterator[bool]:
    """Hold an exclusive lock (flock) on `path` (created if absent); yields False if `blocking` is False
    and another process holds it."""
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | (0 if blocking else fcntl.LOCK_NB))
        except BlockingIOError:
            yield False
            return
        yield True
    finally:
        os.close(fd)  # releases the lock


class WorkerLock:
    """This worker's lock file `<tune dir>/workers/<host>-<pid>-<token>.lock`, held (flock) while the
    worker lives. The OS releases it when the process ends, however it ends (SIGKILL, a node that
    reboots: NFS locks expire), so a running trial whose worker's lock can be taken is lost."""

    def __init__(self, tune_dir: Path):
        self.dir = tune_dir / WORKERS
        self.name = f"{socket.gethostname()}-{os.getpid()}-{secrets.token_hex(3)}"
        self.fd: int | None = None

    def __enter__(self) -> WorkerLock:
        self.dir.mkdir(parents=True, exist_ok=True)
        tmp = self.dir / f".{self.name}.tmp"
        self.fd = os.open(tmp, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o644)
        fcntl.flock(self.fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        os.replace(tmp, self.dir / f"{self.name}.lock")  # visible only once locked
        return self

    def __exit__(self, *exc: object) -> None:
        (self.dir / f"{self.name}.lock").unlink(missing_ok=True)
        if self.fd is not None:
            os.close(self.fd)

    @staticmethod
    def alive(tune_dir: Path, name: str) -> bool:
        """True while the worker `name` holds its lock."""
        path = tune_dir / WORKERS / f"{name}.lock"
        if not path.is_file():
            return False
        with _locked(path, blocking=False) as got:
            return not got


def fail_lost_trials(study: Any, tune_dir: Path) -> list[int]:
    """Mark failed each running trial whose worker is dead (it stays without a `status` attribute: lost),
    and its member's status.json `failed`. Call with the study lock held. Returns the trial numbers."""
    optuna = _optuna()
    lost = []
    for trial in study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.RUNNING,)):
        worker = trial.user_attrs.get("worker")
        if worker and WorkerLock.alive(tune_dir, worker):
            continue
        error = f"worker {worker} died during training (killed?); the study went on without it"
        study.tell(trial.number, state=optuna.trial.TrialState.FAIL, skip_if_finished=True)
        run_dir = tune_dir / MEMBERS / f"{trial.number:03d}"
        if (run_dir / STATUS_FILE).is_file() and read_status(run_dir)["status"] == "running":
            write_status(run_dir, "failed", error=error)
        log.warning("member %03d: %s", trial.number, error)
        lost.append(trial.number)
    return lost


def member_state(trial: Any) -> str:
    """The member's state (one of STATES) from its trial."""
    return trial.user_attrs.get("status") or ("running" if trial.state.name == "RUNNING" else "lost")


def counted(study: Any) -> int:
    """Members that use up `tune.n_trials`: all but those lost with a killed worker."""
    return sum(member_state(t) != "lost" for t in study.get_trials(deepcopy=False))


def record_study_config(cfg: DictConfig, tune_dir: Path) -> DictConfig:
    """Write the study's config (`study.yaml`) on the study's first start; on a later start compare: a
    study continues only with the same settings (the WORKER_KEYS aside). With `tune.join`, take the
    saved config with this worker's WORKER_KEYS. Call with the study lock held. Returns the config."""
    path = tune_dir / STUDY_CONFIG
    if (tune_dir / "trials.json").is_file():
        raise ConfigError(
            f"{tune_dir} holds a study of an older neuralnets-tune (trials.json); use a new tune.dir"
        )
    if not path.is_file():
        if cfg.tune.join:
            raise ConfigError(
                f"tune.join=true: {tune_dir} holds no study yet ({STUDY_CONFIG} missing); start it without "
                "tune.join, or name its directory with tune.dir=..."
            )
        with atomic_path(path) as tmp:  # unresolved: members set keys that others interpolate
            OmegaConf.save(cfg, tmp, resolve=False)
        return cfg
    if RESOLVER.search(path.read_text()):  # a file never reads the environment (or runs a resolver)
        raise ConfigError(
            f"{path}: a resolver interpolation (${{name:...}}) is not allowed in a study's config"
        )
    saved = OmegaConf.load(path)
    if cfg.tune.join:
        for key in (*WORKER_KEYS, "tune.dir", "tune.storage", "tune.study_name"):
            value = OmegaConf.select(cfg, key)
            if value is not None or key in WORKER_KEYS:  # a storage named here wins (a path seen from here)
                OmegaConf.update(saved, key, value, force_add=True)
        return saved
    mine, theirs = _flat(cfg), _flat(saved)
    for key in sorted(set(mine) | set(theirs)):
        if key not in (*WORKER_KEYS, "tune.dir") and mine.get(key) != theirs.get(key):
            raise ConfigError(
                f"{tune_dir} holds a study with {key}={theirs.get(key)!r} ({path}), this command has "
                f"{key}={mine.get(key)!r}; continue it with its settings (or tune.join=true), or use "
                "another tune.dir"
            )
    return cfg


def _flat(cfg: DictConfig, prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    node = OmegaConf.to_container(cfg, resolve=True) if isinstance(cfg, DictConfig) else cfg
    for key, value in node.items():
        if isinstance(value, dict):
            out.update(_flat(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


def _cores() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def run_worker(cfg: DictConfig, index: int = 0) -> None:
    """One worker: take members from the study until it holds `tune.n_trials` (or `tune.timeout_s`
    passes), training each in this process (`tune.population=K`: K at a time, as one population)."""
    if int(cfg.tune.get("population") or 0) > 0:
        from neuralnets.training.tune_population import run_population_worker

        return run_population_worker(cfg, index)
    optuna = _optuna()
    t = cfg.tune
    tune_dir = Path(t.dir)
    space = search_space(cfg)
    threads = int(cfg.threads) if cfg.get("threads") else max(1, _cores() // int(t.workers))
    torch.set_num_threads(threads)
    cfg = OmegaConf.merge(cfg, {"threads": threads})
    start, failures_in_row = time.monotonic(), 0
    with WorkerLock(tune_dir) as me:
        study = optuna.load_study(study_name=study_name(cfg), storage=open_storage(cfg))
        # Each worker its own sampler seed: two workers never draw the same first members.
        seed = int(t.seed) + len(study.trials) + 1009 * (int(t.worker) * int(t.workers) + index)
        study.sampler = optuna.samplers.TPESampler(seed=seed, n_startup_trials=5)
        study.pruner = optuna.pruners.SuccessiveHalvingPruner(
            min_resource=int(t.min_epochs), reduction_factor=int(t.reduction_factor)
        )
        log.info("worker %s (%d threads) joins study %s", me.name, threads, study.study_name)
        while t.get("timeout_s") is None or time.monotonic() - start < float(t.timeout_s):
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


def _one_line(err: BaseException) -> str:
    return " ".join(f"{type(err).__name__}: {err}".split())


def _run_member(
    cfg: DictConfig, study: Any, trial: Any, space: list[dict[str, Any]]
) -> tuple[str, str | None]:
    """Sample, train and record one member; returns its state (one of STATES) and error (or None)."""
    optuna = _optuna()
    t = cfg.tune
    params = {
        p["key"]: trial.suggest_float(p["key"], p["low"], p["high"], log=bool(p.get("log"))) for p in space
    }
    run_dir = Path(t.dir) / MEMBERS / f"{trial.number:03d}"
    trial.set_user_attr("run_dir", str(run_dir.relative_to(t.dir)))
    reporter = ReportAndPrune(trial, t.metric, t.get("prune_worse_than"), int(t.min_epochs))
    value, error = None, None
    try:
        value = train_member(member_config(cfg, params, trial.number), run_dir, reporter)
    except optuna.TrialPruned:
        status, state = "pruned", optuna.trial.TrialState.PRUNED
    except (NeuralnetsError, OSError) as err:  # DivergenceError is one; OSError: e.g. a full disk
        # A diverged configuration is a bad one: pruned, so that TPE learns from the values it reported.
        diverged = isinstance(err, DivergenceError)
        status = "diverged" if diverged else "failed"
        state = optuna.trial.TrialState.PRUNED if diverged else optuna.trial.TrialState.FAIL
        error = _one_line(err)
    except BaseException as err:  # a bug or an interruption: recorded, then the worker stops
        trial.set_user_attr("status", "failed")
        trial.set_user_attr("error", _one_line(err))
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
    except NeuralnetsError as err:
        log.error("%s", err)
        sys.exit(EXIT_USER_ERROR)


def leaderboard_rows(study: Any, metric: str) -> list[dict[str, Any]]:
    """Members best first (complete, pruned, diverged, failed, lost, running), with their best
    validation `metric` in its own units."""
    rows = []
    for trial in study.get_trials(deepcopy=False):
        values = [v for v in trial.intermediate_values.values() if math.isfinite(v)]
        best = max(values, default=None)  # a pruned trial's value is its last one
        state = member_state(trial)
        rows.append(
            {
                "member": f"{trial.number:03d}",
                **trial.params,
                metric: None if best is None or not math.isfinite(best) else _maximised(metric, best),
                "epochs_trained": len(trial.intermediate_values),
                "status": state,
                "run_dir": trial.user_attrs.get("run_dir"),
            }
        )
    sign = -1.0 if metric.endswith("loss") else 1.0
    return sorted(
        rows,
        key=lambda r: (STATES.index(r["status"]), -(sign * r[metric]) if r[metric] is not None else math.inf),
    )


def _link_best(tune_dir: Path, rows: list[dict[str, Any]]) -> Path | None:
    """Point `<tune dir>/best` at the best complete member's run directory."""
    complete = [r for r in rows if r["status"] == "complete" and r["run_dir"]]
    if not complete:
        return None
    link = tune_dir / "best"
    tmp = tune_dir / f".best.{os.getpid()}.tmp"
    tmp.unlink(missing_ok=True)
    tmp.symlink_to(complete[0]["run_dir"])
    os.replace(tmp, link)
    return link


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
    tune_dir.mkdir(parents=True, exist_ok=True)
    with _locked(tune_dir / ".study.lock"):
        cfg = record_study_config(cfg, tune_dir)
        check_settings(cfg.tune)
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
    try:
        for p in procs:
            p.start()
        for p in procs:
            p.join()
    finally:
        for p in procs:
            if p.is_alive():
                p.terminate()
                p.join()
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
