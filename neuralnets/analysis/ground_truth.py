"""Checks of an analysis against a synthetic system's ground truth: the fixed points a model found,
mapped into the true latent space with the harness's latent-R² map, against the system's own."""

from __future__ import annotations

import numpy as np

from neuralnets.errors import AnalysisError
from neuralnets.eval.regression import linear_fit


def attractor_diameter(true_latents: np.ndarray, max_points: int = 4000, seed: int = 0) -> float:
    """The largest distance between two visited states of `true_latents (trials, T, L)` (a random
    subsample of `max_points` states when there are more): the attractor's extent."""
    flat = np.asarray(true_latents, dtype=np.float64).reshape(-1, np.shape(true_latents)[-1])
    if len(flat) > max_points:
        flat = flat[np.random.default_rng(seed).choice(len(flat), max_points, replace=False)]
    diff = flat[:, None, :] - flat[None, :, :]  # (S, S, L)
    return float(np.sqrt((diff**2).sum(-1)).max())


def map_to_true_latents(
    points: np.ndarray, model_latents: np.ndarray, true_latents: np.ndarray, train: np.ndarray
) -> np.ndarray:
    """`points (P, K)` in the model's latent space mapped into the true latent space `(P, L)` by the
    least-squares map the harness fits for latent R² (`eval.regression.linear_fit`, train trials).

    model_latents `(trials, T, K)`, true_latents `(trials, T', L)`: the common leading bins are used."""
    t = min(np.shape(model_latents)[1], np.shape(true_latents)[1])
    w, b = linear_fit(model_latents[train][:, :t], true_latents[train][:, :t])  # (K, L), (L,)
    return np.asarray(points, dtype=np.float64) @ w.cpu().numpy() + b.cpu().numpy()


def fixed_point_distances(mapped: np.ndarray, true_points: np.ndarray, extent: float) -> list[dict]:
    """For each true fixed point `true_points (Q, L)`: the nearest found point of `mapped (P, L)`, its
    index and its distance, absolute and as a fraction of `extent`. An empty `mapped` gives None."""
    true_points = np.asarray(true_points, dtype=np.float64)
    if true_points.ndim != 2 or (len(mapped) and np.shape(mapped)[1] != true_points.shape[1]):
        raise AnalysisError(
            f"true fixed points {true_points.shape} and found points {np.shape(mapped)} must share a "
            "latent space"
        )
    rows = []
    for j, point in enumerate(true_points):
        if len(mapped) == 0:
            rows.append({"true_point": j, "nearest": None, "distance": None, "relative": None})
            continue
        d = np.sqrt(((np.asarray(mapped) - point) ** 2).sum(-1))  # (P,)
        i = int(d.argmin())
        rel = float(d[i] / extent)
        rows.append({"true_point": j, "nearest": i, "distance": float(d[i]), "relative": rel})
    return rows
