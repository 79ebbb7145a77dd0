"""Read (and write) spiking datasets into `SpikeData`: npz, LFADS HDF5, NLB HDF5 tensors and NWB.

Every loader validates what it reads and raises `DataError` (a `ValueError`) naming the file, the
field or key as written in the file, and the problem; a missing file raises `FileNotFoundError`.
Nothing is clipped or dropped silently. `load(path_or_name)` picks the loader from the file suffix
(and, for HDF5, from the keys) or builds a built-in dataset by name.
"""

from __future__ import annotations

import inspect
import json
import re
import warnings
import zipfile
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np

from neuralnets.data.spikedata import SPLITS, DataError, SpikeData, _check_counts, default_split
from neuralnets.data.synthetic import chaotic_rnn, lorenz

__all__ = [
    "load",
    "load_npz",
    "load_lfads_h5",
    "save_lfads_h5",
    "load_nlb_h5",
    "load_nwb",
    "BUILTIN_DATASETS",
    "MC_MAZE_SMALL_PATH",
    "load_ca1_linear_track",
    "CA1_LINEAR_TRACK_DIR",
]

MC_MAZE_SMALL_PATH = Path(__file__).parent / "fixtures" / "mc_maze_small_full.h5"


def _require_file(path: str | Path) -> Path:
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such file")
    return path


def _behavior_splits_meta(has_behavior: np.ndarray, split: np.ndarray, src: str) -> list[str]:
    """The splits whose trials all have real behaviour; every split must be all-or-none."""
    out = []
    for s in SPLITS:
        sel = split == s
        if not sel.any():
            continue
        if has_behavior[sel].all():
            out.append(s)
        elif has_behavior[sel].any():
            raise DataError(f"{src}: behaviour is present for only some {s!r} trials")
    return out


# ================================================================================================ npz
_NPZ_ARRAYS = ("spikes", "split", "observed", "behavior", "condition", "rates", "latents")
_NPZ_SCALARS = ("bin_size", "n_heldin", "n_fwd", "name")


def load_npz(path: str | Path) -> SpikeData:
    """Read a `.npz` file written by `SpikeData.save`, or a plain `.npz` of arrays.

    Plain files need `spikes (trials, T, N)` counts and `bin_size` (scalar, seconds). Optional keys:
    scalars `n_heldin`, `n_fwd`, `name`; arrays `split (trials,)` of 'train'/'val'/'test',
    `observed (trials, T, N)` bool, `behavior (trials, T_obs, D)`, `condition (trials,)`,
    `rates (trials, T, N)` (expected counts per bin), `latents (trials, T, K)`. Any other key is an
    error (nothing is ignored silently). Files from `SpikeData.save` also hold a JSON `__header__`.
    """
    path = _require_file(path)
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
        _check_counts(arrays["spikes"], f"{src}: key 'spikes'")
    return SpikeData(
        **arrays,
        bin_size=float(scalars["bin_size"]),
        n_heldin=int(scalars["n_heldin"]) if "n_heldin" in scalars else None,
        n_fwd=int(scalars.get("n_fwd", 0)),
        name=str(scalars.get("name", path.stem)),
        source=src,
        meta=dict(scalars.get("meta", {})),
    )


# ============================================================================================ HDF5
def _open_h5(path: Path):
    import h5py

    try:
        return h5py.File(path, "r")
    except OSError as e:
        raise DataError(f"{path}: cannot read as an HDF5 file ({e})") from e


def _h5_array(f, key: str, src: str, rank: int | None = 3, counts: bool = False) -> np.ndarray:
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
        _check_counts(arr, f"{src}: key {key!r}")
    elif np.issubdtype(arr.dtype, np.floating) and not np.isfinite(arr).all():
        raise DataError(f"{src}: key {key!r} has non-finite values")
    return arr


def _expect_shape(arr: np.ndarray, want: tuple, key: str, src: str, why: str) -> None:
    """`want` may hold None for free axes."""
    ok = arr.ndim == len(want) and all(w is None or a == w for a, w in zip(arr.shape, want, strict=True))
    if not ok:
        pretty = "(" + ", ".join("*" if w is None else str(w) for w in want) + ")"
        raise DataError(f"{src}: key {key!r} has shape {arr.shape}; expected {pretty} {why}")


# ---------------------------------------------------------------------------------------- LFADS
_LFADS_PREFIX = {"train": "train", "valid": "val", "test": "test"}  # file prefix -> SpikeData split


