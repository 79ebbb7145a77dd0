"""Metric functions on plain arrays: numpy arrays or torch tensors (CPU or CUDA) in, Python float out.

This module holds `METRICS` with every metric's parameters, input validation, the Poisson metrics
(bits/spike, co-bps, fp-bps), R² and PSTH R²; linear read-outs (vel R², latent R²) are in
`neuralnets.eval.regression`, few-shot co-bps in `neuralnets.eval.fewshot`.

Definitions follow the Neural Latents Benchmark (Pei et al. 2021) as written in DESIGN.md. All
computations run in float64 on the device of the `rates` argument (a CUDA tensor keeps the work on
the GPU; only the Gaussian smoothing of true spikes for PSTH R² runs in scipy on the CPU) and are
vectorised over trials, bins and neurons (the only Python loops are over CV folds).

Units: rates are *expected counts per bin* (the same units as the spike counts), never Hz.

Conventions shared by every function here:
- `mask` (same shape as the counts, bool) marks the entries that were recorded; entries where it is
  False are ignored completely (their rates and spikes may hold anything, NaN included).
- Rates must be finite and >= 0 on the evaluated entries, spikes finite and >= 0; otherwise a
  ValueError names the argument, the problem and the first bad index.
- A predicted rate of exactly 0 is floored at `RATE_FLOOR` (1e-9 counts/bin) inside the log only, so
  a spike under a zero prediction costs ln(1e-9) ≈ -20.7 nats instead of -inf. Positive rates are never
  changed, however small (1e-12 stays 1e-12, as in NLB). Where the count is 0 the term y·log(λ) is 0
  whatever λ is (xlogy), so a silent neuron predicted at 0 costs nothing.
- R² for several columns (neurons, behaviour or latent dimensions) is the uniform average of the
  per-column R² = 1 - SS_res / SS_tot. The NLB metrics (vel R², PSTH R²) follow sklearn's `r2_score`
  (force_finite=True): a column whose target is constant (SS_tot == 0) scores 1.0 if it is predicted
  exactly (SS_res == 0) and 0.0 otherwise, and stays in the average (`r2_columns_sklearn`). The
  project's own metrics (rate R², latent R², `r2_score`) leave constant columns out of the average
  (`r2_per_column`); if no column is left, a ValueError says so.
"""

from __future__ import annotations

import math

import numpy as np
import torch
from scipy.ndimage import gaussian_filter1d
from torch import Tensor

from neuralnets.errors import ConfigError, DataError
from neuralnets.eval.primitives import (  # re-exported: metrics' callers import them from here
    ArrayLike,
    _prepare_counts,
    as_mask,
    as_tensor,
    check_values,
    mean_defined,
    r2_columns_sklearn,
    r2_per_column,
)

RATE_FLOOR = 1e-9  # counts/bin; floor for predicted rates inside the log (zero rates would give -inf)
# Ridge penalties of vel R²: NLB's grid (logspace(-4, 0, 9)); the project's earlier, wider grid is kept for
# the legacy variant (`vel_r2(..., alphas=LEGACY_ALPHAS, cv="trials")`).
DEFAULT_ALPHAS = tuple(float(a) for a in np.logspace(-4, 0, 9))
LEGACY_ALPHAS = tuple(float(a) for a in np.logspace(-4, 4, 9))
DEFAULT_PSTH_SIGMA_MS = 50.0  # Gaussian smoothing of true spikes for PSTH R²
# Few-shot co-bps (Dabholkar & Barak 2025): k train trials per fit, resamples averaged, GLM L2, seed.
FEWSHOT_K = 16
FEWSHOT_RESAMPLES = 10
FEWSHOT_ALPHA = 1e-2  # on standardised latents, per-sample mean Poisson NLL (as the smoothing GLM)
FEWSHOT_SEED = 0
INPUT_CORR_MAX_LAG = 10  # bins: inferred inputs may trail the true input by 0..10 bins
INPUT_CORR_MAX_LEAD = 3  # bins: or lead it (a model's controller may act a bin or two before the kick)
INPUT_READOUT_FOLDS = 5  # cross-validation folds (over trials) of the input read-out

