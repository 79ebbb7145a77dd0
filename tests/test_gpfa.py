"""GPFA (neuralnets.models.gpfa): the Woodbury marginal likelihood and posterior mean against dense
Gaussian formulas, gradients, bad input, latent recovery, and a tiny run through training and loading."""

from __future__ import annotations

import h5py
import numpy as np
import pytest
import torch
from hydra import compose, initialize_config_dir
from tiny import TINY_DATA, TINY_LORENZ

from neuralnets import load_pretrained
from neuralnets.config import CONFIG_DIR
from neuralnets.data import load
from neuralnets.data.spikedata import DataSpec
from neuralnets.errors import ConfigError
from neuralnets.models import create_model
from neuralnets.models.gpfa import GPFA, se_kernel
from neuralnets.training.module import TrainingModule
from neuralnets.training.train import train

SPEC = DataSpec(n_heldin=4, n_neurons=6, n_obs_bins=5, n_fwd_bins=3, bin_size=0.02)


def _model(seed: int = 0) -> GPFA:
    torch.manual_seed(seed)
    model = create_model("gpfa", SPEC, latent_dim=2).double()
    with torch.no_grad():  # away from the init, so every term matters
        model.loading.normal_()
        model.offset.uniform_(1.0, 2.0)
        model.obs_noise_raw.uniform_(-1.0, 0.5)
        model.log_tau.copy_(torch.tensor([0.2, 1.3]))
    return model


