"""Condition structure and rotations: condition-averaged trajectories, PCA and jPCA (Churchland et al.
2012, "Neural population dynamics during reaching").

jPCA asks how much of the population's condition-averaged dynamics is rotation. The trajectories
`X (C, T, K)` (conditions, bins, latent or rate dimensions) have the cross-condition mean removed
(what all conditions share) and are projected onto their top `n_pcs` principal components. With the
derivative estimated from successive bins, dX/dt = (X[t+1] − X[t]) / dt at the midpoints
(X[t+1] + X[t]) / 2, two linear dynamical systems dx/dt = M x are fitted by least squares over all
conditions and bins: an unconstrained M, and M_skew restricted to skew-symmetric matrices (M = −Mᵀ,
pure rotation: the dynamics conserve distance from the origin). Their R² (fraction of the variance of
dX/dt explained) and the ratio R²_skew / R²_full say how rotational the dynamics are: near 1 means the
best linear description is a rotation. The eigenvalues of M_skew are ±iω; the rotation frequencies
are ω / 2π in Hz (dt in seconds). The jPC planes are spanned by the real and imaginary parts of
M_skew's eigenvectors, the fastest rotation first.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from neuralnets.errors import AnalysisError


def condition_average(
    x: np.ndarray, condition: np.ndarray, trials: np.ndarray | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Per-condition means `(C, T, K)` of `x (trials, T, K)` over `trials` (all if None) and the labels
    `(C,)` of the conditions present, in sorted order."""
    x = np.asarray(x, dtype=np.float64)
    condition = np.asarray(condition)
    if x.ndim != 3 or condition.shape != (x.shape[0],):
        raise AnalysisError(
            f"condition averaging needs x (trials, T, K) and one condition per trial; got x {x.shape}, "
            f"condition {condition.shape}"
        )
    idx = np.arange(x.shape[0]) if trials is None else np.asarray(trials)
    labels = np.unique(condition[idx])
    return np.stack([x[idx][condition[idx] == c].mean(axis=0) for c in labels]), labels


