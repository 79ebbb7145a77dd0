"""Inferred inputs: when does the model say something from outside drove the population?

A model with inferred inputs (`SpikeModel.has_inferred_inputs`: LFADS with a controller) returns
`inputs (trials, T_obs, U)`: what its generator needed beyond its own dynamics. Here their magnitude
‖u_t‖ is
- aligned to the trial events the loader kept (`trial_events`: the NWB alignment event, the CA1 lap
  start and end), as an event-triggered average;
- turned into input events as a detector would: the peaks of the magnitude (`detect_peaks`: local
  maxima at least `MIN_SEPARATION` bins apart) above a threshold chosen on the train trials against a
  null (`null_inputs`: the model's own autonomous dynamics, controller switched off, generate
  input-free spikes from the train trials' initial states; the model's inferred inputs on those are what
  it reports when nothing drove it). The threshold lets through `NULL_EVENTS_PER_TRIAL` null events per
  trial (`threshold_from_null`), and `input_verdict` says whether the real train trials hold more
  events than the null does (a one-sided Poisson test): "no reliable inputs found" is an answer;
- where the data hold known inputs (`SpikeData.inputs`, e.g. a synthetic system's pulses), scored
  against the known input events by precision and recall within ±k bins with the distribution of lags
  (`event_precision_recall`; a negative lag: the model's event comes before the true one).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from neuralnets.errors import AnalysisError

MAD_TO_SD = 1.4826  # median absolute deviation -> standard deviation of a normal distribution
MIN_SEPARATION = 3  # bins: two peaks closer than this are one event (the larger one)
NULL_EVENTS_PER_TRIAL = 0.05  # the detector's false-event rate on the null, per trial
START_BINS = 3  # events in a trial's first bins are not counted: there a controller can stand in for the IC
VERDICT_ALPHA = 0.01  # one-sided Poisson test: real events per trial above the null's
VERDICT_MIN_RATIO = 2.0  # ... and at least twice the null's rate
VERDICT_MIN_EXCESS = 0.25  # ... and at least this many events per trial more than the null (an effect size)


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
    the magnitude first reaches `threshold` (a trial starting above it has an event at bin 0). The onset
    of a bump, not its peak: `detect_peaks` is the input-event detector."""
    above = np.asarray(magnitude) >= threshold  # (trials, T)
    onset = above & ~np.concatenate([np.zeros_like(above[:, :1]), above[:, :-1]], axis=1)
    return np.argwhere(onset)


def peak_heights(
    magnitude: np.ndarray, min_separation: int = MIN_SEPARATION
) -> tuple[np.ndarray, np.ndarray]:
    """All peaks of `magnitude (trials, T)`: `(E, 2)` int (trial, bin) rows and their heights `(E,)`.

    A peak is a bin no lower than its neighbours and higher than at least one (plateaus count once, at
    their first bin; the first and last bins count when they top their one neighbour); of peaks closer
    than `min_separation` bins in one trial only the highest is kept."""
    m = np.asarray(magnitude, dtype=np.float64)
    if m.ndim != 2:
        raise AnalysisError(f"input magnitude must be (trials, T); got shape {m.shape}")
    pad = np.pad(m, ((0, 0), (1, 1)), constant_values=-np.inf)  # (trials, T + 2)
    left, mid, right = pad[:, :-2], pad[:, 1:-1], pad[:, 2:]
    is_peak = (mid > left) & (mid >= right)  # (trials, T): a rise into it, no rise out of it
    rows, heights = [], []
    for tr in range(m.shape[0]):
        bins = np.flatnonzero(is_peak[tr])
        kept: list[int] = []
        for b in bins[np.argsort(-m[tr, bins], kind="stable")]:  # highest first
            if all(abs(int(b) - k) >= min_separation for k in kept):
                kept.append(int(b))
        for b in sorted(kept):
            rows.append((tr, b))
            heights.append(m[tr, b])
    return np.asarray(rows, dtype=int).reshape(-1, 2), np.asarray(heights, dtype=np.float64)


