"""The baseline rows' cache and memory hygiene (`neuralnets.eval.baselines.baseline_rows` uses both):
one JSON file per (data content, split, baselines, GLM options, load options, harness code), written
atomically with its sha256; glibc's large blocks returned to the system while baselines are scored."""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import hashlib
import json
import logging
import os
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import torch

from neuralnets.data.spikedata import SpikeData
from neuralnets.files import write_text_atomic

log = logging.getLogger(__name__)


# ------------------------------------------------------------------------------------------------ memory
_M_MMAP_THRESHOLD = -3  # glibc mallopt parameter
MMAP_THRESHOLD_BYTES = 1 << 20  # while baselines are computed: blocks from 1 MiB up are mmapped
MMAP_THRESHOLD_AFTER = 32 << 20  # afterwards: glibc's own upper limit for its dynamic threshold


@contextlib.contextmanager
def large_blocks_returned() -> Iterator[bool]:
    """While inside, glibc gives large blocks (>= 1 MiB) their own mappings, returned to the system when
    freed, and freed heap memory is returned on entry and exit. Yields whether it could (glibc only).

    Why: the float64 temporaries of scoring and of the condition average (1 to 100 MB, many sizes)
    otherwise come from the heap once glibc's dynamic mmap threshold has grown, and a run's peak RSS counts
    the holes they leave (~300 MiB at the MC_Maze scale). Not used around the smoothing GLM's fit, whose
    working arrays are of one size (reused by the heap) and allocated thousands of times (fresh mappings
    cost page faults: 43 instead of 29 CPU seconds for the MC_Maze-scale baseline rows, measured once on a
    shared machine). A no-op where the C library is not glibc."""
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt, trim = libc.mallopt, libc.malloc_trim
    except (OSError, AttributeError, TypeError):
        yield False
        return
    trim(0)
    mallopt(_M_MMAP_THRESHOLD, MMAP_THRESHOLD_BYTES)
    try:
        yield True
    finally:
        mallopt(_M_MMAP_THRESHOLD, MMAP_THRESHOLD_AFTER)
        trim(0)


# ------------------------------------------------------------------------------------------------- cache
BASELINE_CACHE_ENV = "NEURALNETS_BASELINE_CACHE"  # the baseline cache's folder (tests point it to tmp)
CACHE_ROOT_ENV = "NEURALNETS_CACHE_DIR"  # neuralnets' cache root (default: the user cache directory)
CACHE_FORMAT = 1
_DATA_ARRAYS = ("spikes", "observed", "split", "behavior", "condition", "rates", "latents", "inputs")
_NOT_IN_KEY = ("device",)  # GLM options that do not change the numbers beyond float rounding


def baseline_cache_dir() -> Path:
    """The folder of the baseline cache: `$NEURALNETS_BASELINE_CACHE`, else `<root>/baselines` with root
    `$NEURALNETS_CACHE_DIR`, else `$XDG_CACHE_HOME/neuralnets`, else `~/.cache/neuralnets`."""
    if os.environ.get(BASELINE_CACHE_ENV):
        return Path(os.environ[BASELINE_CACHE_ENV])
    root = os.environ.get(CACHE_ROOT_ENV)
    if not root:
        root = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "neuralnets"
    return Path(root) / "baselines"


def data_fingerprint(data: SpikeData) -> str:
    """sha256 of everything of `data` the baselines and the harness read: its arrays (dtype, shape,
    bytes), bin size, held-in neurons, forward bins and `meta` (not its name or source)."""
    h = hashlib.sha256(b"neuralnets SpikeData v1\n")
    for name in _DATA_ARRAYS:
        value = getattr(data, name)
        if value is None:
            h.update(f"{name}: none\n".encode())
            continue
        arr = np.ascontiguousarray(value)
        if arr.dtype.kind in "OU":  # split labels, string conditions: hash their text
            arr = np.ascontiguousarray(arr.astype(str)).astype("U")
        h.update(f"{name}: {arr.dtype.str} {arr.shape}\n".encode())
        h.update(arr.data if arr.dtype.kind in "biuf" else arr.tobytes())
    settings = {"bin_size": float(data.bin_size), "n_heldin": int(data.n_heldin), "n_fwd": int(data.n_fwd)}
    h.update(json.dumps(settings, sort_keys=True).encode())
    h.update(json.dumps(data.meta, sort_keys=True, default=str).encode())
    return h.hexdigest()


def _code_fingerprint() -> str:
    """sha256 of the evaluation code (`neuralnets/eval/*.py`, `data/spikedata.py`) and of the numeric
    libraries' versions: any change to how baselines are fit or scored is a new key."""
    import scipy

    root = Path(__file__).resolve().parent
    h = hashlib.sha256(f"torch {torch.__version__} numpy {np.__version__} scipy {scipy.__version__}".encode())
    for path in [*sorted(root.glob("*.py")), root.parent / "data" / "spikedata.py"]:
        h.update(path.name.encode() + b"\0" + path.read_bytes())
    return h.hexdigest()


def _json_value(value):
    """Numpy scalars and arrays as plain JSON values (json.dumps `default`)."""
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    raise TypeError(f"{type(value).__name__} is not JSON serialisable")


def _canonical(value) -> bytes:
    return json.dumps(value, sort_keys=True, default=_json_value, allow_nan=True).encode()


def _cache_key(data, split, names, glm_kwargs, load_options) -> dict:
    return {
        "format": CACHE_FORMAT,
        "data": data_fingerprint(data),
        "split": split,
        "names": None if names is None else list(names),
        "glm": {k: v for k, v in sorted(glm_kwargs.items()) if k not in _NOT_IN_KEY},
        "load_options": dict(load_options or {}),
        "code": _code_fingerprint(),
    }


def _cache_path(key: dict) -> Path:
    return baseline_cache_dir() / f"{hashlib.sha256(_canonical(key)).hexdigest()[:32]}.json"


def _read_cache(key: dict) -> list[dict] | None:
    """The cached rows of `key`, or None when absent; an unreadable, corrupt or foreign entry is logged
    and treated as absent (it is recomputed and replaced)."""
    path = _cache_path(key)
    try:
        text = path.read_text()
    except FileNotFoundError:
        return None
    except OSError as err:
        log.warning("baseline cache %s unreadable (%s); recomputing", path, err)
        return None
    try:
        entry = json.loads(text)
        body = {"key": entry["key"], "rows": entry["rows"]}
        ok = hashlib.sha256(_canonical(body)).hexdigest() == entry["sha256"]
    except (ValueError, KeyError, TypeError) as err:
        log.warning("baseline cache %s is corrupt (%s); recomputing", path, err)
        return None
    if not ok or _canonical(entry["key"]) != _canonical(key) or not isinstance(entry["rows"], list):
        log.warning("baseline cache %s does not match its digest or key; recomputing", path)
        return None
    log.info("baselines read from the cache (%s)", path)
    return entry["rows"]


def _write_cache(key: dict, rows: list[dict]) -> None:
    """Store `rows` under `key` (atomically); a cache that cannot be written only logs a warning."""
    body = {"key": key, "rows": rows}
    entry = {**body, "sha256": hashlib.sha256(_canonical(body)).hexdigest()}
    path = _cache_path(key)
    try:
        write_text_atomic(path, json.dumps(entry, sort_keys=True, allow_nan=True))
    except OSError as err:
        log.warning("baseline cache %s not written (%s)", path, err)
