"""Spike binning shared by the loaders that start from spike times (NWB, rat CA1)."""

from __future__ import annotations

import numpy as np


def bin_spike_times(times: list[np.ndarray], order: np.ndarray, edges: np.ndarray) -> np.ndarray:
    """Spike counts `(trials, T, N)` int64 in half-open bins `edges (trials, T + 1)` (seconds) of the units
    `order` (indices into `times`, each a sorted array of spike times in seconds), in that order."""
    # int64: SpikeData checks the counts fit float32 exactly before casting them
    spikes = np.zeros((edges.shape[0], edges.shape[1] - 1, len(order)), dtype=np.int64)
    for j, u in enumerate(order):
        cum = np.searchsorted(times[u], edges, side="left")  # (trials, T + 1) spikes before each edge
        spikes[:, :, j] = np.diff(cum, axis=1)
    return spikes