# Every metric the harness (`neuralnets.eval.evaluate`) reports, in table order, with what it means.
# Higher is better for all.
METRICS: dict[str, str] = {
    "co_bps": "co-smoothing bits/spike: held-out neurons, observed bins",
    "fp_bps": "forward-prediction bits/spike: all neurons, forward bins",
    "vel_r2": "ridge from predicted rates to behaviour, fit on train trials (alpha by NLB's 5-fold grid "
    "search), R² on eval trials",
    "psth_r2": "all neurons: condition-averaged rates (eval trials) vs smoothed spikes averaged over all "
    "trials of each condition, R² per neuron",
    "fewshot_co_bps": f"co-bps of a Poisson GLM from model latents to held-out neurons fit on {FEWSHOT_K} "
    f"train trials, mean of {FEWSHOT_RESAMPLES} resamples",
    # Not an NLB metric: the model sees these spikes, so echoing the (smoothed) input scores high here.
    "bps_heldin": "bits/spike on held-in neurons, observed bins (reconstruction of the input)",
    "input_corr": "known vs inferred inputs, sign-invariant: max over lags "
    f"-{INPUT_CORR_MAX_LEAD}..{INPUT_CORR_MAX_LAG} bins of the Pearson r between each known input's "
    "magnitude |u| and the inferred-input L2 norm (eval trials, observed bins), mean over inputs",
    "input_readout_r2": "R² of a linear read-out of the known inputs from the inferred inputs at lags "
    f"-{INPUT_CORR_MAX_LEAD}..{INPUT_CORR_MAX_LAG} bins, {INPUT_READOUT_FOLDS}-fold cross-validated over the "
    "eval trials, mean over inputs",
    "rate_r2": "R² of predicted vs true rates per neuron (synthetic data)",
    "latent_r2": "R² of a linear map from model latents to true latents (synthetic data)",
}


# ---------------------------------------------------------------------------------------------- Poisson
def floor_zero_rates(lam: Tensor) -> Tensor:
    """λ with exact zeros replaced by RATE_FLOOR (for the log); every positive rate is kept as is."""
    return torch.where(lam == 0, torch.full_like(lam, RATE_FLOOR), lam)


def poisson_ll(rates: ArrayLike, spikes: ArrayLike, mask: ArrayLike | None = None) -> float:
    """Poisson log-likelihood in nats, summed over all evaluated entries.

    LL = Σ [y·log(λ') − λ − log(y!)], λ' = λ with exact zeros replaced by RATE_FLOOR. The log(y!) term
    is included here so the value is a true log-likelihood; it cancels in `bits_per_spike`, which
    therefore leaves it out.
    """
    lam, y, w = _prepare_counts(rates, spikes, mask)
    terms = torch.xlogy(y, floor_zero_rates(lam)) - lam - torch.lgamma(y + 1)
    return float((w * terms).sum())


def bits_per_spike(rates: ArrayLike, spikes: ArrayLike, mask: ArrayLike | None = None) -> float:
    """(LL(λ) − LL(ȳ)) / (n_spikes · ln 2) over the evaluated entries.

    rates, spikes: (..., N) expected counts per bin and counts (typically (trials, T, N)).
    ȳ: each neuron's mean count per bin over its evaluated entries (all leading axes). Only rates that are
    exactly 0 are floored (at RATE_FLOOR) inside the log; 0 < λ < RATE_FLOOR is used as is. A neuron
    with no spikes has ȳ = 0 and contributes −Σλ to LL(λ) (0 to LL(ȳ)). Raises ValueError when the evaluated
    entries hold no spike at all (bits/spike is undefined).
    """
    lam, y, w = _prepare_counts(rates, spikes, mask)
    reduce = tuple(range(lam.ndim - 1))
    n_spikes = (w * y).sum()
    if n_spikes <= 0:
        raise DataError(
            "bits/spike is undefined: the evaluated spikes contain no spike "
            f"({int(w.sum())} evaluated entries, all zero)"
        )
    ybar = (w * y).sum(reduce) / w.sum(reduce).clamp(min=1.0)  # (N,) mean count per bin per neuron
    # log(y!) cancels between the two log-likelihoods and is left out.
    ll_model = (w * (torch.xlogy(y, floor_zero_rates(lam)) - lam)).sum()
    ll_null = (w * (torch.xlogy(y, ybar) - ybar)).sum()
    return float((ll_model - ll_null) / (n_spikes * math.log(2.0)))


