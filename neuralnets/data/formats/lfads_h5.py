"""The common LFADS HDF5 layout (`train_encod_data`, `valid_recon_data`, ...): read and write."""

from __future__ import annotations

import json
from pathlib import Path

import h5py
import numpy as np

from neuralnets.data.formats.common import check_declared, expect_shape, h5_array, open_h5, require_file
from neuralnets.data.spikedata import SPLITS, SpikeData
from neuralnets.errors import DataError


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
    - `{p}_ext_input (trials, T, U)`, optional (all prefixes or none): known external inputs over
      all `T` bins of `recon_data` (LFADS's key) → `inputs`.
    - neuralnets extensions written by `save_lfads_h5`: `{p}_latents (trials, T, K)`,
      `{p}_condition (trials,)`, `{p}_observed (trials, T, N)` and root attributes `bin_size`, `name`.

    `bin_size` (seconds) is needed when the file has no `bin_size` attribute.
    """
    path = require_file(path)
    src = str(path)
    with open_h5(path) as f:
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
                raise DataError(
                    f"{src}: the file has no 'bin_size' attribute; pass bin_size= (seconds; "
                    "command line: -o bin_size=SECONDS)"
                )
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
        expect_shape(
            d["encod"], (None, t_obs, n_in), f"{p}_encod_data", src, f"to match '{prefixes[0]}_encod_data'"
        )
        if "recon" in d:
            expect_shape(
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
    optional = {"truth": None, "latents": None, "condition": None, "ext_input": None}
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
            expect_shape(obs, rec.shape, f"{p}_observed", src, f"to match '{p}_recon_data'")
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
            expect_shape(
                d["behavior"],
                (d["n"], t_obs, None),
                f"{p}_behavior",
                src,
                f"(trials, {t_obs} encoding bins, D)",
            )
            behavior[idx] = d["behavior"]
            has_beh[idx] = True
    for p, d in parts.items():
        if "ext_input" in d:
            why = f"(trials, {t_all} bins: all bins of recon_data, U inputs)"
            expect_shape(d["ext_input"], (d["n"], t_all, None), f"{p}_ext_input", src, why)
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
            expect_shape(
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
        expect_shape(optional["truth"], (n_total, t_all, n_all), "*_truth", src, "to match recon_data")
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
        inputs=optional["ext_input"],
        name=name or (str(file_name) if file_name is not None else path.stem),
        source=src,
        meta=meta,
    )


def _read_lfads_prefix(f, p: str, src: str) -> dict:
    d: dict = {"encod": h5_array(f, f"{p}_encod_data", src, counts=True)}
    d["n"] = d["encod"].shape[0]
    if f"{p}_recon_data" in f:
        d["recon"] = h5_array(f, f"{p}_recon_data", src, counts=True)
    optional = (
        ("truth", 3),
        ("behavior", 3),
        ("latents", 3),
        ("condition", 1),
        ("observed", 3),
        ("ext_input", 3),
    )
    for key, rank in optional:
        if f"{p}_{key}" in f:
            declared = f[f"{p}_{key}"]
            check_declared(declared, f"{p}_{key}", src, rank)  # from metadata, before reading
            if declared.shape[0] != d["n"]:
                raise DataError(
                    f"{src}: key '{p}_{key}' has {declared.shape[0]} trials but '{p}_encod_data' has {d['n']}"
                )
            arr = h5_array(f, f"{p}_{key}", src, rank=rank)
            if key == "truth" and (arr < 0).any():
                raise DataError(f"{src}: key '{p}_truth' has negative rates (min {arr.min()})")
            d[key] = arr.astype(bool) if key == "observed" else arr
    if f"{p}_inds" in f:
        inds = h5_array(f, f"{p}_inds", src, rank=1)
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
    `truth` (= rates, with root `conversion_factor` 1.0), `behavior`, `ext_input` (= inputs), and the
    neuralnets extensions
    `latents`, `condition`, `observed`. Root attributes: `bin_size`, `name`, `neuralnets_meta` (JSON).
    """
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
                ("ext_input", data.inputs),
                ("latents", data.latents),
                ("condition", data.condition),
                ("observed", data.observed),
            ):
                if value is not None:
                    f[f"{prefix}_{key}"] = value[idx]
    return path
