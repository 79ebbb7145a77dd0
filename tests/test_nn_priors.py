"""Priors: analytic MVN KL and the AR(1) prior's density."""

import math

import pytest
import torch
from torch import distributions as D

from neuralnets.nn.priors import AutoregressivePrior, MultivariateNormalPrior


def test_mvn_kl_zero_when_posterior_equals_prior():
    prior = MultivariateNormalPrior(4, mean_init=0.3, var_init=0.1)
    mean = prior.mean.detach().expand(5, 4)
    logvar = prior.logvar.detach().expand(5, 4)
    kl = prior.kl(mean, logvar)
    assert kl.shape == (5,)
    torch.testing.assert_close(kl, torch.zeros(5))


def test_mvn_kl_hand_case():
    prior = MultivariateNormalPrior(2, mean_init=0.0, var_init=1.0)
    # posterior N([1, 0], diag([1, 4])) vs N(0, I): 0.5*(1 + 0 - 0 - 1) + 0.5*(4 - 1 - ln 4)
    kl = prior.kl(torch.tensor([[1.0, 0.0]]), torch.log(torch.tensor([[1.0, 4.0]])))
    assert kl.item() == pytest.approx(0.5 + 0.5 * (3 - math.log(4)), abs=1e-6)


def test_mvn_kl_matches_torch_distributions():
    torch.manual_seed(0)
    prior = MultivariateNormalPrior(3, var_init=0.2)
    with torch.no_grad():
        prior.mean.normal_()
    m, lv = torch.randn(4, 3), torch.randn(4, 3)
    q = D.Normal(m, torch.exp(0.5 * lv))
    p = D.Normal(prior.mean, torch.exp(0.5 * prior.logvar))
    torch.testing.assert_close(prior.kl(m, lv), D.kl_divergence(q, p).sum(-1))


def _ar_covariance(T: int, a: float, var: float) -> torch.Tensor:
    idx = torch.arange(T, dtype=torch.float64)
    return var * a ** (idx[:, None] - idx[None, :]).abs()  # (T, T) stationary AR(1)


def test_ar_prior_log_prob_matches_explicit_gaussian():
    torch.manual_seed(0)
    prior = AutoregressivePrior(2, tau_init=10.0, noise_var_init=0.1)
    with torch.no_grad():  # different tau and variance per dimension
        prior.log_tau.copy_(torch.log(torch.tensor([3.0, 12.0])))
        prior.log_var.copy_(torch.log(torch.tensor([0.5, 0.1])))
    T = 6
    u = torch.randn(3, T, 2) * 0.3
    expected = torch.zeros(3, dtype=torch.float64)
    for d, (tau, var) in enumerate([(3.0, 0.5), (12.0, 0.1)]):
        mvn = D.MultivariateNormal(
            torch.zeros(T, dtype=torch.float64), _ar_covariance(T, math.exp(-1 / tau), var)
        )
        expected += mvn.log_prob(u[:, :, d].double())
    torch.testing.assert_close(prior.log_prob(u).double(), expected, rtol=1e-5, atol=1e-5)


def test_ar_prior_kl_is_log_q_minus_log_p():
    torch.manual_seed(0)
    prior = AutoregressivePrior(2)
    m, lv = torch.randn(4, 5, 2), torch.randn(4, 5, 2) - 1
    u = m + torch.exp(0.5 * lv) * torch.randn(4, 5, 2)
    log_q = D.Normal(m, torch.exp(0.5 * lv)).log_prob(u).sum(dim=(1, 2))
    kl = prior.kl(u, m, lv)
    assert kl.shape == (4,)
    torch.testing.assert_close(kl, log_q - prior.log_prob(u))


def test_ar_prior_kl_monte_carlo_average_is_positive_and_near_analytic():
    """Averaged over many samples, the MC estimate approaches the true KL(q || p) >= 0 (T = 1: analytic)."""
    torch.manual_seed(0)
    prior = AutoregressivePrior(1, noise_var_init=0.5)
    m, lv = torch.full((20000, 1, 1), 0.4), torch.full((20000, 1, 1), math.log(0.2))
    u = m + math.sqrt(0.2) * torch.randn_like(m)
    est = prior.kl(u, m, lv).mean().item()
    exact = D.kl_divergence(D.Normal(0.4, math.sqrt(0.2)), D.Normal(0.0, math.sqrt(0.5))).item()
    assert est == pytest.approx(exact, abs=0.02)


def test_priors_validate_arguments():
    with pytest.raises(ValueError):
        MultivariateNormalPrior(0)
    with pytest.raises(ValueError):
        AutoregressivePrior(2, tau_init=-1.0)


def test_ar_prior_analytic_kl_is_expectation_of_monte_carlo_kl():
    torch.manual_seed(0)
    prior = AutoregressivePrior(2, tau_init=4.0, noise_var_init=0.3)
    m = 0.3 * torch.randn(1, 5, 2)
    lv = torch.log(0.05 + 0.1 * torch.rand(1, 5, 2))
    exact = prior.kl_analytic(m, lv)
    assert exact.shape == (1,) and exact.item() > 0
    S = 40000
    u = m + torch.exp(0.5 * lv) * torch.randn(S, 5, 2)  # (S, T, U) posterior samples
    mc = prior.kl(u, m.expand(S, 5, 2), lv.expand(S, 5, 2))
    assert mc.mean().item() == pytest.approx(exact.item(), abs=4 * mc.std().item() / S**0.5 + 1e-3)


def test_ar_prior_analytic_kl_zero_for_t1_posterior_equal_to_prior():
    prior = AutoregressivePrior(3, noise_var_init=0.2)
    kl = prior.kl_analytic(torch.zeros(2, 1, 3), torch.full((2, 1, 3), math.log(0.2)))
    torch.testing.assert_close(kl, torch.zeros(2))