def load_lfads_h5(path: str | Path, bin_size: float | None = None, name: str | None = None) -> SpikeData:
    """Read the common LFADS HDF5 layout.

    Keys, per prefix `train` / `valid` / `test` (→ splits 'train' / 'val' / 'test'; absent prefixes
    have no trials):
    - `{p}_encod_data (trials, T_obs, N_in)`: model input, held-in neurons over the observed bins.
    - `{p}_recon_data (trials, T, N)`, optional: reconstruction target, `T >= T_obs`, `N >= N_in`.
      The first `N_in` neurons are taken to be the held-in ones and the first `T_obs` bins the observed
      ones; they must equal `encod_data` there (one spike array is stored). Extra bins are
      forward-prediction bins, extra neurons held-out neurons. A prefix without `recon_data` has
      those parts marked unobserved (`observed` False, spikes 0).
    - `{p}_truth (trials, T, N)`, optional: true rates; `truth / conversion_factor` (root scalar
      `conversion_factor`, default 1) must be expected counts per bin.
    - `{p}_inds (trials,)`, optional: each trial's index in the whole dataset (all prefixes or none;
      together a permutation of 0..n-1). Without them trials are ordered train, valid, test.
    - `{p}_behavior (trials, T_obs, D)`, optional. If some prefixes lack it, their trials get zeros
      and `meta['behavior_splits']` lists the splits with real behaviour.
    - neuralnets extensions written by `save_lfads_h5`: `{p}_latents (trials, T, K)`,
      `{p}_condition (trials,)`, `{p}_observed (trials, T, N)` and root attributes `bin_size`, `name`.

    `bin_size` (seconds) is needed when the file has no `bin_size` attribute.
    """
    path = _require_file(path)
    src = str(path)
    with _open_h5(path) as f:
        keys = sorted(f.keys())
        prefixes = [p for p in _LFADS_PREFIX if f"{p}_encod_data" in f]
        for p in _LFADS_PREFIX:
            if f"{p}_recon_data" in f and p not in prefixes:
                raise DataError(f"{src}: key '{p}_recon_data' has no matching '{p}_encod_data'")
        if not prefixes:
            raise DataError(
                f"{src}: missing key 'train_encod_data' (LFADS layout needs at least one of "
                f"train/valid/test_encod_data); keys found: {keys}"
            )
        if bin_size is None:
            if "bin_size" not in f.attrs:
                raise DataError(f"{src}: the file has no 'bin_size' attribute; pass bin_size= (seconds)")
            bin_size = float(f.attrs["bin_size"])
        file_name = f.attrs.get("name")
        factor = 1.0
        if "conversion_factor" in f:
            factor = float(np.asarray(f["conversion_factor"][()]).reshape(-1)[0])
            if not (np.isfinite(factor) and factor > 0):
                raise DataError(f"{src}: key 'conversion_factor' must be a positive number; got {factor}")
        meta = {}
        if "neuralnets_meta" in f.attrs:
            try:
                meta = json.loads(f.attrs["neuralnets_meta"])
            except json.JSONDecodeError as e:
                raise DataError(f"{src}: attribute 'neuralnets_meta' is not valid JSON ({e})") from e
        parts = {p: _read_lfads_prefix(f, p, src) for p in prefixes}

    first = parts[prefixes[0]]
    t_obs, n_in = first["encod"].shape[1:]
    recon_shapes = {p: d["recon"].shape[1:] for p, d in parts.items() if "recon" in d}
    t_all, n_all = next(iter(recon_shapes.values()), (t_obs, n_in))
    for p, d in parts.items():
        _expect_shape(
            d["encod"], (None, t_obs, n_in), f"{p}_encod_data", src, f"to match '{prefixes[0]}_encod_data'"
        )
        if "recon" in d:
            _expect_shape(
                d["recon"],
                (d["n"], t_all, n_all),
                f"{p}_recon_data",
                src,
                "(same trials as its encod_data, same bins/neurons as the other recon_data)",
            )
    if t_all < t_obs or n_all < n_in:
        raise DataError(
            f"{src}: recon_data has {t_all} bins x {n_all} neurons, fewer than encod_data's "
            f"{t_obs} x {n_in}; recon must contain the encoding bins and neurons"
        )

    n_total = sum(d["n"] for d in parts.values())
    order = _lfads_order(parts, n_total, src)
    spikes = np.zeros((n_total, t_all, n_all), dtype=np.float32)  # (trials, T, N)
    observed = np.ones((n_total, t_all, n_all), dtype=bool)  # (trials, T, N)
    split = np.empty(n_total, dtype="<U5")
    optional = {"truth": None, "latents": None, "condition": None}
    beh_dim = {d["behavior"].shape[2] for d in parts.values() if "behavior" in d}
    if len(beh_dim) > 1:
        raise DataError(f"{src}: the *_behavior keys have different dimensions {sorted(beh_dim)}")
    behavior = np.zeros((n_total, t_obs, beh_dim.pop()), np.float32) if beh_dim else None
    has_beh = np.zeros(n_total, dtype=bool)
    for p, d in parts.items():
        idx = order[p]
        split[idx] = _LFADS_PREFIX[p]
        if "recon" in d:
            rec = d["recon"]
            obs = d.get("observed", np.ones(rec.shape, dtype=bool))
            _expect_shape(obs, rec.shape, f"{p}_observed", src, f"to match '{p}_recon_data'")
            enc_part, obs_part = rec[:, :t_obs, :n_in], obs[:, :t_obs, :n_in]
            differ = (enc_part != d["encod"]) & obs_part
            if differ.any():
                at = tuple(int(i) for i in np.argwhere(differ)[0])
                raise DataError(
                    f"{src}: '{p}_recon_data' differs from '{p}_encod_data' on the held-in neurons and "
                    f"encoding bins (first at index {at}); they must hold the same spikes"
                )
            if (rec[~obs] != 0).any():
                raise DataError(
                    f"{src}: '{p}_recon_data' has spikes where '{p}_observed' is False; "
                    "unobserved entries must be 0"
                )
            spikes[idx] = rec
            observed[idx] = obs
        else:
            spikes[idx, :t_obs, :n_in] = d["encod"]
            observed[idx] = False
            observed[idx, :t_obs, :n_in] = True
        if behavior is not None and "behavior" in d:
            _expect_shape(
                d["behavior"],
                (d["n"], t_obs, None),
                f"{p}_behavior",
                src,
                f"(trials, {t_obs} encoding bins, D)",
            )
            behavior[idx] = d["behavior"]
            has_beh[idx] = True
    for key in optional:
        present = [p for p in prefixes if key in parts[p]]
        if not present:
            continue
        if len(present) != len(prefixes):
            missing = [f"{p}_{key}" for p in prefixes if p not in present]
            raise DataError(f"{src}: '{present[0]}_{key}' is present but {missing} missing (all or none)")
        first_arr = parts[present[0]][key]
        full = np.zeros((n_total,) + first_arr.shape[1:], dtype=first_arr.dtype)
        for p in prefixes:
            arr = parts[p][key]
            _expect_shape(
                arr,
                (parts[p]["n"],) + first_arr.shape[1:],
                f"{p}_{key}",
                src,
                f"to match '{present[0]}_{key}'",
            )
            full[order[p]] = arr
        optional[key] = full
    if optional["truth"] is not None:
        if not recon_shapes:
            raise DataError(f"{src}: '*_truth' needs '*_recon_data' to define its neurons and bins")
        _expect_shape(optional["truth"], (n_total, t_all, n_all), "*_truth", src, "to match recon_data")
        optional["truth"] = optional["truth"] / factor
    if behavior is not None:
        beh_splits = _behavior_splits_meta(has_beh, split, src)
        if len(beh_splits) < len(set(split)):
            meta["behavior_splits"] = beh_splits
    meta["lfads_keys"] = keys
    return SpikeData(
        spikes=spikes,
        bin_size=bin_size,
        n_heldin=int(n_in),
        n_fwd=int(t_all - t_obs),
        split=split,
        observed=None if observed.all() else observed,
        behavior=behavior,
        condition=optional["condition"],
        rates=optional["truth"],
        latents=optional["latents"],
        name=name or (str(file_name) if file_name is not None else path.stem),
        source=src,
        meta=meta,
    )


def _read_lfads_prefix(f, p: str, src: str) -> dict:
    d: dict = {"encod": _h5_array(f, f"{p}_encod_data", src, counts=True)}
    d["n"] = d["encod"].shape[0]
    if f"{p}_recon_data" in f:
        d["recon"] = _h5_array(f, f"{p}_recon_data", src, counts=True)
    for key, rank in (("truth", 3), ("behavior", 3), ("latents", 3), ("condition", 1), ("observed", 3)):
        if f"{p}_{key}" in f:
            arr = _h5_array(f, f"{p}_{key}", src, rank=rank)
            if arr.shape[0] != d["n"]:
                raise DataError(
                    f"{src}: key '{p}_{key}' has {arr.shape[0]} trials but '{p}_encod_data' has {d['n']}"
                )
            if key == "truth" and (arr < 0).any():
                raise DataError(f"{src}: key '{p}_truth' has negative rates (min {arr.min()})")
            d[key] = arr.astype(bool) if key == "observed" else arr
    if f"{p}_inds" in f:
        inds = _h5_array(f, f"{p}_inds", src, rank=1)
        if inds.shape != (d["n"],) or not np.issubdtype(inds.dtype, np.integer):
            raise DataError(
                f"{src}: key '{p}_inds' must be {d['n']} integers (one per trial); "
                f"got shape {inds.shape}, dtype {inds.dtype}"
            )
        d["inds"] = inds.astype(np.int64)
    return d


def _lfads_order(parts: dict, n_total: int, src: str) -> dict[str, np.ndarray]:
    """Trial indices of each prefix in the assembled dataset."""
    with_inds = [p for p in parts if "inds" in parts[p]]
    if not with_inds:
        out, start = {}, 0
        for p, d in parts.items():
            out[p] = np.arange(start, start + d["n"])
            start += d["n"]
        return out
    if len(with_inds) != len(parts):
        missing = [f"{p}_inds" for p in parts if p not in with_inds]
        raise DataError(f"{src}: '{with_inds[0]}_inds' is present but {missing} missing (all or none)")
    allinds = np.concatenate([parts[p]["inds"] for p in parts])
    if not np.array_equal(np.sort(allinds), np.arange(n_total)):
        raise DataError(
            f"{src}: the '*_inds' keys together must be a permutation of 0..{n_total - 1} "
            "(each trial exactly once)"
        )
    return {p: parts[p]["inds"] for p in parts}


