"""NWB files (via `pynwb`): units' spike times + trials table + behaviour time series → binned trials."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from neuralnets.data.binning import bin_spike_times
from neuralnets.data.formats.common import require_file
from neuralnets.data.spikedata import DataError, SpikeData, default_split

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
    from pynwb import NWBHDF5IO  # imported on use: importing pynwb takes ~0.6 s

    path = require_file(path)
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
    spikes = bin_spike_times(units["times"], order, edges)  # (trials, T, N)
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
    from pynwb import TimeSeries  # imported on use, as in load_nwb

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


def _inside_intervals(centres: np.ndarray, intervals: np.ndarray) -> np.ndarray:
    """Boolean, same shape as `centres`: inside any closed interval of `intervals (m, 2)`."""
    if intervals.size == 0:
        return np.zeros(centres.shape, dtype=bool)
    iv = intervals[np.argsort(intervals[:, 0])]
    reach = np.maximum.accumulate(iv[:, 1])  # furthest stop among intervals starting before each start
    j = np.searchsorted(iv[:, 0], centres, side="right") - 1
    return (j >= 0) & (centres <= reach[np.clip(j, 0, None)])