def co_bps(
    rates: ArrayLike, spikes: ArrayLike, n_heldin: int, n_fwd: int = 0, observed: ArrayLike | None = None
) -> float:
    """Co-smoothing bits/spike: held-out neurons (index >= n_heldin) over observed bins (the first T − n_fwd).

    rates, spikes, observed: (trials, T, N).
    """
    lam, y, m = _split_view(rates, spikes, observed, n_fwd)
    if not 0 < n_heldin < y.shape[2]:
        raise DataError(f"co-bps needs held-out neurons: n_heldin={n_heldin} of {y.shape[2]} neurons")
    t_obs = y.shape[1] - n_fwd
    sl = (slice(None), slice(0, t_obs), slice(n_heldin, None))
    return bits_per_spike(lam[sl], y[sl], None if m is None else m[sl])


def fp_bps(rates: ArrayLike, spikes: ArrayLike, n_fwd: int, observed: ArrayLike | None = None) -> float:
    """Forward-prediction bits/spike: all neurons over the last `n_fwd` bins; rates, spikes (trials, T, N)."""
    lam, y, m = _split_view(rates, spikes, observed, n_fwd)
    if n_fwd <= 0:
        raise DataError(f"fp-bps needs forward-prediction bins: n_fwd={n_fwd}")
    sl = (slice(None), slice(y.shape[1] - n_fwd, None), slice(None))
    return bits_per_spike(lam[sl], y[sl], None if m is None else m[sl])


def _split_view(rates, spikes, observed, n_fwd):
    lam = as_tensor(rates, "rates")
    y = as_tensor(spikes, "spikes", device=lam.device)
    if lam.shape != y.shape or lam.ndim != 3:
        raise DataError(
            f"rates have shape {tuple(lam.shape)} and spikes {tuple(y.shape)}; "
            "both must be (trials, T, N) with the same shape"
        )
    if not 0 <= n_fwd < y.shape[1]:
        raise DataError(f"n_fwd={n_fwd} does not fit {y.shape[1]} bins")
    m = as_mask(observed, lam.shape, lam.device)
    return lam, y, m


def r2_score(pred: ArrayLike, true: ArrayLike, mask: ArrayLike | None = None) -> float:
    """Uniform average over the last axis of per-column R², over all leading axes (masked)."""
    p = as_tensor(pred, "pred")
    t = as_tensor(true, "true", device=p.device)
    if p.shape != t.shape:
        raise DataError(f"pred has shape {tuple(p.shape)} but true has shape {tuple(t.shape)}")
    m = as_mask(mask, p.shape, p.device)
    check_values(p, "pred", m, nonneg=False)
    check_values(t, "true", m, nonneg=False)
    c = p.shape[-1]
    w = None if m is None else m.reshape(-1, c).to(p.dtype)
    if m is not None:
        zero = torch.zeros((), dtype=p.dtype, device=p.device)
        p, t = torch.where(m, p, zero), torch.where(m, t, zero)
    return mean_defined(r2_per_column(p.reshape(-1, c), t.reshape(-1, c), w), "r2_score")


def rate_r2(rates: ArrayLike, true_rates: ArrayLike, mask: ArrayLike | None = None) -> float:
    """R² of predicted vs true rates per neuron over trials × bins, averaged over neurons.

    rates, true_rates: (trials, T, N) counts per bin; mask: (trials, T, N) bool or None.
    """
    return r2_score(rates, true_rates, mask)


SMOOTH_TRIAL_CHUNK = 256  # trials smoothed at a time by `smooth_spikes`