def detect_peaks(magnitude: np.ndarray, threshold: float, min_separation: int = MIN_SEPARATION) -> np.ndarray:
    """Input events: peaks of `magnitude (trials, T)` (`peak_heights`) at or above `threshold`,
    `(E, 2)` int (trial, bin) rows."""
    rows, heights = peak_heights(magnitude, min_separation)
    return rows[heights >= threshold]


def detect_input_events(
    magnitude: np.ndarray, threshold: float, skip_bins: int = START_BINS, min_separation: int = MIN_SEPARATION
) -> np.ndarray:
    """Input events of `magnitude (trials, T)`: peaks at or above `threshold` from bin `skip_bins` on
    (`(E, 2)` (trial, bin) rows, bins counted from the trial's start). The first bins are left out: a
    model whose initial state is off uses its controller there to correct it, an event of no input."""
    rows = detect_peaks(np.asarray(magnitude)[:, skip_bins:], threshold, min_separation)
    rows[:, 1] += skip_bins
    return rows


def known_events(inputs: np.ndarray, frac: float = 0.5) -> np.ndarray:
    """Events of known inputs `(trials, T, U)`: peaks of the input magnitude at or above `frac` × its
    largest value (`(E, 2)` (trial, bin) rows; a one-bin pulse is an event at its bin). Pulses closer than
    `MIN_SEPARATION` bins are one event, as for the detector (which cannot tell them apart)."""
    mag = input_magnitude(inputs)
    top = float(mag.max()) if mag.size else 0.0
    if top <= 0:
        return np.zeros((0, 2), dtype=int)
    return detect_peaks(mag, frac * top)


def null_inputs(
    model, heldin: np.ndarray, seed: int = 0, session: int | str | None = None, batch_size: int = 256
) -> np.ndarray:
    """The null of the input detector: inferred inputs `(trials, T_obs, U)` on spikes without inputs.

    From each trial of `heldin (trials, T_obs, N_in)` the model's first generator state is run forward
    by its autonomous dynamics (`autonomous_step`: controller switched off) over all bins, read out to
    rates (`states_to_latents`, `readout`, `positive_rates`), and Poisson spikes drawn (seeded) on the
    held-in neurons; the model's inferred inputs on those spikes are what it reports when no input drove
    the population. The model is not changed."""
    import torch

    from neuralnets.models.base import positive_rates

    require_inputs(model)
    x = torch.as_tensor(np.asarray(heldin), dtype=torch.float32).to(next(model.parameters()).device)
    n_in = x.shape[2]
    with torch.no_grad():
        states = model.dynamics_states(x, session) if session is not None else model.dynamics_states(x)
        h = states[:, 0]  # (B, H) the first state, from the trial's own initial condition
        path = [h]
        for _ in range(states.shape[1] - 1):
            h = model.autonomous_step(h)
            path.append(h)
        latents = model.states_to_latents(torch.stack(path, dim=1))  # (B, T, K)
        # A multi-session (stitched) model reads each session out through its own layer.
        readout = (
            model.readouts[model.spec.index(session or 0)] if hasattr(model, "readouts") else model.readout
        )
        rates = positive_rates(readout(latents)).double().cpu().numpy()  # (B, T, N) counts per bin
    rng = np.random.default_rng(seed)
    spikes = rng.poisson(rates[:, : x.shape[1], :n_in]).astype(np.float32)  # (B, T_obs, N_in)
    out = model.predict(spikes, batch_size=batch_size, session=session)
    return out["inputs"]


def threshold_from_null(
    null_magnitude: np.ndarray,
    events_per_trial: float = NULL_EVENTS_PER_TRIAL,
    min_separation: int = MIN_SEPARATION,
) -> float:
    """The lowest threshold at which the peaks of `null_magnitude (trials, T)` give at most
    `events_per_trial` events per trial: just above the (k+1)-th highest null peak, k = ⌊rate × trials⌋."""
    m = np.asarray(null_magnitude, dtype=np.float64)
    if m.ndim != 2 or m.shape[0] == 0 or not np.isfinite(m).all():
        raise AnalysisError(
            f"the null's input magnitudes must be finite (trials, T) with trials >= 1; got {m.shape}"
        )
    if not events_per_trial >= 0:
        raise AnalysisError(f"events_per_trial must be >= 0; got {events_per_trial}")
    _, heights = peak_heights(m, min_separation)
    k = int(np.floor(events_per_trial * m.shape[0]))
    if len(heights) <= k:
        return float(np.nextafter(heights.min(), -np.inf)) if len(heights) else 0.0
    return float(np.nextafter(np.sort(heights)[::-1][k], np.inf))


