"""The Neural Latents Benchmark tensor layout (`train_spikes_heldin`, `eval_spikes_heldout`, ...)."""

from __future__ import annotations

import warnings
from pathlib import Path

import h5py
import numpy as np

from neuralnets.data.formats.common import check_declared, expect_shape, h5_array, open_h5, require_file
from neuralnets.data.spikedata import SpikeData, default_split
from neuralnets.errors import DataError

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


def _declared_shapes(f, src: str) -> dict[str, tuple]:
    """The shape each NLB key must have (None: a free axis), from the declared shapes of the spike
    keys that set trials, bins and neurons (`check_declared`: nothing is read)."""
    for key in ("train_spikes_heldin", "train_spikes_heldout", "eval_spikes_heldin"):
        if key in f:
            check_declared(f[key], key, src)
    n_train, t_obs, n_in = f["train_spikes_heldin"].shape
    n_out = f["train_spikes_heldout"].shape[2]
    fwd = f.get("train_spikes_heldin_forward")
    t_fwd = fwd.shape[1] if isinstance(fwd, h5py.Dataset) and fwd.ndim == 3 else None
    n_eval = f["eval_spikes_heldin"].shape[0] if "eval_spikes_heldin" in f else None
    return {
        "train_spikes_heldout": (n_train, t_obs, None),
        "train_spikes_heldin_forward": (n_train, None, n_in),
        "train_spikes_heldout_forward": (n_train, t_fwd, n_out),
        "train_behavior": (n_train, t_obs, None),
        "eval_spikes_heldin": (None, t_obs, n_in),
        "eval_spikes_heldout": (n_eval, t_obs, n_out),
        "eval_spikes_heldin_forward": (n_eval, t_fwd, n_in),
        "eval_spikes_heldout_forward": (n_eval, t_fwd, n_out),
        "eval_behavior": (n_eval, t_obs, None),
    }


def load_nlb_h5(
    path: str | Path,
    bin_size: float = 0.005,
    val_frac: float = 0.2,
    seed: int = 0,
    name: str | None = None,
    fold: int | None = None,
) -> SpikeData:
    """Read the official Neural Latents Benchmark tensor layout (e.g. `mc_maze_small_full.h5`).

    Keys (trials, bins, neurons): `train_spikes_heldin`, `train_spikes_heldout` (required),
    `train_spikes_heldin_forward` + `train_spikes_heldout_forward` (forward-prediction bins),
    `train_behavior (n_train, T_obs, D)`, `eval_spikes_heldin`, `eval_spikes_heldout`, and if present
    `eval_spikes_*_forward`, `eval_behavior`. Other keys are ignored with a warning and listed in
    `meta['ignored_keys']`.

    Result: one SpikeData of `n_train + n_eval` trials x `T_obs + T_fwd` bins x `N_in + N_out` neurons,
    held-in neurons first, train trials first. Splits: the NLB train trials become 'train'/'val'
    (`val_frac` of them 'val', chosen with `seed`; or validation fold `fold` of them, see
    `default_split`); the NLB eval trials become 'test'.
    Parts the file lacks (eval forward bins; eval held-out neurons in test-phase files) are marked
    `observed=False` and stored as 0.

    Behaviour: when only the train trials have it (the usual case), the 'test' trials hold zeros that
    are not data, and `meta['behavior_splits'] == ['train', 'val']` lists the splits with real
    behaviour: score velocity decoding only on those splits (e.g. fit on 'train', score on 'val').
    """
    path = require_file(path)
    src = str(path)
    with open_h5(path) as f:
        keys = sorted(f.keys())
        for key in ("train_spikes_heldin", "train_spikes_heldout"):
            if key not in f:
                raise DataError(f"{src}: missing key {key!r} (NLB tensor layout); keys found: {keys}")
        want = _declared_shapes(f, src)  # from metadata: a key that does not fit is never read
        a = {k: h5_array(f, k, src, counts="spikes" in k, shape=want.get(k)) for k in keys if k in _NLB_KEYS}
    ignored = [k for k in keys if k not in _NLB_KEYS]
    if ignored:
        warnings.warn(f"{src}: ignoring keys not in the NLB tensor layout: {ignored}", stacklevel=2)

    n_train, t_obs, n_in = a["train_spikes_heldin"].shape
    n_out = a["train_spikes_heldout"].shape[2]
    expect_shape(
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
        expect_shape(a[fwd_keys[0]], (n_train, None, n_in), fwd_keys[0], src, "(train trials, bins, held-in)")
        expect_shape(
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
            expect_shape(a[key], want, key, src, "(eval trials, bins, neurons) to match the train keys")

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
        [
            default_split(n_train, val_frac=val_frac, test_frac=0.0, seed=seed, fold=fold),
            np.full(n_eval, "test"),
        ]
    )
    behavior, meta = None, {"nlb_keys": keys, "n_nlb_train": n_train, "n_nlb_eval": n_eval}
    if ignored:
        meta["ignored_keys"] = ignored
    if "eval_behavior" in a and "train_behavior" not in a:
        raise DataError(f"{src}: key 'eval_behavior' is present but 'train_behavior' is missing")
    if "train_behavior" in a:
        d = a["train_behavior"].shape[2]
        expect_shape(
            a["train_behavior"],
            (n_train, t_obs, d),
            "train_behavior",
            src,
            f"(train trials, {t_obs} observed bins, D)",
        )
        behavior = np.zeros((n, t_obs, d), dtype=np.float32)  # (trials, T_obs, D)
        behavior[tr] = a["train_behavior"]
        if "eval_behavior" in a:
            expect_shape(
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
