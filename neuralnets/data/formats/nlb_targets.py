"""NLB evaluation-target files (`eval_data_val.h5` / `eval_data_test.h5` layout) and NLB-style HDF5 writing.

A target file holds one HDF5 group per dataset, named as in `nlb_group_name` ('mc_maze_small' at 5 ms,
'mc_maze_small_20' at 20 ms), with arrays for the evaluation trials (trials, bins, neurons):

| key | shape | used for |
|---|---|---|
| `eval_spikes_heldout` | (E, T_obs, N_out) | co-bps |
| `eval_spikes_heldin_forward` | (E, T_fwd, N_in) | fp-bps |
| `eval_spikes_heldout_forward` | (E, T_fwd, N_out) | fp-bps |
| `train_behavior` | (R, T_obs, D) | vel R² (ridge fit on the train trials' rates) |
| `eval_behavior` | (E, T_obs, D) | vel R² (scored) |
| `psth` | (C, T_obs, N_in + N_out) | PSTH R² (condition-averaged smoothed spikes) |
| `eval_cond_idx`, `train_cond_idx` | C index arrays | the eval / train trials of each condition |
| `train_decode_mask`, `eval_decode_mask`, `eval_jitter` | | other NLB datasets; read, not scored here |

Key names are NLB's as used by published NLB submission code; the shapes of `psth`, the ragged
(variable-length) storage of `*_cond_idx` and the meaning of the decode masks could not be confirmed
from NLB's documentation: the reader accepts `*_cond_idx` as variable-length rows or a 2-D array.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import h5py
import numpy as np

from neuralnets.data.formats.common import expect_shape, h5_array, open_h5, require_file
from neuralnets.data.spikedata import SpikeData
from neuralnets.errors import DataError
from neuralnets.files import atomic_path

COUNT_KEYS = ("eval_spikes_heldout", "eval_spikes_heldin_forward", "eval_spikes_heldout_forward")
ARRAY_KEYS = ("train_behavior", "eval_behavior", "psth")
INDEX_KEYS = ("eval_cond_idx", "train_cond_idx")
OTHER_KEYS = ("train_decode_mask", "eval_decode_mask", "eval_jitter")
TARGET_KEYS = COUNT_KEYS + ARRAY_KEYS + INDEX_KEYS + OTHER_KEYS


def nlb_group_name(dataset: str, bin_size: float) -> str:
    """The dataset's group in NLB submission and target files: the name at 5 ms, `<name>_<ms>` otherwise
    (e.g. 'mc_maze_small_20' at 20 ms)."""
    ms = float(bin_size) * 1000.0
    if not ms > 0 or abs(ms - round(ms)) > 1e-6:
        raise DataError(f"NLB group names need a whole number of ms per bin; got bin_size={bin_size!r} s")
    return dataset if round(ms) == 5 else f"{dataset}_{round(ms)}"


# ---------------------------------------------------------------------------------------------- read
def read_nlb_targets(path: str | Path, dataset: str | None = None) -> dict:
    """Read an NLB target file: {group: {key: array}} for every group, or one group's dict with `dataset=`.

    Count keys are checked as spike counts, shapes against each other (same evaluation trials and bins);
    `*_cond_idx` become lists of int arrays (one per condition) with indices checked against the trials.
    Unknown keys are a DataError (a file in another layout, e.g. a submission, is not read as targets).
    """
    path = require_file(path)
    src = str(path)
    out: dict[str, dict] = {}
    with open_h5(path) as f:
        names = sorted(f.keys())
        if not names:
            raise DataError(f"{src}: the file is empty; NLB target files hold one group per dataset")
        not_groups = [n for n in names if not isinstance(f[n], h5py.Group)]
        if not_groups:
            raise DataError(
                f"{src}: keys {not_groups} are arrays at the top level; NLB target files hold one group "
                "per dataset (e.g. 'mc_maze_small/eval_spikes_heldout')"
            )
        if dataset is not None and dataset not in f:
            raise DataError(f"{src}: no dataset group {dataset!r}; groups: {names}")
        for name in [dataset] if dataset is not None else names:
            out[name] = _read_group(f[name], f"{src}:{name}")
    return out[dataset] if dataset is not None else out


def _read_group(g: h5py.Group, src: str) -> dict:
    keys = sorted(g.keys())
    unknown = [k for k in keys if k not in TARGET_KEYS]
    if unknown:
        raise DataError(f"{src}: keys {unknown} are not NLB target keys; known: {list(TARGET_KEYS)}")
    t: dict = {}
    for k in keys:
        if k in INDEX_KEYS:
            t[k] = _read_index(g, k, src)
        elif k in COUNT_KEYS or k in ARRAY_KEYS:
            t[k] = h5_array(g, k, src, rank=3, counts=k in COUNT_KEYS)
        else:
            t[k] = np.asarray(g[k][()])
    check_targets(t, src)
    return t


def _read_index(g: h5py.Group, key: str, src: str) -> list[np.ndarray]:
    raw = g[key][()]
    rows = list(raw) if (raw.dtype == object or raw.ndim == 2) else None
    if rows is None:
        raise DataError(f"{src}: key {key!r} must hold one index array per condition; got shape {raw.shape}")
    out = []
    for c, r in enumerate(rows):
        r = np.asarray(r)
        if r.ndim != 1 or (r.size and r.dtype.kind not in "iu"):
            raise DataError(
                f"{src}: key {key!r} row {c} is not a list of trial indices ({r.dtype}, {r.shape})"
            )
        out.append(r.astype(np.int64))
    return out


def check_targets(t: Mapping, src: str) -> None:
    """Shapes of one dataset's targets agree; DataError naming the key otherwise."""
    n_eval = t_obs = t_fwd = None
    if "eval_spikes_heldout" in t:
        n_eval, t_obs, _ = t["eval_spikes_heldout"].shape
    fwd = [k for k in ("eval_spikes_heldin_forward", "eval_spikes_heldout_forward") if k in t]
    if len(fwd) == 1:
        raise DataError(
            f"{src}: key {fwd[0]!r} needs its partner (held-in and held-out forward, both or neither)"
        )
    if fwd:
        n_eval = n_eval if n_eval is not None else t[fwd[0]].shape[0]
        t_fwd = t[fwd[0]].shape[1]
        expect_shape(t[fwd[0]], (n_eval, None, None), fwd[0], src, "(eval trials, forward bins, held-in)")
        n_out = t["eval_spikes_heldout"].shape[2] if "eval_spikes_heldout" in t else None
        expect_shape(t[fwd[1]], (n_eval, t_fwd, n_out), fwd[1], src, "(eval trials, forward bins, held-out)")
    if "eval_behavior" in t:
        expect_shape(
            t["eval_behavior"], (n_eval, t_obs, None), "eval_behavior", src, "(eval trials, bins, D)"
        )
        if "train_behavior" not in t:
            raise DataError(f"{src}: key 'eval_behavior' needs 'train_behavior' (the decoder is fit on it)")
    if "train_behavior" in t and "eval_behavior" in t:
        d = t["eval_behavior"].shape[2]
        expect_shape(t["train_behavior"], (None, t_obs, d), "train_behavior", src, "(train trials, bins, D)")
    if "psth" in t:
        expect_shape(t["psth"], (None, t_obs, None), "psth", src, "(conditions, bins, neurons)")
        if "eval_cond_idx" not in t:
            raise DataError(f"{src}: key 'psth' needs 'eval_cond_idx' (the eval trials of each condition)")
    for k in INDEX_KEYS:
        if k not in t:
            continue
        if "psth" in t and len(t[k]) != t["psth"].shape[0]:
            raise DataError(
                f"{src}: key {k!r} has {len(t[k])} conditions but 'psth' has {t['psth'].shape[0]}"
            )
        n = n_eval if k == "eval_cond_idx" else (len(t["train_behavior"]) if "train_behavior" in t else None)
        bad = [int(i) for r in t[k] for i in r if i < 0 or (n is not None and i >= n)]
        if bad:
            raise DataError(f"{src}: key {k!r} has trial indices {bad[:5]} outside 0..{(n or 0) - 1}")


