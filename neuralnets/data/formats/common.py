"""Helpers shared by the file-format readers: file checks and HDF5 arrays read with named errors."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path

import h5py
import numpy as np

from neuralnets.data.spikedata import check_counts
from neuralnets.errors import DataError


def require_file(path: str | Path) -> Path:
    """`path` as a Path; FileNotFoundError naming it when it is not a file."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such file")
    return path


@contextlib.contextmanager
def open_h5(path: Path) -> Iterator[h5py.File]:
    """`with open_h5(path) as f:` an HDF5 file open for reading. An unreadable or damaged file is a
    DataError naming it, also when the damage shows only while reading inside the block (h5py then
    raises OSError, RuntimeError or KeyError from deep in the library)."""
    try:
        with h5py.File(path, "r") as f:
            yield f
    except DataError:
        raise
    except (OSError, RuntimeError, KeyError) as e:
        raise DataError(f"{path}: cannot read as an HDF5 file, damaged? ({type(e).__name__}: {e})") from e


def h5_array(f, key: str, src: str, rank: int | None = 3, counts: bool = False) -> np.ndarray:
    """Read dataset `key`, checking rank, finiteness and (optionally) count values; errors name the key."""
    if key not in f:
        raise DataError(f"{src}: missing key {key!r}; keys found: {sorted(f.keys())}")
    obj = f[key]
    if not hasattr(obj, "shape"):
        raise DataError(f"{src}: key {key!r} is a group, expected an array")
    arr = np.asarray(obj[()])
    if not (np.issubdtype(arr.dtype, np.number) or arr.dtype == bool):
        raise DataError(f"{src}: key {key!r} must be numeric; got dtype {arr.dtype}")
    if rank is not None and arr.ndim != rank:
        want = "(trials, time, neurons)" if rank == 3 else f"rank {rank}"
        raise DataError(f"{src}: key {key!r} must have rank {rank} {want}; got shape {arr.shape}")
    if arr.size == 0:
        raise DataError(f"{src}: key {key!r} is empty (shape {arr.shape})")
    if counts:
        check_counts(arr, f"{src}: key {key!r}")
    elif np.issubdtype(arr.dtype, np.floating) and not np.isfinite(arr).all():
        raise DataError(f"{src}: key {key!r} has non-finite values")
    return arr


def expect_shape(arr: np.ndarray, want: tuple, key: str, src: str, why: str) -> None:
    """DataError naming `key` unless `arr.shape` matches `want` (None marks a free axis)."""
    ok = arr.ndim == len(want) and all(w is None or a == w for a, w in zip(arr.shape, want, strict=True))
    if not ok:
        pretty = "(" + ", ".join("*" if w is None else str(w) for w in want) + ")"
        raise DataError(f"{src}: key {key!r} has shape {arr.shape}; expected {pretty} {why}")
