"""Figures of the analyses, built without pyplot (as `neuralnets.training.figures`): fixed points on the
latent trajectories, condition-averaged trajectories in the first jPC plane, inferred-input magnitude
around trial events."""

from __future__ import annotations

import numpy as np
from matplotlib import colormaps
from matplotlib.figure import Figure

from neuralnets.analysis.fixed_points import FixedPoints
from neuralnets.analysis.jpca import JPCA, pca

_TAB10 = colormaps["tab10"]
KIND_COLORS = {"stable": "tab:blue", "saddle": "tab:orange", "unstable": "tab:red"}


def fixed_points_figure(trajectories: np.ndarray, fp: FixedPoints, n_trials: int = 30) -> Figure:
    """The first `n_trials` latent trajectories `(trials, T, K)` (grey) and the fixed points (filled)
    and slow points (open) in the top 2 principal components of the trajectories, coloured by kind."""
    traj = np.asarray(trajectories)[:n_trials]
    flat = traj.reshape(-1, traj.shape[-1])
    mean = flat.mean(axis=0)
    _, comps, _ = pca(flat, 2)  # (2, K)
    fig = Figure(figsize=(5, 4.5))
    ax = fig.add_subplot()
    for tr in traj:
        xy = (tr - mean) @ comps.T
        ax.plot(xy[:, 0], xy[:, -1], color="0.7", lw=0.6)
    if len(fp) and fp.latents is not None:
        pts = (fp.latents - mean) @ comps.T  # (P, 2)
        for kind, color in KIND_COLORS.items():
            sel = np.array([k == kind for k in fp.kinds])
            for fixed, face in ((True, color), (False, "none")):
                s = sel & (fp.is_fixed == fixed)
                if s.any():
                    label = f"{kind} ({'fixed' if fixed else 'slow'})"
                    ax.scatter(pts[s, 0], pts[s, -1], s=40, facecolors=face, edgecolors=color, label=label)
        ax.legend(fontsize=7, loc="best")
    ax.set_xlabel("latent PC 1")
    ax.set_ylabel("latent PC 2")
    ax.set_title("fixed (filled) and slow (open) points on the latent trajectories", fontsize=9)
    fig.tight_layout()
    return fig


def jpca_figure(res: JPCA, labels: np.ndarray | None = None) -> Figure:
    """Condition-averaged trajectories in the first jPC plane (a dot at each start)."""
    fig = Figure(figsize=(4.5, 4.5))
    ax = fig.add_subplot()
    for i, xy in enumerate(res.projection):
        color = _TAB10(i % 10)
        ax.plot(xy[:, 0], xy[:, 1], color=color, lw=1.2, label=None if labels is None else str(labels[i]))
        ax.scatter(xy[:1, 0], xy[:1, 1], color=color, s=15)
    ax.set_xlabel("jPC 1")
    ax.set_ylabel("jPC 2")
    hz = res.frequencies_hz[0] if len(res.frequencies_hz) else float("nan")
    ax.set_title(f"jPC plane 1: {hz:.2f} Hz, R² skew/full = {res.r2_skew:.2f}/{res.r2_full:.2f}", fontsize=9)
    if labels is not None and len(labels) <= 10:
        ax.legend(fontsize=7, title="condition", title_fontsize=7)
    fig.tight_layout()
    return fig


def input_events_figure(aligned: dict[str, tuple], bin_size: float, threshold: float) -> Figure:
    """Inferred-input magnitude around each trial event: {event: (lags (L,) bins, mean (L,), sem (L,))}."""
    fig = Figure(figsize=(5, 3.5))
    ax = fig.add_subplot()
    for i, (name, (lags, mean, sem)) in enumerate(aligned.items()):
        t = lags * bin_size * 1e3  # ms
        ax.plot(t, mean, color=_TAB10(i % 10), label=name)
        ax.fill_between(t, mean - sem, mean + sem, color=_TAB10(i % 10), alpha=0.25, lw=0)
    ax.axhline(threshold, color="k", ls="--", lw=0.8, label="event threshold")
    ax.axvline(0, color="0.5", lw=0.6)
    ax.set_xlabel("time from event (ms)")
    ax.set_ylabel("inferred-input magnitude")
    ax.legend(fontsize=7)
    fig.tight_layout()
    return fig