def smooth_spikes(
    spikes: np.ndarray, mask: np.ndarray | None, bin_size: float, sigma_ms: float
) -> np.ndarray:
    """Gaussian-smoothed counts per bin along time, (trials, T, N) -> (trials, T, N) float64.

    Normalised convolution (smooth(y·m) / smooth(m), zero padding): unrecorded bins do not count as
    zeros and the edges are not biased low. Bins with no recorded bin within the kernel become 0.
    Runs in scipy on the CPU (the true spikes are data, not model output), vectorised along axis 1.
    """
    if not (np.isfinite(bin_size) and bin_size > 0 and np.isfinite(sigma_ms) and sigma_ms > 0):
        raise ConfigError(f"bin_size ({bin_size} s) and sigma_ms ({sigma_ms} ms) must be positive")
    sigma = sigma_ms / 1000.0 / bin_size  # in bins
    spikes = np.asarray(spikes)
    if mask is not None and np.all(mask):
        mask = None  # every bin recorded: the same numbers without the mask's float copies
    out = np.zeros(spikes.shape, dtype=np.float64)
    if mask is None:  # the normaliser then depends on the bin only: one (1, T, 1) line serves every trial
        den = gaussian_filter1d(np.ones((1, spikes.shape[1], 1)), sigma, axis=1, mode="constant")
    # Trials in chunks: float64 temporaries of SMOOTH_TRIAL_CHUNK trials, never of all of them (the
    # filter runs along each trial's bins, so chunking changes no number).
    for start in range(0, spikes.shape[0], SMOOTH_TRIAL_CHUNK):
        sl = slice(start, start + SMOOTH_TRIAL_CHUNK)
        y = np.asarray(spikes[sl], dtype=np.float64)  # (chunk, T, N)
        if mask is None:
            num = gaussian_filter1d(y, sigma, axis=1, mode="constant")
            d = np.broadcast_to(den, num.shape)
        else:
            w = np.asarray(mask[sl], dtype=np.float64)
            num = gaussian_filter1d(y * w, sigma, axis=1, mode="constant")
            d = gaussian_filter1d(w, sigma, axis=1, mode="constant")
        np.divide(num, d, out=out[sl], where=d > 1e-12)
    return out


def condition_means(x: Tensor, w: Tensor, cond: np.ndarray, labels: np.ndarray) -> tuple[Tensor, Tensor]:
    """Per-condition means of x (trials, T, N) over the trials with weight 1: (C, T, N) means and counts."""
    onehot = torch.as_tensor(cond[None, :] == labels[:, None], dtype=x.dtype, device=x.device)  # (C, trials)
    n = onehot @ w.reshape(x.shape[0], -1)  # (C, T*N) recorded trials per entry
    mean = (onehot @ (w * x).reshape(x.shape[0], -1)) / n.clamp(min=1.0)
    return mean.reshape(len(labels), *x.shape[1:]), n.reshape(len(labels), *x.shape[1:])


PSTH_TRIAL_CHUNK = 256  # target trials smoothed at a time: float64 copies of one chunk, never of all trials


def _smoothed_condition_means(
    spikes: ArrayLike,
    mask: ArrayLike | None,
    cond: np.ndarray,
    labels: np.ndarray,
    bin_size: float,
    sigma_ms: float,
    name: str,
) -> tuple[Tensor, Tensor]:
    """Per-condition means of the smoothed spikes over recorded entries: (C, T, N) means and counts, CPU.

    spikes, mask: (trials, T, N) (numpy or torch, any dtype); cond: (trials,) labels. Each trial is
    smoothed on its own (`smooth_spikes`), `PSTH_TRIAL_CHUNK` trials at a time, and the chunks' weighted
    sums are accumulated, so only one chunk is ever held in float64."""
    n_trials, shape = spikes.shape[0], tuple(spikes.shape[1:])
    total = torch.zeros(len(labels), int(np.prod(shape)), dtype=torch.float64)
    count = torch.zeros_like(total)
    for start in range(0, n_trials, PSTH_TRIAL_CHUNK):
        stop = min(start + PSTH_TRIAL_CHUNK, n_trials)
        y = as_tensor(spikes[start:stop], f"{name}[{start}:{stop}]", device="cpu")
        m = None if mask is None else as_mask(mask[start:stop], y.shape, y.device)
        check_values(y, f"{name}[{start}:{stop}]", m, nonneg=True)
        w = torch.ones_like(y) if m is None else m.to(y.dtype)
        if m is not None:
            y = torch.where(m, y, torch.zeros((), dtype=y.dtype))
        w_np = None if m is None else w.numpy()
        smooth = torch.from_numpy(smooth_spikes(y.numpy(), w_np, bin_size, sigma_ms))  # (chunk, T, N)
        onehot = torch.as_tensor(cond[None, start:stop] == labels[:, None], dtype=torch.float64)  # (C, chunk)
        total += onehot @ (w * smooth).reshape(stop - start, -1)
        count += onehot @ w.reshape(stop - start, -1)
    mean = total / count.clamp(min=1.0)
    return mean.reshape(len(labels), *shape), count.reshape(len(labels), *shape)


