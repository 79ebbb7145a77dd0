"""NWB files (via `pynwb`): units' spike times + a trials table + time series → binned, aligned trials.

`load_nwb` reads the units table (`spike_times`, optional `obs_intervals` and a held-out column), one
`TimeIntervals` table as the trials (`trials` by default, or any table under `intervals`), and any
`TimeSeries`/`SpatialSeries` by name as behaviour or as external inputs.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from neuralnets.data import heldout as H
from neuralnets.data.binning import bin_spike_times
from neuralnets.data.formats.common import require_file
from neuralnets.data.spikedata import SpikeData, default_split
from neuralnets.errors import DataError

_SPLIT_ALIASES = {"train": "train", "val": "val", "valid": "val", "validation": "val", "test": "test"}
_DEFAULT_HELDOUT_COLUMN = "heldout"  # NLB's units column; its absence is not an error


def open_nwb(path: Path, src: str):
    """(io, nwbfile) of an NWB file opened for reading (close `io` when done), or a DataError naming it."""
    from pynwb import NWBHDF5IO  # imported on use: importing pynwb takes ~0.6 s

    try:
        io = NWBHDF5IO(str(path), "r")
        return io, io.read()
    except Exception as e:  # pynwb/hdmf raise many types for unreadable files
        raise DataError(f"{src}: cannot read as an NWB file ({type(e).__name__}: {e})") from e


def load_nwb(
    path: str | Path,
    bin_size: float,
    *,
    trials_table: str | None = None,
    align_event: str = "start_time",
    window: tuple[float, float] | None = None,
    n_fwd: int = 0,
    behavior: str | Sequence[str] | None = None,
    inputs: str | Sequence[str] | None = None,
    heldout_column: str | None = _DEFAULT_HELDOUT_COLUMN,
    heldout_units: Sequence[int] | None = None,
    heldout_every: int | None = None,
    heldout_fraction: float | None = None,
    heldout_seed: int = 0,
    split_column: str | None = "split",
    exclude_splits: Sequence[str] = ("none",),
    condition_column: str | None = None,
    use_obs_intervals: bool = True,
    val_frac: float = 0.2,
    test_frac: float = 0.2,
    seed: int = 0,
    name: str | None = None,
) -> SpikeData:
    """Bin an NWB file's units into aligned trials.

    Args:
        path: the `.nwb` file (units table with `spike_times`, a `TimeIntervals` table of trials).
        bin_size: bin width in seconds.
        trials_table: name of the `TimeIntervals` table that holds the trials: `trials` (None, the
            default) or any table under the file's `intervals` (e.g. 'encoding_table'). When it is
            missing or empty the error lists the interval tables the file has.
        align_event: numeric column of that table (seconds) each trial is aligned on, e.g.
            'start_time' (default), 'stop_time', 'move_onset_time'.
        window: (t0, t1) seconds relative to the event; `(t1 - t0)` must be a whole number of bins.
            None: the largest window inside every trial (`max(start - event)` to `min(stop - event)`),
            cut down to a whole number of bins.
        n_fwd: the last `n_fwd` bins of the window are forward-prediction bins.
        behavior: name (or list of names, concatenated) of `TimeSeries`/`SpatialSeries` anywhere in
            the file (acquisition, processing modules, nested containers; 'parent/name' picks one of
            several with the same name), linearly interpolated at the centres of the observed bins
            → `behavior (trials, T_obs, D)`. The series must cover those times (never extrapolated).
        inputs: the same for known external inputs (e.g. a stimulus) → `inputs (trials, T, U)`,
            at the centres of all bins (observed and forward). Interpolating at bin centres suits
            series sampled about as fast as the bins or slower; resample faster ones first.
        heldout_column, heldout_units, heldout_every, heldout_fraction, heldout_seed: which units
            are held out (predicted only, never model input); use one way at a time:
            - `heldout_column`: a boolean units column (default 'heldout', NLB's; if the file has no
              such column, no unit is held out). Pass None to use none of the file's columns.
            - `heldout_units=[i, ...]`: 0-based positions in the units table.
            - `heldout_every=k`: the k-th, 2k-th, ... units (k >= 2), as the CA1 loader does.
            - `heldout_fraction=f`: `round(f * n_units)` units drawn with `heldout_seed`.
            Giving two (including a file that has the `heldout_column` next to one of the others)
            is an error. With no held-out unit a warning says co-bps cannot be computed.
            Held-in units come first in `spikes`, each group in file order.
        split_column: trials column with 'train'/'val'/'test' (also 'valid'/'validation'). If absent,
            `default_split(n_trials, val_frac, test_frac, seed)`.
        exclude_splits: split labels whose trials are left out (NLB marks unused trials 'none');
            their ids are listed in `meta['excluded_trial_ids']`.
        condition_column: optional trials column whose distinct values become `condition` ints
            (`meta['condition_names']` maps them back).
        use_obs_intervals: if the units table has `obs_intervals`, bins whose centre is outside a
            unit's intervals are marked unobserved (`observed` False); a spike in such a bin is an error.

    Binning: bin k of a trial covers `[e + t0 + k*bin_size, e + t0 + (k+1)*bin_size)` (half-open,
    so adjacent windows never count a spike twice). `meta` holds `unit_ids`, `heldout_unit_ids`,
    `heldout_choice`, `trial_ids`, `trials_table`, `align_event`, `window`.

    Returns:
        SpikeData `spikes (trials, T, N)` with `T = round((t1 - t0) / bin_size)`.
    """
    path = require_file(path)
    src = str(path)
    _check_arguments(src, bin_size, window, n_fwd)
    behavior_names, input_names = _names(behavior, "behavior", src), _names(inputs, "inputs", src)
    io, nwb = open_nwb(path, src)
    try:
        units = _read_units(nwb, src, heldout_column, use_obs_intervals)
        trials = _read_trials(nwb, src, trials_table, align_event, split_column, condition_column)
        beh_series = [_find_series(nwb, n, src, "behaviour") for n in behavior_names]
        input_series = [_find_series(nwb, n, src, "inputs") for n in input_names]
    finally:
        io.close()
    heldout, how = _choose_heldout(
        units, src, heldout_column, heldout_units, heldout_every, heldout_fraction, heldout_seed
    )
    no_heldout = H.check_heldout(heldout, src, how)
    if no_heldout:
        warnings.warn(no_heldout, stacklevel=2)

    keep = ~np.isin(trials["split_raw"], list(exclude_splits)) if trials["split_raw"] is not None else None
    if keep is not None and not keep.all():
        excluded_ids = trials["ids"][~keep].tolist()
        for k in ("align", "start", "stop", "ids", "rows", "split_raw", "cond_raw"):
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
    if window is None and n_bins < 1:
        raise DataError(_no_common_window(src, trials, align_event, bin_size))
    if not np.isfinite([t0, t1]).all() or n_bins < 1:
        raise DataError(f"{src}: window ({t0:g}, {t1:g}) s around {align_event!r} holds no whole bin")
    if not 0 <= n_fwd < n_bins:
        raise DataError(
            f"{src}: n_fwd={n_fwd} forward bins do not fit the window's {n_bins} bins (need 0..{n_bins - 1})"
        )

    # Bin edges of every trial: (trials, n_bins + 1); counts by searchsorted (half-open bins).
    edges = align[:, None] + t0 + bin_size * np.arange(n_bins + 1)
    centres = 0.5 * (edges[:, :-1] + edges[:, 1:])  # (trials, n_bins)
    order = np.concatenate([np.flatnonzero(~heldout), np.flatnonzero(heldout)])
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
    if beh_series:  # (trials, T_obs, D)
        beh = np.concatenate(
            [_resample(s, centres[:, : n_bins - n_fwd], src, "behaviour") for s in beh_series], -1
        )
    ext = None
    if input_series:  # (trials, T, U)
        ext = np.concatenate([_resample(s, centres, src, "inputs") for s in input_series], axis=-1)

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
        heldout_unit_ids=[int(units["ids"][u]) for u in np.flatnonzero(heldout)],
        heldout_choice=how,
        trial_ids=trials["ids"].tolist(),
        excluded_trial_ids=excluded_ids,
        trials_table=trials["table"],
        align_event=align_event,
        window=[t0, t0 + n_bins * bin_size],
        behavior_series=[s["name"] for s in beh_series] or None,
        input_series=[s["name"] for s in input_series] or None,
    )
    return SpikeData(
        spikes=spikes,
        bin_size=bin_size,
        n_heldin=int((~heldout).sum()),
        n_fwd=n_fwd,
        split=split,
        observed=None if observed.all() else observed,
        behavior=beh,
        inputs=ext,
        condition=condition,
        name=name or path.stem,
        source=src,
        meta=meta,
    )


def _no_common_window(src: str, trials: dict, align_event: str, bin_size: float) -> str:
    """Why no whole bin fits inside every trial (window=None): the trial(s) responsible, with their times."""
    start, stop, align, ids, rows = (trials[k] for k in ("start", "stop", "align", "ids", "rows"))

    def trial(i: int) -> str:
        return f"trial index {rows[i]} (id {ids[i]}, start_time {start[i]:g} s, stop_time {stop[i]:g} s)"

    short = np.flatnonzero(stop - start < bin_size)
    if short.size:  # one trial alone is too short (zero length, or stop before start)
        i = int(short[0])
        return (
            f"{src}: {trial(i)} is {stop[i] - start[i]:g} s long, shorter than one bin of {bin_size:g} s "
            f"({short.size} such trials), so no window fits inside every trial; pass "
            f"window=(t0, t1) around {align_event!r} or leave such trials out"
        )
    first, last = int(np.argmax(start - align)), int(np.argmin(stop - align))  # latest start, earliest stop
    return (
        f"{src}: no whole bin of {bin_size:g} s lies inside every trial around {align_event!r}: "
        f"{trial(first)} starts {start[first] - align[first]:g} s from it and {trial(last)} stops "
        f"{stop[last] - align[last]:g} s from it; pass window=(t0, t1)"
    )


def _is_number(x) -> bool:
    return isinstance(x, (int, float, np.integer, np.floating)) and not isinstance(x, bool)


def _check_arguments(src: str, bin_size, window, n_fwd) -> None:
    """The numeric arguments, checked before the file is read (load() checks types; callers may not)."""
    if not (_is_number(bin_size) and np.isfinite(bin_size) and bin_size > 0):
        raise DataError(f"{src}: bin_size must be a positive number of seconds; got {bin_size!r}")
    if window is not None:
        pair = not isinstance(window, str) and isinstance(window, Sequence) and len(window) == 2
        if not (pair and all(_is_number(w) for w in window)):
            raise DataError(f"{src}: window must be two numbers (t0, t1) in seconds; got {window!r}")
    if not (isinstance(n_fwd, (int, np.integer)) and not isinstance(n_fwd, bool)):
        raise DataError(f"{src}: n_fwd must be a whole number of bins; got {n_fwd!r}")


def _names(value: str | Sequence[str] | None, option: str, src: str) -> list[str]:
    """`behavior=` / `inputs=` as a list of series names."""
    if value is None:
        return []
    names = [value] if isinstance(value, str) else list(value)
    if not names or not all(isinstance(n, str) and n for n in names):
        raise DataError(f"{src}: {option}= must be a series name or a list of names; got {value!r}")
    if len(set(names)) != len(names):
        raise DataError(f"{src}: {option}= names a series more than once: {names}")
    return names


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
    column = None
    if heldout_column is not None and heldout_column in units.colnames:
        column = np.asarray(units[heldout_column].data[:])
    intervals = None
    if use_obs_intervals and "obs_intervals" in units.colnames:
        oc = units["obs_intervals"]
        flat_iv = np.asarray(oc.target.data[:], dtype=np.float64).reshape(-1, 2)
        iv_ends = np.asarray(oc.data[:], dtype=np.int64)
        intervals = [flat_iv[a:b] for a, b in zip(np.r_[0, iv_ends[:-1]], iv_ends, strict=True)]
    return {
        "ids": ids,
        "times": times,
        "columns": list(units.colnames),
        "heldout_column": column,
        "intervals": intervals,
    }


def _choose_heldout(
    units: dict,
    src: str,
    column: str | None,
    indices: Sequence[int] | None,
    every: int | None,
    fraction: float | None,
    seed: int,
) -> tuple[np.ndarray, str]:
    """The `(n_units,)` held-out mask and how it was chosen (for messages and `meta`)."""
    n = len(units["ids"])
    given = {
        k: v
        for k, v in (("heldout_units", indices), ("heldout_every", every), ("heldout_fraction", fraction))
        if v is not None
    }
    if len(given) > 1:
        raise DataError(f"{src}: held-out units are chosen one way at a time; got {sorted(given)}")
    has_column = units["heldout_column"] is not None
    if given and column is not None and (has_column or column != _DEFAULT_HELDOUT_COLUMN):
        (option,) = given
        what = "a column of the units table" if has_column else "given explicitly"
        raise DataError(
            f"{src}: {option}= and heldout_column={column!r} ({what}) both choose held-out units; "
            f"pass heldout_column=None to choose them with {option}="
        )
    if "heldout_units" in given:
        mask, how = H.from_indices(n, indices, src), f"heldout_units={list(indices)}"
    elif "heldout_every" in given:
        mask, how = H.every_kth(n, every, src), f"heldout_every={every}"
    elif "heldout_fraction" in given:
        mask = H.random_fraction(n, fraction, seed, src)
        how = f"heldout_fraction={fraction} of {n} units, heldout_seed={seed}"
    elif has_column:
        mask, how = H.from_column(units["heldout_column"], column, src), f"units column {column!r}"
    elif column is not None and column != _DEFAULT_HELDOUT_COLUMN:
        raise DataError(f"{src}: units table has no column {column!r}; columns: {units['columns']}")
    elif column is None:
        mask, how = np.zeros(n, dtype=bool), "heldout_column=None"
    else:
        mask, how = np.zeros(n, dtype=bool), f"the units table has no {column!r} column"
    return mask, how


def _interval_tables(nwb) -> dict:
    """Every `TimeIntervals` table of the file by name: trials, epochs, invalid_times, intervals/*."""
    tables = {
        n: getattr(nwb, n) for n in ("trials", "epochs", "invalid_times") if getattr(nwb, n, None) is not None
    }
    tables.update(dict(nwb.intervals))
    return tables


def _numeric_columns(table) -> list[str]:
    """Columns with one number per row (ragged and table-reference columns excluded)."""
    out = []
    for c in table.colnames:
        col = table[c]
        if hasattr(col, "target") or hasattr(col, "table"):  # VectorIndex (ragged), DynamicTableRegion
            continue
        values = np.asarray(col.data[:])
        if values.dtype.kind in "iuf" and values.ndim == 1:
            out.append(c)
    return out


def _read_trials(
    nwb,
    src: str,
    table_name: str | None,
    align_event: str,
    split_column: str | None,
    condition_column: str | None,
) -> dict:
    tables = _interval_tables(nwb)
    name = "trials" if table_name is None else table_name
    table = tables.get(name)
    if table is None or len(table) == 0:
        present = [f"{n} ({len(t)} rows)" for n, t in sorted(tables.items())]
        problem = "is empty" if table is not None else "is missing"
        hint = (
            f"interval tables in the file: {present}; pass trials_table=<name> to use one of them"
            if present
            else "the file has no interval tables (nothing under 'intervals')"
        )
        raise DataError(f"{src}: the NWB file has no trials: the intervals table {name!r} {problem}; {hint}")
    where = f"intervals table {name!r}"
    cols = list(table.colnames)
    numeric = _numeric_columns(table)
    if align_event not in cols:
        raise DataError(
            f"{src}: {where} has no column {align_event!r} to align on; numeric columns: {numeric}"
        )
    if align_event not in numeric:
        raise DataError(
            f"{src}: {where} column {align_event!r} is not one number (seconds) per trial, so it cannot "
            f"be aligned on; numeric columns: {numeric}"
        )
    if condition_column is not None and condition_column not in cols:
        raise DataError(f"{src}: {where} has no column {condition_column!r}; columns: {cols}")
    ids = np.asarray(table.id.data[:])
    align = np.asarray(table[align_event].data[:], dtype=np.float64)
    if not np.isfinite(align).all():
        bad = ids[~np.isfinite(align)][:5].tolist()
        raise DataError(f"{src}: {where} column {align_event!r} has non-finite times (trial ids {bad})")
    out = {
        "table": name,
        "ids": ids,
        "rows": np.arange(len(ids)),  # row in the table (the trial index messages name)
        "align": align,
        "start": np.asarray(table["start_time"].data[:], dtype=np.float64),
        "stop": np.asarray(table["stop_time"].data[:], dtype=np.float64),
        "split_raw": None,
        "cond_raw": None,
    }
    if split_column is not None and split_column in cols:
        out["split_raw"] = np.asarray(table[split_column].data[:]).astype(str)
    if condition_column is not None:
        out["cond_raw"] = np.asarray(table[condition_column].data[:])
    return out


def _find_series(nwb, name: str, src: str, what: str) -> dict:
    """The TimeSeries (or subclass) `name` or 'parent/name' → {name, t (n,) s, data (n, D)}."""
    from pynwb import TimeSeries  # imported on use, as in load_nwb

    found = [o for o in nwb.objects.values() if isinstance(o, TimeSeries)]
    matches = [o for o in found if name in (o.name, f"{o.parent.name}/{o.name}")]
    if not matches:
        listed = sorted(f"{o.name} ({type(o).__name__})" for o in found)
        raise DataError(f"{src}: no TimeSeries named {name!r} for {what}; series in the file: {listed}")
    if len(matches) > 1:
        where = sorted(f"{o.parent.name}/{o.name}" for o in matches)
        raise DataError(f"{src}: several TimeSeries are named {name!r}: {where}; pass one of these paths")
    ts = matches[0]
    try:
        data = np.asarray(ts.data[:], dtype=np.float64)
    except (TypeError, ValueError) as e:
        raise DataError(f"{src}: TimeSeries {name!r} data are not numbers ({e})") from e
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


def _resample(series: dict, centres: np.ndarray, src: str, what: str) -> np.ndarray:
    """Linear interpolation of `series` at `centres (trials, T)` → (trials, T, D)."""
    t, data, name = series["t"], series["data"], series["name"]
    outside = (centres < t[0]) | (centres > t[-1])
    if outside.any():
        tr, k = np.argwhere(outside)[0]
        raise DataError(
            f"{src}: TimeSeries {name!r} covers {t[0]:g}..{t[-1]:g} s but trial index {tr} needs a value "
            f"at {centres[tr, k]:g} s (bin {k}); values for {what} are never extrapolated"
        )
    flat = centres.ravel()
    out = np.stack([np.interp(flat, t, data[:, d]) for d in range(data.shape[1])], axis=-1)
    out = out.reshape(centres.shape + (data.shape[1],))  # (trials, T, D)
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