# ---------------------------------------------------------------------------------------------- write
def write_nlb_h5(path: str | Path, groups: Mapping[str, Mapping], overwrite: bool = False) -> Path:
    """Write {group: {key: array or list of index arrays}} atomically (`files.atomic_path`: a temporary
    file in the same folder, fsync, then into place), refusing to replace an existing file unless
    `overwrite` and never writing through a symbolic link at `path`."""
    path = Path(path)
    if path.exists() and not overwrite:
        raise FileExistsError(f"{path}: already exists; refusing to overwrite it")
    with atomic_path(path, exclusive=not overwrite) as tmp, h5py.File(tmp, "w") as f:
        for name, arrays in groups.items():
            g = f.create_group(name)
            for key, value in arrays.items():
                if isinstance(value, (list, tuple)):  # ragged index lists
                    ds = g.create_dataset(key, (len(value),), dtype=h5py.vlen_dtype(np.dtype("int64")))
                    for i, row in enumerate(value):
                        ds[i] = np.asarray(row, dtype=np.int64)
                else:
                    g.create_dataset(key, data=np.asarray(value))
    return path


def write_nlb_targets(path: str | Path, targets: Mapping[str, Mapping], overwrite: bool = False) -> Path:
    """Write {group: targets} in the NLB target layout (checked first; counts and behaviour as float32)."""
    groups = {}
    for name, t in targets.items():
        unknown = [k for k in t if k not in TARGET_KEYS]
        if unknown:
            raise DataError(f"{path}: group {name!r} keys {unknown} are not NLB target keys")
        check_targets(t, f"{path}:{name}")
        groups[name] = {
            k: (np.asarray(v, dtype=np.float32) if k in COUNT_KEYS + ARRAY_KEYS else v) for k, v in t.items()
        }
    return write_nlb_h5(path, groups, overwrite=overwrite)


