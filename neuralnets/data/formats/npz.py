"""`.npz` files: `save_npz(data, path)` writes a `SpikeData`; `load_npz(path)` reads it (or a plain `.npz`).

Arrays are stored under their field names; the scalars and `meta` go in a JSON `__header__` string.
Nothing is pickled: `np.load(..., allow_pickle=False)`.
"""

from __future__ import annotations

import dataclasses
import json
import zipfile
from pathlib import Path

import numpy as np

from neuralnets.data.formats.common import require_file
from neuralnets.data.spikedata import PER_TRIAL_FIELDS, SpikeData, check_counts
from neuralnets.errors import DataError
from neuralnets.files import atomic_path

_NPZ_ARRAYS = PER_TRIAL_FIELDS
_NPZ_SCALARS = ("bin_size", "n_heldin", "n_fwd", "name")


def load_npz(path: str | Path) -> SpikeData:
    """Read a `.npz` file written by `save_npz`, or a plain `.npz` of arrays.

    Plain files need `spikes (trials, T, N)` counts and `bin_size` (scalar, seconds). Optional keys:
    scalars `n_heldin`, `n_fwd`, `name`; arrays `split (trials,)` of 'train'/'val'/'test',
    `observed (trials, T, N)` bool, `behavior (trials, T_obs, D)`, `inputs (trials, T, U)` (external
    inputs, float), `condition (trials,)`,
    `rates (trials, T, N)` (expected counts per bin), `latents (trials, T, K)`. Any other key is an
    error (nothing is ignored silently). Files from `save_npz` also hold a JSON `__header__`.
    """
    path = require_file(path)
    src = str(path)
    try:
        with np.load(path, allow_pickle=False) as npz:
            contents = {k: npz[k] for k in npz.files}
    except (OSError, ValueError, zipfile.BadZipFile, EOFError) as e:
        raise DataError(f"{src}: cannot read as a .npz file ({e})") from e

    header: dict = {}
    if "__header__" in contents:
        try:
            header = json.loads(str(contents.pop("__header__")))
        except json.JSONDecodeError as e:
            raise DataError(f"{src}: key '__header__' is not valid JSON ({e})") from e
    unknown = sorted(set(contents) - set(_NPZ_ARRAYS) - set(_NPZ_SCALARS))
    if unknown:
        raise DataError(
            f"{src}: unknown keys {unknown}; accepted keys are {list(_NPZ_ARRAYS + _NPZ_SCALARS)}"
        )
    if "spikes" not in contents:
        raise DataError(f"{src}: missing key 'spikes'; keys found: {sorted(contents)}")
    scalars = dict(header)
    for key in _NPZ_SCALARS:
        if key in contents:
            value = contents.pop(key)
            if value.ndim != 0:
                raise DataError(f"{src}: key {key!r} must be a scalar; got shape {value.shape}")
            scalars[key] = value.item()
    if "bin_size" not in scalars:
        raise DataError(f"{src}: missing key 'bin_size' (seconds); keys found: {sorted(contents)}")
    for key in ("n_heldin", "n_fwd"):
        if key in scalars and not float(scalars[key]).is_integer():
            raise DataError(f"{src}: key {key!r} must be an integer; got {scalars[key]!r}")
    arrays = {}
    for key, value in contents.items():
        if key != "split" and not np.issubdtype(value.dtype, np.number) and value.dtype != bool:
            raise DataError(f"{src}: key {key!r} must be numeric; got dtype {value.dtype}")
        arrays[key] = value
    if arrays["spikes"].ndim == 3:
        check_counts(arrays["spikes"], f"{src}: key 'spikes'")
    return SpikeData(
        **arrays,
        bin_size=float(scalars["bin_size"]),
        n_heldin=int(scalars["n_heldin"]) if "n_heldin" in scalars else None,
        n_fwd=int(scalars.get("n_fwd", 0)),
        name=str(scalars.get("name", path.stem)),
        source=src,
        meta=dict(scalars.get("meta", {})),
    )


def save_npz(data: SpikeData, path: str | Path) -> Path:
    """Write every field of `data` to one compressed `.npz` file, atomically (`files.atomic_path`); never
    replaces an existing file nor writes through a symbolic link at `path`. Returns the path.

    `.npz` is appended to `path` when it has another suffix or none. Read it back with `load_npz`.
    """
    path = Path(path)
    if path.suffix != ".npz":
        path = path.with_suffix(path.suffix + ".npz") if path.suffix else path.with_suffix(".npz")
    if path.exists():
        raise FileExistsError(f"{path} exists; refusing to overwrite it")
    arrays = {
        f.name: getattr(data, f.name)
        for f in dataclasses.fields(data)
        if isinstance(getattr(data, f.name), np.ndarray)
    }
    header = {
        "bin_size": float(data.bin_size),
        "n_heldin": int(data.n_heldin),
        "n_fwd": int(data.n_fwd),
        "name": data.name,
        "meta": data.meta,
    }
    with atomic_path(path, exclusive=True) as tmp, open(tmp, "wb") as f:  # a file object: no '.npz' appended
        np.savez_compressed(f, __header__=np.array(json.dumps(header)), **arrays)
    return path
