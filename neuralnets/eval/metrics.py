"""Metric functions on plain arrays: numpy arrays or torch tensors (CPU or CUDA) in, Python float out.

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
  a spike under a zero prediction costs ln(1e-9) ≈ -20.7 nats instead of -inf. Where the count is 0
  the term y·log(λ) is 0 whatever λ is (xlogy), so a silent neuron predicted at 0 costs nothing.
- R² for several columns (neurons, behaviour or latent dimensions) is the uniform average of the
  per-column R² = 1 - SS_res / SS_tot. Columns whose target has zero variance have no R² and are
  left out of the average; if no column is left, a ValueError says so.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import torch
from scipy.ndimage import gaussian_filter1d
from torch import Tensor

RATE_FLOOR = 1e-9  # counts/bin; floor for predicted rates inside the log (zero rates would give -inf)
DEFAULT_ALPHAS = tuple(float(a) for a in np.logspace(-4, 4, 9))  # ridge penalties tried by cross-validation
DEFAULT_PSTH_SIGMA_MS = 50.0  # Gaussian smoothing of true spikes for PSTH R²

ArrayLike = np.ndarray | Tensor | Sequence

# Every metric the harness (`neuralnets.eval.evaluate`) reports, in table order, with what it means.
# Higher is better for all.
METRICS: dict[str, str] = {
    "co_bps": "co-smoothing bits/spike: held-out neurons, observed bins",
    "fp_bps": "forward-prediction bits/spike: all neurons, forward bins",
    "vel_r2": "ridge from predicted rates to behaviour, fit on train trials, R² on eval trials",
    "psth_r2": "held-out neurons: condition-averaged rates vs condition-averaged smoothed spikes, R²",
    # Not an NLB metric: the model sees these spikes, so echoing the (smoothed) input scores high here.
    "bps_heldin": "bits/spike on held-in neurons, observed bins (reconstruction of the input)",
    "rate_r2": "R² of predicted vs true rates per neuron (synthetic data)",
    "latent_r2": "R² of a linear map from model latents to true latents (synthetic data)",
}


# ---------------------------------------------------------------------------------------------- inputs
def as_tensor(x: ArrayLike, name: str, device: torch.device | str | None = None) -> Tensor:
    """float64 tensor on `device` (default: x's own device for tensors, CPU otherwise)."""
    if isinstance(x, Tensor):
        t = x.detach()
    else:
        arr = np.asarray(x)
        if arr.dtype == object or not (np.issubdtype(arr.dtype, np.number) or arr.dtype == bool):
            raise ValueError(f"{name}: expected a numeric array, got dtype {arr.dtype}")
        t = torch.from_numpy(np.ascontiguousarray(arr))
    if t.is_complex():
        raise ValueError(f"{name}: complex values are not supported")
    return t.to(device=device if device is not None else t.device, dtype=torch.float64)


def _as_mask(mask: ArrayLike | None, shape: torch.Size, device: torch.device) -> Tensor | None:
    if mask is None:
        return None
    m = torch.as_tensor(mask.detach() if isinstance(mask, Tensor) else np.asarray(mask), device=device)
    if m.dtype != torch.bool:
        raise ValueError(f"mask: expected a bool array, got dtype {m.dtype}")
    if m.shape != shape:
        raise ValueError(
            f"mask has shape {tuple(m.shape)}; expected {tuple(shape)} (the shape of the counts)"
        )
    return m


def _first_index(bad: Tensor) -> tuple[int, ...]:
    return tuple(int(i) for i in torch.nonzero(bad)[0])


def check_values(x: Tensor, name: str, mask: Tensor | None, nonneg: bool) -> None:
    """Finite (and >= 0 if `nonneg`) where `mask` is True (everywhere if None), else ValueError with
    the first bad index."""
    sel = mask if mask is not None else torch.ones_like(x, dtype=torch.bool)
    bad = ~torch.isfinite(x) & sel
    if bad.any():
        idx = _first_index(bad)
        raise ValueError(f"{name} has non-finite values (first {x[idx].item()} at index {idx})")
    if nonneg:
        bad = (x < 0) & sel
        if bad.any():
            idx = _first_index(bad)
            raise ValueError(
                f"{name} has negative values (first {x[idx].item()} at index {idx}); must be >= 0"
            )


def _prepare_counts(
    rates: ArrayLike, spikes: ArrayLike, mask: ArrayLike | None, rates_name: str = "rates"
) -> tuple[Tensor, Tensor, Tensor]:
    """Validated float64 (rates, spikes, weights) on rates' device; unevaluated entries zeroed."""
    lam = as_tensor(rates, rates_name)
    y = as_tensor(spikes, "spikes", device=lam.device)
    if lam.shape != y.shape:
        raise ValueError(
            f"{rates_name} have shape {tuple(lam.shape)} but spikes have shape {tuple(y.shape)}; "
            "they must match"
        )
    if lam.ndim < 2:
        raise ValueError(
            f"{rates_name} must have a trailing neuron axis, e.g. (trials, T, N); got {tuple(lam.shape)}"
        )
    m = _as_mask(mask, lam.shape, lam.device)
    check_values(lam, rates_name, m, nonneg=True)
    check_values(y, "spikes", m, nonneg=True)
    if m is None:
        return lam, y, torch.ones_like(lam)
    # Zero the unevaluated entries so that NaN there cannot leak into masked sums.
    zero = torch.zeros((), dtype=lam.dtype, device=lam.device)
    return torch.where(m, lam, zero), torch.where(m, y, zero), m.to(lam.dtype)


# ---------------------------------------------------------------------------------------------- Poisson
def poisson_ll(rates: ArrayLike, spikes: ArrayLike, mask: ArrayLike | None = None) -> float:
    """Poisson log-likelihood in nats, summed over all evaluated entries.

    LL = Σ [y·log(max(λ, RATE_FLOOR)) − λ − log(y!)]. The log(y!) term is included here so the value is
    a true log-likelihood; it cancels in `bits_per_spike`, which therefore leaves it out.
    """
    lam, y, w = _prepare_counts(rates, spikes, mask)
    terms = torch.xlogy(y, lam.clamp(min=RATE_FLOOR)) - lam - torch.lgamma(y + 1)
    return float((w * terms).sum())


def bits_per_spike(rates: ArrayLike, spikes: ArrayLike, mask: ArrayLike | None = None) -> float:
    """(LL(λ) − LL(ȳ)) / (n_spikes · ln 2) over the evaluated entries.

    rates, spikes: (..., N) expected counts per bin and counts (typically (trials, T, N)).
    ȳ: each neuron's mean count per bin over its evaluated entries (all leading axes). A neuron with no
    spikes has ȳ = 0 and contributes −Σλ to LL(λ) (0 to LL(ȳ)). Raises ValueError when the evaluated
    entries hold no spike at all (bits/spike is undefined).
    """
    lam, y, w = _prepare_counts(rates, spikes, mask)
    reduce = tuple(range(lam.ndim - 1))
    n_spikes = (w * y).sum()
    if n_spikes <= 0:
        raise ValueError(
            "bits/spike is undefined: the evaluated spikes contain no spike "
            f"({int(w.sum())} evaluated entries, all zero)"
        )
    ybar = (w * y).sum(reduce) / w.sum(reduce).clamp(min=1.0)  # (N,) mean count per bin per neuron
    # log(y!) cancels between the two log-likelihoods and is left out.
    ll_model = (w * (torch.xlogy(y, lam.clamp(min=RATE_FLOOR)) - lam)).sum()
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
        raise ValueError(f"co-bps needs held-out neurons: n_heldin={n_heldin} of {y.shape[2]} neurons")
    t_obs = y.shape[1] - n_fwd
    sl = (slice(None), slice(0, t_obs), slice(n_heldin, None))
    return bits_per_spike(lam[sl], y[sl], None if m is None else m[sl])


def fp_bps(rates: ArrayLike, spikes: ArrayLike, n_fwd: int, observed: ArrayLike | None = None) -> float:
    """Forward-prediction bits/spike: all neurons over the last `n_fwd` bins; rates, spikes (trials, T, N)."""
    lam, y, m = _split_view(rates, spikes, observed, n_fwd)
    if n_fwd <= 0:
        raise ValueError(f"fp-bps needs forward-prediction bins: n_fwd={n_fwd}")
    sl = (slice(None), slice(y.shape[1] - n_fwd, None), slice(None))
    return bits_per_spike(lam[sl], y[sl], None if m is None else m[sl])


def _split_view(rates, spikes, observed, n_fwd):
    lam = as_tensor(rates, "rates")
    y = as_tensor(spikes, "spikes", device=lam.device)
    if lam.shape != y.shape or lam.ndim != 3:
        raise ValueError(
            f"rates have shape {tuple(lam.shape)} and spikes {tuple(y.shape)}; "
            "both must be (trials, T, N) with the same shape"
        )
    if not 0 <= n_fwd < y.shape[1]:
        raise ValueError(f"n_fwd={n_fwd} does not fit {y.shape[1]} bins")
    m = _as_mask(observed, lam.shape, lam.device)
    return lam, y, m


# ---------------------------------------------------------------------------------------------- R²
def r2_per_column(pred: Tensor, true: Tensor, weight: Tensor | None = None) -> Tensor:
    """R² of each column of (S, C) arrays over the rows with weight 1; NaN where the target is constant."""
    if weight is None:
        weight = torch.ones_like(true)
    n = weight.sum(0)  # (C,)
    mean = (weight * true).sum(0) / n.clamp(min=1.0)
    ss_tot = (weight * (true - mean) ** 2).sum(0)
    ss_res = (weight * (true - pred) ** 2).sum(0)
    # A constant target (or no rows) has no R²; tolerance relative to the target's scale.
    scale = (weight * true**2).sum(0).clamp(min=torch.finfo(true.dtype).tiny)
    defined = (n > 1) & (ss_tot > 1e-12 * scale)
    nan = torch.full_like(ss_tot, float("nan"))
    return torch.where(defined, 1.0 - ss_res / torch.where(defined, ss_tot, torch.ones_like(ss_tot)), nan)


def _mean_defined(r2: Tensor, what: str) -> float:
    ok = ~torch.isnan(r2)
    if not ok.any():
        raise ValueError(
            f"{what}: R² is undefined, every target column is constant over the evaluated entries"
        )
    return float(r2[ok].mean())


def r2_score(pred: ArrayLike, true: ArrayLike, mask: ArrayLike | None = None) -> float:
    """Uniform average over the last axis of per-column R², over all leading axes (masked)."""
    p = as_tensor(pred, "pred")
    t = as_tensor(true, "true", device=p.device)
    if p.shape != t.shape:
        raise ValueError(f"pred has shape {tuple(p.shape)} but true has shape {tuple(t.shape)}")
    m = _as_mask(mask, p.shape, p.device)
    check_values(p, "pred", m, nonneg=False)
    check_values(t, "true", m, nonneg=False)
    c = p.shape[-1]
    w = None if m is None else m.reshape(-1, c).to(p.dtype)
    if m is not None:
        zero = torch.zeros((), dtype=p.dtype, device=p.device)
        p, t = torch.where(m, p, zero), torch.where(m, t, zero)
    return _mean_defined(r2_per_column(p.reshape(-1, c), t.reshape(-1, c), w), "r2_score")


def rate_r2(rates: ArrayLike, true_rates: ArrayLike, mask: ArrayLike | None = None) -> float:
    """R² of predicted vs true rates per neuron over trials × bins, averaged over neurons.

    rates, true_rates: (trials, T, N) counts per bin; mask: (trials, T, N) bool or None.
    """
    return r2_score(rates, true_rates, mask)


def psth_r2(
    rates: ArrayLike,
    spikes: ArrayLike,
    condition: ArrayLike,
    bin_size: float,
    sigma_ms: float = DEFAULT_PSTH_SIGMA_MS,
    mask: ArrayLike | None = None,
) -> float:
    """R² of condition-averaged predicted rates vs condition-averaged smoothed true spikes.

    rates, spikes, mask: (trials, T, N); condition: (trials,) labels; bin_size in s; sigma_ms: Gaussian
    kernel s.d. in ms. True spikes are smoothed along time by normalised convolution
    (smooth(y·m) / smooth(m), zero padding), which corrects the edges and skips unrecorded bins. Both
    sides are averaged per condition over the recorded trials; R² is computed per neuron over
    (condition, bin) pairs that have a recorded trial, and averaged over neurons (constant ones left out).
    Every condition present among the given trials counts. (`evaluate` passes held-out neurons only.)

    Only the target is smoothed (as in NLB), so the target PSTH is blurred by the kernel: when rates
    change faster than `sigma_ms`, a prediction as smooth as the kernel can score above the true rates.
    """
    lam, y, w = _prepare_counts(rates, spikes, mask)
    if lam.ndim != 3:
        raise ValueError(f"psth_r2 expects (trials, T, N) arrays; got {tuple(lam.shape)}")
    cond = np.asarray(condition.cpu() if isinstance(condition, Tensor) else condition)
    if cond.shape != (lam.shape[0],):
        raise ValueError(f"condition has shape {cond.shape}; expected ({lam.shape[0]},) to match the trials")
    if not (np.isfinite(bin_size) and bin_size > 0 and np.isfinite(sigma_ms) and sigma_ms > 0):
        raise ValueError(f"bin_size ({bin_size} s) and sigma_ms ({sigma_ms} ms) must be positive")
    sigma = sigma_ms / 1000.0 / bin_size  # in bins
    # Smoothing in scipy on the CPU (the true spikes are data, not model output); vectorised along axis 1.
    y_np, w_np = y.cpu().numpy(), w.cpu().numpy()
    num = gaussian_filter1d(y_np * w_np, sigma, axis=1, mode="constant")
    den = gaussian_filter1d(w_np, sigma, axis=1, mode="constant")
    smooth = np.divide(num, den, out=np.zeros_like(num), where=den > 1e-12)  # (trials, T, N)
    _, inverse = np.unique(cond, return_inverse=True)
    n_cond = int(inverse.max()) + 1
    onehot = torch.zeros(n_cond, lam.shape[0], dtype=lam.dtype, device=lam.device)  # (C, trials)
    onehot[torch.as_tensor(inverse, device=lam.device), torch.arange(lam.shape[0], device=lam.device)] = 1.0
    n_trials_at = onehot @ w.reshape(lam.shape[0], -1)  # (C, T*N) recorded trials per entry
    psth_pred = (onehot @ (w * lam).reshape(lam.shape[0], -1)) / n_trials_at.clamp(min=1.0)
    smooth_t = torch.from_numpy(smooth).to(lam.device)
    psth_true = (onehot @ (w * smooth_t).reshape(lam.shape[0], -1)) / n_trials_at.clamp(min=1.0)
    n_neurons = lam.shape[2]
    valid = (n_trials_at > 0).to(lam.dtype).reshape(-1, n_neurons)  # (C*T, N)
    r2 = r2_per_column(psth_pred.reshape(-1, n_neurons), psth_true.reshape(-1, n_neurons), valid)
    return _mean_defined(r2, "psth_r2")


# ---------------------------------------------------------------------------------------------- regression
def _flatten_trials(x: Tensor) -> Tensor:
    return x.reshape(-1, x.shape[-1])  # (trials*T, F)


def _moments(x: Tensor, y: Tensor) -> tuple[Tensor, ...]:
    """n, Σx (F,), Σy (D,), XᵀX (F,F), XᵀY (F,D) of row-wise samples x (S,F), y (S,D)."""
    return (
        torch.tensor(float(x.shape[0]), dtype=x.dtype, device=x.device),
        x.sum(0),
        y.sum(0),
        x.T @ x,
        x.T @ y,
    )


def _ridge_from_moments(n, sx, sy, sxx, sxy, alphas: Tensor) -> tuple[Tensor, Tensor]:
    """Ridge weights (A, F, D) and unpenalised intercepts (A, D) for each alpha, from sample moments."""
    mx, my = sx / n, sy / n
    gram = sxx - n * torch.outer(mx, mx)  # centred XᵀX (F, F)
    cross = sxy - n * torch.outer(mx, my)  # centred XᵀY (F, D)
    evals, evecs = torch.linalg.eigh(gram)
    evals = evals.clamp(min=0.0)  # round-off can make tiny eigenvalues negative
    proj = evecs.T @ cross  # (F, D)
    w = evecs @ (proj / (evals[None, :, None] + alphas[:, None, None]))  # (A, F, D)
    b = my - mx @ w  # (A, D)
    return w, b


def _check_regression_inputs(x: ArrayLike, y: ArrayLike, xname: str, yname: str, device=None):
    xt = as_tensor(x, xname, device=device)
    yt = as_tensor(y, yname, device=xt.device)
    if xt.ndim != 3 or yt.ndim != 3 or xt.shape[:2] != yt.shape[:2]:
        raise ValueError(
            f"{xname} {tuple(xt.shape)} and {yname} {tuple(yt.shape)} must be (trials, T, ·) "
            "with the same trials and bins"
        )
    if xt.shape[0] == 0:
        raise ValueError(f"{xname} has no trials")
    check_values(xt, xname, None, nonneg=False)
    check_values(yt, yname, None, nonneg=False)
    return xt, yt


def ridge_cv(
    x: ArrayLike,
    y: ArrayLike,
    alphas: Sequence[float] = DEFAULT_ALPHAS,
    n_folds: int = 5,
    seed: int = 0,
) -> tuple[Tensor, Tensor, float]:
    """Ridge from x (trials, T, F) to y (trials, T, D) with alpha chosen by K-fold CV over *trials*.

    Returns weights (F, D), intercept (D,) refit on all trials with the best alpha, and that alpha.
    The CV score is the uniform-average R² on each held-out fold, averaged over folds; folds are a
    seeded permutation of the trials split into `n_folds` (fewer when there are fewer trials).
    """
    xt, yt = _check_regression_inputs(x, y, "x", "y")
    n_trials = xt.shape[0]
    if n_trials < 2:
        raise ValueError(f"ridge_cv needs at least 2 training trials for cross-validation; got {n_trials}")
    a = torch.as_tensor(list(alphas), dtype=xt.dtype, device=xt.device)
    if a.ndim != 1 or a.numel() == 0 or (a < 0).any():
        raise ValueError(f"alphas must be a non-empty list of non-negative numbers; got {list(alphas)}")
    folds = np.array_split(np.random.default_rng(seed).permutation(n_trials), min(n_folds, n_trials))
    fold_moments = []
    for f in folds:  # a handful of folds, each vectorised over its trials
        idx = torch.as_tensor(f, device=xt.device)
        fold_moments.append(_moments(_flatten_trials(xt[idx]), _flatten_trials(yt[idx])))
    total = [sum(m[i] for m in fold_moments) for i in range(5)]
    scores = torch.zeros(len(folds), a.numel(), dtype=xt.dtype, device=xt.device)
    for k, f in enumerate(folds):
        train = [total[i] - fold_moments[k][i] for i in range(5)]
        w, b = _ridge_from_moments(*train, a)  # (A, F, D), (A, D)
        idx = torch.as_tensor(f, device=xt.device)
        xf, yf = _flatten_trials(xt[idx]), _flatten_trials(yt[idx])  # (S, F), (S, D)
        pred = torch.einsum("sf,afd->sad", xf, w) + b[None]  # (S, A, D)
        n_alpha, d = pred.shape[1], pred.shape[2]
        r2 = r2_per_column(pred.reshape(-1, n_alpha * d), yf.repeat(1, n_alpha)).reshape(n_alpha, d)
        scores[k] = torch.nanmean(r2, dim=1)  # (A,) uniform average over defined dims; NaN if none
    mean_scores = torch.nanmean(scores, dim=0)
    best = int(torch.nan_to_num(mean_scores, nan=-float("inf")).argmax())
    w, b = _ridge_from_moments(*total, a[best : best + 1])
    return w[0], b[0], float(a[best])


def vel_r2(
    rates_train: ArrayLike,
    behavior_train: ArrayLike,
    rates_eval: ArrayLike,
    behavior_eval: ArrayLike,
    alphas: Sequence[float] = DEFAULT_ALPHAS,
    n_folds: int = 5,
) -> float:
    """Velocity R²: ridge from rates (trials, T_obs, N) to behaviour (trials, T_obs, D), each bin a sample.

    Fit on the train trials (alpha by K-fold CV over train trials only, see `ridge_cv`), scored on the
    eval trials: R² per behaviour dimension over eval trials × bins, uniform average over dimensions.
    """
    w, b, _ = ridge_cv(rates_train, behavior_train, alphas, n_folds)
    xe, ye = _check_regression_inputs(
        rates_eval, behavior_eval, "rates_eval", "behavior_eval", device=w.device
    )
    if xe.shape[2] != w.shape[0] or ye.shape[2] != w.shape[1]:
        raise ValueError(
            f"eval arrays {tuple(xe.shape)}, {tuple(ye.shape)} do not match the train features/outputs "
            f"({w.shape[0]} rates, {w.shape[1]} behaviour dims)"
        )
    pred = _flatten_trials(xe) @ w + b  # (S, D)
    return _mean_defined(r2_per_column(pred, _flatten_trials(ye)), "vel_r2")


def linear_fit(x: ArrayLike, y: ArrayLike, rcond: float = 1e-10) -> tuple[Tensor, Tensor]:
    """Least squares with intercept from x (trials, T, K) to y (trials, T, L), over all trials × bins.

    Uses the pseudo-inverse of the centred Gram matrix (eigenvalues below rcond·max are dropped), so the
    fit is unchanged by any invertible linear transform of x. Returns weights (K, L), intercept (L,).
    """
    xt, yt = _check_regression_inputs(x, y, "x", "y")
    n, sx, sy, sxx, sxy = _moments(_flatten_trials(xt), _flatten_trials(yt))
    mx, my = sx / n, sy / n
    gram = sxx - n * torch.outer(mx, mx)
    cross = sxy - n * torch.outer(mx, my)
    evals, evecs = torch.linalg.eigh(gram)
    keep = evals > rcond * evals.abs().max().clamp(min=torch.finfo(evals.dtype).tiny)
    inv = torch.where(keep, 1.0 / torch.where(keep, evals, torch.ones_like(evals)), torch.zeros_like(evals))
    w = evecs @ (inv[:, None] * (evecs.T @ cross))  # (K, L)
    return w, my - mx @ w


def latent_r2(
    latents_train: ArrayLike, true_train: ArrayLike, latents_eval: ArrayLike, true_eval: ArrayLike
) -> float:
    """R² of a linear map (with intercept) from model latents (trials, T, K) to true latents (trials, T, L).

    Fit by least squares on the train trials, scored on the eval trials; uniform average over the L
    true dimensions. Model and true latents must cover the same bins (the harness trims both to the
    common leading bins before calling this).
    """
    w, b = linear_fit(latents_train, true_train)
    xe, ye = _check_regression_inputs(latents_eval, true_eval, "latents_eval", "true_eval", device=w.device)
    if xe.shape[2] != w.shape[0] or ye.shape[2] != w.shape[1]:
        raise ValueError(
            f"eval latents {tuple(xe.shape)} / true {tuple(ye.shape)} do not match the train fit "
            f"({w.shape[0]} model dims -> {w.shape[1]} true dims)"
        )
    pred = _flatten_trials(xe) @ w + b
    return _mean_defined(r2_per_column(pred, _flatten_trials(ye)), "latent_r2")