def psth_r2(
    rates: ArrayLike,
    spikes: ArrayLike,
    condition: ArrayLike,
    bin_size: float,
    sigma_ms: float = DEFAULT_PSTH_SIGMA_MS,
    mask: ArrayLike | None = None,
    *,
    target_spikes: ArrayLike | None = None,
    target_condition: ArrayLike | None = None,
    target_mask: ArrayLike | None = None,
    constant_target: str = "sklearn",
    target_cache: dict | None = None,
) -> float:
    """PSTH R²: condition-averaged predicted rates vs condition-averaged smoothed true spikes.

    rates, spikes, mask: (trials, T, N) for the evaluated trials, condition (trials,) their labels;
    bin_size in s; sigma_ms: Gaussian kernel s.d. in ms. The target PSTH of each condition averages
    `target_spikes (trials', T, N)` over ALL its trials in `target_condition (trials',)` (NLB: every
    trial of the dataset with that condition, not only the evaluated ones); without `target_spikes`
    the evaluated trials' own `spikes` are the target. The rows are the conditions present among the
    evaluated trials; a (condition, bin) entry counts for a neuron when both sides have a recorded trial.

    Smoothing: NLB smooths the continuous 1 ms spike train before binning; with binned data only, this
    smooths each trial's binned counts along time with the Gaussian (`smooth_spikes`: normalised
    convolution, so trial edges and unrecorded bins are not read as zeros). That is the approximation used.
    The target trials are smoothed a chunk at a time (`_smoothed_condition_means`), never all at once.
    Only the target is smoothed (as in NLB), so the target PSTH is blurred by the kernel: when rates
    change faster than `sigma_ms`, a prediction as smooth as the kernel can score above the true rates.

    R² per neuron over (condition, bin) samples, uniform average over neurons. `constant_target`:
    "sklearn" (NLB; `r2_score` convention: a constant target scores 1 if matched exactly, else 0) or
    "drop" (the project's earlier rule: such neurons are left out of the average).
    `target_cache`: a dict kept between calls with the same target (spikes, mask, conditions, bin size and
    sigma; e.g. the val and test scores of one run): the target PSTHs of all its conditions are smoothed
    once, in the first call, and reused.
    """
    lam, y, w = _prepare_counts(rates, spikes, mask)
    if lam.ndim != 3:
        raise DataError(f"psth_r2 expects (trials, T, N) arrays; got {tuple(lam.shape)}")
    cond = np.asarray(condition.cpu() if isinstance(condition, Tensor) else condition)
    if cond.shape != (lam.shape[0],):
        raise DataError(f"condition has shape {cond.shape}; expected ({lam.shape[0]},) to match the trials")
    if constant_target not in ("sklearn", "drop"):
        raise ConfigError(f"constant_target must be 'sklearn' or 'drop'; got {constant_target!r}")
    if target_spikes is None:
        if target_condition is not None or target_mask is not None:
            raise DataError("target_condition/target_mask need target_spikes")
        target_spikes, target_mask, cond_t, name = y, None if mask is None else w > 0, cond, "spikes"
    else:
        target_spikes = target_spikes if isinstance(target_spikes, Tensor) else np.asarray(target_spikes)
        if target_mask is not None and not isinstance(target_mask, Tensor):
            target_mask = np.asarray(target_mask)
        shape = tuple(target_spikes.shape)
        if len(shape) != 3 or shape[1:] != tuple(lam.shape[1:]):
            raise DataError(
                f"target_spikes have shape {shape}; expected (trials', {lam.shape[1]}, "
                f"{lam.shape[2]}) (same bins and neurons as rates)"
            )
        if target_mask is not None and tuple(target_mask.shape) != shape:
            raise DataError(f"target_mask has shape {tuple(target_mask.shape)}; expected {shape}")
        if target_condition is None:
            raise DataError("target_spikes need target_condition (one label per target trial)")
        cond_t = np.asarray(
            target_condition.cpu() if isinstance(target_condition, Tensor) else target_condition
        )
        if cond_t.shape != (shape[0],):
            raise DataError(
                f"target_condition has shape {cond_t.shape}; expected ({shape[0]},), one per target trial"
            )
        name = "target_spikes"
    labels = np.unique(cond)  # the conditions of the evaluated trials
    psth_pred, n_pred = condition_means(lam, w, cond, labels)  # (C, T, N)
    all_labels = np.unique(cond_t)
    if target_cache is not None and name == "target_spikes" and np.isin(labels, all_labels).all():
        # The target PSTH of every condition, smoothed once for all the calls sharing this target.
        if "psth" not in target_cache:
            target_cache["psth"] = _smoothed_condition_means(
                target_spikes, target_mask, cond_t, all_labels, bin_size, sigma_ms, name
            )
        rows = torch.as_tensor(np.searchsorted(all_labels, labels))
        psth_true, n_true = (t[rows] for t in target_cache["psth"])
    else:
        psth_true, n_true = _smoothed_condition_means(
            target_spikes, target_mask, cond_t, labels, bin_size, sigma_ms, name
        )
    psth_true, n_true = psth_true.to(lam.device), n_true.to(lam.device)
    n_neurons = lam.shape[2]
    valid = ((n_pred > 0) & (n_true > 0)).to(lam.dtype).reshape(-1, n_neurons)  # (C*T, N)
    pred, true = psth_pred.reshape(-1, n_neurons), psth_true.reshape(-1, n_neurons)
    if constant_target == "drop":
        return mean_defined(r2_per_column(pred, true, valid), "psth_r2")
    return mean_defined(r2_columns_sklearn(pred, true, valid), "psth_r2")


