"""Linear latent systems driven by sparse signed pulses: synthetic data whose dynamics are known exactly.

The validation systems of the analyses (`experiments/analysis_validation.py`): a linear map
x_{t+1} = A x_t + B u_t, one bin per step, whose modes are given as (τ seconds, f Hz) pairs (f > 0: a
rotating pair, 2 latent dimensions; f = 0: one real mode; τ = inf: a perfect integrator, a line of
fixed points), kicked by sparse pulses u_t of random sign (Poisson in time, at most one per bin), read out
log-linearly by Poisson neurons as in `neuralnets.data.synthetic`. Everything an analysis should find
is in `meta`: the eigenvalues of A per bin, the modes, the fixed points (`fixed_points`, in the
coordinates of `latents`; for a line attractor `line_direction` instead), and the known inputs are
`SpikeData.inputs (trials, T, 1)`.

- `linear_pulses()`: a damped 3 Hz oscillator (0.4 s envelope), a 3 s integrator and an 80 ms transient
  (one stable fixed point at the origin); `pulse_rate=0` gives the same system without inputs, trials
  starting from random states (the input-free control: every reported input event is a false one);
- `line_attractor()`: a perfect integrator (|λ| = 1) along one direction and a 100 ms decay across it.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from neuralnets.data.spikedata import SpikeData
from neuralnets.data.synthetic import (
    _assign_conditions,
    _check_common,
    _loglinear_rates,
    _package,
    _rngs,
    _single_threaded_blas,
    _standardise,
)
from neuralnets.errors import DataError

__all__ = ["line_attractor", "linear_pulses", "linear_map"]

DEFAULT_MODES = ((0.4, 3.0), (3.0, 0.0), (0.08, 0.0))  # (τ s, f Hz): oscillator, integrator, transient


def linear_map(modes: tuple[tuple[float, float], ...], bin_size: float) -> tuple[np.ndarray, np.ndarray]:
    """The one-bin map `A (L, L)` (block diagonal: a 2×2 rotation-decay block per rotating mode, a scalar
    per real one) and its eigenvalues `(L,)` (|λ| = exp(−dt/τ), angle ±2π f dt)."""
    blocks, eig = [], []
    for tau, hz in modes:
        if not (tau > 0 and hz >= 0 and np.isfinite(hz)):
            raise DataError(f"mode (tau={tau}, hz={hz}): tau must be > 0 (inf allowed) and hz >= 0")
        r = float(np.exp(-bin_size / tau))  # exp(-dt/inf) = 1: an integrator
        if hz > 0:
            w = 2 * np.pi * hz * bin_size
            if w >= np.pi:
                raise DataError(f"mode {hz} Hz is at or above the Nyquist frequency of {bin_size} s bins")
            blocks.append(r * np.array([[np.cos(w), -np.sin(w)], [np.sin(w), np.cos(w)]]))
            eig += [r * np.exp(1j * w), r * np.exp(-1j * w)]
        else:
            blocks.append(np.array([[r]]))
            eig.append(complex(r))
    n = sum(len(b) for b in blocks)
    a = np.zeros((n, n))
    i = 0
    for b in blocks:
        a[i : i + len(b), i : i + len(b)] = b
        i += len(b)
    return a, np.asarray(eig)


@_single_threaded_blas
def linear_pulses(
    n_trials: int = 400,
    n_neurons: int = 40,
    n_bins: int = 100,
    bin_size: float = 0.01,
    n_heldout: int = 10,
    n_fwd: int = 0,
    seed: int = 0,
    modes: tuple[tuple[float, float], ...] = DEFAULT_MODES,
    pulse_rate: float = 3.0,
    pulse_size: float = 1.0,
    drive: tuple[float, ...] | None = None,
    ic_std: float = 0.5,
    n_conditions: int = 1,
    base_rate: tuple[float, float] = (5.0, 20.0),
    modulation: float = 0.75,
    name: str = "linear_pulses",
) -> SpikeData:
    """Poisson neurons read out from a linear latent system kicked by sparse signed pulses.

    Args:
        n_trials, n_neurons, n_bins, bin_size, n_heldout, n_fwd, seed, base_rate, modulation: as in
            `neuralnets.data.synthetic.lorenz`.
        modes: (τ s, f Hz) per mode; see the module docstring.
        pulse_rate: pulses per second per trial (Poisson; at most one per bin; never in the first
            bin); 0 gives the input-free system.
        pulse_size: |u| of a pulse (its sign is random).
        drive: `B (L,)`, how a pulse moves each latent dimension (default: 1 on every dimension).
        ic_std: std of each trial's initial latent state.
        n_conditions: condition labels (all trials share one system; labels only group trials).

    Returns:
        SpikeData with `spikes`/`rates (n_trials, n_bins, n_neurons)`, `latents (n_trials, n_bins, L)`
        (the raw state x_t), `inputs (n_trials, n_bins, 1)` (the pulses u_t, applied between bins t and
        t + 1), `behavior` (the first two latents, standardised) and `meta`: `eigenvalues` (per bin,
        real and imaginary parts), `modes`, `fixed_points (1, L)` (the origin) or, when a mode is an
        integrator, `line_direction (L,)` (every point on that line through the origin is fixed).
    """
    _check_common(n_trials, n_neurons, n_bins, bin_size, n_heldout, n_fwd, n_conditions, base_rate)
    if pulse_rate < 0 or pulse_size <= 0 or ic_std < 0:
        raise DataError(f"{name}: pulse_rate must be >= 0, pulse_size > 0 and ic_std >= 0")
    modes = tuple((float(t), float(f)) for t, f in modes)
    a, eig = linear_map(modes, bin_size)  # (L, L), (L,)
    dim = len(a)
    b = np.ones(dim) if drive is None else np.asarray(drive, dtype=np.float64)
    if b.shape != (dim,):
        raise DataError(f"{name}: drive must have one entry per latent dimension ({dim}); got {b.shape}")
    rng_dyn, rng_net, rng_spk, rng_beh = _rngs(seed)
    p = pulse_rate * bin_size
    if p > 1:
        raise DataError(f"{name}: pulse_rate {pulse_rate}/s is more than one pulse per {bin_size} s bin")
    signs = rng_dyn.choice([-1.0, 1.0], size=(n_trials, n_bins))
    kicks = (rng_dyn.uniform(size=(n_trials, n_bins)) < p) * signs  # (trials, T)
    kicks[:, 0] = 0.0  # the first bin is the initial condition's
    u = pulse_size * kicks  # (trials, T)
    x = np.empty((n_trials, n_bins, dim))  # (trials, T, L)
    x[:, 0] = ic_std * rng_dyn.standard_normal((n_trials, dim))
    for t in range(1, n_bins):
        x[:, t] = x[:, t - 1] @ a.T + u[:, t - 1, None] * b  # the pulse at t - 1 moves the state at t
    condition = _assign_conditions(rng_dyn, n_trials, n_conditions)
    rates = _loglinear_rates(x, n_neurons, bin_size, base_rate, modulation, rng_net)  # (trials, T, N)
    spikes = rng_spk.poisson(rates).astype(np.float32)
    behavior = _standardise(x[:, : n_bins - n_fwd, : min(2, dim)])
    behavior = behavior + 0.05 * rng_beh.standard_normal(behavior.shape)
    first_dim = np.cumsum([0] + [2 if f > 0 else 1 for _, f in modes])  # each mode's first latent dimension
    integrators = [int(first_dim[i]) for i, (tau, _) in enumerate(modes) if np.isinf(tau)]
    if integrators:  # a line (or plane) of fixed points through the origin
        fixed = {"line_direction": np.eye(dim)[integrators[0]].tolist()}
    else:
        fixed = {"fixed_points": np.zeros((1, dim)).tolist()}
    params = dict(
        n_trials=n_trials, n_neurons=n_neurons, n_bins=n_bins, bin_size=bin_size, n_heldout=n_heldout,
        n_fwd=n_fwd, seed=seed, modes=[list(m) for m in modes], pulse_rate=pulse_rate, pulse_size=pulse_size,
        drive=b.tolist(), ic_std=ic_std, n_conditions=n_conditions, base_rate=list(base_rate),
        modulation=modulation,
    )  # fmt: skip
    data = _package(
        name, params, spikes, rates, x, behavior, condition, latents_note="the raw linear state x_t",
        eigenvalues=[[float(v.real), float(v.imag)] for v in eig], modes=[list(m) for m in modes], **fixed,
    )  # fmt: skip
    return dataclasses.replace(data, inputs=u[..., None])  # (trials, T, 1), validated as any field


def line_attractor(
    n_trials: int = 400,
    n_neurons: int = 40,
    n_bins: int = 100,
    bin_size: float = 0.01,
    n_heldout: int = 10,
    n_fwd: int = 0,
    seed: int = 0,
    decay_tau: float = 0.1,
    pulse_rate: float = 3.0,
    pulse_size: float = 0.5,
    ic_std: float = 0.5,
    base_rate: tuple[float, float] = (5.0, 20.0),
    modulation: float = 0.75,
) -> SpikeData:
    """A line attractor: a perfect integrator (|λ| = 1, every point of a line fixed) along latent 0 and a
    `decay_tau` s decay along latent 1, both kicked by the pulses (`linear_pulses` with these modes)."""
    return linear_pulses(
        n_trials=n_trials, n_neurons=n_neurons, n_bins=n_bins, bin_size=bin_size, n_heldout=n_heldout,
        n_fwd=n_fwd, seed=seed, modes=((np.inf, 0.0), (decay_tau, 0.0)), pulse_rate=pulse_rate,
        pulse_size=pulse_size, ic_std=ic_std, base_rate=base_rate, modulation=modulation,
        name="line_attractor",
    )  # fmt: skip
