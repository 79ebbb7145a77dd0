"""The validation systems (`neuralnets.data.synthetic_linear`) and the analyses on them where the answer
is exact: the fixed points, spectrum and slow manifold of the true linear map itself (a linear "model"
whose weights are the system's), the DMD of the true latents, and the input detector on the true pulses."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from neuralnets.analysis.fixed_points import find_fixed_points
from neuralnets.analysis.inputs import detect_peaks, event_precision_recall, input_magnitude, known_events
from neuralnets.analysis.linear_dynamics import fit_linear_dynamics
from neuralnets.analysis.manifolds import describe_group, group_points, modes, slowest_direction_alignment
from neuralnets.data import load
from neuralnets.data.synthetic_linear import DEFAULT_MODES, linear_map
from neuralnets.errors import DataError

TINY = dict(n_trials=40, n_neurons=12, n_heldout=3, n_bins=60)


def _search(a: np.ndarray, data, n: int = 64):
    """Fixed points of the map x -> A x from visited true states (float64)."""
    at = torch.as_tensor(a)
    visited = data.latents.astype(np.float64).reshape(-1, a.shape[0])  # (trials*T, L)
    init = torch.as_tensor(visited[:: max(1, len(visited) // n)][:n])
    return find_fixed_points(lambda h: h @ at.T, init, data.bin_size, n_iter=200, q_tol=1e-12)


def test_linear_pulses_hold_the_stated_system_exactly():
    d = load("linear_pulses", seed=1, **TINY)
    a, eig = linear_map(DEFAULT_MODES, d.bin_size)
    np.testing.assert_allclose(
        np.asarray(d.meta["eigenvalues"])[:, 0] + 1j * np.asarray(d.meta["eigenvalues"])[:, 1], eig
    )
    step = d.latents[:, 1:] - d.latents[:, :-1] @ a.T  # what the map does not explain: the pulses
    np.testing.assert_allclose(step, d.inputs[:, :-1] * np.ones(4), atol=1e-6)  # latents kept as float32
    assert set(np.unique(d.inputs)) <= {-1.0, 0.0, 1.0} and (d.inputs != 0).sum() > 0
    assert d.meta["fixed_points"] == [[0.0] * 4]
    free = load("linear_pulses", seed=1, pulse_rate=0.0, **TINY)
    assert (free.inputs == 0).all()
    with pytest.raises(DataError, match="Nyquist"):
        load("linear_pulses", modes=((0.1, 60.0),), **TINY)


def test_the_true_map_gives_one_stable_point_with_every_mode_and_dmd_agrees():
    d = load("linear_pulses", seed=2, **TINY)
    a, _ = linear_map(DEFAULT_MODES, d.bin_size)
    fp = _search(a, d)
    assert len(fp) == 1 and fp.kinds == ["stable"] and np.abs(fp.states).max() < 1e-8
    found = modes(fp.eigenvalues[0], d.bin_size, min_tau=0.05)
    assert [round(m["tau_s"], 6) for m in found] == [3.0, 0.4, 0.08]  # all three, the 80 ms transient too
    assert found[1]["hz"] == pytest.approx(3.0, abs=1e-9)
    free = load("linear_pulses", seed=2, pulse_rate=0.0, **TINY)  # DMD of the noise-free latents: exact
    dmd = modes(fit_linear_dynamics(free.latents, d.bin_size).eigenvalues, d.bin_size, min_tau=0.05)
    assert [m["tau_s"] for m in dmd] == pytest.approx([3.0, 0.4, 0.08], rel=1e-3)  # float32 latents
    assert dmd[1]["hz"] == pytest.approx(3.0, rel=1e-4)


def test_the_line_attractor_is_one_line_along_its_slowest_mode():
    d = load("line_attractor", seed=3, **TINY)
    a, _ = linear_map(((np.inf, 0.0), (0.1, 0.0)), d.bin_size)
    fp = _search(a, d)
    assert len(fp) > 5 and fp.is_fixed.all()  # many points, every one fixed
    scale = float(np.sqrt(((d.latents - d.latents.mean((0, 1))) ** 2).sum(-1).mean()))
    (g,) = group_points(fp.states, scale, fp.q)
    align = slowest_direction_alignment(g, fp.eigenvectors[g.representative])
    assert g.kind == "line" and align == pytest.approx(1.0, abs=1e-9)
    assert abs(g.axes[0] @ np.asarray(d.meta["line_direction"])) == pytest.approx(1.0, abs=1e-9)
    name = describe_group(g, align, abs(fp.time_constants[g.representative, 0]), window=d.n_obs * d.bin_size)
    assert name.startswith("line attractor")


def test_a_model_that_marks_each_pulse_one_bin_early_scores_perfectly():
    d = load("linear_pulses", seed=4, **TINY)
    inferred = np.zeros_like(d.inputs)
    inferred[:, :-1] = 0.7 * d.inputs[:, 1:]  # the model's input one bin before the pulse, any sign
    score = event_precision_recall(detect_peaks(input_magnitude(inferred), 0.35), known_events(d.inputs))
    assert (score.precision, score.recall, score.median_lag_bins) == (1.0, 1.0, -1.0)