# ---------------------------------------------------------------------------------------------- inputs
def _check_input_pair(
    true_inputs: ArrayLike, inferred_inputs: ArrayLike, max_lag: int, max_lead: int = 0
) -> tuple[Tensor, Tensor]:
    """Validated float64 (true (trials, T, U), inferred (trials, T, U')) on the inferred inputs' device."""
    z = as_tensor(inferred_inputs, "inferred_inputs")  # the work runs on the inferred inputs' device
    u = as_tensor(true_inputs, "true_inputs", device=z.device)
    if u.ndim != 3 or z.ndim != 3 or u.shape[:2] != z.shape[:2]:
        raise DataError(
            f"true_inputs {tuple(u.shape)} and inferred_inputs {tuple(z.shape)} must be (trials, T, ·) "
            "with the same trials and bins"
        )
    if not 0 <= max_lag < u.shape[1] - 1:
        raise DataError(f"max_lag={max_lag} must be >= 0 and leave at least 2 of the {u.shape[1]} bins")
    if not 0 <= max_lead < u.shape[1] - 1 - max_lag:
        raise DataError(
            f"max_lead={max_lead} must be >= 0 and, with max_lag={max_lag}, leave at least 2 of the "
            f"{u.shape[1]} bins"
        )
    check_values(u, "true_inputs", None, nonneg=False)
    check_values(z, "inferred_inputs", None, nonneg=False)
    return u, z


def input_corr(
    true_inputs: ArrayLike,
    inferred_inputs: ArrayLike,
    max_lag: int = INPUT_CORR_MAX_LAG,
    max_lead: int = INPUT_CORR_MAX_LEAD,
) -> float:
    """How well the inferred inputs mark when the known inputs act, whatever their signs, in [-1, 1].

    true_inputs: (trials, T, U) known external inputs; inferred_inputs: (trials, T, U') a model's inferred
    inputs over the same trials and bins (e.g. an LFADS controller's output). The inferred-input magnitude
    m = ||inferred||₂ over U' (trials, T) is compared with each known input's magnitude |u|: for each lag ℓ
    in -max_lead..max_lag, the Pearson r between |u[:, t]| and m[:, t + ℓ], pooled over trials and the bins
    t with 0 <= t + ℓ < T (a model that responds ℓ bins after the input scores at lag ℓ; one whose
    controller acts before the kick it explains, at a negative ℓ). Per input, the max over
    lags; returned: the mean over known inputs. Magnitudes on both sides make it sign-invariant: kicks of
    either sign count alike (the signed input against the unsigned magnitude would cancel to ~0).
    A known input whose magnitude is constant over the trials and bins is left out (no correlation is
    defined; ValueError if every one is); a constant inferred magnitude correlates with nothing: 0.
    `input_readout_r2` scores the signed inputs by a linear read-out.
    """
    u, z = _check_input_pair(true_inputs, inferred_inputs, max_lag, max_lead)
    u = u.abs()
    mag = torch.linalg.vector_norm(z, dim=2)  # (trials, T)
    t, n_in = u.shape[1], u.shape[2]
    flat = u.reshape(-1, n_in)
    defined = (flat != flat[:1]).any(0)  # (U,) inputs that vary at all
    best = torch.full((n_in,), -float("inf"), dtype=u.dtype, device=u.device)
    for lag in range(-max_lead, max_lag + 1):
        lo, hi = max(0, -lag), t - max(0, lag)  # bins t with 0 <= t + lag < T
        x = u[:, lo:hi].reshape(-1, n_in)  # (S, U) true inputs at t
        y = mag[:, lo + lag : hi + lag].reshape(-1, 1)  # (S, 1) magnitude at t + lag
        xc, yc = x - x.mean(0), y - y.mean(0)
        sx, sy = xc.pow(2).sum(0).sqrt(), yc.pow(2).sum(0).sqrt()  # (U,), (1,)
        # A series constant over these samples (up to round-off) correlates with nothing: r = 0.
        ok = (sx > 1e-12 * x.pow(2).sum(0).sqrt()) & (sy > 1e-12 * y.pow(2).sum(0).sqrt())
        den = torch.where(ok, sx * sy, torch.ones_like(sx))
        r = torch.where(ok, (xc * yc).sum(0) / den, 0.0)
        best = torch.maximum(best, r)
    return mean_defined(torch.where(defined, best, torch.full_like(best, float("nan"))), "input_corr")


