"""Fixed points: analytic systems with known answers first (a linear map with known eigenvalues, a 2-D
bistable system), then every model family through its capability flags."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from neuralnets.analysis.fixed_points import find_fixed_points, jacobians, model_fixed_points, speed
from neuralnets.data.spikedata import DataSpec
from neuralnets.errors import AnalysisError
from neuralnets.models import create_model

DT = 0.01  # s per step


def _linear_map(eigs: np.ndarray, seed: int = 0):
    """h' = A h + b with A = V diag(eigs) V^-1 (real, eigs may hold conjugate pairs as 2x2 blocks)."""
    rng = np.random.default_rng(seed)
    n = len(eigs)
    block = np.zeros((n, n))
    i = 0
    while i < n:
        lam = eigs[i]
        if abs(lam.imag) > 0:
            block[i : i + 2, i : i + 2] = [[lam.real, -lam.imag], [lam.imag, lam.real]]
            i += 2
        else:
            block[i, i] = lam.real
            i += 1
    v = rng.standard_normal((n, n))
    a = torch.as_tensor(v @ block @ np.linalg.inv(v))
    b = torch.as_tensor(rng.standard_normal(n))
    return (lambda h: h @ a.T + b), a, b


def test_linear_map_fixed_point_eigenvalues_time_constants_and_frequencies():
    # a decaying 5 Hz rotation, a slow real mode (tau 0.5 s) and a fast one
    r, f = np.exp(-DT / 0.2), 5.0
    rot = r * np.exp(2j * np.pi * f * DT)
    eigs = np.array([rot, np.conj(rot), np.exp(-DT / 0.5), 0.3 + 0j])
    step, a, b = _linear_map(eigs)
    init = torch.randn(16, 4, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    fp = find_fixed_points(step, init, DT, n_iter=300)
    want = np.linalg.solve(np.eye(4) - a.numpy(), b.numpy())
    assert len(fp) == 1 and fp.n_converged == 16
    np.testing.assert_allclose(fp.states[0], want, atol=1e-8)
    assert fp.q[0] < 1e-16 and fp.is_fixed[0]
    got = fp.eigenvalues[0]
    np.testing.assert_allclose(np.sort_complex(got), np.sort_complex(eigs), atol=1e-8)
    assert fp.kinds == ["stable"]
    # modes by decreasing |λ|: the slow real mode, the rotation, the fast mode
    np.testing.assert_allclose(fp.time_constants[0][:3], [0.5, 0.2, 0.2], rtol=1e-6)
    np.testing.assert_allclose(fp.frequencies[0], [0.0, 5.0, 5.0, 0.0], atol=1e-6)


def test_linear_map_with_a_growing_mode_is_a_saddle_and_all_growing_is_unstable():
    step, _, _ = _linear_map(np.array([1.05 + 0j, 0.5 + 0j]))
    fp = find_fixed_points(step, torch.zeros(4, 2, dtype=torch.float64) + 0.3, DT, n_iter=50)
    assert fp.kinds == ["saddle"] and fp.n_unstable.tolist() == [1]
    assert fp.time_constants[0][0] < 0  # growing: negative time constant
    step, _, _ = _linear_map(np.array([1.2 + 0j, 1.1 + 0j]))
    fp = find_fixed_points(step, torch.zeros(4, 2, dtype=torch.float64) + 0.3, DT, n_iter=50)
    assert fp.kinds == ["unstable"]


def _bistable(h: torch.Tensor) -> torch.Tensor:
    """x' = x + 0.1 (x - x^3), y' = 0.9 y: stable points at (±1, 0), a saddle at the origin."""
    x, y = h[..., 0], h[..., 1]
    return torch.stack([x + 0.1 * (x - x**3), 0.9 * y], dim=-1)


def test_bistable_system_has_two_stable_points_and_a_saddle():
    init = torch.randn(64, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    fp = find_fixed_points(_bistable, init, DT, n_iter=500)
    order = np.argsort(fp.states[:, 0])
    np.testing.assert_allclose(fp.states[order], [[-1, 0], [0, 0], [1, 0]], atol=1e-8)
    assert [fp.kinds[i] for i in order] == ["stable", "saddle", "stable"]
    np.testing.assert_allclose(np.abs(fp.eigenvalues[order[1]]), [1.1, 0.9], atol=1e-8)
    np.testing.assert_allclose(np.abs(fp.eigenvalues[order[0]]), [0.9, 0.8], atol=1e-8)


def test_speed_and_jacobians_match_hand_computation():
    h = torch.tensor([[0.5, 2.0]], dtype=torch.float64)
    q = 0.5 * ((0.1 * (0.5 - 0.125)) ** 2 + (0.1 * 2.0) ** 2)
    assert float(speed(_bistable, h)[0]) == pytest.approx(q, abs=1e-15)
    jac = jacobians(_bistable, h)[0].numpy()
    np.testing.assert_allclose(jac, [[1 + 0.1 * (1 - 3 * 0.25), 0], [0, 0.9]], atol=1e-12)


def test_slow_points_are_kept_only_below_the_tolerance():
    # x' = x + 0.01 (1 + x^2)... never zero: the slowest place is x = 0, q = 0.5e-4
    step = lambda h: h + 0.01 * (1 + h**2)  # noqa: E731
    init = torch.linspace(-1, 1, 8, dtype=torch.float64)[:, None]
    assert len(find_fixed_points(step, init, DT, n_iter=300, q_tol=1e-6)) == 0
    fp = find_fixed_points(step, init, DT, n_iter=300, q_tol=1e-4)
    assert fp.n_converged == 8 and not fp.is_fixed.any() and (fp.q < 1e-4).all()
    # sorted by speed: the slowest point first, at x = 0 where q = 0.5e-4
    assert fp.states[0, 0] == pytest.approx(0.0, abs=1e-3) and fp.q[0] == pytest.approx(0.5e-4, rel=1e-4)


def test_bad_initial_states_are_clear_errors():
    with pytest.raises(AnalysisError, match="initial states must be"):
        find_fixed_points(_bistable, torch.zeros(0, 2), DT)
    with pytest.raises(AnalysisError, match="non-finite"):
        find_fixed_points(_bistable, torch.full((2, 2), float("nan")), DT)


# ---------------------------------------------------------------------------------------------- models
SPEC = DataSpec(n_heldin=6, n_neurons=8, n_obs_bins=10, n_fwd_bins=3, bin_size=0.01)
SMALL = {
    "lfads": dict(gen_dim=8, fac_dim=3, ic_enc_dim=4, ci_enc_dim=4, con_dim=4, co_dim=1),
    "rnn": dict(enc_dim=4, latent_dim=4, dec_dim=8, fac_dim=3),
}


@pytest.mark.parametrize(
    "name, options",
    [
        ("lfads", SMALL["lfads"]),
        ("rnn", SMALL["rnn"]),
        ("rnn", dict(SMALL["rnn"], cell="lstm")),
        ("stitched", dict(core="lfads", core_options=SMALL["lfads"])),
    ],
)
def test_every_recurrent_family_gives_states_steps_and_points(name, options):
    torch.manual_seed(0)
    model = create_model(name, SPEC, **options).eval()
    x = torch.poisson(torch.full((5, 10, 6), 1.0))
    states = model.dynamics_states(x)  # (B, T, H)
    with torch.no_grad():
        out = model({"heldin": x})
        # the states are those behind the returned latents, and the forward bins run autonomously
        torch.testing.assert_close(model.states_to_latents(states), out.latents, atol=1e-5, rtol=0)
        torch.testing.assert_close(model.autonomous_step(states[:, -2]), states[:, -1], atol=1e-6, rtol=0)
    res = model_fixed_points(model, x, n_initial=16, n_iter=200)
    fp = res.fixed_points
    assert res.trajectory_latents.shape == (5, 13, 3)
    assert len(fp) >= 1 and fp.latents.shape == (len(fp), 3)
    assert (fp.q < 1e-4).all()
    assert not any(p.dtype == torch.float64 for p in model.parameters())  # the model itself is unchanged


@pytest.mark.parametrize("name", ["ndt", "gpfa", "stndt"])
def test_models_without_recurrent_dynamics_are_refused_in_one_line(name):
    model = create_model(name, SPEC)
    assert not model.has_recurrent_dynamics
    with pytest.raises(AnalysisError, match=r"need a model with recurrent dynamics .* has none") as err:
        model_fixed_points(model, np.ones((2, 10, 6), dtype=np.float32))
    assert "\n" not in str(err.value)


def test_states_come_from_at_most_max_trials_and_bad_spikes_are_refused():
    torch.manual_seed(0)
    model = create_model("rnn", SPEC, **SMALL["rnn"])
    x = np.random.default_rng(0).poisson(1.0, size=(7, 10, 6)).astype(np.float32)
    res = model_fixed_points(model, x, n_initial=4, n_iter=20, max_trials=3)
    assert res.states.shape == (3, 13, 8) and res.trajectory_latents.shape == (3, 13, 3)
    with pytest.raises(AnalysisError, match=r"must be \(trials, T_obs, N_in\)"):
        model_fixed_points(model, x[0])