def save_lfads_h5(data: SpikeData, path: str | Path) -> Path:
    """Write `data` in the LFADS HDF5 layout read by `load_lfads_h5` (refuses to overwrite).

    Per split with trials (train → `train_*`, val → `valid_*`, test → `test_*`): `encod_data`
    (held-in neurons, observed bins), `recon_data` (all neurons and bins), `inds`, and when present
    `truth` (= rates, with root `conversion_factor` 1.0), `behavior`, and the neuralnets extensions
    `latents`, `condition`, `observed`. Root attributes: `bin_size`, `name`, `neuralnets_meta` (JSON).
    """
    import h5py

    path = Path(path)
    if path.exists():
        raise FileExistsError(f"{path} exists; refusing to overwrite it")
    path.parent.mkdir(parents=True, exist_ok=True)
    with h5py.File(path, "w-") as f:
        f.attrs["bin_size"] = float(data.bin_size)
        f.attrs["name"] = data.name
        f.attrs["neuralnets_meta"] = json.dumps(data.meta)
        if data.rates is not None:
            f["conversion_factor"] = 1.0
        for prefix, split in _LFADS_PREFIX.items():
            idx = data.indices(split)
            if idx.size == 0:
                continue
            f[f"{prefix}_encod_data"] = data.spikes[idx, : data.n_obs, : data.n_heldin]
            f[f"{prefix}_recon_data"] = data.spikes[idx]
            f[f"{prefix}_inds"] = idx.astype(np.int64)
            for key, value in (
                ("truth", data.rates),
                ("behavior", data.behavior),
                ("latents", data.latents),
                ("condition", data.condition),
                ("observed", data.observed),
            ):
                if value is not None:
                    f[f"{prefix}_{key}"] = value[idx]
    return path


# ------------------------------------------------------------------------------------------ NLB
_NLB_KEYS = {
    "train_spikes_heldin",
    "train_spikes_heldout",
    "train_spikes_heldin_forward",
    "train_spikes_heldout_forward",
    "train_behavior",
    "eval_spikes_heldin",
    "eval_spikes_heldout",
    "eval_spikes_heldin_forward",
    "eval_spikes_heldout_forward",
    "eval_behavior",
}


def load_nlb_h5(
    path: str | Path,
    bin_size: float = 0.005,
    val_frac: float = 0.2,
    seed: int = 0,
    name: str | None = None,
) -> SpikeData:
    """Read the official Neural Latents Benchmark tensor layout (e.g. `mc_maze_small_full.h5`).

    Keys (trials, bins, neurons): `train_spikes_heldin`, `train_spikes_heldout` (required),
    `train_spikes_heldin_forward` + `train_spikes_heldout_forward` (forward-prediction bins),
    `train_behavior (n_train, T_obs, D)`, `eval_spikes_heldin`, `eval_spikes_heldout`, and if present
    `eval_spikes_*_forward`, `eval_behavior`. Other keys are ignored with a warning and listed in
    `meta['ignored_keys']`.

    Result: one SpikeData of `n_train + n_eval` trials x `T_obs + T_fwd` bins x `N_in + N_out` neurons,
    held-in neurons first, train trials first. Splits: the NLB train trials become 'train'/'val'
    (`val_frac` of them 'val', chosen with `seed`); the NLB eval trials become 'test'.
    Parts the file lacks (eval forward bins; eval held-out neurons in test-phase files) are marked
    `observed=False` and stored as 0.

    Behaviour: when only the train trials have it (the usual case), the 'test' trials hold zeros that
    are not data, and `meta['behavior_splits'] == ['train', 'val']` lists the splits with real
    behaviour: score velocity decoding only on those splits (e.g. fit on 'train', score on 'val').
    """
    path = _require_file(path)
    src = str(path)
    with _open_h5(path) as f:
        keys = sorted(f.keys())
        for key in ("train_spikes_heldin", "train_spikes_heldout"):
            if key not in f:
                raise DataError(f"{src}: missing key {key!r} (NLB tensor layout); keys found: {keys}")
        a = {k: _h5_array(f, k, src, counts="spikes" in k) for k in keys if k in _NLB_KEYS}
    ignored = [k for k in keys if k not in _NLB_KEYS]
    if ignored:
        warnings.warn(f"{src}: ignoring keys not in the NLB tensor layout: {ignored}", stacklevel=2)

    n_train, t_obs, n_in = a["train_spikes_heldin"].shape
    n_out = a["train_spikes_heldout"].shape[2]
    _expect_shape(
        a["train_spikes_heldout"],
        (n_train, t_obs, None),
        "train_spikes_heldout",
        src,
        "to match 'train_spikes_heldin' (trials, bins)",
    )
    fwd_keys = ("train_spikes_heldin_forward", "train_spikes_heldout_forward")
    if (fwd_keys[0] in a) != (fwd_keys[1] in a):
        have, lack = (fwd_keys[0], fwd_keys[1]) if fwd_keys[0] in a else (fwd_keys[1], fwd_keys[0])
        raise DataError(f"{src}: key {have!r} is present but {lack!r} is missing (both or neither)")
    t_fwd = a[fwd_keys[0]].shape[1] if fwd_keys[0] in a else 0
    if t_fwd:
        _expect_shape(
            a[fwd_keys[0]], (n_train, None, n_in), fwd_keys[0], src, "(train trials, bins, held-in)"
        )
        _expect_shape(
            a[fwd_keys[1]],
            (n_train, t_fwd, n_out),
            fwd_keys[1],
            src,
            "(train trials, forward bins, held-out)",
        )
    eval_keys = [k for k in a if k.startswith("eval_")]
    if eval_keys and "eval_spikes_heldin" not in a:
        raise DataError(f"{src}: keys {eval_keys} need 'eval_spikes_heldin', which is missing; keys: {keys}")
    n_eval = a["eval_spikes_heldin"].shape[0] if "eval_spikes_heldin" in a else 0
    expected = {
        "eval_spikes_heldin": (n_eval, t_obs, n_in),
        "eval_spikes_heldout": (n_eval, t_obs, n_out),
        "eval_spikes_heldin_forward": (n_eval, t_fwd, n_in),
        "eval_spikes_heldout_forward": (n_eval, t_fwd, n_out),
    }
    for key, want in expected.items():
        if key in a:
            _expect_shape(a[key], want, key, src, "(eval trials, bins, neurons) to match the train keys")

    n = n_train + n_eval
    spikes = np.zeros((n, t_obs + t_fwd, n_in + n_out), dtype=np.float32)  # (trials, T, N)
    observed = np.ones(spikes.shape, dtype=bool)  # (trials, T, N)
    tr, ev = slice(0, n_train), slice(n_train, n)
    spikes[tr, :t_obs, :n_in] = a["train_spikes_heldin"]
    spikes[tr, :t_obs, n_in:] = a["train_spikes_heldout"]
    if t_fwd:
        spikes[tr, t_obs:, :n_in] = a["train_spikes_heldin_forward"]
        spikes[tr, t_obs:, n_in:] = a["train_spikes_heldout_forward"]
    if n_eval:
        blocks = {
            "eval_spikes_heldin": (slice(None, t_obs), slice(None, n_in)),
            "eval_spikes_heldout": (slice(None, t_obs), slice(n_in, None)),
            "eval_spikes_heldin_forward": (slice(t_obs, None), slice(None, n_in)),
            "eval_spikes_heldout_forward": (slice(t_obs, None), slice(n_in, None)),
        }
        for key, (tt, nn) in blocks.items():
            if key in a:
                spikes[ev, tt, nn] = a[key]
            else:
                observed[ev, tt, nn] = False  # not in the file: unobserved, stored as 0

    split = np.concatenate(
        [default_split(n_train, val_frac=val_frac, test_frac=0.0, seed=seed), np.full(n_eval, "test")]
    )
    behavior, meta = None, {"nlb_keys": keys, "n_nlb_train": n_train, "n_nlb_eval": n_eval}
    if ignored:
        meta["ignored_keys"] = ignored
    if "eval_behavior" in a and "train_behavior" not in a:
        raise DataError(f"{src}: key 'eval_behavior' is present but 'train_behavior' is missing")
    if "train_behavior" in a:
        d = a["train_behavior"].shape[2]
        _expect_shape(
            a["train_behavior"],
            (n_train, t_obs, d),
            "train_behavior",
            src,
            f"(train trials, {t_obs} observed bins, D)",
        )
        behavior = np.zeros((n, t_obs, d), dtype=np.float32)  # (trials, T_obs, D)
        behavior[tr] = a["train_behavior"]
        if "eval_behavior" in a:
            _expect_shape(
                a["eval_behavior"], (n_eval, t_obs, d), "eval_behavior", src, "to match 'train_behavior'"
            )
            behavior[ev] = a["eval_behavior"]
        elif n_eval:
            meta["behavior_splits"] = [s for s in ("train", "val") if (split[tr] == s).any()]
    return SpikeData(
        spikes=spikes,
        bin_size=bin_size,
        n_heldin=n_in,
        n_fwd=t_fwd,
        split=split,
        observed=None if observed.all() else observed,
        behavior=behavior,
        name=name or path.stem,
        source=src,
        meta=meta,
    )


