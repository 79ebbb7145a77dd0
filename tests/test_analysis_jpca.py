"""jPCA and condition averages: a pure rotation (known frequency, R² ratio near 1) and a
non-rotational system (R² ratio near 0), plus the hand-checkable pieces."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.linalg import expm

from neuralnets.analysis.jpca import condition_average, jpca, pca
from neuralnets.errors import AnalysisError

DT = 0.01


def _embed(x: np.ndarray, k: int, seed: int = 0) -> np.ndarray:
    """Trajectories (C, T, d) placed in k dimensions by a random orthonormal map."""
    q, _ = np.linalg.qr(np.random.default_rng(seed).standard_normal((k, k)))
    return x @ q[: x.shape[-1]]


def test_pure_rotation_frequency_and_rotational_ratio():
    freq, t = 3.0, np.arange(40) * DT
    phases = np.linspace(0, 2 * np.pi, 8, endpoint=False)
    radii = np.linspace(1.0, 2.0, 8)
    angle = 2 * np.pi * freq * t[None, :] + phases[:, None]  # (C, T)
    plane = np.stack([radii[:, None] * np.cos(angle), radii[:, None] * np.sin(angle)], axis=-1)
    x = _embed(plane, 6)  # (C, T, 6): a rotation in one plane of 6-D
    x = x + 1e-3 * np.random.default_rng(1).standard_normal(x.shape)
    res = jpca(x, DT, n_pcs=2, subtract_mean=False)
    assert res.frequencies_hz[0] == pytest.approx(freq, rel=0.01)
    assert res.r2_skew > 0.99 and res.rotational_ratio == pytest.approx(1.0, abs=0.01)
    # the first jPC plane is the plane of the rotation (principal angles ~0)
    plane_in_data = res.planes[0] @ res.pc_components  # (2, 6)
    true_plane = _embed(np.eye(2)[None], 6)[0]  # (2, 6)
    np.testing.assert_allclose(np.linalg.svd(plane_in_data @ true_plane.T)[1], 1.0, atol=1e-3)
    with_mean_removed = jpca(x, DT, n_pcs=4)  # 4 PCs: the extra two hold only the noise
    assert with_mean_removed.frequencies_hz[0] == pytest.approx(freq, rel=0.01)
    assert with_mean_removed.rotational_ratio > 0.95


def test_non_rotational_decay_has_a_low_ratio():
    t = np.arange(40) * DT
    starts = np.random.default_rng(0).standard_normal((4, 4))
    starts = np.concatenate([starts, -starts])  # (C, 4): mirrored, so the cross-condition mean is 0
    taus = np.array([0.05, 0.1, 0.2, 0.4])
    x = _embed(starts[:, None, :] * np.exp(-t[None, :, None] / taus), 4)  # (C, T, 4) pure decay
    res = jpca(x, DT, n_pcs=4)
    assert res.r2_full > 0.99
    assert res.r2_skew < 0.2 and res.rotational_ratio < 0.2


def test_skew_fit_is_skew_symmetric_and_full_fit_recovers_a_linear_system():
    rng = np.random.default_rng(2)
    a = rng.standard_normal((4, 4))
    m = 5.0 * (a - a.T) / 2 - 2.0 * np.eye(4)  # rotation + decay, per second
    x = [rng.standard_normal(4)]
    step = expm(DT * m)  # exact flow over one bin: the midpoint fit recovers M to O(dt^2)
    for _ in range(99):
        x.append(step @ x[-1])
    traj = np.asarray(x)[None]  # (1, T, 4)
    res = jpca(np.concatenate([traj, -traj]), DT, n_pcs=4, subtract_mean=False)
    np.testing.assert_allclose(res.m_skew, -res.m_skew.T, atol=1e-12)
    back = res.pc_components.T @ res.m_full @ res.pc_components  # PC coordinates -> original
    np.testing.assert_allclose(back, m, atol=0.1)


def test_condition_average_and_pca_by_hand():
    x = np.arange(2 * 3 * 2, dtype=float).reshape(2 * 1, 3, 2).repeat(2, axis=0)  # (4, 3, 2)
    cond = np.array([1, 0, 1, 0])
    mean, labels = condition_average(x, cond)
    assert labels.tolist() == [0, 1] and mean.shape == (2, 3, 2)
    np.testing.assert_allclose(mean[1], x[[0, 2]].mean(axis=0))
    mean_tr, _ = condition_average(x, cond, trials=np.array([0, 1]))
    np.testing.assert_allclose(mean_tr[0], x[1])
    scores, comps, var = pca(np.array([[0.0, 0.0], [2.0, 0.0], [4.0, 0.0]]), 1)
    np.testing.assert_allclose(np.abs(comps), [[1.0, 0.0]])
    assert var[0] == pytest.approx(1.0)


def test_bad_inputs_are_clear_errors():
    with pytest.raises(AnalysisError, match="conditions, T >= 3"):
        jpca(np.zeros((3, 2, 4)), DT)
    with pytest.raises(AnalysisError, match="at least 2 conditions"):
        jpca(np.random.default_rng(0).standard_normal((1, 10, 4)), DT)
    with pytest.raises(AnalysisError, match="one condition per trial"):
        condition_average(np.zeros((4, 3, 2)), np.zeros(3))
