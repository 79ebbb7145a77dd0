"""Synthetic spiking datasets with ground truth: the Lorenz attractor and a chaotic RNN.

These are the two classic LFADS benchmarks (Sussillo et al. 2016): a low-dimensional dynamical system
drives a population of Poisson neurons through a log-linear readout. Every generator is deterministic
for a given `seed` (bit for bit on one machine) and returns a `SpikeData` with:

- `spikes (trials, T, N)` Poisson counts, `T = n_bins` (the last `n_fwd` are forward-prediction bins),
  `N = n_neurons` (the last `n_heldout` are held-out neurons);
- `rates (trials, T, N)` the true expected counts per bin (same units as `spikes`);
- `latents (trials, T, K)` the true low-dimensional state;
- `behavior (trials, T_obs, 2)` a velocity-like readout of the latents (standardised, plus a little noise);
- `condition (trials,)` ints: trials of one condition start from (almost) the same state, so
  condition-averaged PSTHs are meaningful;
- `split` from `default_split(n_trials, seed=seed)`.

Random streams are split by purpose (`SeedSequence(seed).spawn`): dynamics, neuron parameters, spikes,
behaviour, so that e.g. the draws of the neurons' weights and base rates do not depend on `n_trials`.
"""

from __future__ import annotations

import functools

import numpy as np
from threadpoolctl import threadpool_limits

from neuralnets.data.sessions import MultiSessionData
from neuralnets.data.spikedata import SpikeData, default_split
from neuralnets.errors import DataError

__all__ = ["lorenz", "chaotic_rnn", "lorenz_sessions"]


