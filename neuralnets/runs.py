"""The run directory: its layout and every read and write of it (the one owner of these paths).

    run_dir/
      status.json         STATUS_FILE: {"status": RUN_STATES (running | finished | failed | diverged |
                          interrupted), "started", "updated"
                          (UTC ISO times), "train_time_s" (all training segments), "epochs", "error"}
      config.yaml         CONFIG_FILE: the resolved training config (written by training)
      checkpoints/        CHECKPOINT_DIR: `last.ckpt` (LAST_CHECKPOINT) and best-*.ckpt, each with a
                          `.sha256` record (owned by `neuralnets.checkpoints`: writing, verifying, choosing)
      predictions.h5      PREDICTIONS_FILE: `rates (trials, T, N)` counts per bin for ALL trials of the
                          dataset, float32; optional `latents (trials, T', K)` and `inputs (trials, T_obs, U)`
      predictions.h5.sha256   its digest (`write_predictions`), verified when a run's predictions are read
      metrics.json        METRICS_FILE: {"model": str, "data": str, "split": str, "metrics": {name: float},
                          "train_time_s": float, "n_parameters": int, ...anything else}; read back as a
                          validated `MetricsRecord` (`read_metrics`)
      .lock               LOCK_FILE: flock-ed by the process training the run (`run_lock`)

Optional keys of metrics.json used to rebuild the dataset (`load_run_data`): "data_source" (name or
path accepted by `neuralnets.data.loaders.load`, preferred over "data") and "data_kwargs" (its
keyword arguments, e.g. a synthetic seed). Older runs may hold `predictions.npz` instead of
`predictions.h5`; `read_predictions` reads both. metrics.json and predictions.h5 are written
atomically (a temporary file in the same directory, fsync, rename), so a reader never sees half a file.

New run directories come from `create_run_dir` (a unique name, made with an exclusive `os.mkdir`, safe
across processes and nodes sharing a filesystem) or `claim_run_dir` (a directory the user named, refused
if it already holds a run). Either records status "running"; `write_status` moves it on, and readers
(`neuralnets-eval`, `neuralnets-compare`, `load_pretrained`, resume) ask `read_status`/`require_finished`.
A run directory without status.json (written before it existed) counts as finished if it has metrics.json.
The process training a run holds `run_lock(run_dir)`; a second one (e.g. a concurrent resume) is refused.
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime
import json
import math
import os
import time
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from neuralnets.errors import RunStatusError

# atomic_path, fsync_dir: re-exported, they were defined here before neuralnets.files
from neuralnets.files import atomic_path, exclusive_text, fsync_dir, held_lock, write_text_atomic  # noqa: F401

# predictions.h5: its reading and writing live in neuralnets.predictions, re-exported here.
from neuralnets.predictions import (  # noqa: F401
    CHUNK_BYTES,
    LEGACY_PREDICTIONS_FILE,
    PREDICTION_KEYS,
    PREDICTIONS_FILE,
    PREDICTIONS_FILES,
    predict_chunks,
    read_predictions,
    write_predictions,
)

if TYPE_CHECKING:
    from neuralnets.data.spikedata import SpikeData


CONFIG_FILE = "config.yaml"
CHECKPOINT_DIR = "checkpoints"
LAST_CHECKPOINT = "last.ckpt"
METRICS_FILE = "metrics.json"
STATUS_FILE = "status.json"
# running: training now (or killed without a word: a stale lock tells, see `run_lock`); interrupted:
# stopped by SIGTERM/SIGINT after saving last.ckpt (resume= continues it); failed / diverged: ended by
# an error / a non-finite loss; finished: trained and scored.
RUN_STATES = ("running", "finished", "failed", "diverged", "interrupted")
LOCK_FILE = ".lock"  # flock-ed by the process training the run (`run_lock`)


# ---------------------------------------------------------------------------------------------- run directory


def _now() -> str:
    return datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")


def _status_text(status: Mapping[str, Any]) -> str:
    return json.dumps(_finite_or_none(dict(status)), indent=2) + "\n"


def _new_status() -> dict[str, Any]:
    return {"status": "running", "started": _now(), "updated": _now(), "train_time_s": 0.0}


def create_run_dir(parent: str | Path, name: str) -> Path:
    """Create a new, unique run directory `parent/name` (or `name_1`, `name_2`, ... when taken) with
    an exclusive `os.mkdir`, so two runs started at the same moment, in any processes or on any nodes
    sharing the filesystem, never get the same one; records status "running". Returns its path."""
    parent = Path(parent)
    parent.mkdir(parents=True, exist_ok=True)
    for i in range(10_000):
        path = parent / (name if i == 0 else f"{name}_{i}")
        try:
            os.mkdir(path)
        except FileExistsError:
            continue
        write_status(path, _new_status())
        return path
    raise FileExistsError(f"{parent}: no free run directory name {name}_N (10000 taken)")


def holds_run(run_dir: str | Path) -> bool:
    """True if `run_dir` holds (part of) a run: a status, config, checkpoints, metrics or predictions."""
    run_dir = Path(run_dir)
    names = (STATUS_FILE, CONFIG_FILE, CHECKPOINT_DIR, METRICS_FILE, *PREDICTIONS_FILES)
    return any((run_dir / n).exists() for n in names)


def claim_run_dir(run_dir: str | Path) -> Path:
    """Take the directory the user named (created if absent) for a new run: refused with a
    FileExistsError if it already holds a run; of two processes claiming it at once, one wins (the
    status file is created exclusively, by a hard link). Returns its path."""
    run_dir = Path(run_dir)
    if holds_run(run_dir):
        raise FileExistsError(
            f"{run_dir} already holds a run; refusing to overwrite it (use resume= to continue it)"
        )
    run_dir.mkdir(parents=True, exist_ok=True)
    try:
        exclusive_text(run_dir / STATUS_FILE, _status_text(_new_status()))
    except FileExistsError:
        raise FileExistsError(f"{run_dir} was just claimed by another run; refusing to share it") from None
    return run_dir


def abandon_run_dir(run_dir: str | Path) -> None:
    """Undo a claim whose run could not start: remove its status and lock, and the directory if empty."""
    for name in (STATUS_FILE, LOCK_FILE):
        (Path(run_dir) / name).unlink(missing_ok=True)
    with contextlib.suppress(OSError):
        Path(run_dir).rmdir()


@contextlib.contextmanager
def run_lock(run_dir: str | Path) -> Iterator[Path]:
    """Hold an exclusive lock on `run_dir` while a process trains it (`fcntl.flock` on `run_dir/.lock`,
    released when the process ends, however it ends). A second process asking for it gets a
    RunStatusError naming the holder (pid, host, since when) instead of training the run twice at once.
    flock works across processes of one machine and on network filesystems that support it (NFSv4)."""
    import socket

    holder = f"pid {os.getpid()} on {socket.gethostname()} since {_now()}"
    lock = held_lock(Path(run_dir) / LOCK_FILE, holder)
    try:
        path = lock.__enter__()
    except BlockingIOError as err:
        raise RunStatusError(
            f"{run_dir} is being trained by {err.args[1] or 'another process'}; refusing to train it twice "
            "at once (wait for that process to end, or stop it)"
        ) from None
    with contextlib.ExitStack() as stack:
        stack.push(lock)  # entered above: released however the block ends
        yield path


def error_line(err: BaseException) -> str:
    """The one line status.json records for the error that ended a run: `Type: message`."""
    return " ".join(f"{type(err).__name__}: {err}".split())


@contextlib.contextmanager
def recorded_run(run_dir: str | Path | tuple[str | Path, str], claim: bool = True) -> Iterator[Path]:
    """The one way a command makes a run directory and records how it ended:

        with recorded_run(out) as run_dir:      # claimed (refused if it holds a run) and locked
            ...                                 # write config, train, score
            write_status(run_dir, "finished")   # the block records success itself

    `run_dir`: a directory to claim (`claim_run_dir`), or (parent, name) for a new unique one
    (`create_run_dir`); `claim=False`: an existing run (a resume), locked only. If the block raises while
    the status is still "running", status.json records "interrupted" (Ctrl-C, SIGTERM, a host's
    SystemExit) or "failed", with `error_line(err)`; a status the block recorded itself is kept, and a
    block that removed status.json (a start undone) records nothing."""
    if isinstance(run_dir, tuple):
        path = create_run_dir(*run_dir)
    else:
        path = claim_run_dir(run_dir) if claim else Path(run_dir)
    with run_lock(path):
        try:
            yield path
        except BaseException as err:
            record_ending(path, err)
            raise


def record_ending(run_dir: str | Path, err: BaseException) -> None:
    """Record in status.json how a run still "running" ended with `err`: "interrupted" (Ctrl-C, SIGTERM,
    a host's SystemExit) or "failed", with `error_line(err)`; any other status (one the run recorded
    itself) is kept, and a directory without status.json (a start undone) records nothing."""
    path = Path(run_dir)
    if (path / STATUS_FILE).is_file() and read_status(path)["status"] == "running":
        state = "interrupted" if isinstance(err, KeyboardInterrupt | SystemExit) else "failed"
        write_status(path, state, error=error_line(err))


def settle_run(run_dir: str | Path, deadline: float, err: BaseException) -> bool:
    """Wait (until `time.monotonic()` passes `deadline`) for the process holding `run_dir` to let go of it,
    then record a run it left "running" as ended by `err` (`record_ending`): for hosts that end a run's
    process without waiting for it. False if the run is still held at the deadline."""
    while True:
        try:
            with run_lock(run_dir):
                record_ending(run_dir, err)
            return True
        except RunStatusError:
            if time.monotonic() > deadline:
                return False
            time.sleep(0.2)


def write_config(run_dir: str | Path, cfg: Any) -> Path:
    """Write the run's config (an OmegaConf config) to run_dir/config.yaml, atomically; returns its path."""
    from omegaconf import OmegaConf

    path = Path(run_dir) / CONFIG_FILE
    with atomic_path(path) as tmp:
        OmegaConf.save(cfg, tmp, resolve=True)
    return path


