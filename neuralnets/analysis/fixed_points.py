"""Fixed and slow points of a trained model's autonomous dynamics (Sussillo & Barak 2013).

A model with recurrent dynamics (`SpikeModel.has_recurrent_dynamics`: the LFADS generator with its
inferred input set to zero, the RNN decoder, a stitched model's core) advances its state by one bin
with a map h' = F(h). Fixed points satisfy F(h*) = h*; slow points are where the speed

    q(h) = ½ ‖F(h) − h‖²                                          (per bin, squared state units)

is small but not zero. `find_fixed_points` minimises q by gradient descent (Adam) from many initial
states at once, refines the candidates by damped Newton steps on F(h) − h = 0 (kept only where they
lower q), keeps the points with q below a tolerance and merges duplicates. Each point is classified
by the eigenvalues λ of the Jacobian dF/dh of the discrete-time map: all |λ| < 1 stable, all
|λ| > 1 unstable, otherwise a saddle; each mode has a time constant τ = −dt / ln|λ| (seconds; negative
for a growing mode) and a rotation frequency angle(λ) / (2π dt) (Hz), with dt the bin size.

`model_fixed_points(model, heldin)` runs this on a trained model: initial states are drawn from the
states the model visits on the data, plus small noise, and the points are projected into the model's
latent (factor) space next to the visited trajectories.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import Tensor

from neuralnets.errors import AnalysisError

STABILITY_EPS = 1e-6  # |λ| within this of 1 counts as neither growing nor decaying
FIXED_Q = 1e-10  # q below this (float64 search): a fixed point; above it, up to the tolerance: a slow point
MERGE_FRAC = 0.02  # points closer than this fraction of the initial states' RMS spread are one point


def require_dynamics(model: torch.nn.Module, analysis: str = "fixed points") -> None:
    """AnalysisError (one line) unless `model` declares recurrent dynamics (`has_recurrent_dynamics`)."""
    if not getattr(model, "has_recurrent_dynamics", False):
        raise AnalysisError(
            f"{analysis} need a model with recurrent dynamics (LFADS, RNN, stitched); "
            f"{type(model).__name__} has none (has_recurrent_dynamics is False)"
        )


@dataclass
class FixedPoints:
    """Fixed/slow points of a map with time step `bin_size` (s). P points, H state dimensions.

    `states (P, H)`, `q (P,)` speed ½‖F(h) − h‖² per bin, `eigenvalues (P, H)` complex eigenvalues of
    the Jacobian of the map, sorted by decreasing |λ|, `latents (P, K)` the points in the model's latent
    space (None when no read-out was given), `n_initial` initial states searched, `n_converged` of them
    below the q tolerance (before merging duplicates), `eigenvectors (P, H, H)` the right eigenvectors
    (columns, in the order of `eigenvalues`), `scale` the RMS spread of the initial states."""

    states: np.ndarray
    q: np.ndarray
    eigenvalues: np.ndarray
    bin_size: float
    latents: np.ndarray | None = None
    n_initial: int = 0
    n_converged: int = 0
    q_tol: float = 0.0
    eigenvectors: np.ndarray | None = None
    scale: float = 0.0
    extra: dict = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.states)

    @property
    def is_fixed(self) -> np.ndarray:
        """(P,) bool: a fixed point (q < FIXED_Q) rather than a slow point."""
        return self.q < FIXED_Q

    @property
    def n_unstable(self) -> np.ndarray:
        """(P,) number of growing modes (|λ| > 1)."""
        return (np.abs(self.eigenvalues) > 1 + STABILITY_EPS).sum(axis=1)

    @property
    def kinds(self) -> list[str]:
        """'stable' (every |λ| <= 1), 'unstable' (every |λ| > 1) or 'saddle', per point."""
        dim = self.eigenvalues.shape[1] if self.eigenvalues.ndim == 2 else 0
        return ["stable" if n == 0 else "unstable" if n == dim else "saddle" for n in self.n_unstable]

    @property
    def time_constants(self) -> np.ndarray:
        """(P, H) τ = −dt / ln|λ| in seconds: > 0 decaying, < 0 growing, inf for |λ| = 1."""
        with np.errstate(divide="ignore"):
            return -self.bin_size / np.log(np.abs(self.eigenvalues))

    @property
    def frequencies(self) -> np.ndarray:
        """(P, H) rotation frequency of each mode, angle(λ) / (2π dt) in Hz (0 for real eigenvalues)."""
        return np.abs(np.angle(self.eigenvalues)) / (2 * np.pi * self.bin_size)

    def table(self, n_modes: int = 3) -> list[dict]:
        """One row per point: kind, q, growing modes, and the `n_modes` slowest modes' |λ|, τ (s), Hz."""
        rows = []
        for i in range(len(self)):
            lam = self.eigenvalues[i, :n_modes]
            rows.append({
                "point": i,
                "fixed": bool(self.is_fixed[i]),
                "kind": self.kinds[i],
                "q": float(self.q[i]),
                "n_unstable": int(self.n_unstable[i]),
                "abs_eig": [float(x) for x in np.abs(lam)],
                "tau_s": [float(x) for x in self.time_constants[i, :n_modes]],
                "freq_hz": [float(x) for x in self.frequencies[i, :n_modes]],
            })  # fmt: skip
        return rows