def pca(x: np.ndarray, n: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Top `n` principal components of `x (..., K)` over all leading axes: (scores (..., n),
    components (n, K), variance explained ratio (n,)); the data mean is removed first."""
    flat = x.reshape(-1, x.shape[-1])
    centred = flat - flat.mean(axis=0)
    _, s, vt = np.linalg.svd(centred, full_matrices=False)
    n = min(n, vt.shape[0])
    total = float((s**2).sum())
    ratio = (s[:n] ** 2) / total if total > 0 else np.zeros(n)
    return (centred @ vt[:n].T).reshape(*x.shape[:-1], n), vt[:n], ratio


def _skew_basis(k: int) -> np.ndarray:
    """(k(k-1)/2, k, k): E_ij = e_i e_jᵀ − e_j e_iᵀ for i < j, a basis of the skew-symmetric matrices."""
    out = []
    for i in range(k):
        for j in range(i + 1, k):
            e = np.zeros((k, k))
            e[i, j], e[j, i] = 1.0, -1.0
            out.append(e)
    return np.asarray(out).reshape(-1, k, k)


def _r2(target: np.ndarray, pred: np.ndarray) -> float:
    """1 − SS_res / SS_tot over all entries of (S, k) arrays (the total about each column's mean)."""
    ss_tot = float(((target - target.mean(axis=0)) ** 2).sum())
    return 1.0 - float(((target - pred) ** 2).sum()) / ss_tot if ss_tot > 0 else float("nan")


@dataclass
class JPCA:
    """jPCA of condition-averaged trajectories. `m_full`, `m_skew (k, k)` in column convention
    dx/dt = M x (per second); `r2_full`, `r2_skew`: fraction of the variance of dX/dt each explains;
    `frequencies_hz (k // 2,)` rotation frequency of each jPC plane, fastest first; `planes (k//2, 2, k)`
    orthonormal bases of the jPC planes in PC coordinates; `projection (C, T, 2)` the trajectories in the
    first plane; `pc_components (k, K)` and `pc_variance (k,)` of the PCA before jPCA."""

    m_full: np.ndarray
    m_skew: np.ndarray
    r2_full: float
    r2_skew: float
    frequencies_hz: np.ndarray
    planes: np.ndarray
    projection: np.ndarray
    pc_components: np.ndarray
    pc_variance: np.ndarray

    @property
    def rotational_ratio(self) -> float:
        """R²_skew / R²_full: near 1 when the best linear dynamics are a rotation."""
        return self.r2_skew / self.r2_full if self.r2_full > 0 else float("nan")


def jpca(trajectories: np.ndarray, bin_size: float, n_pcs: int = 6, subtract_mean: bool = True) -> JPCA:
    """jPCA of condition-averaged trajectories `(C, T, K)` sampled every `bin_size` seconds (module
    docstring). `n_pcs`: even number of principal components kept (capped at K and at the data's rank,
    rounded down to even). `subtract_mean`: remove the cross-condition mean trajectory first (as
    Churchland et al.; needs C >= 2)."""
    x = np.asarray(trajectories, dtype=np.float64)
    if x.ndim != 3 or x.shape[1] < 3 or x.shape[2] < 2:
        raise AnalysisError(f"jPCA needs trajectories (conditions, T >= 3, K >= 2); got shape {x.shape}")
    if not np.isfinite(x).all():
        raise AnalysisError("jPCA: trajectories hold non-finite values")
    if not (np.isfinite(bin_size) and bin_size > 0):
        raise AnalysisError(f"jPCA: bin_size must be a positive number of seconds; got {bin_size!r}")
    if subtract_mean:
        if x.shape[0] < 2:
            raise AnalysisError("jPCA: subtracting the cross-condition mean needs at least 2 conditions")
        x = x - x.mean(axis=0, keepdims=True)
    scores, comps, var = pca(x, n_pcs)
    k = scores.shape[-1] - scores.shape[-1] % 2
    if k < 2:
        raise AnalysisError(f"jPCA needs at least 2 principal components; the trajectories give {k}")
    scores, comps, var = scores[..., :k], comps[:k], var[:k]
    dx = ((scores[:, 1:] - scores[:, :-1]) / bin_size).reshape(-1, k)  # (S, k) dX/dt, per second
    xm = (0.5 * (scores[:, 1:] + scores[:, :-1])).reshape(-1, k)  # (S, k) at the midpoints
    # Row convention dX = X A; the column convention of the module docstring is M = Aᵀ.
    a_full = np.linalg.lstsq(xm, dx, rcond=None)[0]  # (k, k)
    basis = _skew_basis(k)  # (P, k, k)
    design = np.einsum("sk,pkl->slp", xm, basis).reshape(-1, len(basis))  # (S*k, P)
    coef = np.linalg.lstsq(design, dx.reshape(-1), rcond=None)[0]  # (P,)
    a_skew = np.einsum("p,pkl->kl", coef, basis)
    m_full, m_skew = a_full.T, a_skew.T
    evals, evecs = np.linalg.eig(m_skew)
    order = np.argsort(-np.abs(evals.imag), kind="stable")
    planes, freqs = [], []
    for i in order[::2][: k // 2]:  # one of each conjugate pair, fastest first
        v = evecs[:, i]
        basis2 = np.stack([v.real, v.imag], axis=1)  # (k, 2)
        q, _ = np.linalg.qr(basis2)
        planes.append(q.T)
        freqs.append(abs(evals[i].imag) / (2 * np.pi))
    planes_arr = np.asarray(planes)  # (k//2, 2, k)
    first = planes_arr[0]
    # Orient the first plane so the rotation runs counter-clockwise (as jPCA plots are drawn).
    proj = scores @ first.T  # (C, T, 2)
    if np.mean(np.cross(proj[:, :-1], proj[:, 1:] - proj[:, :-1])) < 0:
        planes_arr[0, 1] *= -1
        proj = scores @ planes_arr[0].T
    return JPCA(
        m_full=m_full,
        m_skew=m_skew,
        r2_full=_r2(dx, xm @ a_full),
        r2_skew=_r2(dx, xm @ a_skew),
        frequencies_hz=np.asarray(freqs),
        planes=planes_arr,
        projection=proj,
        pc_components=comps,
        pc_variance=var,
    )