# ============================================================================================ NWB
_SPLIT_ALIASES = {"train": "train", "val": "val", "valid": "val", "validation": "val", "test": "test"}


def load_nwb(
    path: str | Path,
    bin_size: float,
    align_event: str = "start_time",
    window: tuple[float, float] | None = None,
    behavior: str | None = None,
    heldout_column: str | None = "heldout",
    n_fwd: int = 0,
    split_column: str | None = "split",
    exclude_splits: tuple[str, ...] = ("none",),
    condition_column: str | None = None,
    use_obs_intervals: bool = True,
    val_frac: float = 0.2,
    test_frac: float = 0.2,
    seed: int = 0,
    name: str | None = None,
) -> SpikeData:
    """Bin an NWB file's units into aligned trials.

    Args:
        path: the `.nwb` file (units table with `spike_times`, trials table).
        bin_size: bin width in seconds.
        align_event: trials-table column (seconds) each trial is aligned on, e.g. 'move_onset_time'.
        window: (t0, t1) seconds relative to the event; `(t1 - t0)` must be a whole number of bins.
            None: the largest window inside every trial (`max(start - event)` to `min(stop - event)`),
            cut down to a whole number of bins.
        behavior: name of a TimeSeries anywhere in the file (acquisition, processing modules, nested
            containers) resampled by linear interpolation to the centres of the observed bins; its
            timestamps must cover them (no extrapolation). None: no behaviour.
        heldout_column: boolean units column marking held-out neurons (held-in units come first, order
            otherwise kept). If the column is absent every unit is held-in.
        n_fwd: the last `n_fwd` bins of the window are forward-prediction bins.
        split_column: trials column with 'train'/'val'/'test' (also 'valid'/'validation'). If absent,
            `default_split(n_trials, val_frac, test_frac, seed)`.
        exclude_splits: split labels whose trials are left out (NLB marks unused trials 'none');
            their ids are listed in `meta['excluded_trial_ids']`.
        condition_column: optional trials column whose distinct values become `condition` ints
            (`meta['condition_names']` maps them back).
        use_obs_intervals: if the units table has `obs_intervals`, bins whose centre is outside a
            unit's intervals are marked unobserved (`observed` False); a spike in such a bin is an error.

    Binning: bin k of a trial covers `[e + t0 + k*bin_size, e + t0 + (k+1)*bin_size)` (half-open,
    so adjacent windows never count a spike twice). `meta` holds `unit_ids`, `trial_ids`, `window`.

    Returns:
        SpikeData `spikes (trials, T, N)` with `T = round((t1 - t0) / bin_size)`.
    """
    from pynwb import NWBHDF5IO

    path = _require_file(path)
    src = str(path)
    if not (np.isfinite(bin_size) and bin_size > 0):
        raise DataError(f"{src}: bin_size must be a positive number of seconds; got {bin_size!r}")
    try:
        io = NWBHDF5IO(str(path), "r")
        nwb = io.read()
    except Exception as e:  # pynwb/hdmf raise many types for unreadable files
        raise DataError(f"{src}: cannot read as an NWB file ({type(e).__name__}: {e})") from e
    try:
        units = _read_units(nwb, src, heldout_column, use_obs_intervals)
        trials = _read_trials(nwb, src, align_event, split_column, condition_column)
        series = _find_timeseries(nwb, behavior, src) if behavior is not None else None
    finally:
        io.close()

    keep = ~np.isin(trials["split_raw"], exclude_splits) if trials["split_raw"] is not None else None
    if keep is not None and not keep.all():
        excluded_ids = trials["ids"][~keep].tolist()
        for k in ("align", "start", "stop", "ids", "split_raw", "cond_raw"):
            if trials[k] is not None:
                trials[k] = trials[k][keep]
    else:
        excluded_ids = []
    n_trials = len(trials["ids"])
    if n_trials == 0:
        raise DataError(f"{src}: no trials left after excluding splits {list(exclude_splits)}")

    align = trials["align"]
    if window is None:
        t0 = float(np.max(trials["start"] - align))
        t1 = float(np.min(trials["stop"] - align))
        n_bins = int(np.floor((t1 - t0) / bin_size + 1e-9))
    else:
        t0, t1 = (float(w) for w in window)
        length = (t1 - t0) / bin_size
        n_bins = int(round(length))
        if abs(length - n_bins) > 1e-6:
            raise DataError(
                f"{src}: window ({t0:g}, {t1:g}) s is {length:g} bins of {bin_size:g} s; "
                "it must be a whole number of bins"
            )
    if not np.isfinite([t0, t1]).all() or n_bins < 1:
        raise DataError(f"{src}: window ({t0:g}, {t1:g}) s around {align_event!r} holds no whole bin")
    if not 0 <= n_fwd < n_bins:
        raise DataError(
            f"{src}: n_fwd={n_fwd} forward bins do not fit the window's {n_bins} bins (need 0..{n_bins - 1})"
        )

    # Bin edges of every trial: (trials, n_bins + 1); counts by searchsorted (half-open bins).
    edges = align[:, None] + t0 + bin_size * np.arange(n_bins + 1)
    centres = 0.5 * (edges[:, :-1] + edges[:, 1:])  # (trials, n_bins)
    order = np.concatenate([np.flatnonzero(~units["heldout"]), np.flatnonzero(units["heldout"])])
    spikes = _bin_spike_times(units["times"], order, edges)  # (trials, T, N)
    observed = np.ones(spikes.shape, dtype=bool)  # (trials, T, N)
    if units["intervals"] is not None:
        for j, u in enumerate(order):
            observed[:, :, j] = _inside_intervals(centres, units["intervals"][u])
    if units["intervals"] is not None:
        bad = (spikes > 0) & ~observed
        if bad.any():
            tr, _, j = np.argwhere(bad)[0]
            raise DataError(
                f"{src}: unit {units['ids'][order[j]]} has spikes in trial {trials['ids'][tr]} outside its "
                "'obs_intervals'; pass use_obs_intervals=False to ignore that column"
            )

    beh = None
    if series is not None:
        beh = _resample(series, centres[:, : n_bins - n_fwd], src)  # (trials, T_obs, D)

    if trials["split_raw"] is not None:
        split = np.array([_SPLIT_ALIASES.get(s, "?") for s in trials["split_raw"]])
        unknown = sorted({str(x) for x in trials["split_raw"][split == "?"]})
        if unknown:
            raise DataError(
                f"{src}: trials column {split_column!r} has unknown split names {unknown}; expected "
                f"{sorted(_SPLIT_ALIASES)} or names in exclude_splits={list(exclude_splits)}"
            )
    else:
        split = default_split(n_trials, val_frac=val_frac, test_frac=test_frac, seed=seed)
    condition, meta = None, {}
    if trials["cond_raw"] is not None:
        names, condition = np.unique(trials["cond_raw"], return_inverse=True)
        meta["condition_names"] = [str(x) for x in names]
    meta.update(
        unit_ids=[int(units["ids"][u]) for u in order],
        trial_ids=trials["ids"].tolist(),
        excluded_trial_ids=excluded_ids,
        align_event=align_event,
        window=[t0, t0 + n_bins * bin_size],
        behavior_series=behavior,
    )
    return SpikeData(
        spikes=spikes,
        bin_size=bin_size,
        n_heldin=int((~units["heldout"]).sum()),
        n_fwd=n_fwd,
        split=split,
        observed=None if observed.all() else observed,
        behavior=beh,
        condition=condition,
        name=name or path.stem,
        source=src,
        meta=meta,
    )