def read_json(path: Path) -> Any:
    """The parsed JSON file `path`; a damaged one (bad JSON or text encoding) is a ValueError naming it."""
    try:
        return json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise RunStatusError(f"{path} is not valid JSON ({e})") from None


def read_status(run_dir: str | Path) -> dict[str, Any]:
    """Contents of run_dir/status.json; for a run directory without one, {"status": "finished"} if it
    has metrics.json (an older run) else {"status": "unknown"}. A damaged file is a ValueError naming it."""
    run_dir = Path(run_dir)
    path = run_dir / STATUS_FILE
    if not path.is_file():
        return {"status": "finished" if (run_dir / METRICS_FILE).is_file() else "unknown"}
    status = read_json(path)
    if not isinstance(status, dict) or status.get("status") not in RUN_STATES:
        raise RunStatusError(f"{path}: 'status' must be one of {list(RUN_STATES)}; got {status!r}")
    return status


def write_status(run_dir: str | Path, status: str | Mapping[str, Any], **fields: Any) -> dict[str, Any]:
    """Set run_dir/status.json to `status` (a state of RUN_STATES, or a whole record), keeping the
    other fields already there and adding `fields` (e.g. error=..., train_time_s=...). Atomic. Returns it."""
    run_dir = Path(run_dir)
    record = dict(status) if isinstance(status, Mapping) else {"status": status}
    if record.get("status") not in RUN_STATES:
        raise RunStatusError(f"run status must be one of {list(RUN_STATES)}; got {record.get('status')!r}")
    path = run_dir / STATUS_FILE
    previous = read_status(run_dir) if path.is_file() else {}
    merged = {**previous, **record, **fields, "updated": _now()}
    write_text_atomic(path, _status_text(merged))
    return merged