def _single_threaded_blas(fn):
    """Run a generator with one BLAS thread: the matrix products are tiny, so threads only add
    contention (10x slower on a busy machine), and a fixed thread count keeps the summation order,
    hence the result, bit-for-bit the same whatever the machine's BLAS settings."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        with threadpool_limits(limits=1, user_api="blas"):
            return fn(*args, **kwargs)

    return wrapper


# ---------------------------------------------------------------------------------------------- Lorenz
def _lorenz_field(s: np.ndarray, sigma: float, rho: float, beta: float) -> np.ndarray:
    """d(x, y, z)/dt for states `s (..., 3)`."""
    x, y, z = s[..., 0], s[..., 1], s[..., 2]
    return np.stack([sigma * (y - x), x * (rho - z) - y, x * y - beta * z], axis=-1)


def _rk4_step(s: np.ndarray, h: float, sigma: float, rho: float, beta: float) -> np.ndarray:
    k1 = _lorenz_field(s, sigma, rho, beta)
    k2 = _lorenz_field(s + 0.5 * h * k1, sigma, rho, beta)
    k3 = _lorenz_field(s + 0.5 * h * k2, sigma, rho, beta)
    k4 = _lorenz_field(s + h * k3, sigma, rho, beta)
    return s + (h / 6.0) * (k1 + 2.0 * k2 + 2.0 * k3 + k4)


@_single_threaded_blas
def lorenz(
    n_trials: int = 1000,
    n_neurons: int = 40,
    n_bins: int = 50,
    bin_size: float = 0.01,
    n_heldout: int = 10,
    n_fwd: int = 10,
    seed: int = 0,
    n_conditions: int = 8,
    ic_noise: float = 0.5,
    lorenz_dt: float = 0.02,
    steps_per_bin: int = 2,
    burn_in: float = 10.0,
    base_rate: tuple[float, float] = (5.0, 20.0),
    modulation: float = 0.75,
    behavior_noise: float = 0.1,
    sigma: float = 10.0,
    rho: float = 28.0,
    beta: float = 8.0 / 3.0,
    fold: int | None = None,
) -> SpikeData:
    """Poisson neurons driven by the Lorenz attractor (the LFADS "Lorenz" benchmark).

    The Lorenz system `dx = sigma (y - x), dy = x (rho - z) - y, dz = x y - beta z` is integrated with
    classical RK4, vectorised across trials. Each condition's initial state is drawn once and run for
    `burn_in` Lorenz time units so that it lies on the attractor; each trial starts from its condition's
    state plus Gaussian noise of std `ic_noise` (Lorenz units; the attractor's std is ~8).

    Args:
        n_trials: number of trials.
        n_neurons: total number of neurons, held-in plus held-out.
        n_bins: bins per trial, observed plus forward (`T = n_bins`).
        bin_size: bin width in seconds.
        n_heldout: the last `n_heldout` neurons are held out (never model input).
        n_fwd: the last `n_fwd` bins are forward-prediction bins.
        seed: random seed; the dataset is a deterministic function of all arguments.
        fold: a cross-validation fold as the validation trials (`default_split`; None: the default).
        n_conditions: number of distinct initial states; trials are assigned to them evenly.
        ic_noise: std of each trial's perturbation of its condition's initial state (Lorenz units).
        lorenz_dt: Lorenz time units per bin (sets how fast the latents move; 0.02 gives one to two
            loops of the attractor per 50-bin trial).
        steps_per_bin: RK4 steps per bin.
        burn_in: Lorenz time units integrated before the trial starts, to land on the attractor.
        base_rate: (low, high) Hz; each neuron's mean firing rate over the dataset is drawn uniformly here.
        modulation: std of each neuron's log-rate around its mean (natural-log units).
        behavior_noise: std of the Gaussian noise added to the standardised behaviour.
        sigma, rho, beta: Lorenz parameters (the chaotic regime by default).

    Returns:
        SpikeData with `spikes`/`rates (n_trials, n_bins, n_neurons)` (counts per bin),
        `latents (n_trials, n_bins, 3)` (the z-scored Lorenz state, statistics over the whole dataset),
        `behavior (n_trials, n_bins - n_fwd, 2)` (d/dt of latents x and y, standardised, plus noise),
        `condition (n_trials,)`; `meta["fixed_points"]`: the three fixed points of the Lorenz system
        (origin first; for rho <= 1 only the origin, listed three times) in the z-scored coordinates of
        `latents`.
    """
    _check_common(n_trials, n_neurons, n_bins, bin_size, n_heldout, n_fwd, n_conditions, base_rate)
    _check_positive(lorenz_dt=lorenz_dt, steps_per_bin=steps_per_bin)
    if min(ic_noise, burn_in, modulation, behavior_noise) < 0:
        raise DataError("lorenz: ic_noise, burn_in, modulation and behavior_noise must be >= 0")
    rng_dyn, rng_net, rng_spk, rng_beh = _rngs(seed)
    h = lorenz_dt / steps_per_bin

    # Condition initial states: a broad random start, then burn-in onto the attractor.
    s = rng_dyn.uniform([-15.0, -20.0, 5.0], [15.0, 20.0, 40.0], size=(n_conditions, 3))  # (C, 3)
    for _ in range(int(round(burn_in / h))):
        s = _rk4_step(s, h, sigma, rho, beta)
    condition = _assign_conditions(rng_dyn, n_trials, n_conditions)  # (trials,)
    state = s[condition] + ic_noise * rng_dyn.standard_normal((n_trials, 3))  # (trials, 3)

    states = np.empty((n_trials, n_bins, 3))  # (trials, T, 3) Lorenz state at each bin
    for t in range(n_bins):
        states[:, t] = state
        for _ in range(steps_per_bin):
            state = _rk4_step(state, h, sigma, rho, beta)
    mean, std = states.mean(axis=(0, 1)), states.std(axis=(0, 1))
    latents = (states - mean) / std  # (trials, T, 3)

    rates = _loglinear_rates(latents, n_neurons, bin_size, base_rate, modulation, rng_net)  # (trials, T, N)
    spikes = rng_spk.poisson(rates).astype(np.float32)  # (trials, T, N)

    # Velocity-like behaviour: exact time derivative of latent dims x and y (from the vector field).
    n_obs = n_bins - n_fwd
    vel = _lorenz_field(states[:, :n_obs], sigma, rho, beta)[..., :2] / std[:2]  # (trials, T_obs, 2)
    behavior = _standardise(vel) + behavior_noise * rng_beh.standard_normal(vel.shape)

    params = dict(
        n_trials=n_trials, n_neurons=n_neurons, n_bins=n_bins, bin_size=bin_size, n_heldout=n_heldout,
        n_fwd=n_fwd, seed=seed, n_conditions=n_conditions, ic_noise=ic_noise, lorenz_dt=lorenz_dt,
        steps_per_bin=steps_per_bin, burn_in=burn_in, base_rate=list(base_rate), modulation=modulation,
        behavior_noise=behavior_noise, sigma=sigma, rho=rho, beta=beta,
    )  # fmt: skip
    # The system's three fixed points, (0, 0, 0) and (±sqrt(beta (rho - 1)), ±sqrt(beta (rho - 1)), rho - 1),
    # in the coordinates of `latents` (ground truth for neuralnets.analysis).
    wing = np.sqrt(beta * (rho - 1.0)) if rho > 1 else 0.0
    fixed = np.array([[0.0, 0.0, 0.0], [wing, wing, rho - 1.0], [-wing, -wing, rho - 1.0]])  # (3, 3)
    return _package("lorenz", params, spikes, rates, latents, behavior, condition,
                    latents_note="z-scored Lorenz state (x, y, z)", fold=fold,
                    fixed_points=((fixed - mean) / std).tolist())  # fmt: skip


@_single_threaded_blas
def lorenz_sessions(
    n_sessions: int = 4,
    n_trials: int = 200,
    n_neurons: tuple[int, int] = (20, 40),
    heldout_frac: float = 0.25,
    n_bins: int = 50,
    bin_size: float = 0.01,
    n_fwd: int = 10,
    seed: int = 0,
    n_conditions: int = 8,
    base_rate: tuple[float, float] = (5.0, 20.0),
    modulation: float = 0.75,
    keep: list[int] | None = None,
) -> MultiSessionData:
    """Several recording sessions of ONE Lorenz system (for stitching): sessions `s0`, `s1`, ...

    The latents of `n_sessions * n_trials` trials come from `lorenz(...)` with this `seed` (so the
    conditions' initial states are shared by all sessions); session i takes trials
    `i * n_trials .. (i + 1) * n_trials - 1`. Each session then records its own population: a neuron
    count drawn uniformly from `n_neurons` (low, high), its own random log-linear read-out of the
    latents, Poisson spikes, the last `round(heldout_frac * N)` neurons held out (at least one), the
    last `n_fwd` bins forward, and its own train/val/test split. Ground truth `rates` and `latents`
    (the z-scored Lorenz state, the same coordinates in every session) and `behavior` are kept.
    `keep`: only these session indices (e.g. `[3]` for a held-out session); the others are still
    drawn, so a session is the same whatever `keep` is.
    """
    _check_positive(n_sessions=n_sessions)
    lo, hi = n_neurons
    if not 2 <= lo <= hi:
        raise DataError(f"n_neurons={tuple(n_neurons)} must be (low, high) with 2 <= low <= high")
    if not 0 < heldout_frac < 1:
        raise DataError(f"heldout_frac={heldout_frac} must be in (0, 1)")
    keep = list(range(n_sessions)) if keep is None else list(keep)
    bad = [k for k in keep if not 0 <= k < n_sessions]
    if bad or not keep:
        raise DataError(f"keep={keep} must list session indices in 0..{n_sessions - 1}")
    shared = lorenz(
        n_trials=n_sessions * n_trials, n_neurons=2, n_bins=n_bins, bin_size=bin_size, n_heldout=0,
        n_fwd=n_fwd, seed=seed, n_conditions=n_conditions,
    )  # fmt: skip
    streams = np.random.SeedSequence([seed, 1]).spawn(n_sessions)  # one per session: its neurons, spikes
    sessions = {}
    for i, stream in enumerate(streams):
        rng_net, rng_spk = (np.random.default_rng(s) for s in stream.spawn(2))
        trials = slice(i * n_trials, (i + 1) * n_trials)
        latents = shared.latents[trials]  # (trials, T, 3)
        n = int(rng_net.integers(lo, hi + 1))
        rates = _loglinear_rates(latents, n, bin_size, base_rate, modulation, rng_net)  # (trials, T, n)
        if i not in keep:
            continue
        spikes = rng_spk.poisson(rates).astype(np.float32)  # (trials, T, n)
        n_heldout = min(max(1, int(round(heldout_frac * n))), n - 1)
        sessions[f"s{i}"] = SpikeData(
            spikes=spikes, bin_size=bin_size, n_heldin=n - n_heldout, n_fwd=n_fwd,
            split=default_split(n_trials, seed=seed + 1 + i), behavior=shared.behavior[trials],
            condition=shared.condition[trials], rates=rates, latents=latents, name=f"s{i}",
            source=f"lorenz_sessions(seed={seed}).s{i}",
        )  # fmt: skip
    params = dict(
        n_sessions=n_sessions, n_trials=n_trials, n_neurons=list(n_neurons), heldout_frac=heldout_frac,
        n_bins=n_bins, bin_size=bin_size, n_fwd=n_fwd, seed=seed, n_conditions=n_conditions,
        base_rate=list(base_rate), modulation=modulation, keep=keep,
    )  # fmt: skip
    return MultiSessionData(
        sessions, name="lorenz_sessions", source=f"lorenz_sessions(seed={seed})",
        meta={"generator": "lorenz_sessions", "params": params, "latents": "z-scored Lorenz state (x, y, z)"},
    )  # fmt: skip


# ---------------------------------------------------------------------------------------- chaotic RNN
@_single_threaded_blas
def chaotic_rnn(
    n_trials: int = 400,
    n_neurons: int = 40,
    n_bins: int = 50,
    bin_size: float = 0.01,
    n_heldout: int = 10,
    n_fwd: int = 10,
    seed: int = 0,
    n_rnn: int = 50,
    g: float = 1.5,
    tau: float = 0.025,
    steps_per_bin: int = 5,
    n_latents: int = 8,
    n_conditions: int = 8,
    ic_noise: float = 0.2,
    burn_in: float = 0.5,
    settle: float = 0.05,
    base_rate: tuple[float, float] = (5.0, 20.0),
    modulation: float = 0.75,
    behavior_noise: float = 0.1,
    fold: int | None = None,
) -> SpikeData:
    """Poisson neurons driven by a chaotic random RNN (the LFADS "chaotic RNN" benchmark).

    The network `tau dx/dt = -x + J tanh(x)`, `J ~ N(0, g^2 / n_rnn)` (chaotic for g > 1), is integrated
    with Euler steps of `bin_size / steps_per_bin` seconds. Each condition's state `x ~ N(0, 1)` is drawn
    once and run for `burn_in` seconds; each trial starts there plus Gaussian noise of std `ic_noise`.
    Neurons read out the network activity `r = tanh(x)` log-linearly through a random projection.

    Args:
        n_trials, n_neurons, n_bins, bin_size, n_heldout, n_fwd, seed, fold: as in `lorenz`.
        n_conditions, base_rate, modulation, behavior_noise: as in `lorenz`.
        n_rnn: number of RNN units.
        g: gain of the recurrent weights (chaos for g > 1).
        tau: RNN time constant in seconds.
        steps_per_bin: Euler steps per bin (the step `bin_size / steps_per_bin` must be < tau).
        n_latents: K, the number of principal components of `r` kept as the true latents.
        ic_noise: std of each trial's perturbation of its condition's initial state.
        burn_in: seconds integrated from each condition's random state, to lose the initial transient.
        settle: seconds integrated after each trial's perturbation and before its first bin, so that
            trials start on the attractor (the perturbation's decaying part would give transients).

    Returns:
        SpikeData with `spikes`/`rates (n_trials, n_bins, n_neurons)` (counts per bin),
        `latents (n_trials, n_bins, n_latents)`: the activity `r = tanh(x)` projected onto its top
        `n_latents` principal components (over the whole dataset; each component's sign is fixed so that
        its largest-magnitude loading is positive), `behavior (n_trials, n_bins - n_fwd, 2)`: a random
        linear readout of `r`, standardised, plus noise; `condition (n_trials,)`.
        `meta["latent_variance_explained"]` is the fraction of the variance of `r` the K latents keep.
    """
    _check_common(n_trials, n_neurons, n_bins, bin_size, n_heldout, n_fwd, n_conditions, base_rate)
    _check_positive(n_rnn=n_rnn, g=g, tau=tau, steps_per_bin=steps_per_bin, n_latents=n_latents)
    if n_latents > n_rnn:
        raise DataError(f"chaotic_rnn: n_latents={n_latents} must be <= n_rnn={n_rnn}")
    dt = bin_size / steps_per_bin
    if dt >= tau:
        raise DataError(
            f"chaotic_rnn: Euler step bin_size/steps_per_bin={dt:g} s must be < tau={tau:g} s; "
            "raise steps_per_bin"
        )
    if min(ic_noise, burn_in, settle, modulation, behavior_noise) < 0:
        raise DataError("chaotic_rnn: ic_noise, burn_in, settle, modulation and behavior_noise must be >= 0")
    rng_dyn, rng_net, rng_spk, rng_beh = _rngs(seed)
    J = rng_dyn.standard_normal((n_rnn, n_rnn)) * (g / np.sqrt(n_rnn))  # (n_rnn, n_rnn)
    a = dt / tau

    x = rng_dyn.standard_normal((n_conditions, n_rnn))  # (C, n_rnn)
    for _ in range(int(round(burn_in / dt))):
        x = x + a * (-x + np.tanh(x) @ J.T)
    condition = _assign_conditions(rng_dyn, n_trials, n_conditions)  # (trials,)
    x = x[condition] + ic_noise * rng_dyn.standard_normal((n_trials, n_rnn))  # (trials, n_rnn)
    # Let the perturbation's off-attractor part decay before the trial starts (no first-bin transients).
    for _ in range(int(round(settle / dt))):
        x = x + a * (-x + np.tanh(x) @ J.T)

    r = np.empty((n_trials, n_bins, n_rnn))  # (trials, T, n_rnn) activity tanh(x) at each bin
    for t in range(n_bins):
        r[:, t] = np.tanh(x)
        for _ in range(steps_per_bin):
            x = x + a * (-x + np.tanh(x) @ J.T)

    # True latents: top-K principal components of r over the whole dataset.
    flat = r.reshape(-1, n_rnn) - r.reshape(-1, n_rnn).mean(axis=0)  # (trials*T, n_rnn)
    _, svals, vt = np.linalg.svd(flat, full_matrices=False)
    comps = vt[:n_latents]  # (K, n_rnn)
    signs = np.sign(comps[np.arange(n_latents), np.abs(comps).argmax(axis=1)])
    comps = comps * signs[:, None]  # deterministic sign whatever LAPACK returns
    latents = (flat @ comps.T).reshape(n_trials, n_bins, n_latents)  # (trials, T, K)
    explained = float((svals[:n_latents] ** 2).sum() / (svals**2).sum())

    rates = _loglinear_rates(r, n_neurons, bin_size, base_rate, modulation, rng_net)  # (trials, T, N)
    spikes = rng_spk.poisson(rates).astype(np.float32)  # (trials, T, N)

    n_obs = n_bins - n_fwd
    readout = rng_beh.standard_normal((n_rnn, 2)) / np.sqrt(n_rnn)  # (n_rnn, 2)
    beh = _standardise(r[:, :n_obs] @ readout)  # (trials, T_obs, 2)
    behavior = beh + behavior_noise * rng_beh.standard_normal(beh.shape)

    params = dict(
        n_trials=n_trials, n_neurons=n_neurons, n_bins=n_bins, bin_size=bin_size, n_heldout=n_heldout,
        n_fwd=n_fwd, seed=seed, n_rnn=n_rnn, g=g, tau=tau, steps_per_bin=steps_per_bin,
        n_latents=n_latents, n_conditions=n_conditions, ic_noise=ic_noise, burn_in=burn_in, settle=settle,
        base_rate=list(base_rate), modulation=modulation, behavior_noise=behavior_noise,
    )  # fmt: skip
    return _package(
        "chaotic_rnn", params, spikes, rates, latents, behavior, condition,
        latents_note=f"top {n_latents} principal components of tanh(x)", latent_variance_explained=explained,
        fold=fold,
    )  # fmt: skip


# --------------------------------------------------------------------------------------------- helpers
def _package(
    generator: str,
    params: dict,
    spikes,
    rates,
    latents,
    behavior,
    condition,
    latents_note: str,
    fold: int | None = None,
    **meta,
) -> SpikeData:
    """The generated arrays as a SpikeData: the last `n_heldout` neurons held out, the default split
    (or its validation `fold`), and the generator's name and parameters in `meta` (so that the data can
    be regenerated)."""
    seed = params["seed"]
    return SpikeData(
        spikes=spikes,
        bin_size=params["bin_size"],
        n_heldin=params["n_neurons"] - params["n_heldout"],
        n_fwd=params["n_fwd"],
        split=default_split(params["n_trials"], seed=seed, fold=fold),
        behavior=behavior,
        condition=condition,
        rates=rates,
        latents=latents,
        name=generator,
        source=f"{generator}(seed={seed})",
        meta={"generator": generator, "params": params, "latents": latents_note, **meta},
    )


def _rngs(seed: int) -> list[np.random.Generator]:
    """Independent streams: dynamics, neuron parameters, spikes, behaviour."""
    return [np.random.default_rng(s) for s in np.random.SeedSequence(seed).spawn(4)]


def _assign_conditions(rng: np.random.Generator, n_trials: int, n_conditions: int) -> np.ndarray:
    """Balanced condition labels (trials,) in random order."""
    return rng.permutation(np.arange(n_trials) % n_conditions)


def _standardise(x: np.ndarray) -> np.ndarray:
    """Zero mean, unit std per last-axis dimension over all other axes."""
    axes = tuple(range(x.ndim - 1))
    return (x - x.mean(axis=axes)) / x.std(axis=axes)


def _loglinear_rates(
    signal: np.ndarray,
    n_neurons: int,
    bin_size: float,
    base_rate: tuple[float, float],
    modulation: float,
    rng: np.random.Generator,
) -> np.ndarray:
    """Expected counts per bin (trials, T, N) from a latent signal (trials, T, K).

    Each neuron's drive is a random projection of the signal, standardised over the dataset, so that
    its log-rate has std `modulation`; the offset makes each neuron's mean rate over the dataset equal
    its base rate (Hz, uniform in `base_rate`).
    """
    k = signal.shape[-1]
    w = rng.standard_normal((k, n_neurons))  # (K, N)
    base_hz = rng.uniform(base_rate[0], base_rate[1], size=n_neurons)  # (N,)
    drive = _standardise(signal @ w)  # (trials, T, N)
    log_gain = modulation * drive
    log_gain -= np.log(np.exp(log_gain).mean(axis=(0, 1)))  # mean of exp(log_gain) is 1 per neuron
    return base_hz * bin_size * np.exp(log_gain)  # (trials, T, N)


def _check_common(
    n_trials: int,
    n_neurons: int,
    n_bins: int,
    bin_size: float,
    n_heldout: int,
    n_fwd: int,
    n_conditions: int,
    base_rate: tuple[float, float],
) -> None:
    _check_positive(n_trials=n_trials, n_neurons=n_neurons, n_bins=n_bins, bin_size=bin_size)
    _check_positive(n_conditions=n_conditions)
    if not 0 <= n_heldout < n_neurons:
        raise DataError(f"n_heldout={n_heldout} must be in 0..{n_neurons - 1} (n_neurons={n_neurons})")
    if not 0 <= n_fwd < n_bins:
        raise DataError(f"n_fwd={n_fwd} must be in 0..{n_bins - 1} (n_bins={n_bins})")
    lo, hi = base_rate
    if not 0 < lo <= hi:
        raise DataError(f"base_rate={tuple(base_rate)} must be (low, high) Hz with 0 < low <= high")


def _check_positive(**values: float) -> None:
    for name, value in values.items():
        if not (np.isfinite(value) and value > 0):
            raise DataError(f"{name} must be a positive number; got {value!r}")