def _read_units(nwb, src: str, heldout_column: str | None, use_obs_intervals: bool) -> dict:
    units = nwb.units
    if units is None or len(units) == 0:
        raise DataError(f"{src}: the NWB file has no units (units table missing or empty)")
    if "spike_times" not in units.colnames:
        raise DataError(f"{src}: units table has no 'spike_times' column; columns: {list(units.colnames)}")
    col = units["spike_times"]
    flat = np.asarray(col.target.data[:], dtype=np.float64)
    ends = np.asarray(col.data[:], dtype=np.int64)
    ids = np.asarray(units.id.data[:])
    times = []
    for u, (a, b) in enumerate(zip(np.r_[0, ends[:-1]], ends, strict=True)):
        t = flat[a:b]
        if not np.isfinite(t).all():
            raise DataError(f"{src}: units 'spike_times' of unit {ids[u]} has non-finite values")
        times.append(np.sort(t))  # searchsorted needs sorted times; sorting loses nothing
    heldout = np.zeros(len(ids), dtype=bool)
    if heldout_column is not None and heldout_column in units.colnames:
        heldout = np.asarray(units[heldout_column].data[:])
        if heldout.dtype != bool:
            if not np.isin(heldout, (0, 1)).all():
                raise DataError(
                    f"{src}: units column {heldout_column!r} must be boolean; got {heldout[:5]}..."
                )
            heldout = heldout.astype(bool)
    intervals = None
    if use_obs_intervals and "obs_intervals" in units.colnames:
        oc = units["obs_intervals"]
        flat_iv = np.asarray(oc.target.data[:], dtype=np.float64).reshape(-1, 2)
        iv_ends = np.asarray(oc.data[:], dtype=np.int64)
        intervals = [flat_iv[a:b] for a, b in zip(np.r_[0, iv_ends[:-1]], iv_ends, strict=True)]
    return {"ids": ids, "times": times, "heldout": heldout, "intervals": intervals}


def _read_trials(nwb, src: str, align_event: str, split_column: str | None, condition_column: str | None):
    trials = nwb.trials
    if trials is None or len(trials) == 0:
        raise DataError(f"{src}: the NWB file has no trials (trials table missing or empty)")
    cols = list(trials.colnames)
    if align_event not in cols:
        raise DataError(f"{src}: trials table has no column {align_event!r} to align on; columns: {cols}")
    if condition_column is not None and condition_column not in cols:
        raise DataError(f"{src}: trials table has no column {condition_column!r}; columns: {cols}")
    ids = np.asarray(trials.id.data[:])
    align = np.asarray(trials[align_event].data[:], dtype=np.float64)
    if not np.isfinite(align).all():
        bad = ids[~np.isfinite(align)][:5].tolist()
        raise DataError(f"{src}: trials column {align_event!r} has non-finite times (trial ids {bad})")
    out = {
        "ids": ids,
        "align": align,
        "start": np.asarray(trials["start_time"].data[:], dtype=np.float64),
        "stop": np.asarray(trials["stop_time"].data[:], dtype=np.float64),
        "split_raw": None,
        "cond_raw": None,
    }
    if split_column is not None and split_column in cols:
        out["split_raw"] = np.asarray(trials[split_column].data[:]).astype(str)
    if condition_column is not None:
        out["cond_raw"] = np.asarray(trials[condition_column].data[:])
    return out


def _find_timeseries(nwb, name: str, src: str) -> dict:
    from pynwb import TimeSeries

    found = [o for o in nwb.objects.values() if isinstance(o, TimeSeries)]
    matches = [o for o in found if o.name == name]
    if not matches:
        raise DataError(
            f"{src}: no TimeSeries named {name!r} for behaviour; TimeSeries in the file: "
            f"{sorted(o.name for o in found)}"
        )
    if len(matches) > 1:
        where = sorted(f"{o.parent.name}/{o.name}" for o in matches)
        raise DataError(f"{src}: several TimeSeries are named {name!r}: {where}")
    ts = matches[0]
    data = np.asarray(ts.data[:], dtype=np.float64)
    if data.ndim == 1:
        data = data[:, None]
    if data.ndim != 2 or data.shape[0] == 0:
        raise DataError(f"{src}: TimeSeries {name!r} data must be (time,) or (time, D); got {data.shape}")
    if ts.timestamps is not None:
        t = np.asarray(ts.timestamps[:], dtype=np.float64)
    else:
        t = ts.starting_time + np.arange(data.shape[0]) / ts.rate
    if t.shape != (data.shape[0],):
        raise DataError(f"{src}: TimeSeries {name!r} has {t.size} timestamps for {data.shape[0]} samples")
    if not (np.isfinite(t).all() and (np.diff(t) > 0).all()):
        raise DataError(f"{src}: TimeSeries {name!r} timestamps must be finite and strictly increasing")
    return {"name": name, "t": t, "data": data}


def _resample(series: dict, centres: np.ndarray, src: str) -> np.ndarray:
    """Linear interpolation of `series` at `centres (trials, T_obs)` → (trials, T_obs, D)."""
    t, data, name = series["t"], series["data"], series["name"]
    outside = (centres < t[0]) | (centres > t[-1])
    if outside.any():
        tr, k = np.argwhere(outside)[0]
        raise DataError(
            f"{src}: TimeSeries {name!r} covers {t[0]:g}..{t[-1]:g} s but trial index {tr} needs a value "
            f"at {centres[tr, k]:g} s (bin {k}); behaviour is never extrapolated"
        )
    flat = centres.ravel()
    out = np.stack([np.interp(flat, t, data[:, d]) for d in range(data.shape[1])], axis=-1)
    out = out.reshape(centres.shape + (data.shape[1],))  # (trials, T_obs, D)
    if not np.isfinite(out).all():
        tr, k, _ = np.argwhere(~np.isfinite(out))[0]
        raise DataError(
            f"{src}: TimeSeries {name!r} has non-finite values near {centres[tr, k]:g} s (trial index {tr})"
        )
    return out


def _bin_spike_times(times: list[np.ndarray], order: np.ndarray, edges: np.ndarray) -> np.ndarray:
    """Spike counts `(trials, T, N)` in half-open bins `edges (trials, T + 1)` (seconds) of the units
    `order` (indices into `times`, each a sorted array of spike times in seconds), in that order."""
    spikes = np.zeros((edges.shape[0], edges.shape[1] - 1, len(order)), dtype=np.float32)
    for j, u in enumerate(order):
        cum = np.searchsorted(times[u], edges, side="left")  # (trials, T + 1) spikes before each edge
        spikes[:, :, j] = np.diff(cum, axis=1)
    return spikes


def _inside_intervals(centres: np.ndarray, intervals: np.ndarray) -> np.ndarray:
    """Boolean, same shape as `centres`: inside any closed interval of `intervals (m, 2)`."""
    if intervals.size == 0:
        return np.zeros(centres.shape, dtype=bool)
    iv = intervals[np.argsort(intervals[:, 0])]
    reach = np.maximum.accumulate(iv[:, 1])  # furthest stop among intervals starting before each start
    j = np.searchsorted(iv[:, 0], centres, side="right") - 1
    return (j >= 0) & (centres <= reach[np.clip(j, 0, None)])


# =============================================================================== CA1 linear track
CA1_LINEAR_TRACK_DIR = Path(__file__).parent / "fixtures" / "ca1_linear_track"
CA1_SPIKES_PATH = CA1_LINEAR_TRACK_DIR / "linear-track_spikes.mat"
CA1_TRAJECTORY_PATH = CA1_LINEAR_TRACK_DIR / "linear-track_trajectory.videoPositionTracking"

