"""A tuning study's files and identity: its search space (recorded in study.yaml, so that an edited space
file is refused), its Optuna storage (a checked journal file or an RDB URL), its saved config, and the
locks of its live workers, whose lost trials are failed on the next start. `neuralnets.training.tune`
runs the workers."""

from __future__ import annotations

import contextlib
import fcntl
import logging
import math
import os
import re
import secrets
import socket
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from neuralnets.config import CONFIG_DIR, compose, load_config_file
from neuralnets.errors import ConfigError
from neuralnets.files import atomic_path, held_lock
from neuralnets.models import model_family
from neuralnets.runs import STATUS_FILE, read_status, write_status
from neuralnets.training.journal import check_journal, open_journal, repair_journal

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
    "tune.repair_journal",
    "threads",
)
RESOLVER = re.compile(r"\$\{\s*[\w.]+\s*:")  # ${oc.env:...}, ${now:...}: plain ${key} references only


def _optuna():
    try:
        import optuna
    except ImportError:
        raise ConfigError("neuralnets-tune needs Optuna: pip install 'neuralnets[sweep]'") from None
    return optuna


def space_file(cfg: DictConfig) -> Path:
    """The search-space file: `tune.space`, else the model family's (`ModelFamily.search_space`: a name in
    `configs/tune/`, or a file)."""
    if cfg.get("tune") is not None and cfg.tune.get("space"):
        return Path(cfg.tune.space)
    name = str(cfg.model.name)
    declared = model_family(name).search_space
    if declared is None:
        raise ConfigError(
            f"model {name!r} declares no search space (ModelFamily.search_space in neuralnets/models); "
            "give one with tune.space=FILE (neuralnets-tune) or pbt.search_space={...} (neuralnets-pbt)"
        )
    return Path(declared) if isinstance(declared, Path) else CONFIG_DIR / "tune" / f"{declared}.yaml"


def read_spaces(cfg: DictConfig) -> DictConfig:
    """The search-space file's content (`space_file`): `params` for neuralnets-tune, `pbt` for
    neuralnets-pbt. A file of the config tree is composed; any other is read as plain data."""
    path = space_file(cfg)
    if not path.is_file():
        raise ConfigError(f"no search space {path} for model {cfg.model.name!r} (set tune.space=FILE)")
    if path.parent == CONFIG_DIR / "tune":
        return compose(config_name=f"tune/{path.stem}").tune
    return load_config_file(path, "search-space file")


def search_space(cfg: DictConfig) -> list[dict[str, Any]]:
    """The `params` of the search-space file (`space_file`), each `{key, low, high, log}` with `key` a
    numeric setting of the config."""
    path = space_file(cfg)
    params = OmegaConf.to_container(read_spaces(cfg)).get("params") or []
    for p in params:
        key = p.get("key")
        default = OmegaConf.select(cfg, str(key))
        if default is None:
            raise ConfigError(f"{path}: {key!r} is not a setting of this config (model {cfg.model.name})")
        if isinstance(default, bool):
            raise ConfigError(f"{path}: {key} is a yes/no setting ({default}); a search space holds numbers")
        low, high = p.get("low"), p.get("high")
        if not (isinstance(low, int | float) and isinstance(high, int | float) and low < high):
            raise ConfigError(f"{path}: {key}: need numbers low < high; got low={low!r}, high={high!r}")
        if p.get("log") and low <= 0:
            raise ConfigError(f"{path}: {key}: a log scale needs low > 0; got {low}")
        if is_integer(p, default) and math.ceil(low) > math.floor(high):
            raise ConfigError(f"{path}: {key} is an integer setting; no integer lies in [{low}, {high}]")
    return params


def is_integer(param: dict[str, Any], default: Any) -> bool:
    """Whether a searched key takes integers (a size, a count): its config default is an int, or, for a
    default that is not a number (`auto`), both bounds are ints."""
    if isinstance(default, int | float) and not isinstance(default, bool):
        return isinstance(default, int)
    return isinstance(param.get("low"), int) and isinstance(param.get("high"), int)


def study_space(cfg: DictConfig) -> list[dict[str, Any]]:
    """The study's search space: the one recorded when it started (`tune.space_params`, study.yaml),
    which the space file must still hold (`check_space`); the file's for a config without a record."""
    params = search_space(cfg)
    recorded = cfg.tune.get("space_params")
    if recorded is not None:
        check_space(OmegaConf.to_container(recorded, resolve=True), params, space_file(cfg), cfg.tune.dir)
    return params


