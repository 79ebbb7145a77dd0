"""A second, data-driven opinion on a model's dynamics, and a distance between two models' dynamics.

- `fit_linear_dynamics`: dynamic mode decomposition as a plain least-squares fit, x_{t+1} = A x_t + b,
  over every transition of the model's latent trajectories (optionally on their top `rank` principal
  components: exact DMD with truncation; pydmd is not a dependency, the fit is a few lines of numpy).
  Its eigenvalues give time constants and frequencies from what the model does on the data, beside
  the Jacobians at its fixed points (`compare_modes` pairs them and flags disagreements).
- `dsa`: dynamical similarity analysis (Ostrow et al. 2023, "Beyond geometry: comparing the temporal
  structure of computation in neural circuits with dynamical similarity analysis"): each system's
  trajectories are delay-embedded (Hankel matrix), reduced to `rank` principal components and fitted by
  a linear operator (HAVOK/DMD); two operators A, B are compared up to an orthogonal change of
  coordinates by the angular Procrustes distance over vector fields,
  min over orthogonal C of arccos(<A, C B Cᵀ>_F / (‖A‖_F ‖B‖_F)) — 0 for conjugate dynamics, π/2 for
  unrelated ones. Implemented here from the paper's definition (the `dsa-metric` package pulls in a
  dozen dependencies); the minimisation runs Adam over C = expm(S) D (S skew-symmetric, D = I or a
  reflection, so both components of the orthogonal group are searched).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from neuralnets.errors import AnalysisError

DISAGREE_REL = 0.25  # two estimates of a mode disagree when their decay rates differ by more than this ...
DISAGREE_HZ_REL = 0.1  # ... or their frequencies by more than this (relative)


@dataclass
class LinearFit:
    """x_{t+1} = A x_t + b fitted on trajectories: `A (r, r)`, `b (r,)`, `eigenvalues (r,)` sorted by
    decreasing |λ|, `components (r, K)` the principal axes the fit runs in (identity without a rank),
    `r2` the one-step prediction R² on the transitions (pooled over dimensions), `bin_size` (s)."""

    A: np.ndarray
    b: np.ndarray
    eigenvalues: np.ndarray
    components: np.ndarray
    r2: float
    bin_size: float


def _check_trajectories(x: np.ndarray, name: str = "trajectories") -> np.ndarray:
    x = np.asarray(x, dtype=np.float64)
    if x.ndim != 3 or x.shape[1] < 3 or x.shape[0] < 1:
        raise AnalysisError(f"{name} must be (trials, T >= 3, K); got shape {x.shape}")
    if not np.isfinite(x).all():
        raise AnalysisError(f"{name} hold non-finite values")
    return x


def fit_linear_dynamics(latents: np.ndarray, bin_size: float, rank: int | None = None) -> LinearFit:
    """Least-squares x_{t+1} = A x_t + b over all transitions of `latents (trials, T, K)` (in the top
    `rank` principal components when given), with its eigenvalues."""
    x = _check_trajectories(latents, "latents")
    flat = x.reshape(-1, x.shape[2])  # (trials*T, K)
    mean = flat.mean(0)
    if rank is not None:
        if not 1 <= rank <= x.shape[2]:
            raise AnalysisError(f"rank must be in 1..{x.shape[2]}; got {rank}")
        comps = np.linalg.svd(flat - mean, full_matrices=False)[2][:rank]  # (r, K)
    else:
        comps = np.eye(x.shape[2])
    z = (x - mean) @ comps.T  # (trials, T, r)
    past, future = z[:, :-1].reshape(-1, z.shape[2]), z[:, 1:].reshape(-1, z.shape[2])  # (S, r) each
    design = np.column_stack([past, np.ones(len(past))])  # (S, r + 1)
    sol = np.linalg.lstsq(design, future, rcond=None)[0]  # (r + 1, r)
    A, b = sol[:-1].T, sol[-1]  # (r, r), (r,)
    resid = future - design @ sol
    r2 = float(1 - (resid**2).sum() / max(((future - future.mean(0)) ** 2).sum(), 1e-300))
    eig = np.linalg.eigvals(A)
    eig = eig[np.argsort(-np.abs(eig), kind="stable")]
    return LinearFit(A=A, b=b, eigenvalues=eig, components=comps, r2=r2, bin_size=float(bin_size))


def continuous_eigenvalue(tau_s: float, hz: float) -> complex:
    """s = −1/τ + i 2π f (per second) of a mode with time constant τ (inf: 0) and frequency f."""
    return complex(-1.0 / tau_s if np.isfinite(tau_s) and tau_s != 0 else 0.0, 2 * np.pi * hz)


def compare_modes(
    model_modes: list[dict],
    data_modes: list[dict],
    rel_tol: float = DISAGREE_REL,
    hz_tol: float = DISAGREE_HZ_REL,
) -> list[dict]:
    """For each mode of the model's Jacobian `{"tau_s", "hz"}` the nearest data-driven mode (by the
    distance between continuous-time eigenvalues s = −1/τ + i2πf). They `agree` when the decay rates 1/τ
    differ by at most `rel_tol` of the model's and the frequencies by at most `hz_tol` of the model's
    frequency (or of its decay rate / 2π for a mode that barely rotates). `tau_rel` is the decay rates'
    relative difference. A model mode with no data mode at all: `data` None, not agreeing."""
    rows = []
    for m in model_modes:
        s1 = continuous_eigenvalue(m["tau_s"], m["hz"])
        if not data_modes:
            rows.append({"model": m, "data": None, "tau_rel": None, "agree": False})
            continue
        s2 = [continuous_eigenvalue(d["tau_s"], d["hz"]) for d in data_modes]
        j = int(np.argmin([abs(s1 - s) for s in s2]))
        d1, d2 = -s1.real, -s2[j].real  # decay rates, 1/s
        tau_rel = abs(d1 - d2) / max(abs(d1), 1e-12)
        hz_ok = abs(s1.imag - s2[j].imag) <= hz_tol * max(abs(s1.imag), abs(d1))
        agree = bool((abs(d1 - d2) <= rel_tol * max(abs(d1), 1e-12) or d1 == d2) and hz_ok)
        rows.append({"model": m, "data": data_modes[j], "tau_rel": float(tau_rel), "agree": agree})
    return rows


# ---------------------------------------------------------------------------------------------- DSA
def delay_embed(x: np.ndarray, n_delays: int) -> np.ndarray:
    """`x (trials, T, K)` -> `(trials, T − n_delays + 1, K·n_delays)`: x[t], .., x[t + n_delays − 1]."""
    t = x.shape[1] - n_delays + 1
    if n_delays < 1 or t < 2:
        raise AnalysisError(f"n_delays={n_delays} must be >= 1 and leave >= 2 bins of {x.shape[1]}")
    return np.concatenate([x[:, d : d + t] for d in range(n_delays)], axis=2)


def havok_operator(x: np.ndarray, n_delays: int, rank: int) -> np.ndarray:
    """The linear operator `(rank, rank)` of `x (trials, T, K)` delay-embedded by `n_delays`, in its top
    `rank` principal components (DSA's DMD step)."""
    h = delay_embed(_check_trajectories(x), n_delays)
    rank = min(rank, h.shape[2])
    return fit_linear_dynamics(h, 1.0, rank=rank).A


def procrustes_angle(
    A: np.ndarray, B: np.ndarray, n_iter: int = 250, lr: float = 0.05, seed: int = 0
) -> float:
    """min over orthogonal C of arccos(<A, C B Cᵀ> / (‖A‖ ‖B‖)), radians, for square `A`, `B (r, r)`."""
    import torch

    if A.shape != B.shape or A.ndim != 2 or A.shape[0] != A.shape[1]:
        raise AnalysisError(f"operators must be square and of one size; got {A.shape} and {B.shape}")
    a, b = (torch.as_tensor(m, dtype=torch.float64) for m in (A, B))
    na, nb = a.norm(), b.norm()
    if na == 0 or nb == 0:
        raise AnalysisError("an operator is all zeros: no angle between vector fields")
    r = a.shape[0]
    gen = torch.Generator().manual_seed(seed)
    best = -1.0
    for flip in (False, True):  # det C = +1 and det C = -1
        d = torch.eye(r, dtype=torch.float64)
        if flip:
            d[0, 0] = -1.0
        raw = (0.1 * torch.randn(r, r, generator=gen, dtype=torch.float64)).requires_grad_(True)
        opt = torch.optim.Adam([raw], lr=lr)
        for _ in range(n_iter):
            c = torch.linalg.matrix_exp(raw - raw.T) @ d  # (r, r) orthogonal
            cos = (a * (c @ b @ c.T)).sum() / (na * nb)
            opt.zero_grad()
            (-cos).backward()
            opt.step()
        with torch.no_grad():
            c = torch.linalg.matrix_exp(raw - raw.T) @ d
            best = max(best, float((a * (c @ b @ c.T)).sum() / (na * nb)))
    return float(np.arccos(np.clip(best, -1.0, 1.0)))


def dsa(x1: np.ndarray, x2: np.ndarray, n_delays: int = 5, rank: int = 6, seed: int = 0) -> float:
    """Dynamical similarity (angular Procrustes distance, radians) between the trajectories of two
    systems, `x1 (trials, T, K1)` and `x2 (trials', T', K2)` (dimensions may differ)."""
    r = min(rank, x1.shape[2] * n_delays, x2.shape[2] * n_delays)
    return procrustes_angle(havok_operator(x1, n_delays, r), havok_operator(x2, n_delays, r), seed=seed)