# Behaviour channels `load_ca1_linear_track` can put in `behavior`, with their names in `meta`.
CA1_BEHAVIORS = {"position": "position_px", "velocity": "velocity_px_per_s"}
CA1_CONDITIONS = ["rightward", "leftward"]  # lap direction in camera x (0: towards larger x)
# Tracking heuristics, read off the bundled recording (fixtures/ca1_linear_track/README.md):
_FROZEN_S = 5.0  # one position repeated this long = tracking lost (longest real stillness there: 2.5 s)
_OFF_TRACK_PX = 100.0  # farther than this from the track axis = tracker glitch (track half-width ~30 px)
_ZONE_FRAC = 0.15  # the end zones are the first and last 15% of the track
_VEL_HALF_S = 0.1  # velocity = central difference of position over +-0.1 s (pixel noise at 60 Hz)
_MAX_GAP_S = 0.25  # a trial's behaviour needs tracked samples at most this far apart


def load_ca1_linear_track(
    spikes_path: str | Path = CA1_SPIKES_PATH,
    trajectory_path: str | Path = CA1_TRAJECTORY_PATH,
    bin_size: float = 0.02,
    window_s: float = 2.4,
    n_fwd: int = 10,
    trials: str = "laps",
    behavior: str | Sequence[str] = ("position", "velocity"),
    heldout_every: int = 4,
    val_frac: float = 0.2,
    test_frac: float = 0.2,
    seed: int = 0,
    name: str | None = None,
) -> SpikeData:
    """Rat CA1 place cells on a linear track (nelpy example data, bundled), cut into trials.

    Files (defaults: the bundled copies): `spikes_path`, a MatClust `.mat` file with a cell array
    `spikes{day}{epoch}{tetrode}{cell}` of structs whose field `time` holds spike times (s), one day
    and one epoch; `trajectory_path`, a Trodes `.videoPositionTracking` file (text header, then binary
    records `<time uint32><xloc uint16><yloc uint16>...`, time in ticks of the header's `clockrate`).
    Units with no spikes are left out (listed in `meta['empty_units']`).

    Position: samples where the camera repeats one position for >= 5 s (tracking lost: before the run
    and through the rest epoch) or that lie > 100 px off the track axis (glitches) are untracked. The
    track axis is the first principal axis of the tracked (x, y); position is the projection on it in
    pixels, 0 at the smallest projection (the low-x end), up to `meta['track_length_px']`.

    Trials (`trials=`):
    - 'laps' (default): a lap is one pass from one end zone (first/last 15% of the track) to the other;
      it starts at the last tracked sample inside the zone it leaves. Each trial starts at a lap start
      and lasts `window_s` (observed) plus `n_fwd` forward bins, whatever the lap's duration (the
      shortest lap is 2.45 s, so by default every observed window lies inside its pass). `condition` is
      the direction (0 'rightward', 1 'leftward' in camera x; `meta['condition_names']`).
    - 'windows': consecutive, non-overlapping windows of `window_s + n_fwd * bin_size` from the first
      lap start up to the last lap end (the run epoch); no `condition`.
    Spikes outside every trial window (the rest epoch, the time between windows) are not in the result;
    `meta['n_spikes_total']` and `meta['n_spikes_in_trials']` count them. A trial whose behaviour is not
    covered by tracked samples (gap > 0.25 s) is left out with a warning and listed in
    `meta['excluded_trials']`.

    Bins: bin k of a trial starting at s covers `[s + k*bin_size, s + (k+1)*bin_size)` (half-open).
    Neurons: units in file order (tetrode, then cell); every `heldout_every`-th unit (the 4th, 8th, ...;
    0: none) is held out; held-in units come first (`meta['unit_ids']`, [tetrode, cell], 1-based).
    Behaviour `(trials, T_obs, D)` at the observed bins' centres: 'position' (px along the track) and/or
    'velocity' (px/s along the track, positive towards larger x), linearly interpolated between tracked
    samples. Splits: `default_split(n_trials, val_frac, test_frac, seed)`.

    Returns:
        SpikeData `spikes (trials, window_s / bin_size + n_fwd, N)`; N = 31 units for the bundled data.
    """
    spikes_path, trajectory_path = _require_file(spikes_path), _require_file(trajectory_path)
    s_src, t_src = str(spikes_path), str(trajectory_path)
    if not (np.isfinite(bin_size) and bin_size > 0):
        raise DataError(f"{s_src}: bin_size must be a positive number of seconds; got {bin_size!r}")
    n_obs = int(round(window_s / bin_size))
    if n_obs < 1 or abs(window_s / bin_size - n_obs) > 1e-6:
        raise DataError(
            f"{s_src}: window_s={window_s!r} s must be a positive whole number of {bin_size:g} s bins"
        )
    if int(n_fwd) != n_fwd or n_fwd < 0:
        raise DataError(f"{s_src}: n_fwd must be a whole number >= 0; got {n_fwd!r}")
    n_fwd = int(n_fwd)
    if trials not in ("laps", "windows"):
        raise DataError(f"{s_src}: trials must be 'laps' or 'windows'; got {trials!r}")
    channels = [b.strip() for b in behavior.split(",")] if isinstance(behavior, str) else list(behavior)
    unknown = [b for b in channels if b not in CA1_BEHAVIORS]
    if unknown or len(set(channels)) != len(channels):
        raise DataError(
            f"{t_src}: behavior={behavior!r}: channels must be distinct names from {list(CA1_BEHAVIORS)}"
        )
    if int(heldout_every) != heldout_every or heldout_every < 0 or heldout_every == 1:
        raise DataError(
            f"{s_src}: heldout_every must be 0 (no held-out units) or >= 2; got {heldout_every!r}"
        )

    units = _read_matclust_spikes(spikes_path)
    track = _read_position_tracking(trajectory_path)
    lin = _linearize_track(track["t"], track["xy"], t_src)
    laps = _find_laps(track["t"], lin["pos"], lin["tracked"], lin["length"], t_src)
    run_epoch = (float(laps["start"][0]), float(laps["end"][-1]))
    t_lo, t_hi = units["timerange"]
    if run_epoch[0] < t_lo or run_epoch[1] > t_hi:
        raise DataError(
            f"{t_src}: the run epoch {run_epoch[0]:.3f}..{run_epoch[1]:.3f} s (from 'time' / clockrate) "
            f"lies outside the spikes' 'timerange' {t_lo:.3f}..{t_hi:.3f} s in {s_src}; "
            "are both on the same clock?"
        )

    span = (n_obs + n_fwd) * bin_size  # seconds per trial
    if trials == "laps":
        starts, condition = laps["start"], laps["direction"]
    else:
        n_win = int(np.floor((run_epoch[1] - run_epoch[0]) / span + 1e-9))
        if n_win < 1:
            raise DataError(
                f"{t_src}: the run epoch ({run_epoch[1] - run_epoch[0]:.2f} s) is shorter than one trial"
            )
        starts, condition = run_epoch[0] + span * np.arange(n_win), None

    # Keep the trials whose behaviour (observed bins, +-_VEL_HALF_S for velocity) is tracked.
    tv, pv = track["t"][lin["tracked"]], lin["pos"][lin["tracked"]]
    excluded = []
    keep = np.ones(len(starts), dtype=bool)
    for i, s in enumerate(starts):
        a, b = s - _VEL_HALF_S, s + n_obs * bin_size + _VEL_HALF_S
        if a < tv[0] or b > tv[-1]:
            why = f"needs position over {a:.3f}..{b:.3f} s, tracked only over {tv[0]:.3f}..{tv[-1]:.3f} s"
        else:
            i0, i1 = np.searchsorted(tv, a, side="right") - 1, np.searchsorted(tv, b, side="left")
            gap = float(np.diff(tv[i0 : i1 + 1]).max())
            why = f"position untracked for {gap:.3f} s (more than {_MAX_GAP_S} s)" if gap > _MAX_GAP_S else ""
        if why:
            keep[i] = False
            excluded.append({"start_s": float(s), "reason": why})
    if excluded:
        warnings.warn(f"{t_src}: {len(excluded)} trial(s) left out: {excluded}", stacklevel=2)
    starts = starts[keep]
    condition = None if condition is None else condition[keep]
    if len(starts) == 0:
        raise DataError(f"{t_src}: no trial has tracked position ({len(excluded)} left out)")

    n_bins = n_obs + n_fwd
    edges = starts[:, None] + bin_size * np.arange(n_bins + 1)  # (trials, T + 1)
    ids = units["ids"]
    heldout = np.zeros(len(ids), dtype=bool)
    if heldout_every:
        heldout[heldout_every - 1 :: heldout_every] = True
    if heldout.all():
        raise DataError(f"{s_src}: heldout_every={heldout_every} holds out all {len(ids)} units")
    order = np.concatenate([np.flatnonzero(~heldout), np.flatnonzero(heldout)])
    spikes = _bin_spike_times(units["times"], order, edges)  # (trials, T, N)

    centres = edges[:, :n_obs] + 0.5 * bin_size  # (trials, T_obs)
    values = {
        "position": lambda: np.interp(centres, tv, pv),
        "velocity": lambda: (
            (np.interp(centres + _VEL_HALF_S, tv, pv) - np.interp(centres - _VEL_HALF_S, tv, pv))
            / (2 * _VEL_HALF_S)
        ),
    }
    beh = np.stack([values[c]() for c in channels], axis=-1) if channels else None  # (trials, T_obs, D)

    n_total = int(sum(len(t) for t in units["times"]))
    meta = {
        "trials": trials,
        "window_s": float(n_obs * bin_size),
        "trial_start_s": starts.tolist(),
        "unit_ids": [list(ids[u]) for u in order],
        "heldout_unit_ids": [list(ids[u]) for u in np.flatnonzero(heldout)],
        "empty_units": [list(x) for x in units["empty"]],
        "behavior_names": [CA1_BEHAVIORS[c] for c in channels],
        "run_epoch_s": list(run_epoch),
        "track_length_px": float(lin["length"]),
        "track_axis": lin["axis"].tolist(),
        "track_origin_px": lin["origin"].tolist(),
        "n_laps": int(len(laps["start"])),
        "n_spikes_total": n_total,
        "n_spikes_in_trials": int(spikes.sum()),
        "excluded_trials": excluded,
        "files": [s_src, t_src],
    }
    if trials == "laps":
        meta["condition_names"] = list(CA1_CONDITIONS)
        meta["lap_end_s"] = laps["end"][keep].tolist()
    return SpikeData(
        spikes=spikes,
        bin_size=bin_size,
        n_heldin=int((~heldout).sum()),
        n_fwd=n_fwd,
        split=default_split(len(starts), val_frac=val_frac, test_frac=test_frac, seed=seed),
        behavior=beh,
        condition=condition,
        name=name or "ca1_linear_track",
        source=s_src,
        meta=meta,
    )