def require_finished(run_dir: str | Path) -> dict[str, Any]:
    """The status of a finished run; a RunStatusError naming the directory and its status otherwise."""
    status = read_status(run_dir)
    if status["status"] == "unknown":
        what = "does not exist" if not Path(run_dir).is_dir() else f"holds no run ({METRICS_FILE} not found)"
        raise RunStatusError(f"run directory {run_dir} {what}")
    if status["status"] != "finished":
        error = f": {status['error']}" if status.get("error") else ""
        raise RunStatusError(f"{run_dir} is not a finished run (status {status['status']}{error})")
    return status


# ---------------------------------------------------------------------------------------------- metrics.json
def _finite_or_none(x: Any) -> Any:
    if isinstance(x, float) and not math.isfinite(x):
        return None  # strict JSON has no NaN/inf
    if isinstance(x, Mapping):
        return {k: _finite_or_none(v) for k, v in x.items()}
    if isinstance(x, list | tuple):
        return [_finite_or_none(v) for v in x]
    if isinstance(x, np.generic):
        return _finite_or_none(x.item())
    return x


def write_metrics(
    metrics: Mapping[str, float], run_dir: str | Path, extra: Mapping[str, Any] | None = None
) -> Path:
    """Write run_dir/metrics.json = {**existing, **extra, "metrics": metrics}; returns its path.

    Keys already in the file and not in `extra` are kept (so evaluation can add to what training
    wrote); no other file in run_dir is touched. NaN/inf become null. Atomic.
    """
    run_dir = Path(run_dir)
    path = run_dir / METRICS_FILE
    payload: dict[str, Any] = {}
    if path.exists():
        try:
            payload = json.loads(path.read_text())
        except json.JSONDecodeError as e:
            raise RunStatusError(f"{path} exists but is not valid JSON ({e}); fix or remove it") from None
    payload.update(dict(extra or {}))
    payload["metrics"] = {k: float(v) for k, v in metrics.items()}
    text = json.dumps(_finite_or_none(payload), indent=2, sort_keys=False) + "\n"
    write_text_atomic(path, text)
    return path


