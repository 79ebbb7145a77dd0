"""Figures a person looks at after training: spikes vs inferred rates, latent trajectories, PSTHs.

Each function takes numpy arrays and returns a matplotlib `Figure` built without pyplot, so it needs
no screen, leaves the caller's backend alone (inline plots in notebooks keep working) and is freed
when dropped.
"""

from __future__ import annotations

import numpy as np
from matplotlib import colormaps
from matplotlib.figure import Figure
from scipy.ndimage import gaussian_filter1d

_TAB10 = colormaps["tab10"]


def raster_vs_rates(spikes: np.ndarray, rates: np.ndarray, bin_size: float, n_trials: int = 3) -> Figure:
    """Spike counts (top) above inferred rates in Hz (bottom) for the first `n_trials` trials.

    spikes, rates: (trials, T, N) counts per bin.
    """
    n = min(n_trials, len(spikes))
    fig = Figure(figsize=(3.2 * n, 5))
    axes = fig.subplots(2, n, squeeze=False, sharex=True)
    extent = (0, spikes.shape[1] * bin_size, spikes.shape[2], 0)
    for i in range(n):
        axes[0, i].imshow(spikes[i].T, aspect="auto", cmap="Greys", extent=extent, interpolation="nearest")
        axes[1, i].imshow(rates[i].T / bin_size, aspect="auto", cmap="viridis", extent=extent)
        axes[0, i].set_title(f"trial {i}")
        axes[1, i].set_xlabel("time (s)")
    axes[0, 0].set_ylabel("neuron (spikes)")
    axes[1, 0].set_ylabel("neuron (rate, Hz)")
    fig.tight_layout()
    return fig


def latent_trajectories(
    latents: np.ndarray, condition: np.ndarray | None = None, n_trials: int = 40
) -> Figure:
    """First `n_trials` trajectories in the top principal components of `latents (trials, T, K)`."""
    lat = latents[:n_trials]
    flat = lat.reshape(-1, lat.shape[-1])  # (trials*T, K)
    flat = flat - flat.mean(0)
    n_pc = min(3, flat.shape[1])
    # The top eigenvectors of the K x K covariance: the same axes as an SVD of the (trials*T, K) samples
    # (up to sign), for a fraction of its cost.
    _, evecs = np.linalg.eigh(flat.T.astype(np.float64) @ flat)  # ascending eigenvalues
    pcs = (flat @ evecs[:, ::-1][:, :n_pc]).reshape(lat.shape[0], lat.shape[1], n_pc)  # (trials, T, n_pc)
    colors = _TAB10(np.asarray(condition[:n_trials]) % 10) if condition is not None else None
    fig = Figure(figsize=(5, 4.5))
    ax = fig.add_subplot(projection="3d" if n_pc == 3 else None)
    for i, traj in enumerate(pcs):
        color = None if colors is None else colors[i]
        if n_pc == 3:
            ax.plot(traj[:, 0], traj[:, 1], traj[:, 2], lw=0.8, color=color)
        else:
            ax.plot(traj[:, 0], traj[:, -1], lw=0.8, color=color)
    ax.set_title("latent trajectories (top PCs)")
    fig.tight_layout()
    return fig


def psth_fits(
    rates: np.ndarray,
    spikes: np.ndarray,
    condition: np.ndarray,
    bin_size: float,
    neurons: tuple[int, ...] = (0, 1, 2, 3),
    sigma_s: float = 0.05,
) -> Figure:
    """Condition-averaged inferred rates (solid) vs smoothed spike PSTHs (dashed), in Hz, per neuron."""
    neurons = tuple(n for n in neurons if n < spikes.shape[2])
    conds = np.unique(condition)[:6]
    # Only the plotted neurons are smoothed (the filter runs along time, each neuron on its own).
    smoothed = np.zeros(spikes.shape[:2] + (max(neurons, default=-1) + 1,))  # (trials, T, max neuron + 1)
    smoothed[:, :, list(neurons)] = gaussian_filter1d(
        spikes[:, :, list(neurons)].astype(np.float64), sigma_s / bin_size, axis=1
    )
    t = np.arange(spikes.shape[1]) * bin_size
    fig = Figure(figsize=(3 * len(neurons), 2.8))
    axes = fig.subplots(1, len(neurons), squeeze=False)
    for ax, n in zip(axes[0], neurons, strict=True):
        for j, c in enumerate(conds):
            sel = condition == c
            color = _TAB10(j % 10)
            ax.plot(t, rates[sel, :, n].mean(0) / bin_size, color=color)
            ax.plot(t, smoothed[sel, :, n].mean(0) / bin_size, color=color, ls="--", lw=0.8)
        ax.set_title(f"neuron {n}")
        ax.set_xlabel("time (s)")
    axes[0, 0].set_ylabel("rate (Hz)")
    fig.tight_layout()
    return fig