def speed(step: Callable[[Tensor], Tensor], h: Tensor) -> Tensor:
    """q(h) = ½ ‖F(h) − h‖² per state: `h (P, H)` -> `(P,)`."""
    return 0.5 * (step(h) - h).pow(2).sum(-1)


def jacobians(step: Callable[[Tensor], Tensor], h: Tensor) -> Tensor:
    """Jacobians dF/dh `(P, H, H)` of the map at states `h (P, H)` (row i: d F_i / d h)."""
    return torch.func.vmap(torch.func.jacrev(step))(h)


def _newton(step: Callable[[Tensor], Tensor], h: Tensor, n_steps: int) -> Tensor:
    """Damped Newton steps on F(h) − h = 0 for each state of `h (P, H)`, a step kept only where it
    lowers q (slow points that are no zeros stay where gradient descent left them)."""
    eye = torch.eye(h.shape[1], dtype=h.dtype, device=h.device)
    for _ in range(n_steps):
        with torch.no_grad():
            q0 = speed(step, h)
        jac = jacobians(step, h).detach()  # (P, H, H)
        with torch.no_grad():
            resid = step(h) - h  # (P, H)
            delta = torch.linalg.lstsq(jac - eye, -resid.unsqueeze(-1)).solution.squeeze(-1)  # (P, H)
            trial = h + delta
            better = speed(step, trial) < q0
            h = torch.where(better[:, None], trial, h)
    return h


def find_fixed_points(
    step: Callable[[Tensor], Tensor],
    initial: Tensor | np.ndarray,
    bin_size: float,
    *,
    n_iter: int = 2000,
    lr: float = 0.05,
    q_tol: float = 1e-6,
    merge_tol: float | None = None,
    newton_steps: int = 10,
    to_latents: Callable[[Tensor], Tensor] | None = None,
) -> FixedPoints:
    """Minimise q(h) = ½‖F(h) − h‖² from every row of `initial (P0, H)` (all at once, Adam with a
    learning rate decaying 100-fold), refine by `newton_steps` damped Newton steps, keep the points with
    q < `q_tol`, merge points closer than `merge_tol` (default MERGE_FRAC × the RMS spread of `initial`; the
    one with the smallest q is kept) and classify each by its Jacobian's eigenvalues.

    `step`: the map F, `(P, H)` -> `(P, H)`, differentiable, in the dtype of `initial` (use float64 for
    precise points). `bin_size`: seconds per step, for time constants and frequencies. `to_latents`:
    optional read-out `(P, H)` -> `(P, K)` for `FixedPoints.latents`.
    """
    h0 = torch.as_tensor(initial)
    if h0.ndim != 2 or h0.shape[0] == 0:
        raise AnalysisError(f"initial states must be (P, H) with P >= 1; got shape {tuple(h0.shape)}")
    if not torch.isfinite(h0).all():
        raise AnalysisError("initial states hold non-finite values")
    if not (np.isfinite(bin_size) and bin_size > 0):
        raise AnalysisError(f"bin_size must be a positive number of seconds; got {bin_size!r}")
    h = h0.detach().clone().requires_grad_(True)
    opt = torch.optim.Adam([h], lr=lr)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda i: 0.01 ** (i / max(n_iter, 1)))
    for _ in range(n_iter):
        opt.zero_grad()
        speed(step, h).sum().backward()  # the points are independent: the sum's gradient is each one's
        opt.step()
        sched.step()
    h = _newton(step, h.detach(), newton_steps) if newton_steps > 0 else h.detach()
    with torch.no_grad():
        q = speed(step, h)  # (P0,)
    keep = torch.isfinite(q) & (q < q_tol)
    h, q = h[keep], q[keep]
    n_converged = int(keep.sum())
    spread = (h0 - h0.mean(0)).pow(2).sum(-1).mean().sqrt()
    if merge_tol is None:
        merge_tol = MERGE_FRAC * float(spread) if float(spread) > 0 else 1e-6
    order = torch.argsort(q)
    kept: list[int] = []
    for i in order.tolist():  # greedy: smallest q first, drop points near one already kept
        if not kept or torch.cdist(h[i : i + 1], h[kept]).min() > merge_tol:
            kept.append(i)
    h, q = h[kept], q[kept]
    if len(kept):
        jac = jacobians(step, h).detach()  # (P, H, H)
        eig, vecs = (x.cpu().numpy() for x in torch.linalg.eig(jac))  # (P, H), (P, H, H) complex
        order = np.argsort(-np.abs(eig), axis=1, kind="stable")
        eig = np.take_along_axis(eig, order, axis=1)
        vecs = np.take_along_axis(vecs, order[:, None, :], axis=2)
    else:
        eig = np.zeros((0, h0.shape[1]), dtype=complex)
        vecs = np.zeros((0, h0.shape[1], h0.shape[1]), dtype=complex)
    latents = None
    if to_latents is not None:
        with torch.no_grad():
            latents = to_latents(h).cpu().double().numpy() if len(kept) else np.zeros((0, 0))
    return FixedPoints(
        states=h.cpu().double().numpy(),
        q=q.cpu().double().numpy(),
        eigenvalues=eig,
        bin_size=float(bin_size),
        latents=latents,
        n_initial=int(h0.shape[0]),
        n_converged=n_converged,
        q_tol=float(q_tol),
        eigenvectors=vecs,
        scale=float(spread),
    )


