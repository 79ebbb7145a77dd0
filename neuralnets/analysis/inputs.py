"""Inferred inputs: when does the model say something from outside drove the population?

A model with inferred inputs (`SpikeModel.has_inferred_inputs`: LFADS with a controller) returns
`inputs (trials, T_obs, U)`: what its generator needed beyond its own dynamics. Here their magnitude
‖u_t‖ is
- aligned to the trial events the loader kept (`trial_events`: the NWB alignment event, the CA1 lap
  start and end), as an event-triggered average;
- turned into input events: bins where the magnitude rises above a threshold chosen on the train
  trials only (`choose_threshold`: median + 5 robust standard deviations), so that the threshold is
  not tuned on the trials it is scored on;
- where the data hold known inputs (`SpikeData.inputs`, e.g. a synthetic system's kicks), scored
  against the known input events by precision and recall within ±k bins (`event_precision_recall`).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from neuralnets.errors import AnalysisError

MAD_TO_SD = 1.4826  # median absolute deviation -> standard deviation of a normal distribution


def require_inputs(model: object) -> None:
    """AnalysisError (one line) unless `model` returns inferred inputs (`has_inferred_inputs`)."""
    if not getattr(model, "has_inferred_inputs", False):
        raise AnalysisError(
            f"input analysis needs a model with inferred inputs (LFADS with a controller, co_dim > 0); "
            f"{type(model).__name__} has none (has_inferred_inputs is False)"
        )


def input_magnitude(inputs: np.ndarray) -> np.ndarray:
    """‖u_t‖₂ over the input dimensions: `(trials, T, U)` -> `(trials, T)`."""
    x = np.asarray(inputs, dtype=np.float64)
    if x.ndim != 3:
        raise AnalysisError(f"inferred inputs must be (trials, T, U); got shape {x.shape}")
    return np.sqrt((x**2).sum(axis=2))


def trial_events(data) -> dict[str, np.ndarray]:
    """The trial events the loader kept, as bin positions `(trials,)` float (NaN where a trial has no
    such event inside its bins): the NWB loader's alignment event (`meta['align_event']`, at
    −window start / bin size), the CA1 laps' start (bin 0) and end (`meta['lap_end_s']`)."""
    meta, n, dt = data.meta, data.n_trials, float(data.bin_size)
    out: dict[str, np.ndarray] = {}
    if meta.get("align_event") and meta.get("window") is not None:
        out[str(meta["align_event"])] = np.full(n, -float(meta["window"][0]) / dt)
    if meta.get("trials") == "laps" and "trial_start_s" in meta:
        out["lap_start"] = np.zeros(n)
        if "lap_end_s" in meta and len(meta["lap_end_s"]) == n:
            out["lap_end"] = (np.asarray(meta["lap_end_s"]) - np.asarray(meta["trial_start_s"])) / dt
    return {k: np.where((v >= 0) & (v < data.n_bins), v, np.nan) for k, v in out.items()}


