"""Synthetic datasets: determinism, shapes, realistic ranges, ground-truth consistency."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.integrate import solve_ivp

from neuralnets.data import chaotic_rnn, lorenz
from neuralnets.data.synthetic import _rk4_step
from neuralnets.errors import DataError

SMALL = dict(n_trials=24, n_neurons=12, n_bins=30, n_heldout=4, n_fwd=5, n_conditions=4)
FIELDS = ("spikes", "rates", "latents", "behavior", "condition", "split")


@pytest.mark.parametrize("gen", [lorenz, chaotic_rnn])
def test_deterministic_for_a_seed(gen):
    a, b, c = gen(seed=3, **SMALL), gen(seed=3, **SMALL), gen(seed=4, **SMALL)
    for name in FIELDS:
        np.testing.assert_array_equal(getattr(a, name), getattr(b, name), err_msg=name)
    assert not np.array_equal(a.spikes, c.spikes)
    assert not np.array_equal(a.latents, c.latents)


@pytest.mark.parametrize(("gen", "k"), [(lorenz, 3), (chaotic_rnn, 8)])
def test_shapes_and_split(gen, k):
    d = gen(**SMALL)
    assert d.spikes.shape == d.rates.shape == (24, 30, 12)
    assert d.latents.shape == (24, 30, k)
    assert d.behavior.shape == (24, 25, 2)
    assert (d.n_heldin, d.n_heldout, d.n_obs, d.n_fwd) == (8, 4, 25, 5)
    assert d.spikes.dtype == np.float32
    np.testing.assert_array_equal(np.bincount(d.condition), [6, 6, 6, 6])  # balanced conditions
    assert [int((d.split == s).sum()) for s in ("train", "val", "test")] == [14, 5, 5]
    assert d.name == gen.__name__


@pytest.mark.parametrize("gen", [lorenz, chaotic_rnn])
def test_default_rates_are_realistic(gen):
    d = gen()
    assert d.spikes.shape == ({lorenz: 1000, chaotic_rnn: 400}[gen], 50, 40)
    assert (d.n_heldin, d.n_fwd, d.bin_size) == (30, 10, 0.01)
    hz = d.rates / d.bin_size
    # each neuron's mean rate over the dataset is its base rate, drawn in 5-20 Hz
    per_neuron = hz.mean(axis=(0, 1))
    assert per_neuron.min() >= 5 - 1e-3 and per_neuron.max() <= 20 + 1e-3
    assert hz.min() > 0 and np.percentile(hz, 99.9) < 150 and hz.max() < 400
    # rates are modulated in time (not constant), and spikes are Poisson draws from them
    assert np.median(hz.std(axis=(0, 1)) / per_neuron) > 0.4
    assert abs(d.spikes.mean() - d.rates.mean()) < 0.05 * d.rates.mean()


def test_lorenz_log_rates_are_affine_in_latents():
    d = lorenz(**SMALL)
    x = np.concatenate([np.ones((24 * 30, 1)), d.latents.reshape(-1, 3)], axis=1).astype(np.float64)
    y = np.log(d.rates.reshape(-1, 12).astype(np.float64))
    coef, *_ = np.linalg.lstsq(x, y, rcond=None)
    assert np.abs(x @ coef - y).max() < 1e-4  # log-linear readout, float32 storage error only
    np.testing.assert_allclose(d.latents.mean(axis=(0, 1)), 0, atol=1e-5)  # z-scored
    np.testing.assert_allclose(d.latents.std(axis=(0, 1)), 1, atol=1e-5)


def test_lorenz_rk4_matches_a_reference_integrator():
    s0 = np.array([[1.0, 1.0, 20.0]])
    s = s0.copy()
    for _ in range(100):  # 0.5 Lorenz time units
        s = _rk4_step(s, 0.005, 10.0, 28.0, 8.0 / 3.0)

    def field(_t, v):
        x, y, z = v
        return [10.0 * (y - x), x * (28.0 - z) - y, x * y - 8.0 / 3.0 * z]

    ref = solve_ivp(field, (0, 0.5), s0[0], rtol=1e-11, atol=1e-11, method="DOP853").y[:, -1]
    np.testing.assert_allclose(s[0], ref, rtol=1e-6, atol=1e-6)


def test_lorenz_behavior_is_the_latent_velocity():
    d = lorenz(behavior_noise=0.0, **SMALL)
    for dim in (0, 1):
        fd = np.gradient(d.latents[..., dim], axis=1)[:, : d.n_obs]  # finite-difference velocity
        r = np.corrcoef(fd.ravel(), d.behavior[..., dim].ravel())[0, 1]
        assert r > 0.99
    np.testing.assert_allclose(d.behavior.std(axis=(0, 1)), 1, atol=1e-5)


@pytest.mark.parametrize("gen", [lorenz, chaotic_rnn])
def test_conditions_share_initial_states(gen):
    same = gen(ic_noise=0.0, **SMALL)
    for c in range(4):
        lat = same.latents[same.condition == c]
        np.testing.assert_array_equal(lat, np.broadcast_to(lat[0], lat.shape))  # identical latents
        assert not np.array_equal(same.spikes[same.condition == c][0], same.spikes[same.condition == c][1])
    d = gen(**SMALL)
    means = np.stack([d.latents[d.condition == c, 0].mean(0) for c in range(4)])  # (C, K) at t=0
    within = d.latents[:, 0].var(axis=0).sum() - means.var(axis=0).sum()
    assert within < 0.2 * d.latents[:, 0].var(axis=0).sum()  # trials start close to their condition


def test_chaotic_rnn_latents_and_behavior():
    d = chaotic_rnn(n_latents=5, behavior_noise=0.0, **SMALL)
    assert d.latents.shape[2] == 5
    var = d.latents.var(axis=(0, 1))
    assert np.all(np.diff(var) <= 1e-6)  # principal components come in decreasing variance
    assert 0.5 < d.meta["latent_variance_explained"] <= 1.0
    assert d.meta["latents"] == "top 5 principal components of tanh(x)"
    np.testing.assert_allclose(d.behavior.std(axis=(0, 1)), 1, atol=1e-5)


@pytest.mark.parametrize("gen", [lorenz, chaotic_rnn])
@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        (dict(n_heldout=12), "n_heldout=12"),
        (dict(n_fwd=30), "n_fwd=30"),
        (dict(n_trials=0), "n_trials"),
        (dict(bin_size=-0.01), "bin_size"),
        (dict(base_rate=(20.0, 5.0)), "base_rate"),
    ],
)
def test_bad_arguments(gen, kwargs, message):
    args = {**SMALL, **kwargs}
    with pytest.raises(DataError, match=message):
        gen(**args)


def test_chaotic_rnn_refuses_unstable_euler_step():
    with pytest.raises(DataError, match="must be < tau"):
        chaotic_rnn(tau=0.001, steps_per_bin=1, **SMALL)
