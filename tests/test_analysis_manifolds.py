"""Slow points grouped into manifolds: synthetic point clouds with a known dimension and extent (a line,
a ring, an arc, a plane, isolated points), and the modes a report shows."""

from __future__ import annotations

import numpy as np
import pytest

from neuralnets.analysis.manifolds import group_points, modes, slowest_direction_alignment
from neuralnets.errors import AnalysisError


def _embed(low: np.ndarray, h: int = 10, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Points `low (P, d)` placed in R^h along d random orthonormal axes (h, d), shifted off the origin."""
    q, _ = np.linalg.qr(np.random.default_rng(seed).standard_normal((h, low.shape[1])))
    return low @ q.T + 3.0, q


def test_a_line_of_points_is_one_line_with_its_extent_and_direction():
    rng = np.random.default_rng(1)
    t = np.linspace(-2.0, 2.0, 56) + rng.uniform(-0.02, 0.02, 56)  # 56 slow points on a 4-unit segment
    pts, axes = _embed(np.column_stack([t, 1e-4 * rng.standard_normal(56)]))
    (g,) = group_points(pts, scale=1.0, q=np.linspace(1, 0, 56))
    assert (g.kind, g.dimension, len(g.members)) == ("line", 1, 56)
    assert g.extent[0] == pytest.approx(t.max() - t.min(), rel=1e-6)
    assert abs(g.axes[0] @ axes[:, 0]) == pytest.approx(1.0, abs=1e-6)
    assert g.representative == 55  # the lowest q
    jac_vecs = np.eye(10)[:, ::-1].copy()  # eigenvectors: slowest (column 0) along the line, the rest off it
    jac_vecs[:, 0] = axes[:, 0]
    assert slowest_direction_alignment(g, jac_vecs) == pytest.approx(1.0, abs=1e-6)
    gappy = np.concatenate([pts[:20], pts[30:]])  # a gap in the search's coverage: still one line
    (g,) = group_points(gappy, scale=1.0)
    assert g.kind == "line" and len(g.members) == 46


def test_a_ring_an_arc_and_a_plane_are_told_apart():
    rng = np.random.default_rng(2)
    ang = np.linspace(0, 2 * np.pi, 80, endpoint=False) + rng.uniform(-0.02, 0.02, 80)
    ring, _ = _embed(1.5 * np.column_stack([np.cos(ang), np.sin(ang)]))
    (g,) = group_points(ring, scale=1.0)
    assert (g.kind, g.dimension) == ("ring", 2) and g.radius == pytest.approx(1.5, rel=1e-6)
    assert np.allclose(g.extent, 3.0, atol=0.1)  # the diameter along both axes
    assert np.allclose(g.center, 3.0, atol=1e-6)  # the circle's centre
    half = np.linspace(0, np.pi, 40)
    (arc,) = group_points(_embed(np.column_stack([np.cos(half), np.sin(half)]))[0], scale=1.0)
    assert arc.kind == "arc"
    grid = np.stack(np.meshgrid(np.linspace(-1, 1, 15), np.linspace(-0.5, 0.5, 8)), -1).reshape(-1, 2)
    plane, _ = _embed(grid + rng.uniform(-0.02, 0.02, grid.shape))  # a filled 2 x 1 rectangle
    (p,) = group_points(plane, scale=1.0)
    assert (p.kind, p.dimension) == ("plane", 2) and np.allclose(p.extent, [2.0, 1.0], atol=0.1)


def test_isolated_points_stay_apart_and_tight_clusters_are_points():
    rng = np.random.default_rng(3)
    centres = np.array([[0.0, 0, 0], [5, 0, 0], [0, 5, 0]])
    pts = np.concatenate([c + 1e-4 * rng.standard_normal((7, 3)) for c in centres])  # 3 tight clusters
    groups = group_points(pts, scale=2.0)
    assert sorted(g.kind for g in groups) == ["point"] * 3
    assert sorted(len(g.members) for g in groups) == [7, 7, 7]
    for g in groups:
        assert min(np.linalg.norm(g.center - c) for c in centres) < 1e-3
        assert slowest_direction_alignment(g, np.eye(3)) is None
    assert group_points(np.zeros((0, 3)), scale=1.0) == []
    with pytest.raises(AnalysisError, match="scale"):
        group_points(pts, scale=0.0)


def test_modes_show_every_slow_mode_once_and_every_growing_one():
    dt = 0.01
    pair = np.exp(-dt / 0.4 + 2j * np.pi * 3 * dt)  # a 3 Hz oscillation decaying in 0.4 s
    lam = np.array([1.0, np.exp(-dt / 3.0), pair, pair.conj(), np.exp(-dt / 0.08), np.exp(-dt / 0.005), 1.2])
    got = modes(lam, dt, min_tau=0.05)
    assert [m["abs"] for m in got] == sorted((m["abs"] for m in got), reverse=True)
    assert len(got) == 5  # growing, integrator (|λ| = 1), 3 s, the 3 Hz pair once, 80 ms; not the 5 ms one
    assert got[0]["tau_s"] < 0 and got[1]["tau_s"] == np.inf
    assert got[2]["tau_s"] == pytest.approx(3.0) and got[3]["hz"] == pytest.approx(3.0)
    assert got[3]["tau_s"] == pytest.approx(0.4) and got[4]["tau_s"] == pytest.approx(0.08)
    assert len(modes(lam, dt, min_tau=0.001)) == 6


def test_describe_kinds_shows_the_mix_only_when_there_is_one():
    from neuralnets.analysis.manifolds import describe_kinds

    assert describe_kinds(["stable"] * 3, "stable") == "stable"
    assert describe_kinds(["stable", "saddle", "stable"], "stable") == "stable (1 saddle, 2 stable)"