def targets_from_data(data: SpikeData, split: str = "test") -> dict[str, np.ndarray]:
    """Local NLB targets from a SpikeData: its `split` trials are the evaluation trials, its 'train' + 'val'
    trials the train trials (as in `neuralnets.eval.nlb.submission_from_run`).

    Held-out spikes (observed bins) always; forward spikes when the data have forward bins recorded for
    every evaluation trial; train/eval behaviour when both have it (`meta['behavior_splits']`, if set,
    lists the splits with real behaviour). No `psth` (NLB smooths the continuous spike train first).
    """
    ev = data.indices(split)
    tr = np.flatnonzero(np.isin(data.split, ["train", "val"]))
    if ev.size == 0:
        raise DataError(f"{data.source}: split {split!r} has no trials to make targets from")
    if data.n_heldout == 0:
        raise DataError(f"{data.source}: no held-out neurons, so there are no co-smoothing targets")
    mask = data.observed_mask()[ev]  # (E, T, N)
    t_obs, n_in = data.n_obs, data.n_heldin
    if not mask[:, :t_obs, n_in:].all():
        raise DataError(f"{data.source}: held-out spikes of the {split!r} trials are not all recorded")
    out: dict[str, np.ndarray] = {"eval_spikes_heldout": data.spikes[ev, :t_obs, n_in:]}
    if data.n_fwd and mask[:, t_obs:].all():
        out["eval_spikes_heldin_forward"] = data.spikes[ev, t_obs:, :n_in]
        out["eval_spikes_heldout_forward"] = data.spikes[ev, t_obs:, n_in:]
    if data.behavior is not None:
        have = data.meta.get("behavior_splits", ["train", "val", "test"])
        if split in have and all(s in have for s in set(data.split[tr].tolist())) and tr.size:
            out["train_behavior"] = data.behavior[tr]
            out["eval_behavior"] = data.behavior[ev]
    return out
