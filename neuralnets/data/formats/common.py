"""Helpers shared by the file-format readers: file checks and HDF5 arrays read with named errors."""

from __future__ import annotations

import contextlib
import math
import os
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


def machine_memory() -> int | None:
    """Bytes of physical memory of this machine, or None where the OS does not say."""
    with contextlib.suppress(ValueError, OSError, AttributeError):
        return os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    return None


def _gib(n: float) -> str:
    return f"{n / 2**40:.2f} TiB" if n >= 2**40 else f"{n / 2**30:.2f} GiB"


def check_declared(obj, key: str, src: str, rank: int | None = 3, shape: tuple | None = None) -> None:
    """Check dataset `obj`'s dtype, rank, `shape` (None marks a free axis) and size from the file's
    metadata, before anything is read: a DataError naming `key` for complex or non-numeric values,
    another rank or shape, or more bytes declared than this machine's memory (a damaged or hostile
    file can declare terabytes in a few kilobytes)."""
    if not hasattr(obj, "shape"):
        raise DataError(f"{src}: key {key!r} is a group, expected an array")
    if obj.dtype.kind not in "biuf":  # bool, integers, floats: complex parts are never dropped silently
        raise DataError(f"{src}: key {key!r} must hold real numbers; got dtype {obj.dtype}")
    declared = tuple(obj.shape)
    if rank is not None and len(declared) != rank:
        want = "(trials, time, neurons)" if rank == 3 else f"rank {rank}"
        raise DataError(f"{src}: key {key!r} must have rank {rank} {want}; got shape {declared}")
    if math.prod(declared) == 0:
        raise DataError(f"{src}: key {key!r} is empty (shape {declared})")
    if shape is not None:
        expect_shape(obj, shape, key, src, "")  # the dataset's declared shape: nothing read
    nbytes = math.prod(declared) * obj.dtype.itemsize
    memory = machine_memory()
    if memory is not None and nbytes > memory:
        raise DataError(
            f"{src}: key {key!r} declares shape {declared} of {obj.dtype} ({_gib(nbytes)}), more than this "
            f"machine's {_gib(memory)} of memory; refusing to read it (a damaged file?)"
        )


def h5_array(
    f, key: str, src: str, rank: int | None = 3, counts: bool = False, shape: tuple | None = None
) -> np.ndarray:
    """Read dataset `key`, checking dtype, rank, `shape` and size from the metadata first
    (`check_declared`), then finiteness and (optionally) count values; errors name the key."""
    if key not in f:
        raise DataError(f"{src}: missing key {key!r}; keys found: {sorted(f.keys())}")
    obj = f[key]
    check_declared(obj, key, src, rank, shape)
    arr = np.asarray(obj[()])
    if counts:
        check_counts(arr, f"{src}: key {key!r}")
    elif np.issubdtype(arr.dtype, np.floating) and not np.isfinite(arr).all():
        raise DataError(f"{src}: key {key!r} has non-finite values")
    return arr


def expect_shape(arr: np.ndarray | h5py.Dataset, want: tuple, key: str, src: str, why: str) -> None:
    """DataError naming `key` unless `arr.shape` (an array's, or an HDF5 dataset's declared shape, read
    from metadata only) matches `want` (None marks a free axis)."""
    shape = tuple(arr.shape)
    ok = len(shape) == len(want) and all(w is None or a == w for a, w in zip(shape, want, strict=True))
    if not ok:
        pretty = "(" + ", ".join("*" if w is None else str(w) for w in want) + ")"
        raise DataError(f"{src}: key {key!r} has shape {shape}; expected {pretty} {why}".rstrip())
