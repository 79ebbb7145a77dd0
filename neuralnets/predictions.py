"""A run directory's predictions.h5 (`neuralnets.runs` owns the directory and re-exports these):
`rates (trials, T, N)` counts per bin for ALL trials of the dataset, float32, and optional
`latents (trials, T', K)` and `inputs (trials, T_obs, U)`; written chunk by chunk and atomically,
read back from a run directory or a rates file (.h5, .npz, .npy)."""

from __future__ import annotations

import logging
import math
from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from neuralnets.digests import digest_path, file_sha256, record_text, recorded_digests
from neuralnets.errors import CheckpointError, RunStatusError
from neuralnets.files import atomic_path, write_text_atomic

if TYPE_CHECKING:
    from neuralnets.data.spikedata import SpikeData

PREDICTIONS_FILE = "predictions.h5"
LEGACY_PREDICTIONS_FILE = "predictions.npz"  # read, never written
PREDICTIONS_FILES = (PREDICTIONS_FILE, LEGACY_PREDICTIONS_FILE)  # lookup order in a run directory
PREDICTION_KEYS = ("rates", "latents", "inputs")  # the arrays predictions.h5 may hold
log = logging.getLogger(__name__)
CHUNK_BYTES = 8 << 20  # HDF5 chunks of at most ~8 MiB (whole trials; one trial if a trial is larger)


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
    replace: bool = False,
) -> Path:
    """Write run_dir/predictions.h5 (float32 arrays, chunked by trials); returns its path. Atomic.

    `predictions` is either a mapping of whole arrays {"rates": (trials, T, N), "latents": ...,
    "inputs": ...} (numpy or torch; None values skipped), or an iterable of (start, {key: chunk}) over
    trials, e.g. `predict_chunks(model, data)`, written chunk by chunk so that predictions for a large
    dataset never sit in memory whole; then `n_trials` (the dataset's trial count) is required.
    Refuses to overwrite an existing file unless `replace` (a resumed run's new predictions: the old
    file stays whole until the new one is complete). Its sha256 is recorded beside it
    (`predictions.h5.sha256`, as for checkpoints): a kill at any moment leaves a file that matches.
    """
    path = Path(run_dir) / PREDICTIONS_FILE
    if path.exists() and not replace:
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
    previous = _recorded_or_none(path)
    with atomic_path(path) as tmp:
        _write_prediction_chunks(tmp, path, chunks, n_trials)
        digest = file_sha256(tmp)
        _record_predictions(path, [digest, *previous])  # {new, old} while the new file is renamed
    _record_predictions(path, [digest])
    return path


def _write_prediction_chunks(
    tmp: Path, path: Path, chunks: Iterable[tuple[int, Mapping[str, Any]]], n_trials: int
) -> None:
    """The body of `write_predictions`: write `chunks` into the new HDF5 file `tmp` (errors name `path`)."""
    import h5py

    with h5py.File(tmp, "w") as f:
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


def _recorded_or_none(path: Path) -> list[str]:
    """The digests recorded for `path` ([] without a record, or with a damaged one)."""
    try:
        return recorded_digests(path)[:1] if path.is_file() else []
    except CheckpointError:
        return []


def _record_predictions(path: Path, digests: list[str]) -> None:
    write_text_atomic(digest_path(path), record_text(path, list(dict.fromkeys(digests))))


def verify_predictions(path: str | Path, trust_unverified: bool = False) -> None:
    """Check predictions file `path` against its sha256 record (`write_predictions` writes it): a
    RunStatusError naming the file when the digest differs, or when there is no record unless
    `trust_unverified` (then the digest accepted is logged)."""
    path = Path(path)
    expected, digest = recorded_digests(path), file_sha256(path)
    if not expected:
        if not trust_unverified:
            raise RunStatusError(
                f"{path}: no sha256 record ({digest_path(path).name}); refusing unverified predictions "
                f"(sha256 {digest}); pass trust_unverified (neuralnets-eval, neuralnets-ensemble: "
                "--trust-unverified) only if you trust where this file came from"
            )
        log.warning("trusting unverified predictions %s: sha256 %s", path, digest)
    elif digest not in expected:
        raise RunStatusError(
            f"{path}: sha256 {digest[:12]}... does not match its record {digest_path(path).name} "
            f"({expected[0][:12]}...); the predictions were altered or damaged after they were written"
        )


def read_predictions(path: str | Path, trust_unverified: bool = False) -> dict[str, np.ndarray]:
    """{"rates": (trials, T, N), and "latents"/"inputs" when present} from a run directory or a file.

    Files: `.h5`/`.hdf5` (as `write_predictions` writes) or `.npz` with array `rates` and optional
    `latents`, or a `.npy` holding the rates. A run directory is searched for `PREDICTIONS_FILES` in
    order; its predictions.h5 is verified first (`verify_predictions`).
    """
    path = Path(path)
    if path.is_dir():
        found = [path / name for name in PREDICTIONS_FILES if (path / name).is_file()]
        if not found:
            raise FileNotFoundError(
                f"{path} holds no predictions file (looked for {list(PREDICTIONS_FILES)})"
            )
        path = found[0]
        if path.name == PREDICTIONS_FILE:  # a legacy .npz run has no record
            verify_predictions(path, trust_unverified)
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
                    raise RunStatusError(f"{path} has no dataset 'rates' (found {sorted(f.keys())})")
                return {k: f[k][()] for k in PREDICTION_KEYS if k in f}
        except OSError as e:
            raise RunStatusError(f"{path}: cannot read as HDF5 ({e})") from None
    if suffix != ".npz":
        raise RunStatusError(
            f"{path}: a predictions file must be .h5/.hdf5/.npz (array 'rates', optional 'latents') or .npy"
        )
    with np.load(path, allow_pickle=False) as f:
        if "rates" not in f.files:
            raise RunStatusError(f"{path} has no array 'rates' (found {sorted(f.files)})")
        return {k: f[k] for k in PREDICTION_KEYS if k in f.files}