def lagged_features(x: Tensor, max_lag: int, max_lead: int = 0) -> Tensor:
    """`x (trials, T, F)` -> `(trials, T - max_lag - max_lead, F * (max_lead + max_lag + 1))`: at bin
    t = max_lead, .., T - max_lag - 1, x[t - max_lead], .., x[t], .., x[t + max_lag] side by side (what a
    read-out of an input at t may use of a delayed response, or of one that anticipates it)."""
    t = x.shape[1] - max_lag - max_lead
    return torch.cat([x[:, k : k + t] for k in range(max_lead + max_lag + 1)], dim=2)


def input_readout_r2(
    true_inputs: ArrayLike,
    inferred_inputs: ArrayLike,
    max_lag: int = INPUT_CORR_MAX_LAG,
    n_folds: int = INPUT_READOUT_FOLDS,
    max_lead: int = INPUT_CORR_MAX_LEAD,
    alpha: float = 1e-3,
) -> float:
    """Cross-validated R² of a linear read-out of the known inputs from the inferred ones.

    true_inputs (trials, T, U), inferred_inputs (trials, T, U'): the known input at bin t is predicted
    from the inferred inputs at bins t - max_lead..t + max_lag (`lagged_features`, bins max_lead <= t <
    T - max_lag) by ridge
    regression with an intercept (penalty `alpha` × the mean feature variance × samples, so scale-free),
    fitted on all but one of `n_folds` folds of the trials (contiguous, as `np.array_split`) and
    predicting the held-out fold. R² per known input over all held-out predictions (pooled), mean over
    the inputs that vary (ValueError if none does). A signed read-out: it rewards inferred inputs that
    carry the known inputs' signs and sizes, not only their timing (`input_corr`).
    """
    u, z = _check_input_pair(true_inputs, inferred_inputs, max_lag, max_lead)
    n_trials = u.shape[0]
    if n_trials < 2:
        raise ValueError(f"input_readout_r2 needs at least 2 trials for cross-validation; got {n_trials}")
    feats = lagged_features(z, max_lag, max_lead)  # (trials, T', U'(L+1))
    target = u[:, max_lead : max_lead + feats.shape[1]]  # (trials, T', U)
    folds = np.array_split(np.arange(n_trials), min(n_folds, n_trials))
    pred = torch.empty_like(target)
    for fold in folds:
        test = torch.as_tensor(fold, device=u.device)
        train = torch.as_tensor(np.setdiff1d(np.arange(n_trials), fold), device=u.device)
        x, y = feats[train].reshape(-1, feats.shape[2]), target[train].reshape(-1, target.shape[2])
        mx, my = x.mean(0), y.mean(0)
        xc = x - mx
        gram = xc.T @ xc  # (F, F)
        lam = alpha * torch.diagonal(gram).mean().clamp(min=torch.finfo(gram.dtype).tiny)
        w = torch.linalg.solve(gram + lam * torch.eye(gram.shape[0], dtype=gram.dtype, device=gram.device),
                               xc.T @ (y - my))  # fmt: skip
        pred[test] = (feats[test] - mx) @ w + my
    r2 = r2_per_column(pred.reshape(-1, u.shape[2]), target.reshape(-1, u.shape[2]))
    return mean_defined(r2, "input_readout_r2")
