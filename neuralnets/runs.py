"""The run directory: its layout and every read and write of it (the one owner of these paths).

    run_dir/
      config.yaml         CONFIG_FILE: the resolved training config (written by training)
      checkpoints/        CHECKPOINT_DIR: Lightning checkpoints, `last.ckpt` (LAST_CHECKPOINT) and best-*.ckpt
      predictions.h5      PREDICTIONS_FILE: `rates (trials, T, N)` counts per bin for ALL trials of the
                          dataset, float32; optional `latents (trials, T', K)` and `inputs (trials, T_obs, U)`
      metrics.json        METRICS_FILE: {"model": str, "data": str, "split": str, "metrics": {name: float},
                          "train_time_s": float, "n_parameters": int, ...anything else}

Optional keys of metrics.json used to rebuild the dataset (`load_run_data`): "data_source" (name or
path accepted by `neuralnets.data.loaders.load`, preferred over "data") and "data_kwargs" (its
keyword arguments, e.g. a synthetic seed). Older runs may hold `predictions.npz` instead of
`predictions.h5`; `read_predictions` reads both. metrics.json and predictions.h5 are written
atomically (a temporary file in the same directory, fsync, rename), so a reader never sees half a file.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import tempfile
from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    from neuralnets.data.spikedata import SpikeData

CONFIG_FILE = "config.yaml"
CHECKPOINT_DIR = "checkpoints"
LAST_CHECKPOINT = "last.ckpt"
PREDICTIONS_FILE = "predictions.h5"
LEGACY_PREDICTIONS_FILE = "predictions.npz"  # read, never written
PREDICTIONS_FILES = (PREDICTIONS_FILE, LEGACY_PREDICTIONS_FILE)  # lookup order in a run directory
METRICS_FILE = "metrics.json"
PREDICTION_KEYS = ("rates", "latents", "inputs")  # the arrays predictions.h5 may hold
CHUNK_BYTES = 8 << 20  # HDF5 chunks of at most ~8 MiB (whole trials; one trial if a trial is larger)


# ---------------------------------------------------------------------------------------------- atomic writes
@contextlib.contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path in `path`'s directory; on success fsync it and rename it onto `path`.

    On an exception the temporary file is removed and `path` is left as it was.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        with open(tmp_path, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(tmp_path, path)
    except BaseException:
        tmp_path.unlink(missing_ok=True)
        raise
    with contextlib.suppress(OSError):  # make the rename itself durable (POSIX; not possible everywhere)
        dir_fd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)


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
            raise ValueError(f"{path} exists but is not valid JSON ({e}); fix or remove it") from None
    payload.update(dict(extra or {}))
    payload["metrics"] = {k: float(v) for k, v in metrics.items()}
    text = json.dumps(_finite_or_none(payload), indent=2, sort_keys=False) + "\n"
    with atomic_path(path) as tmp:
        tmp.write_text(text)
    return path


def read_run(run_dir: str | Path) -> dict[str, Any]:
    """Contents of run_dir/metrics.json plus "run_dir"; clear errors if the directory or a key is missing."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise FileNotFoundError(f"run directory {run_dir} does not exist")
    path = run_dir / METRICS_FILE
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found: is {run_dir} a finished run directory?")
    try:
        run = json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise ValueError(f"{path} is not valid JSON ({e})") from None
    if not isinstance(run, dict):
        raise ValueError(f"{path} must hold a JSON object; got {type(run).__name__}")
    missing = [k for k in ("model", "data", "metrics") if k not in run]
    if missing:
        raise ValueError(
            f"{path} lacks the key(s) {missing}; the run-directory contract needs model, data, metrics"
        )
    if not isinstance(run["metrics"], dict):
        raise ValueError(f"{path}: 'metrics' must be an object of metric name -> number")
    run.setdefault("split", "test")
    run.setdefault("train_time_s", None)
    run.setdefault("n_parameters", None)
    run["run_dir"] = str(run_dir)
    return run


def load_run_data(run: Mapping[str, Any]) -> SpikeData:
    """The dataset a run was scored on: `load(run["data_source"] or run["data"], **run["data_kwargs"])`."""
    from neuralnets.data.loaders import load  # the loaders pull in pynwb/h5py: only when asked

    source = run.get("data_source") or run["data"]
    kwargs = run.get("data_kwargs") or {}
    if not isinstance(kwargs, Mapping):
        raise ValueError(
            f"'data_kwargs' of run {run.get('run_dir', run.get('model'))} must be an object; got {kwargs!r}"
        )
    return load(source, **kwargs)


# ---------------------------------------------------------------------------------------------- predictions
def _to_numpy(x: Any) -> np.ndarray:
    if hasattr(x, "detach"):  # a torch tensor, on any device
        x = x.detach().float().cpu().numpy()
    return np.asarray(x, dtype=np.float32)