def _describe(x) -> str:
    if isinstance(x, np.ndarray):
        return f"array of shape {x.shape}, dtype {x.dtype}"
    return type(x).__name__


def _read_matclust_spikes(path: Path) -> dict:
    """Spike times of the non-empty units of `spikes{day}{epoch}{tetrode}{cell}.time` (one day, one epoch).

    Returns ids [(tetrode, cell)] (1-based), times [sorted (n_spikes,) s], empty [(tetrode, cell)] and
    timerange (t0, t1) s (the units' common recording span, or the spikes' span if none is given).
    """
    import scipy.io

    src = str(path)
    try:
        mat = scipy.io.loadmat(path)
    except Exception as e:  # scipy raises ValueError, TypeError, OSError, ... for damaged files
        raise DataError(f"{src}: cannot read as a MATLAB .mat file ({type(e).__name__}: {e})") from e
    if "spikes" not in mat:
        found = sorted(k for k in mat if not k.startswith("__"))
        raise DataError(f"{src}: no variable 'spikes' (MatClust layout); variables found: {found}")
    node = mat["spikes"]
    for level in ("day", "epoch"):  # unwrap spikes{1}{1}
        if not (isinstance(node, np.ndarray) and node.dtype == object and node.size == 1):
            raise DataError(
                f"{src}: variable 'spikes' must be a cell array spikes{{day}}{{epoch}}{{tetrode}}{{cell}} "
                f"with one {level}; at the {level} level found {_describe(node)}"
            )
        node = node.flat[0]
    if not (isinstance(node, np.ndarray) and node.dtype == object):
        raise DataError(f"{src}: spikes{{1}}{{1}} must be a cell array of tetrodes; found {_describe(node)}")
    ids, times, empty, ranges = [], [], [], []
    for ti, tet in enumerate(node.ravel(), start=1):
        if isinstance(tet, np.ndarray) and tet.size == 0:
            continue  # tetrode not sorted
        if not (isinstance(tet, np.ndarray) and tet.dtype == object):
            raise DataError(
                f"{src}: spikes{{1}}{{1}}{{{ti}}} must be a cell array of units; found {_describe(tet)}"
            )
        for ci, cell in enumerate(tet.ravel(), start=1):
            where = f"spikes{{1}}{{1}}{{{ti}}}{{{ci}}}"
            if isinstance(cell, np.ndarray) and cell.size == 0 and cell.dtype.names is None:
                continue  # no unit in this slot
            names = cell.dtype.names if isinstance(cell, np.ndarray) else None
            if not names or "time" not in names or cell.size != 1:
                raise DataError(f"{src}: {where} must be a struct with field 'time'; found {_describe(cell)}")
            t = np.asarray(cell["time"].flat[0])
            if t.dtype.kind not in "iuf" or (t.ndim == 2 and 1 not in t.shape and t.size) or t.ndim > 2:
                raise DataError(
                    f"{src}: {where}.time must be a numeric vector of seconds; found {_describe(t)}"
                )
            t = t.astype(np.float64).ravel()
            if not np.isfinite(t).all():
                raise DataError(f"{src}: {where}.time has non-finite spike times")
            if "timerange" in names:
                tr = np.asarray(cell["timerange"].flat[0], dtype=np.float64).ravel()
                if tr.shape != (2,) or not np.isfinite(tr).all() or tr[0] >= tr[1]:
                    raise DataError(f"{src}: {where}.timerange must be [start, stop] seconds; found {tr}")
                if t.size and (t.min() < tr[0] or t.max() > tr[1]):
                    raise DataError(
                        f"{src}: {where}.time has spikes outside its 'timerange' {tr[0]:g}..{tr[1]:g} s"
                    )
                ranges.append(tr)
            if t.size == 0:
                empty.append((ti, ci))
                continue
            ids.append((ti, ci))
            times.append(np.sort(t))  # searchsorted needs sorted times; sorting loses nothing
    if not ids:
        raise DataError(f"{src}: variable 'spikes' holds no unit with spikes")
    if ranges:
        rng = np.array(ranges)
        timerange = (float(rng[:, 0].max()), float(rng[:, 1].min()))  # span every unit was recorded in
    else:
        timerange = (min(float(t[0]) for t in times), max(float(t[-1]) for t in times))
    return {"ids": ids, "times": times, "empty": empty, "timerange": timerange}


_TRODES_START, _TRODES_END = b"<Start settings>\n", b"<End settings>\n"