def check_space(recorded: list[dict[str, Any]], now: list[dict[str, Any]], path: Path, tune_dir: Any) -> None:
    """A ConfigError saying what changed when the space file `path` no longer holds the `recorded`
    space of the study in `tune_dir`: a study's members all come from one space."""
    before = {p["key"]: {k: v for k, v in p.items() if k != "key"} for p in recorded}
    after = {p["key"]: {k: v for k, v in p.items() if k != "key"} for p in now}
    for key in [*before, *(k for k in after if k not in before)]:
        if before.get(key) != after.get(key):
            was, is_ = before.get(key, "(not searched)"), after.get(key, "(not searched)")
            raise ConfigError(
                f"{path}: the search space changed since study {tune_dir} started: {key}: {was} -> {is_}; "
                "a study keeps its space (restore the file, or start a new study with another tune.dir)"
            )


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
    path = journal_path(cfg)
    path.parent.mkdir(parents=True, exist_ok=True)
    return open_journal(path)  # checked: a damaged journal is one line naming the file and line


def journal_path(cfg: DictConfig) -> Path:
    """The journal file of the study (`tune.storage`, else `<tune dir>/journal.log`)."""
    target = cfg.tune.get("storage")
    return Path(target) if target else Path(cfg.tune.dir) / JOURNAL


def repair_study_journal(cfg: DictConfig, tune_dir: Path) -> None:
    """`tune.repair_journal=true`: back the journal up and keep its complete records
    (`training.journal.repair_journal`); refused while a worker of the study is alive. Call with the
    study lock held."""
    target = cfg.tune.get("storage")
    if target and "://" in str(target):
        raise ConfigError(
            f"tune.repair_journal=true repairs a journal file; tune.storage={target} is a database"
        )
    path = journal_path(cfg)
    alive = [p.stem for p in (tune_dir / WORKERS).glob("*.lock") if WorkerLock.alive(tune_dir, p.stem)]
    if alive:
        raise ConfigError(f"tune.repair_journal=true: workers {alive} are running on {path}; stop them first")
    if path.is_file():
        repair_journal(path)
        check_journal(path)


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
        self.path = self.dir / f"{self.name}.lock"
        self._held = contextlib.ExitStack()

    def __enter__(self) -> WorkerLock:
        # Created, then locked: no trial names this worker before the lock is held, so no other worker
        # can judge it dead (`alive`) in between.
        self.dir.mkdir(parents=True, exist_ok=True)
        holder = f"neuralnets-tune worker pid {os.getpid()} on {socket.gethostname()}"
        self._held.enter_context(held_lock(self.path, holder))
        return self

    def __exit__(self, *exc: object) -> None:
        self.path.unlink(missing_ok=True)  # before the lock goes: no stale file that looks alive
        self._held.close()

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
        cfg.tune.space_params = search_space(cfg)  # the space's content is part of the study's identity
        with atomic_path(path) as tmp:  # unresolved: members set keys that others interpolate
            OmegaConf.save(cfg, tmp, resolve=False)
        return cfg
    if RESOLVER.search(path.read_text()):  # a file never reads the environment (or runs a resolver)
        raise ConfigError(
            f"{path}: a resolver interpolation (${{name:...}}) is not allowed in a study's config"
        )
    saved = OmegaConf.load(path)
    if saved.tune.get("space_params") is not None:  # (a study of an older neuralnets-tune has none)
        cfg.tune.space_params = saved.tune.space_params
    if cfg.tune.join:
        for key in (*WORKER_KEYS, "tune.dir", "tune.storage", "tune.study_name"):
            value = OmegaConf.select(cfg, key)
            if value is not None or key in WORKER_KEYS:  # a storage named here wins (a path seen from here)
                OmegaConf.update(saved, key, value, force_add=True)
        study_space(saved)
        return saved
    study_space(cfg)
    mine, theirs = _flat(cfg), _flat(saved)
    for key in sorted(set(mine) | set(theirs)):
        if key not in (*WORKER_KEYS, "tune.dir", "tune.space_params") and mine.get(key) != theirs.get(key):
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


def _cores() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def worker_threads(cfg: DictConfig) -> tuple[DictConfig, int]:
    """Set torch's threads for one worker: `threads` as given, or (null, auto) this machine's cores
    shared by the workers; returns the config with the number recorded, and the number."""
    import torch

    given = cfg.get("threads") not in (None, "auto")
    threads = int(cfg.threads) if given else max(1, _cores() // int(cfg.tune.workers))
    torch.set_num_threads(threads)
    return OmegaConf.merge(cfg, {"threads": threads}), threads