def predict_chunks(model: Any, data: SpikeData, batch_size: int = 512) -> Iterator[tuple[int, dict]]:
    """(start trial, {"rates", "latents"[, "inputs"]: float32 arrays}) of `model` over all trials of `data`.

    `model` is a `neuralnets.models.base.SpikeModel` (its `predict_batches`, eval mode, no grad); its
    train/eval mode is restored once the chunks are exhausted. Feed this to `write_predictions`.
    """
    was_training = model.training
    try:
        for start, out in model.predict_batches(data.heldin_obs, batch_size):
            chunk = {k: getattr(out, k) for k in PREDICTION_KEYS}
            yield start, {k: _to_numpy(v) for k, v in chunk.items() if v is not None}
    finally:
        model.train(was_training)


def write_predictions(
    run_dir: str | Path,
    predictions: Mapping[str, Any] | Iterable[tuple[int, Mapping[str, Any]]],
    n_trials: int | None = None,
) -> Path:
    """Write run_dir/predictions.h5 (float32 arrays, chunked by trials); returns its path. Atomic.

    `predictions` is either a mapping of whole arrays {"rates": (trials, T, N), "latents": ...,
    "inputs": ...} (numpy or torch; None values skipped), or an iterable of (start, {key: chunk}) over
    trials, e.g. `predict_chunks(model, data)`, written chunk by chunk so that predictions for a large
    dataset never sit in memory whole; then `n_trials` (the dataset's trial count) is required.
    Refuses to overwrite an existing file.
    """
    import h5py

    path = Path(run_dir) / PREDICTIONS_FILE
    if path.exists():
        raise FileExistsError(f"{path} exists; refusing to overwrite predictions")
    if isinstance(predictions, Mapping):
        arrays = {k: v for k, v in predictions.items() if v is not None}
        if "rates" not in arrays:
            raise ValueError(f"{path}: predictions need 'rates'; got keys {sorted(arrays)}")
        n_trials = len(arrays["rates"]) if n_trials is None else n_trials
        chunks: Iterable[tuple[int, Mapping[str, Any]]] = [(0, arrays)]
    else:
        if n_trials is None:
            raise ValueError(f"{path}: writing predictions chunk by chunk needs n_trials")
        chunks = predictions
    with atomic_path(path) as tmp, h5py.File(tmp, "w") as f:
        for start, chunk in chunks:
            for key, value in chunk.items():
                if key not in PREDICTION_KEYS:
                    raise ValueError(f"{path}: unknown prediction {key!r}; expected one of {PREDICTION_KEYS}")
                arr = _to_numpy(value)
                if arr.ndim < 1 or start + len(arr) > n_trials:
                    raise ValueError(
                        f"{path}: {key!r} chunk of shape {arr.shape} at trial {start} does not fit "
                        f"{n_trials} trials"
                    )
                if key not in f:
                    per_trial = 4 * max(1, math.prod(arr.shape[1:]))  # bytes
                    rows = max(1, min(len(arr), n_trials, CHUNK_BYTES // per_trial))
                    f.create_dataset(
                        key,
                        shape=(n_trials, *arr.shape[1:]),
                        dtype=np.float32,
                        chunks=(rows, *arr.shape[1:]) if arr.size else None,
                    )
                f[key][start : start + len(arr)] = arr
        if "rates" not in f:
            raise ValueError(f"{path}: no 'rates' were written (empty predictions)")
        f.attrs["n_trials"] = n_trials
    return path


def read_predictions(path: str | Path) -> dict[str, np.ndarray]:
    """{"rates": (trials, T, N), and "latents"/"inputs" when present} from a run directory or a file.

    Files: `.h5`/`.hdf5` (as `write_predictions` writes) or `.npz` with array `rates` and optional
    `latents`, or a `.npy` holding the rates. A run directory is searched for `PREDICTIONS_FILES` in order.
    """
    path = Path(path)
    if path.is_dir():
        found = [path / name for name in PREDICTIONS_FILES if (path / name).is_file()]
        if not found:
            raise FileNotFoundError(
                f"{path} holds no predictions file (looked for {list(PREDICTIONS_FILES)})"
            )
        path = found[0]
    if not path.is_file():
        raise FileNotFoundError(f"predictions file {path} not found")
    suffix = path.suffix.lower()
    if suffix == ".npy":
        return {"rates": np.load(path, allow_pickle=False)}
    if suffix in (".h5", ".hdf5"):
        import h5py

        try:
            with h5py.File(path, "r") as f:
                if "rates" not in f:
                    raise ValueError(f"{path} has no dataset 'rates' (found {sorted(f.keys())})")
                return {k: f[k][()] for k in PREDICTION_KEYS if k in f}
        except OSError as e:
            raise ValueError(f"{path}: cannot read as HDF5 ({e})") from None
    if suffix != ".npz":
        raise ValueError(
            f"{path}: a predictions file must be .h5/.hdf5/.npz (array 'rates', optional 'latents') or .npy"
        )
    with np.load(path, allow_pickle=False) as f:
        if "rates" not in f.files:
            raise ValueError(f"{path} has no array 'rates' (found {sorted(f.files)})")
        return {k: f[k] for k in PREDICTION_KEYS if k in f.files}