@dataclasses.dataclass
class MetricsRecord:
    """metrics.json, typed: what a finished run scored and how to rebuild its data.

    `metrics` {name: value} on the `split` trials (null for a value that was not finite); `data_source`
    / `data_kwargs` rebuild the dataset (`load_run_data`); `checkpoint` is the scored checkpoint,
    relative to the run directory; `extra` holds every other key (val_metrics, monitor, members, ...)."""

    model: str
    data: str
    metrics: dict[str, float | None]
    split: str = "test"
    train_time_s: float | None = None
    n_parameters: int | None = None
    data_source: str | None = None
    data_kwargs: dict[str, Any] = dataclasses.field(default_factory=dict)
    checkpoint: str | None = None
    extra: dict[str, Any] = dataclasses.field(default_factory=dict)

    @classmethod
    def from_dict(cls, payload: Any, where: str | Path = METRICS_FILE) -> MetricsRecord:
        """Validate `payload` (parsed metrics.json, read from `where`): a ValueError naming the key."""
        if not isinstance(payload, dict):
            raise RunStatusError(f"{where} must hold a JSON object; got {type(payload).__name__}")
        missing = [k for k in ("model", "data", "metrics") if k not in payload]
        if missing:
            raise RunStatusError(
                f"{where} lacks the key(s) {missing}; the run-directory contract needs model, data, metrics"
            )
        metrics = payload["metrics"]
        if not isinstance(metrics, dict) or not all(
            v is None or (isinstance(v, int | float) and not isinstance(v, bool)) for v in metrics.values()
        ):
            raise RunStatusError(f"{where}: 'metrics' must be an object of metric name -> number")
        types = {
            "model": (str,), "data": (str,), "split": (str,), "train_time_s": (int, float, type(None)),
            "n_parameters": (int, type(None)), "data_source": (str, type(None)), "data_kwargs": (dict,),
            "checkpoint": (str, type(None)),
        }  # fmt: skip
        fields = {k: payload[k] for k in types if k in payload}
        if fields.get("data_kwargs", {}) is None:
            fields["data_kwargs"] = {}
        for key, value in fields.items():
            if not isinstance(value, types[key]) or isinstance(value, bool):
                raise ValueError(f"{where}: {key!r} has the wrong type ({type(value).__name__}: {value!r})")
        extra = {k: v for k, v in payload.items() if k not in types and k != "metrics"}
        return cls(metrics=dict(metrics), extra=extra, **fields)

    def to_dict(self) -> dict[str, Any]:
        """The record as metrics.json holds it (core keys first, then `extra`)."""
        out = {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.name != "extra"}
        return {**out, **self.extra}


def read_metrics(run_dir: str | Path) -> MetricsRecord:
    """run_dir/metrics.json as a validated `MetricsRecord`; clear errors if the directory or a key is bad."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise FileNotFoundError(f"run directory {run_dir} does not exist")
    path = run_dir / METRICS_FILE
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found: is {run_dir} a finished run directory?")
    return MetricsRecord.from_dict(read_json(path), path)


def read_run(run_dir: str | Path) -> dict[str, Any]:
    """`read_metrics(run_dir)` as a plain dict, plus "run_dir"."""
    return {**read_metrics(run_dir).to_dict(), "run_dir": str(run_dir)}


def load_run_data(run: Mapping[str, Any]) -> SpikeData:
    """The dataset a run was scored on: `load(run["data_source"] or run["data"], **run["data_kwargs"])`."""
    from neuralnets.data.loaders import load  # the loaders pull in pynwb/h5py: only when asked
    from neuralnets.data.spikedata import SpikeData
    from neuralnets.errors import DataError

    source = run.get("data_source") or run["data"]
    kwargs = run.get("data_kwargs") or {}
    if not isinstance(kwargs, Mapping):
        raise RunStatusError(
            f"'data_kwargs' of run {run.get('run_dir', run.get('model'))} must be an object; got {kwargs!r}"
        )
    data = load(source, **kwargs)
    if not isinstance(data, SpikeData):  # several sessions: scored per session, no single dataset
        raise DataError(f"{source!r} holds {len(data)} sessions; the run's metrics.json scores each one")
    return data
