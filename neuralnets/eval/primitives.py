"""Primitives of the metric functions (`neuralnets.eval.metrics`): converting and checking arrays
(numpy or torch in, float64 tensors out, a ValueError naming the argument and the first bad index) and
per-column R² of (samples, columns) arrays, as the project's metrics and as sklearn's `r2_score`."""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import torch
from torch import Tensor

from neuralnets.errors import DataError

ArrayLike = np.ndarray | Tensor | Sequence


# ---------------------------------------------------------------------------------------------- inputs
def as_tensor(
    x: ArrayLike, name: str, device: torch.device | str | None = None, *, keep_float: bool = False
) -> Tensor:
    """float64 tensor on `device` (default: x's own device for tensors, CPU otherwise). `keep_float`:
    a floating-point x keeps its dtype (no float64 copy of a large array; metrics convert what they use)."""
    if isinstance(x, Tensor):
        t = x.detach()
    else:
        arr = np.asarray(x)
        if arr.dtype == object or not (np.issubdtype(arr.dtype, np.number) or arr.dtype == bool):
            raise DataError(f"{name}: expected a numeric array, got dtype {arr.dtype}")
        t = torch.from_numpy(np.ascontiguousarray(arr))
    if t.is_complex():
        raise DataError(f"{name}: complex values are not supported")
    dtype = t.dtype if keep_float and t.is_floating_point() else torch.float64
    return t.to(device=device if device is not None else t.device, dtype=dtype)


def as_mask(mask: ArrayLike | None, shape: torch.Size, device: torch.device) -> Tensor | None:
    if mask is None:
        return None
    m = torch.as_tensor(mask.detach() if isinstance(mask, Tensor) else np.asarray(mask), device=device)
    if m.dtype != torch.bool:
        raise DataError(f"mask: expected a bool array, got dtype {m.dtype}")
    if m.shape != shape:
        raise DataError(f"mask has shape {tuple(m.shape)}; expected {tuple(shape)} (the shape of the counts)")
    return m


def _first_index(bad: Tensor) -> tuple[int, ...]:
    return tuple(int(i) for i in torch.nonzero(bad)[0])


def check_values(x: Tensor, name: str, mask: Tensor | None, nonneg: bool) -> None:
    """Finite (and >= 0 if `nonneg`) where `mask` is True (everywhere if None), else ValueError with
    the first bad index."""
    if x.numel() == 0:
        return
    # One reduction decides the common case (NaN propagates through min/max); the exact, masked search
    # below runs only when some entry, maybe an unscored one, is non-finite or negative.
    lo, hi = torch.aminmax(x)
    if bool((lo >= 0) if nonneg else (lo > -math.inf)) and bool(hi < math.inf):
        return
    bad = ~torch.isfinite(x)
    if mask is not None:
        bad &= mask
    if bad.any():
        idx = _first_index(bad)
        raise DataError(f"{name} has non-finite values (first {x[idx].item()} at index {idx})")
    if nonneg:
        bad = x < 0
        if mask is not None:
            bad &= mask
        if bad.any():
            idx = _first_index(bad)
            raise DataError(
                f"{name} has negative values (first {x[idx].item()} at index {idx}); must be >= 0"
            )


def _prepare_counts(
    rates: ArrayLike, spikes: ArrayLike, mask: ArrayLike | None, rates_name: str = "rates"
) -> tuple[Tensor, Tensor, Tensor]:
    """Validated float64 (rates, spikes, weights) on rates' device; unevaluated entries zeroed."""
    lam = as_tensor(rates, rates_name)
    y = as_tensor(spikes, "spikes", device=lam.device)
    if lam.shape != y.shape:
        raise DataError(
            f"{rates_name} have shape {tuple(lam.shape)} but spikes have shape {tuple(y.shape)}; "
            "they must match"
        )
    if lam.ndim < 2:
        raise DataError(
            f"{rates_name} must have a trailing neuron axis, e.g. (trials, T, N); got {tuple(lam.shape)}"
        )
    m = as_mask(mask, lam.shape, lam.device)
    check_values(lam, rates_name, m, nonneg=True)
    check_values(y, "spikes", m, nonneg=True)
    if m is None:
        return lam, y, torch.ones_like(lam)
    # Zero the unevaluated entries so that NaN there cannot leak into masked sums.
    zero = torch.zeros((), dtype=lam.dtype, device=lam.device)
    return torch.where(m, lam, zero), torch.where(m, y, zero), m.to(lam.dtype)


# ---------------------------------------------------------------------------------------------- R²
def _sums_of_squares(pred: Tensor, true: Tensor, weight: Tensor | None) -> tuple[Tensor, ...]:
    """(weight, rows n (C,), SS_tot (C,), SS_res (C,)) of (S, C) arrays over the rows with weight 1."""
    if weight is None:
        weight = torch.ones_like(true)
    n = weight.sum(0)  # (C,)
    mean = (weight * true).sum(0) / n.clamp(min=1.0)
    ss_tot = (weight * (true - mean) ** 2).sum(0)
    ss_res = (weight * (true - pred) ** 2).sum(0)
    return weight, n, ss_tot, ss_res


def r2_per_column(pred: Tensor, true: Tensor, weight: Tensor | None = None) -> Tensor:
    """R² of each column of (S, C) arrays over the rows with weight 1; NaN where the target is constant."""
    weight, n, ss_tot, ss_res = _sums_of_squares(pred, true, weight)
    # A constant target (or no rows) has no R²; tolerance relative to the target's scale.
    scale = (weight * true**2).sum(0).clamp(min=torch.finfo(true.dtype).tiny)
    defined = (n > 1) & (ss_tot > 1e-12 * scale)
    nan = torch.full_like(ss_tot, float("nan"))
    return torch.where(defined, 1.0 - ss_res / torch.where(defined, ss_tot, torch.ones_like(ss_tot)), nan)


def r2_columns_sklearn(pred: Tensor, true: Tensor, weight: Tensor | None = None) -> Tensor:
    """R² of each column of (S, C) arrays as sklearn's `r2_score(..., multioutput="raw_values")` (default
    force_finite=True) over the rows with weight 1: 1 − SS_res/SS_tot; a constant target (SS_tot == 0
    exactly) scores 1.0 when predicted exactly (SS_res == 0) and 0.0 otherwise. NaN for a column
    with no weighted row."""
    _, n, ss_tot, ss_res = _sums_of_squares(pred, true, weight)
    safe = torch.where(ss_tot != 0, ss_tot, torch.ones_like(ss_tot))
    r2 = torch.where(ss_tot != 0, 1.0 - ss_res / safe, (ss_res == 0).to(true.dtype))
    return torch.where(n > 0, r2, torch.full_like(r2, float("nan")))


def mean_defined(r2: Tensor, what: str) -> float:
    ok = ~torch.isnan(r2)
    if not ok.any():
        raise DataError(f"{what} is undefined: every target column is constant over the evaluated entries")
    return float(r2[ok].mean())
