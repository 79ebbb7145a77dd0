"""`load(path_or_name, **options)`: one entry point for every dataset, built-in or file.

Every loader validates what it reads and raises `DataError` (a `ValueError`) naming the file, the
field or key as written in the file, and the problem; a missing file raises `FileNotFoundError`.
Nothing is clipped or dropped silently. The readers live in `neuralnets.data.formats` (one module
per file format), the built-in recordings in `neuralnets.data.datasets`, the synthetic systems in
`neuralnets.data.synthetic`; this module only picks one.
"""

from __future__ import annotations

import inspect
import os
import types
import typing
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np

from neuralnets.data.datasets.ca1_linear_track import load_ca1_linear_track
from neuralnets.data.datasets.mc_maze_small import load_mc_maze_small
from neuralnets.data.formats.common import open_h5, require_file
from neuralnets.data.formats.lfads_h5 import load_lfads_h5
from neuralnets.data.formats.nlb_h5 import load_nlb_h5
from neuralnets.data.formats.nlb_nwb import load_nlb_nwb
from neuralnets.data.formats.npz import load_npz
from neuralnets.data.formats.nwb import load_nwb
from neuralnets.data.sessions import MultiSessionData
from neuralnets.data.spikedata import SpikeData
from neuralnets.data.synthetic import chaotic_rnn, lorenz, lorenz_sessions
from neuralnets.data.synthetic_linear import line_attractor, linear_pulses
from neuralnets.errors import DataError

__all__ = ["BUILTIN_DATASETS", "load"]


def _check_options(fn: Callable, kwargs: dict, what: str) -> None:
    """Unknown options, or values of the wrong type (e.g. text from a command line where a number is
    needed), are a DataError naming the loader, the option and the value, not a TypeError later."""
    params = [p for p in inspect.signature(fn).parameters if p != "path"]
    unknown = sorted(set(kwargs) - set(params))
    if unknown:
        raise DataError(f"{what}: unknown options {unknown} for {fn.__name__}; it accepts {params}")
    try:
        hints = typing.get_type_hints(fn)
    except (NameError, TypeError):  # annotations that do not evaluate here: check names only
        hints = {}
    for key, value in kwargs.items():
        if key in hints and not _is_a(value, hints[key]):
            raise DataError(
                f"{what}: option {key}={value!r} ({type(value).__name__}) does not fit {fn.__name__}: "
                f"{key} must be {_pretty(hints[key])}"
            )


def _is_a(value, hint) -> bool:
    """Whether `value` fits the annotation `hint` (the simple types loaders use; others pass)."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        return any(_is_a(value, a) for a in args)
    if hint is type(None):
        return value is None
    if hint is bool:
        return isinstance(value, (bool, np.bool_))
    if hint is int:
        return isinstance(value, (int, np.integer)) and not isinstance(value, bool)
    if hint is float:
        return isinstance(value, (int, float, np.integer, np.floating)) and not isinstance(value, bool)
    if hint is str:
        return isinstance(value, str)
    if hint is Path:
        return isinstance(value, (str, os.PathLike))
    if origin in (tuple, list, Sequence):
        if isinstance(value, (str, bytes)) or not isinstance(value, Sequence):
            return False
        if origin is tuple and args and args[-1] is not Ellipsis:
            return len(value) == len(args) and all(_is_a(v, a) for v, a in zip(value, args, strict=True))
        return not args or all(_is_a(v, args[0]) for v in value)
    return True


def _pretty(hint) -> str:
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        return " or ".join(_pretty(a) for a in typing.get_args(hint))
    if hint is type(None):
        return "None"
    if typing.get_origin(hint) is None and isinstance(hint, type):
        return hint.__name__
    return str(hint).replace("collections.abc.", "").replace("pathlib.", "")


BUILTIN_DATASETS: dict[str, Callable[..., SpikeData | MultiSessionData]] = {
    "lorenz": lorenz,
    "lorenz_sessions": lorenz_sessions,
    "chaotic_rnn": chaotic_rnn,
    "linear_pulses": linear_pulses,
    "line_attractor": line_attractor,
    "mc_maze_small": load_mc_maze_small,
    "ca1_linear_track": load_ca1_linear_track,
}
_SUFFIXES = (".npz", ".h5", ".hdf5", ".nwb")


def load(path_or_name: str | Path, **kwargs) -> SpikeData | MultiSessionData:
    """Load a built-in dataset by name or a file by suffix; `kwargs` go to the loader/generator.

    Names: 'lorenz', 'chaotic_rnn' (synthetic, see `neuralnets.data.synthetic`), 'linear_pulses',
    'line_attractor' (linear systems kicked by known pulses, `neuralnets.data.synthetic_linear`),
    'lorenz_sessions'
    (several sessions of one Lorenz system: a `MultiSessionData`), 'mc_maze_small'
    (the bundled NLB MC_Maze_Small tensors), 'ca1_linear_track' (bundled rat CA1 laps with position,
    see `load_ca1_linear_track`). Files: `.npz` (`load_npz`), `.h5`/`.hdf5` (NLB layout if
    it has 'train_spikes_heldin', LFADS layout if it has a '*_encod_data' key), `.nwb` (`load_nwb`,
    which needs `bin_size=`; with `dataset=` (e.g. 'mc_maze_small'): `load_nlb_nwb`, NLB's preprocessing,
    which also takes a folder holding a dandiset's train and test files).
    Unknown options, and values that do not fit the loader's annotations,
    are a DataError; options written as `KEY=VALUE` text go through `parse_load_options` first.
    """
    if isinstance(path_or_name, str) and path_or_name in BUILTIN_DATASETS:
        fn = BUILTIN_DATASETS[path_or_name]
        _check_options(fn, kwargs, path_or_name)
        return fn(**kwargs)
    path = Path(path_or_name)
    suffix = path.suffix.lower()
    if path.is_dir() and "dataset" in kwargs:  # a folder holding an NLB dandiset's train and test files
        _check_options(load_nlb_nwb, kwargs, str(path))
        return load_nlb_nwb(path, **kwargs)
    if suffix not in _SUFFIXES:
        raise DataError(
            f"{str(path_or_name)!r} is neither a built-in dataset {sorted(BUILTIN_DATASETS)} nor a file "
            f"with a known suffix {list(_SUFFIXES)}"
        )
    path = require_file(path)
    if suffix == ".npz":
        fn = load_npz
    elif suffix == ".nwb" and "dataset" in kwargs:
        fn = load_nlb_nwb  # an NLB DANDI file, NLB's preprocessing of that dataset (5 ms bins by default)
    elif suffix == ".nwb":
        if "bin_size" not in kwargs:
            raise DataError(
                f"{path}: NWB files are binned on load; pass bin_size= (seconds; command line: "
                "-o bin_size=SECONDS)"
            )
        fn = load_nwb
    else:
        with open_h5(path) as f:
            keys = sorted(f.keys())
        if "train_spikes_heldin" in keys:
            fn = load_nlb_h5
        elif any(k.endswith("_encod_data") for k in keys):
            fn = load_lfads_h5
        else:
            fn = None
    if fn is not None:
        _check_options(fn, kwargs, str(path))
        return fn(path, **kwargs)
    raise DataError(
        f"{path}: HDF5 keys match neither the NLB layout (needs 'train_spikes_heldin') nor the LFADS "
        f"layout (needs 'train_encod_data'); keys found: {keys}"
    )