def _read_position_tracking(path: Path) -> dict:
    """A Trodes `.videoPositionTracking` file → {t (n,) s, xy (n, 2) px, header}.

    Exact duplicate records (same time, same position) are merged; a repeated time with a different
    position, or a time that goes backwards, is an error.
    """
    src = str(path)
    raw = path.read_bytes()
    if not raw.startswith(_TRODES_START):
        raise DataError(
            f"{src}: header: the file does not start with '<Start settings>' (not Trodes position?)"
        )
    stop = raw.find(_TRODES_END)
    if stop < 0:
        raise DataError(f"{src}: header: no '<End settings>' line")
    header = {}
    for line in raw[len(_TRODES_START) : stop].decode("ascii", errors="replace").splitlines():
        key, sep, value = line.partition(":")
        if sep:
            header[key.strip()] = value.strip()
    try:
        clockrate = float(header.get("clockrate", "nan"))
    except ValueError:
        clockrate = float("nan")
    if not (np.isfinite(clockrate) and clockrate > 0):
        raise DataError(
            f"{src}: header field 'clockrate' must be a positive number; got {header.get('clockrate')!r}"
        )
    fields = re.findall(r"<(\w+) (\w+)>", header.get("Fields", ""))
    try:
        dtype = np.dtype([(n, np.dtype(ty).newbyteorder("<")) for n, ty in fields])
    except TypeError as e:
        raise DataError(
            f"{src}: header field 'Fields' has an unknown type ({e}): {header.get('Fields')!r}"
        ) from e
    missing = [f for f in ("time", "xloc", "yloc") if f not in (dtype.names or ())]
    if missing:
        raise DataError(f"{src}: header field 'Fields' lacks {missing}; got {header.get('Fields')!r}")
    body = raw[stop + len(_TRODES_END) :]
    if len(body) % dtype.itemsize:
        raise DataError(
            f"{src}: records: {len(body)} bytes after the header are not a whole number of "
            f"{dtype.itemsize}-byte records (truncated file?)"
        )
    rec = np.frombuffer(body, dtype=dtype)
    if rec.size < 2:
        raise DataError(f"{src}: records: {rec.size} position samples; need at least 2")
    ticks = rec["time"].astype(np.int64)
    xy = np.stack([rec["xloc"], rec["yloc"]], axis=1).astype(np.float64)  # (n, 2) px
    dt = np.diff(ticks)
    if (dt < 0).any():
        i = int(np.flatnonzero(dt < 0)[0]) + 1
        raise DataError(f"{src}: field 'time' goes backwards at record {i} ({ticks[i - 1]} -> {ticks[i]})")
    dup = np.flatnonzero(dt == 0)
    if (xy[dup] != xy[dup + 1]).any():
        i = int(dup[(xy[dup] != xy[dup + 1]).any(axis=1)][0]) + 1
        raise DataError(f"{src}: field 'time' repeats at record {i} with a different position")
    keep = np.r_[True, dt != 0]  # exact duplicate records: keep one
    return {"t": ticks[keep] / clockrate, "xy": xy[keep], "header": header, "n_duplicates": int(dup.size)}


def _linearize_track(t: np.ndarray, xy: np.ndarray, src: str) -> dict:
    """Tracked samples and their position along the track axis: {tracked (n,) bool, pos (n,) px, ...}."""
    n = len(t)
    change = np.r_[True, (np.diff(xy, axis=0) != 0).any(axis=1)]  # (n,) True where a constant run starts
    first = np.flatnonzero(change)
    last = np.r_[first[1:] - 1, n - 1]
    tracked = (t[last] - t[first])[np.cumsum(change) - 1] < _FROZEN_S  # (n,) False in frozen runs
    for _ in range(2):  # fit the axis, drop off-axis glitches, refit without them
        if tracked.sum() < 3:
            raise DataError(f"{src}: records: fewer than 3 tracked position samples")
        origin = xy[tracked].mean(axis=0)
        axis = np.linalg.svd(xy[tracked] - origin, full_matrices=False)[2][0]  # (2,) unit vector
        axis = axis if axis[0] >= 0 else -axis  # position grows with camera x
        off = np.abs((xy - origin) @ np.array([-axis[1], axis[0]]))  # (n,) px from the axis
        tracked = tracked & (off <= _OFF_TRACK_PX)
    proj = (xy - origin) @ axis  # (n,) px
    lo, hi = proj[tracked].min(), proj[tracked].max()
    return {
        "tracked": tracked,
        "pos": proj - lo,
        "length": float(hi - lo),
        "axis": axis,
        "origin": origin + lo * axis,
    }


def _find_laps(t: np.ndarray, pos: np.ndarray, tracked: np.ndarray, length: float, src: str) -> dict:
    """Passes between the end zones: start = last tracked sample in the zone left, end = first in the next."""
    zone = np.zeros(len(t), dtype=np.int8)  # (n,) -1 / +1 in the low / high end zone, 0 elsewhere
    zone[tracked & (pos <= _ZONE_FRAC * length)] = -1
    zone[tracked & (pos >= (1 - _ZONE_FRAC) * length)] = 1
    k = np.flatnonzero(zone)
    z = zone[k]
    c = np.flatnonzero(z[1:] != z[:-1])  # k[c]: last sample in the zone left; k[c + 1]: first in the other
    if c.size == 0:
        raise DataError(
            f"{src}: no laps: the tracked position never goes from one end of the track to the other"
        )
    return {"start": t[k[c]], "end": t[k[c + 1]], "direction": (z[c] == 1).astype(np.int64)}


# ========================================================================================= dispatch
def _check_options(fn: Callable, kwargs: dict, what: str, signature_of: Callable | None = None) -> None:
    """Unknown keyword options are a DataError naming the loader and its options, not a TypeError."""
    params = [p for p in inspect.signature(signature_of or fn).parameters if p != "path"]
    unknown = sorted(set(kwargs) - set(params))
    if unknown:
        raise DataError(
            f"{what}: unknown options {unknown} for {(signature_of or fn).__name__}; it accepts {params}"
        )


def _mc_maze_small(**kwargs) -> SpikeData:
    kwargs.setdefault("name", "mc_maze_small")
    return load_nlb_h5(MC_MAZE_SMALL_PATH, **kwargs)


BUILTIN_DATASETS: dict[str, Callable[..., SpikeData]] = {
    "lorenz": lorenz,
    "chaotic_rnn": chaotic_rnn,
    "mc_maze_small": _mc_maze_small,
    "ca1_linear_track": load_ca1_linear_track,
}
_SUFFIXES = (".npz", ".h5", ".hdf5", ".nwb")


def load(path_or_name: str | Path, **kwargs) -> SpikeData:
    """Load a built-in dataset by name or a file by suffix; `kwargs` go to the loader/generator.

    Names: 'lorenz', 'chaotic_rnn' (synthetic, see `neuralnets.data.synthetic`), 'mc_maze_small'
    (the bundled NLB MC_Maze_Small tensors), 'ca1_linear_track' (bundled rat CA1 laps with position,
    see `load_ca1_linear_track`). Files: `.npz` (`load_npz`), `.h5`/`.hdf5` (NLB layout if
    it has 'train_spikes_heldin', LFADS layout if it has a '*_encod_data' key), `.nwb` (`load_nwb`,
    which needs `bin_size=`).
    """
    if isinstance(path_or_name, str) and path_or_name in BUILTIN_DATASETS:
        fn = BUILTIN_DATASETS[path_or_name]
        _check_options(fn, kwargs, path_or_name, load_nlb_h5 if path_or_name == "mc_maze_small" else fn)
        return fn(**kwargs)
    path = Path(path_or_name)
    suffix = path.suffix.lower()
    if suffix not in _SUFFIXES:
        raise DataError(
            f"{str(path_or_name)!r} is neither a built-in dataset {sorted(BUILTIN_DATASETS)} nor a file "
            f"with a known suffix {list(_SUFFIXES)}"
        )
    path = _require_file(path)
    if suffix == ".npz":
        fn = load_npz
    elif suffix == ".nwb":
        if "bin_size" not in kwargs:
            raise DataError(f"{path}: NWB files are binned on load; pass bin_size= (seconds)")
        fn = load_nwb
    else:
        with _open_h5(path) as f:
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
