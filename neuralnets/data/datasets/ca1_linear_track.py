"""Built-in dataset: rat CA1 place cells on a linear track (nelpy example data, bundled in fixtures/).

Reads the MatClust spike file and the Trodes position-tracking file, finds the laps, and cuts the
recording into trials with position/velocity behaviour: `load_ca1_linear_track`.
"""

from __future__ import annotations

import re
import warnings
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from neuralnets.data.binning import bin_spike_times
from neuralnets.data.formats.common import require_file
from neuralnets.data.heldout import check_heldout, every_kth
from neuralnets.data.spikedata import SpikeData, default_split
from neuralnets.errors import DataError

CA1_LINEAR_TRACK_DIR = Path(__file__).parent.parent / "fixtures" / "ca1_linear_track"
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
    fold: int | None = None,
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
    samples. Splits: `default_split(n_trials, val_frac, test_frac, seed, fold)`.

    Returns:
        SpikeData `spikes (trials, window_s / bin_size + n_fwd, N)`; N = 31 units for the bundled data.
    """
    spikes_path, trajectory_path = require_file(spikes_path), require_file(trajectory_path)
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
    every_kth(0, heldout_every, s_src, allow_zero=True)  # check the option before reading the files

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
    heldout = every_kth(len(ids), heldout_every, s_src, allow_zero=True)  # (units,) bool
    no_heldout = check_heldout(heldout, s_src, f"heldout_every={heldout_every}")
    if no_heldout:
        warnings.warn(no_heldout, stacklevel=2)
    order = np.concatenate([np.flatnonzero(~heldout), np.flatnonzero(heldout)])
    spikes = bin_spike_times(units["times"], order, edges)  # (trials, T, N)

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
        split=default_split(len(starts), val_frac=val_frac, test_frac=test_frac, seed=seed, fold=fold),
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
    import scipy.io  # imported on use: importing scipy.io takes ~0.2 s

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
