"""The data-driven second opinion (least-squares DMD) and dynamical similarity (DSA) on linear systems
whose answers are exact."""

from __future__ import annotations

import numpy as np
import pytest

from neuralnets.analysis.linear_dynamics import compare_modes, dsa, fit_linear_dynamics, procrustes_angle
from neuralnets.analysis.manifolds import modes
from neuralnets.errors import AnalysisError

DT = 0.01


def _system(seed: int = 0) -> np.ndarray:
    """A known map (4, 4): a 3 Hz pair decaying in 0.4 s, a 3 s integrator, an 80 ms transient."""
    r, w = np.exp(-DT / 0.4), 2 * np.pi * 3 * DT
    a = np.zeros((4, 4))
    a[:2, :2] = r * np.array([[np.cos(w), -np.sin(w)], [np.sin(w), np.cos(w)]])
    a[2, 2], a[3, 3] = np.exp(-DT / 3.0), np.exp(-DT / 0.08)
    q, _ = np.linalg.qr(np.random.default_rng(seed).standard_normal((4, 4)))
    return q @ a @ q.T  # the same dynamics in rotated coordinates


def _run(a: np.ndarray, n: int = 30, t: int = 60, seed: int = 1, noise: float = 0.0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    x = np.zeros((n, t, a.shape[0]))
    x[:, 0] = rng.standard_normal((n, a.shape[0]))
    for k in range(1, t):
        x[:, k] = x[:, k - 1] @ a.T + noise * rng.standard_normal((n, a.shape[0]))
    return x + 2.0  # (trials, T, K) off the origin: the intercept is fitted too


def test_least_squares_dmd_recovers_a_known_spectrum_exactly():
    fit = fit_linear_dynamics(_run(_system()), DT)
    assert fit.r2 == pytest.approx(1.0, abs=1e-9)
    got = modes(fit.eigenvalues, DT, min_tau=0.05)
    assert [round(m["tau_s"], 6) for m in got] == [3.0, 0.4, 0.08]
    assert got[1]["hz"] == pytest.approx(3.0, abs=1e-9)
    truth = modes(np.linalg.eigvals(_system()), DT, min_tau=0.05)
    assert all(r["agree"] and r["tau_rel"] < 1e-6 for r in compare_modes(truth, got))
    off = [{"tau_s": 3.0, "hz": 3.0}, {"tau_s": 0.4, "hz": 3.5}]  # modes the data do not have: flagged
    assert [r["agree"] for r in compare_modes(off, got)] == [False, False]
    assert compare_modes([{"tau_s": 0.45, "hz": 3.05}], got)[0]["agree"]  # 11 % and 2 % off: agree
    with pytest.raises(AnalysisError, match="trials, T >= 3"):
        fit_linear_dynamics(np.zeros((3, 2, 4)), DT)


def test_dsa_is_zero_for_conjugate_systems_and_large_for_different_ones():
    a = _system(0)
    q, _ = np.linalg.qr(np.random.default_rng(5).standard_normal((4, 4)))
    assert procrustes_angle(a, q @ a @ q.T) < 1e-3  # same dynamics, other coordinates
    b = np.diag([0.5, -0.5, 0.9, 0.2])
    assert procrustes_angle(a, b) > 0.3
    x1, x2 = _run(a, noise=0.05), _run(_system(3), seed=2, noise=0.05)  # the same system, two rotations
    x3 = _run(b, noise=0.05)
    same, other = dsa(x1, x2, n_delays=1, rank=4), dsa(x1, x3, n_delays=1, rank=4)
    assert same < 0.1 and other > 3 * same


def test_mode_spread_pairs_each_mode_across_runs():
    from neuralnets.analysis.spread import mode_spread

    runs = [
        [{"tau_s": 1.0, "hz": 3.0}, {"tau_s": 0.08, "hz": 0.0}],
        [{"tau_s": 0.07, "hz": 0.0}, {"tau_s": 1.1, "hz": 3.1}],  # the same modes, in another order
        [{"tau_s": 0.9, "hz": 2.9}, {"tau_s": 0.09, "hz": 0.0}, {"tau_s": 0.01, "hz": 0.0}],
        [],  # a run without modes
    ]
    osc, fast = mode_spread(runs)
    np.testing.assert_allclose(osc["tau_s"][:3], [1.0, 1.1, 0.9])
    np.testing.assert_allclose(osc["hz"][:3], [3.0, 3.1, 2.9])
    np.testing.assert_allclose(fast["tau_s"][:3], [0.08, 0.07, 0.09])
    assert np.isnan(osc["tau_s"][3])
    with pytest.raises(AnalysisError, match="at least one run"):
        mode_spread([])