@dataclass
class DynamicsAnalysis:
    """Fixed points of a model with the trajectories it visits: `fixed_points`, `trajectory_latents
    (B, T, K)` (the model's latents on the data, read from its recurrent states) and `states (B, T, H)`."""

    fixed_points: FixedPoints
    trajectory_latents: np.ndarray
    states: np.ndarray


def model_fixed_points(
    model: torch.nn.Module,
    heldin: np.ndarray | Tensor,
    *,
    session: int | str | None = None,
    n_initial: int = 256,
    noise: float = 0.1,
    seed: int = 0,
    n_iter: int = 2000,
    lr: float = 0.05,
    q_tol: float = 1e-4,
    merge_tol: float | None = None,
    newton_steps: int = 10,
    max_trials: int = 512,
) -> DynamicsAnalysis:
    """Fixed and slow points of `model`'s autonomous dynamics, searched from its states on the data.

    `heldin (trials, T_obs, N_in)`: held-in spikes the model visits its states on (at most `max_trials`
    of them, drawn with `seed`, so memory stays bounded on large recordings). `n_initial` states
    are drawn from all visited (trial, bin) states (seeded by `seed`), each plus Gaussian noise of
    `noise` × the per-dimension standard deviation of the visited states. The search runs in float64
    on a CPU copy of the model (the model itself is not changed). `q_tol` keeps slow points too (q per
    bin in squared state units; `FixedPoints.is_fixed` tells the true fixed points). Raises
    AnalysisError if the model has no recurrent dynamics.
    """
    require_dynamics(model)
    x = torch.as_tensor(np.asarray(heldin) if not isinstance(heldin, Tensor) else heldin)
    if x.ndim != 3 or x.shape[0] == 0:
        raise AnalysisError(
            f"held-in spikes must be (trials, T_obs, N_in) with trials >= 1; got {tuple(x.shape)}"
        )
    gen = torch.Generator().manual_seed(seed)
    if x.shape[0] > max_trials:
        x = x[torch.randperm(x.shape[0], generator=gen)[:max_trials]]  # (max_trials, T_obs, N_in)
    x = x.float().to(next(model.parameters()).device)
    states = model.dynamics_states(x, session) if session is not None else model.dynamics_states(x)
    states = states.detach().double().cpu()  # (B, T, H)
    flat = states.reshape(-1, states.shape[-1])  # (B*T, H)
    pick = torch.randint(0, flat.shape[0], (n_initial,), generator=gen)
    scale = flat.std(0, keepdim=True)  # (1, H)
    kick = torch.randn(n_initial, flat.shape[1], generator=gen, dtype=flat.dtype)  # (n_initial, H)
    initial = flat[pick] + noise * scale * kick
    twin = copy.deepcopy(model).cpu().double().eval()
    for p in twin.parameters():
        p.requires_grad_(False)
    fps = find_fixed_points(
        twin.autonomous_step, initial, float(model.spec.bin_size), n_iter=n_iter, lr=lr, q_tol=q_tol,
        merge_tol=merge_tol, newton_steps=newton_steps, to_latents=twin.states_to_latents,
    )  # fmt: skip
    with torch.no_grad():
        traj = twin.states_to_latents(states).numpy()  # (B, T, K)
    return DynamicsAnalysis(fixed_points=fps, trajectory_latents=traj, states=states.numpy())
