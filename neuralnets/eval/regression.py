"""Linear read-outs scored by R²: ridge with cross-validated alpha (`ridge_cv`), velocity R² (`vel_r2`, NLB),
least squares (`linear_fit`) and latent R² (`latent_r2`).

Arrays are (trials, T, features); every bin of every trial is one sample. Validation and the R² rules
(sklearn's for the NLB metric, constant columns left out for the project's own) are those of
`neuralnets.eval.metrics`, whose module docstring states them.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from torch import Tensor

from neuralnets.errors import ConfigError, DataError
from neuralnets.eval.metrics import (
    DEFAULT_ALPHAS,
    ArrayLike,
    as_tensor,
    check_values,
    mean_defined,
    r2_columns_sklearn,
    r2_per_column,
)


def flatten_trials(x: Tensor) -> Tensor:
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


def check_regression_inputs(x: ArrayLike, y: ArrayLike, xname: str, yname: str, device=None):
    xt = as_tensor(x, xname, device=device)
    yt = as_tensor(y, yname, device=xt.device)
    if xt.ndim != 3 or yt.ndim != 3 or xt.shape[:2] != yt.shape[:2]:
        raise DataError(
            f"{xname} {tuple(xt.shape)} and {yname} {tuple(yt.shape)} must be (trials, T, ·) "
            "with the same trials and bins"
        )
    if xt.shape[0] == 0:
        raise DataError(f"{xname} has no trials")
    check_values(xt, xname, None, nonneg=False)
    check_values(yt, yname, None, nonneg=False)
    return xt, yt


CV_MODES = ("samples", "trials")


def ridge_cv(
    x: ArrayLike,
    y: ArrayLike,
    alphas: Sequence[float] = DEFAULT_ALPHAS,
    n_folds: int = 5,
    seed: int = 0,
    cv: str = "samples",
) -> tuple[Tensor, Tensor, float]:
    """Ridge (unpenalised intercept) from x (trials, T, F) to y (trials, T, D), alpha by K-fold CV.

    Returns weights (F, D), intercept (D,) refit on all rows with the best alpha, and that alpha.
    - cv="samples" (NLB, = sklearn `GridSearchCV(Ridge(), {"alpha": alphas})`): the rows are the
      trials × bins flattened in trial order, split by an unshuffled `KFold(n_folds)` (contiguous folds,
      the first `S % n_folds` one row longer); each fold is scored by sklearn's R² (`r2_columns_sklearn`,
      uniform average over the D outputs); the best mean over folds wins, the first alpha on ties.
    - cv="trials" (the project's earlier rule): folds are a seeded permutation of the *trials* split into
      `n_folds` (fewer when there are fewer trials); R² with constant columns left out.
    """
    if cv not in CV_MODES:
        raise ConfigError(f"cv must be one of {CV_MODES}; got {cv!r}")
    xt, yt = check_regression_inputs(x, y, "x", "y")
    a = torch.as_tensor(list(alphas), dtype=xt.dtype, device=xt.device)
    if a.ndim != 1 or a.numel() == 0 or (a < 0).any():
        raise ConfigError(f"alphas must be a non-empty list of non-negative numbers; got {list(alphas)}")
    if cv == "samples":
        xs, ys = flatten_trials(xt), flatten_trials(yt)  # (S, F), (S, D) rows in trial order
        if xs.shape[0] < n_folds:
            raise DataError(f"ridge_cv needs at least n_folds={n_folds} samples; got {xs.shape[0]}")
        splits = np.array_split(np.arange(xs.shape[0]), n_folds)  # KFold(n_folds, shuffle=False)
        folds = [slice(int(f[0]), int(f[-1]) + 1) for f in splits]  # contiguous: views, not copies
        rows = [(xs[f], ys[f]) for f in folds]
        r2_fn = r2_columns_sklearn
    else:
        n_trials = xt.shape[0]
        if n_trials < 2:
            raise DataError(f"ridge_cv needs at least 2 training trials for cross-validation; got {n_trials}")
        perm = np.random.default_rng(seed).permutation(n_trials)
        folds = [torch.as_tensor(f, device=xt.device) for f in np.array_split(perm, min(n_folds, n_trials))]
        rows = [(flatten_trials(xt[f]), flatten_trials(yt[f])) for f in folds]
        r2_fn = r2_per_column
    fold_moments = [_moments(xf, yf) for xf, yf in rows]  # a handful of folds, each vectorised
    total = [sum(m[i] for m in fold_moments) for i in range(5)]
    scores = torch.zeros(len(folds), a.numel(), dtype=xt.dtype, device=xt.device)
    for k, (xf, yf) in enumerate(rows):
        train = [total[i] - fold_moments[k][i] for i in range(5)]
        w, b = _ridge_from_moments(*train, a)  # (A, F, D), (A, D)
        pred = torch.einsum("sf,afd->sad", xf, w) + b[None]  # (S, A, D)
        n_alpha, d = pred.shape[1], pred.shape[2]
        r2 = r2_fn(pred.reshape(-1, n_alpha * d), yf.repeat(1, n_alpha)).reshape(n_alpha, d)
        scores[k] = torch.nanmean(r2, dim=1)  # (A,) uniform average over dims (NaN only if none defined)
    mean_scores = torch.nanmean(scores, dim=0)
    best = int(torch.nan_to_num(mean_scores, nan=-float("inf")).argmax())  # first of equal maxima
    w, b = _ridge_from_moments(*total, a[best : best + 1])
    return w[0], b[0], float(a[best])


def vel_r2(
    rates_train: ArrayLike,
    behavior_train: ArrayLike,
    rates_eval: ArrayLike,
    behavior_eval: ArrayLike,
    alphas: Sequence[float] = DEFAULT_ALPHAS,
    n_folds: int = 5,
    cv: str = "samples",
) -> float:
    """Velocity R²: ridge from rates (trials, T_obs, N) to behaviour (trials, T_obs, D), each bin a sample.

    Fit on the train trials with alpha chosen by `ridge_cv` on the train trials only, scored on the eval
    trials: R² per behaviour dimension over eval trials × bins, uniform average over dimensions.
    Default (NLB): alphas logspace(-4, 0, 9), 5-fold unshuffled CV over the samples, sklearn's R² (a
    constant dimension scores 1 or 0). `alphas=LEGACY_ALPHAS, cv="trials"` is the project's earlier
    variant (CV over trials, constant dimensions left out). Equal to `vel_r2_score(*fit_vel(rates_train,
    behavior_train, alphas, n_folds, cv), rates_eval, behavior_eval, cv)` (one fit, several eval splits).
    """
    w, b = fit_vel(rates_train, behavior_train, alphas, n_folds, cv)
    return vel_r2_score(w, b, rates_eval, behavior_eval, cv)


def fit_vel(
    rates_train: ArrayLike,
    behavior_train: ArrayLike,
    alphas: Sequence[float] = DEFAULT_ALPHAS,
    n_folds: int = 5,
    cv: str = "samples",
) -> tuple[Tensor, Tensor]:
    """The train half of `vel_r2`: ridge weights (N, D) and intercept (D,) with alpha by `ridge_cv`."""
    w, b, _ = ridge_cv(rates_train, behavior_train, alphas, n_folds, cv=cv)
    return w, b


def vel_r2_score(
    weights: Tensor, intercept: Tensor, rates_eval: ArrayLike, behavior_eval: ArrayLike, cv: str = "samples"
) -> float:
    """The eval half of `vel_r2`: R² of `rates_eval @ weights + intercept` against behavior_eval
    (trials, T_obs, D), uniform average over dimensions (sklearn's R² for cv="samples")."""
    w, b = weights, intercept
    xe, ye = check_regression_inputs(
        rates_eval, behavior_eval, "rates_eval", "behavior_eval", device=w.device
    )
    if xe.shape[2] != w.shape[0] or ye.shape[2] != w.shape[1]:
        raise DataError(
            f"eval arrays {tuple(xe.shape)}, {tuple(ye.shape)} do not match the train features/outputs "
            f"({w.shape[0]} rates, {w.shape[1]} behaviour dims)"
        )
    pred = flatten_trials(xe) @ w + b  # (S, D)
    r2_fn = r2_columns_sklearn if cv == "samples" else r2_per_column
    return mean_defined(r2_fn(pred, flatten_trials(ye)), "vel_r2")


def linear_fit(x: ArrayLike, y: ArrayLike, rcond: float = 1e-10) -> tuple[Tensor, Tensor]:
    """Least squares with intercept from x (trials, T, K) to y (trials, T, L), over all trials × bins.

    Uses the pseudo-inverse of the centred Gram matrix (eigenvalues below rcond·max are dropped), so the
    fit is unchanged by any invertible linear transform of x. Returns weights (K, L), intercept (L,).
    """
    xt, yt = check_regression_inputs(x, y, "x", "y")
    n, sx, sy, sxx, sxy = _moments(flatten_trials(xt), flatten_trials(yt))
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
    xe, ye = check_regression_inputs(latents_eval, true_eval, "latents_eval", "true_eval", device=w.device)
    if xe.shape[2] != w.shape[0] or ye.shape[2] != w.shape[1]:
        raise DataError(
            f"eval latents {tuple(xe.shape)} / true {tuple(ye.shape)} do not match the train fit "
            f"({w.shape[0]} model dims -> {w.shape[1]} true dims)"
        )
    pred = flatten_trials(xe) @ w + b
    return mean_defined(r2_per_column(pred, flatten_trials(ye)), "latent_r2")