def event_aligned(
    magnitude: np.ndarray, events: np.ndarray, before: int, after: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Event-triggered average of `magnitude (trials, T)` around `events (trials,)` (bins; NaN: none).

    Returns lags `(before + after + 1,)` in bins, the mean and the standard error over the trials
    that have that lag inside their bins `(L,)` each (NaN where no trial has)."""
    m = np.asarray(magnitude, dtype=np.float64)
    lags = np.arange(-before, after + 1)
    rows = np.full((m.shape[0], len(lags)), np.nan)
    for i, e in enumerate(np.asarray(events, dtype=np.float64)):
        if not np.isfinite(e):
            continue
        t = int(round(e)) + lags
        ok = (t >= 0) & (t < m.shape[1])
        rows[i, ok] = m[i, t[ok]]
    count = np.isfinite(rows).sum(axis=0)  # (L,) trials with that lag inside their bins
    total = np.where(np.isfinite(rows), rows, 0.0).sum(axis=0)
    mean = np.divide(total, count, out=np.full(len(lags), np.nan), where=count > 0)
    sq = np.where(np.isfinite(rows), (rows - mean) ** 2, 0.0).sum(axis=0)
    sd = np.sqrt(np.divide(sq, count, out=np.full(len(lags), np.nan), where=count > 0))
    sem = np.divide(sd, np.sqrt(count), out=np.full(len(lags), np.nan), where=count > 1)
    return lags, mean, sem


def choose_threshold(magnitude_train: np.ndarray, k: float = 5.0) -> float:
    """median + k × robust sd (MAD × 1.4826) of the train trials' input magnitudes `(trials, T)`."""
    m = np.asarray(magnitude_train, dtype=np.float64).ravel()
    if m.size == 0 or not np.isfinite(m).all():
        raise AnalysisError("the input threshold needs finite train-trial magnitudes; got none or non-finite")
    med = float(np.median(m))
    mad = float(np.median(np.abs(m - med))) * MAD_TO_SD
    return med + k * (mad if mad > 0 else float(m.std()))


def detect_events(magnitude: np.ndarray, threshold: float) -> np.ndarray:
    """Rising threshold crossings of `magnitude (trials, T)`: `(E, 2)` int (trial, bin) rows, bin where
    the magnitude first reaches `threshold` (a trial starting above it has an event at bin 0)."""
    above = np.asarray(magnitude) >= threshold  # (trials, T)
    onset = above & ~np.concatenate([np.zeros_like(above[:, :1]), above[:, :-1]], axis=1)
    return np.argwhere(onset)


def known_events(inputs: np.ndarray, frac: float = 0.5) -> np.ndarray:
    """Events of known inputs `(trials, T, U)`: rising crossings of `frac` × the largest |input| by
    the input magnitude (`(E, 2)` (trial, bin) rows)."""
    mag = input_magnitude(inputs)
    top = float(mag.max()) if mag.size else 0.0
    if top <= 0:
        return np.zeros((0, 2), dtype=int)
    return detect_events(mag, frac * top)


@dataclass
class EventScore:
    """Detected vs known events: `n_detected`, `n_known`, `n_matched` (one-to-one pairs within the
    tolerance), `precision` = matched / detected, `recall` = matched / known (NaN when undefined),
    `tolerance_bins` k, `median_lag_bins` of the matched pairs (detected − known)."""

    n_detected: int
    n_known: int
    n_matched: int
    precision: float
    recall: float
    tolerance_bins: int
    median_lag_bins: float


def event_precision_recall(
    detected: np.ndarray, known: np.ndarray, tolerance_bins: int = 2, max_delay: int = 0
) -> EventScore:
    """Match detected to known events `(E, 2)` (trial, bin) one-to-one within the same trial when the
    detected bin lies in [known − k, known + k + max_delay] (k = `tolerance_bins`; `max_delay` admits a
    model that responds late), closest pairs first; precision and recall of the matches."""
    if tolerance_bins < 0 or max_delay < 0:
        raise AnalysisError(f"tolerance_bins and max_delay must be >= 0; got {tolerance_bins}, {max_delay}")
    detected, known = np.asarray(detected).reshape(-1, 2), np.asarray(known).reshape(-1, 2)
    pairs = []
    for i, (tr, b) in enumerate(detected):
        for j in np.flatnonzero(known[:, 0] == tr):
            lag = int(b - known[j, 1])
            if -tolerance_bins <= lag <= tolerance_bins + max_delay:
                pairs.append((abs(lag), i, j, lag))
    used_d, used_k, lags = set(), set(), []
    for _, i, j, lag in sorted(pairs):
        if i not in used_d and j not in used_k:
            used_d.add(i)
            used_k.add(j)
            lags.append(lag)
    n = len(lags)
    return EventScore(
        n_detected=len(detected),
        n_known=len(known),
        n_matched=n,
        precision=n / len(detected) if len(detected) else float("nan"),
        recall=n / len(known) if len(known) else float("nan"),
        tolerance_bins=int(tolerance_bins),
        median_lag_bins=float(np.median(lags)) if lags else float("nan"),
    )
