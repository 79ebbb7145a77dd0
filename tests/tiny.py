"""Shared by the tests: Hydra overrides for an LFADS small enough to train in seconds, and a toy
Poisson batch for the model unit tests."""

import numpy as np
import torch

from neuralnets.data.spikedata import DataSpec

# A Lorenz data set small enough to train on in seconds: `load("lorenz", **TINY_LORENZ)`, or as
# Hydra overrides `TINY_DATA`.
TINY_LORENZ = dict(n_trials=40, n_neurons=12, n_heldout=4, n_bins=16, n_fwd=4)
TINY_DATA = [f"data.load_kwargs.{k}={v}" for k, v in TINY_LORENZ.items()]

TINY_LFADS = [
    "model.gen_dim=16",
    "model.fac_dim=4",
    "model.ic_enc_dim=8",
    "model.ci_enc_dim=8",
    "model.con_dim=8",
    "model.co_dim=1",
]


def sine_batch(spec: DataSpec, n_trials: int, seed: int = 0) -> dict[str, torch.Tensor]:
    """Model input batch of Poisson counts from smooth sinusoidal rates (each trial its own phase):
    `spikes (n_trials, T, N)` and `heldin` (observed bins, held-in neurons)."""
    T, N = spec.n_bins, spec.n_neurons
    rng = np.random.default_rng(seed)
    phase = rng.uniform(0, 2 * np.pi, size=(n_trials, 1, 1))  # (trials, 1, 1)
    t = np.arange(T)[None, :, None]  # (1, T, 1)
    offset = np.linspace(0, np.pi, N)[None, None, :]  # (1, 1, N)
    rates = np.exp(0.3 + 1.0 * np.sin(2 * np.pi * t / T + phase + offset))  # (trials, T, N) counts/bin
    spikes = torch.from_numpy(rng.poisson(rates).astype(np.float32))  # (trials, T, N)
    return {"heldin": spikes[:, : spec.n_obs_bins, : spec.n_heldin], "spikes": spikes}