@dataclass
class InputVerdict:
    """The detector against its null: `threshold`, events per trial on the real train trials and on the
    null trials (from bin START_BINS on), `onset_per_trial` the real trials' peaks above the threshold in
    their first bins (not counted), the one-sided Poisson p-value of the real count given the null's rate,
    `reliable`
    (p < VERDICT_ALPHA, at least VERDICT_MIN_RATIO times the null's rate and VERDICT_MIN_EXCESS more events
    per trial: a model whose imperfect dynamics lean on its controller now and then has no inputs to
    report) and the one-line `text`."""

    threshold: float
    real_per_trial: float
    null_per_trial: float
    p_value: float
    reliable: bool
    text: str
    onset_per_trial: float = 0.0


def input_verdict(
    magnitude_train: np.ndarray,
    null_magnitude: np.ndarray,
    events_per_trial: float = NULL_EVENTS_PER_TRIAL,
    min_separation: int = MIN_SEPARATION,
    skip_bins: int = START_BINS,
) -> InputVerdict:
    """Choose the threshold on the null (`threshold_from_null`) and test whether the real train trials'
    magnitudes `(trials, T)` hold more peaks above it than the null `(trials', T)` does, both from bin
    `skip_bins` on."""
    from scipy.stats import poisson

    full = np.asarray(magnitude_train)
    magnitude_train, null_magnitude = full[:, skip_bins:], np.asarray(null_magnitude)[:, skip_bins:]
    thr = threshold_from_null(null_magnitude, events_per_trial, min_separation)
    n_real, n_null = len(magnitude_train), len(null_magnitude)
    k_real = len(detect_peaks(magnitude_train, thr, min_separation))
    k_null = len(detect_peaks(null_magnitude, thr, min_separation))
    real, null = k_real / max(n_real, 1), k_null / n_null
    # The null's rate, floored at half an event over all its trials (a null with no event is no certainty).
    expected = max(null, 0.5 / n_null) * n_real
    p = float(poisson.sf(k_real - 1, expected)) if k_real > 0 else 1.0
    floor = max(null, 0.5 / n_null)
    reliable = p < VERDICT_ALPHA and real >= VERDICT_MIN_RATIO * floor and real - null >= VERDICT_MIN_EXCESS
    if reliable:
        text = (
            f"inputs found: {real:.2f} events per train trial against {null:.2f} on the input-free null "
            f"({'p < 1e-300' if p == 0 else f'p = {p:.1e}'})"
        )
    else:
        text = (
            f"no reliable inputs found: {real:.2f} events per train trial do not beat the input-free null's "
            f"{null:.2f} (p = {p:.2g}; needs p < {VERDICT_ALPHA:g}, {VERDICT_MIN_RATIO:g}x its rate and "
            f"{VERDICT_MIN_EXCESS:g} more events per trial)"
        )
    onset = int((detect_peaks(full, thr, min_separation)[:, 1] < skip_bins).sum()) / max(n_real, 1)
    return InputVerdict(thr, real, null, p, bool(reliable), text, onset)


@dataclass
class EventScore:
    """Detected vs known events: `n_detected`, `n_known`, `n_matched` (one-to-one pairs within the
    tolerance), `precision` = matched / detected, `recall` = matched / known (NaN when undefined),
    `tolerance_bins` k, `median_lag_bins` and `lags (n_matched,)` of the matched pairs (detected − known)."""

    n_detected: int
    n_known: int
    n_matched: int
    precision: float
    recall: float
    tolerance_bins: int
    median_lag_bins: float
    lags: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=int))

    def lag_counts(self) -> dict[int, int]:
        """{lag in bins: matched pairs} (detected − known) over -k..k and any longer delay matched."""
        hi = max(self.tolerance_bins, int(self.lags.max(initial=0)))
        return {lag: int((self.lags == lag).sum()) for lag in range(-self.tolerance_bins, hi + 1)}


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
        lags=np.asarray(lags, dtype=int),
    )