def _dense(model: GPFA, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Reference: the full (T*N_in) covariance, MultivariateNormal, and Gaussian conditioning."""
    B, T, P = y.shape
    q, T_all = model.latent_dim, SPEC.n_bins
    k = se_kernel(torch.arange(T_all, dtype=torch.float64), model.timescales.double(), model.gp_noise)
    K = torch.zeros(T_all, q, T_all, q, dtype=torch.float64)  # time-major latents (t, i)
    for i in range(q):
        K[:, i, :, i] = k[i]
    K = K.reshape(T_all * q, T_all * q)
    A = torch.kron(torch.eye(T, dtype=torch.float64), model.loading.double())  # (T*P, T*q)
    K_obs = K[: T * q, : T * q]
    cov = A @ K_obs @ A.T + torch.diag(model.obs_noise.double().repeat(T))  # (T*P, T*P)
    mu = model.offset.double().repeat(T)
    flat = y.reshape(B, T * P)
    nll = -torch.distributions.MultivariateNormal(mu, cov).log_prob(flat)  # (B,)
    mean = K[:, : T * q] @ A.T @ torch.linalg.solve(cov, (flat - mu).T)  # (T_all*q, B)
    return nll, mean.T.reshape(B, T_all, q)


def test_marginal_likelihood_and_posterior_mean_equal_dense_formulas():
    model = _model()
    y = torch.poisson(torch.full((3, 5, 4), 2.5, dtype=torch.float64)).sqrt()  # (B, T_obs, N_in)
    nll, mean = model.marginal(y)
    ref_nll, ref_mean = _dense(model, y)
    torch.testing.assert_close(nll, ref_nll, rtol=1e-9, atol=1e-9)
    assert mean.shape == (3, SPEC.n_bins, 2)  # observed and forward bins
    torch.testing.assert_close(mean, ref_mean, rtol=1e-8, atol=1e-9)
    assert mean[:, SPEC.n_obs_bins :].abs().max() > 1e-3  # the forward bins are predicted, not zero


def test_gradients_finite_and_readout_is_a_glm_on_detached_latents():
    model = _model().float()
    heldin = torch.poisson(torch.full((4, 5, 4), 2.0))
    out = model({"heldin": heldin})
    assert out.rates.shape == (4, 8, 6) and out.latents.shape == (4, 8, 2) and (out.rates > 0).all()
    out.aux_losses["gpfa_nll"].backward(retain_graph=True)
    for name in ("loading", "offset", "obs_noise_raw", "log_tau"):
        grad = getattr(model, name).grad
        assert grad is not None and torch.isfinite(grad).all() and grad.abs().sum() > 0, name
    assert model.readout.weight.grad is None  # the marginal likelihood does not reach the read-out
    model.zero_grad()
    out.rates.sum().backward()
    assert model.loading.grad is None and model.readout.weight.grad.abs().sum() > 0


@pytest.mark.parametrize(
    "options, match",
    [
        ({"latent_dim": 5}, "latent_dim must be an integer in \\[1, n_heldin=4\\]"),
        ({"tau_init_ms": 0.0}, "tau_init_ms must be a positive"),
        ({"gp_noise": 0.0}, "gp_noise must be in \\(0, 1\\)"),
    ],
)
def test_bad_options_are_refused(options, match):
    with pytest.raises(ValueError, match=match):
        create_model("gpfa", SPEC, **{"latent_dim": 2, **options})


def test_bad_input_is_refused():
    model = create_model("gpfa", SPEC, latent_dim=2)
    with pytest.raises(ValueError, match=r"held-in spikes of shape \(B, 5, 4\)"):
        model({"heldin": torch.zeros(2, 6, 4)})
    with pytest.raises(ValueError, match="negative counts"):
        model({"heldin": -torch.ones(2, 5, 4)})
    observed = torch.ones(2, 8, 6, dtype=torch.bool)
    observed[0, 1, 2] = False
    with pytest.raises(ValueError, match="marks 1 of them as missing"):
        model({"heldin": torch.ones(2, 5, 4), "observed": observed})
    with pytest.raises(ConfigError, match="takes no coordinated dropout"):
        TrainingModule({"name": "gpfa", "latent_dim": 2}, SPEC.to_dict(), coordinated_dropout=0.2)


def test_recovers_gp_latents_of_gpfa_generated_data():
    """Fit by the marginal likelihood alone on data drawn from a GPFA; posterior means vs true latents."""
    gen = torch.Generator().manual_seed(1)
    spec = DataSpec(n_heldin=10, n_neurons=10, n_obs_bins=20, n_fwd_bins=0, bin_size=0.02)
    q, T, trials = 2, 20, 60
    k = se_kernel(torch.arange(T, dtype=torch.float64), torch.tensor([3.0, 6.0]), 1e-3)  # (q, T, T)
    chol = torch.linalg.cholesky(k)
    x = torch.einsum("its,bis->bti", chol, torch.randn(trials, q, T, generator=gen, dtype=torch.float64))
    C = torch.randn(10, q, generator=gen, dtype=torch.float64) * 0.6
    y = x @ C.T + 3.0 + 0.3 * torch.randn(trials, T, 10, generator=gen, dtype=torch.float64)  # (B, T, P)
    torch.manual_seed(0)
    model = create_model("gpfa", spec, latent_dim=q, tau_init_ms=100.0).double()
    with torch.no_grad():
        model.offset.fill_(3.0)
    opt = torch.optim.Adam([model.loading, model.offset, model.obs_noise_raw, model.log_tau], lr=0.05)
    for _ in range(300):
        opt.zero_grad()
        nll, _ = model.marginal(y)
        nll.mean().backward()
        opt.step()
    _, mean = model.marginal(y)
    feats = torch.cat([mean.detach().reshape(-1, q), torch.ones(trials * T, 1, dtype=torch.float64)], 1)
    target = x.reshape(-1, q)
    coef = torch.linalg.lstsq(feats, target).solution
    r2 = 1 - ((feats @ coef - target) ** 2).sum(0) / ((target - target.mean(0)) ** 2).sum(0)
    assert (r2 > 0.9).all(), r2
    assert nll.mean() < _reference_nll(model, y, C, k)  # fit at least as well as the true loading


def _reference_nll(model: GPFA, y: torch.Tensor, C: torch.Tensor, k: torch.Tensor) -> float:
    """Mean NLL at the generating C, d, R and timescales (plus 0.5 nats per trial of slack)."""
    true = create_model("gpfa", model.spec, latent_dim=2).double()
    with torch.no_grad():
        true.loading.copy_(C)
        true.offset.fill_(3.0)
        true.obs_noise_raw.copy_(torch.log(torch.expm1(torch.tensor(0.09 - 1e-4))))
        true.log_tau.copy_(torch.log(torch.tensor([3.0, 6.0])))
        return float(true.marginal(y)[0].mean()) + 0.5


def test_trains_through_the_cli_config_checkpoints_and_loads_by_name(tmp_path):
    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
        cfg = compose(
            "train",
            overrides=[
                "model=gpfa",
                "model.latent_dim=3",
                *TINY_DATA,
                "data.batch_size=16",
                "trainer.max_epochs=2",
                "trainer.enable_progress_bar=false",
                "trainer.enable_model_summary=false",
                "print_baselines=false",
            ],
        )
    run = tmp_path / "run"
    record = train(cfg, run)
    assert record["model"] == "GPFA" and record["steps"] == 2 * 2
    assert np.isfinite(record["metrics"]["co_bps"]) and np.isfinite(record["metrics"]["latent_r2"])
    loaded = load_pretrained(run)
    assert isinstance(loaded.model, GPFA) and loaded.model.latent_dim == 3
    with h5py.File(run / "predictions.h5", "r") as f:
        saved = f["rates"][()]
    data = load("lorenz", seed=0, **TINY_LORENZ)
    np.testing.assert_allclose(loaded.predict(data)["rates"], saved, rtol=1e-5, atol=1e-7)
