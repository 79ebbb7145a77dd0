"""Likelihoods against torch.distributions and hand computations."""

import math

import pytest
import torch
from torch import distributions as D

from neuralnets.nn.likelihoods import LIKELIHOODS, ZeroInflatedGamma, make_likelihood

B, T, N = 3, 4, 5


def _rates():
    torch.manual_seed(0)
    return torch.rand(B, T, N) * 3 + 0.05  # (B, T, N) > 0


def _counts():
    torch.manual_seed(1)
    return torch.poisson(torch.full((B, T, N), 1.5))


def test_poisson_matches_torch():
    lik = make_likelihood("poisson", N)
    rates, y = _rates(), _counts()
    torch.testing.assert_close(lik.log_prob(rates, y), D.Poisson(rates).log_prob(y))
    torch.testing.assert_close(lik.mean(rates), rates)
    assert lik.n_params == 1 and len(list(lik.parameters())) == 0


def test_poisson_hand_value():
    lik = make_likelihood("poisson", 1)
    lp = lik.log_prob(torch.tensor([[[2.0]]]), torch.tensor([[[3.0]]]))
    assert lp.item() == pytest.approx(3 * math.log(2) - 2 - math.log(6), abs=1e-6)


def test_gaussian_matches_torch():
    lik = make_likelihood("gaussian", N)
    with torch.no_grad():
        lik.logvar.copy_(torch.linspace(-1, 1, N))
    rates, y = _rates(), _counts()
    expected = D.Normal(rates, torch.exp(0.5 * lik.logvar)).log_prob(y)
    torch.testing.assert_close(lik.log_prob(rates, y), expected)
    assert lik.n_params == 2


def test_gamma_matches_torch():
    lik = make_likelihood("gamma", N)
    with torch.no_grad():
        lik.log_shape.copy_(torch.linspace(-0.5, 1.0, N))
    rates = _rates()
    y = _rates().flip(0) + 0.1  # positive targets
    alpha = torch.exp(lik.log_shape)
    expected = D.Gamma(alpha, alpha / rates).log_prob(y)  # mean alpha / beta = rates
    torch.testing.assert_close(lik.log_prob(rates, y), expected)
    with pytest.raises(ValueError, match="> 0"):
        lik.check_support(torch.zeros(2, N))


def test_negative_binomial_matches_torch():
    lik = make_likelihood("negative_binomial", N)
    with torch.no_grad():
        lik.log_total_count.copy_(torch.linspace(-1, 3, N))
    rates, y = _rates(), _counts()
    r = torch.exp(lik.log_total_count)
    # torch's NB counts successes with p = probs; mean = r p / (1 - p) = r exp(logits)
    expected = D.NegativeBinomial(total_count=r, logits=torch.log(rates) - torch.log(r)).log_prob(y)
    torch.testing.assert_close(lik.log_prob(rates, y), expected)
    torch.testing.assert_close(D.NegativeBinomial(r, logits=torch.log(rates) - torch.log(r)).mean, rates)


def test_zig_hand_computation():
    lik = ZeroInflatedGamma(2, loc=torch.tensor([0.5, 0.0]))
    with torch.no_grad():
        lik.log_shape.copy_(torch.log(torch.tensor([2.0, 1.5])))
        lik.log_scale.copy_(torch.log(torch.tensor([0.5, 2.0])))
    rates = torch.tensor([[[0.3, 1.2], [2.0, 0.1]]])  # (1, 2, 2)
    y = torch.tensor([[[0.0, 3.0], [1.7, 0.0]]])
    lp = lik.log_prob(rates, y)

    def gamma_lp(z, k, theta):
        return (k - 1) * math.log(z) - z / theta - math.lgamma(k) - k * math.log(theta)

    expected = torch.tensor(
        [
            [
                [-0.3, math.log(1 - math.exp(-1.2)) + gamma_lp(3.0 - 0.0, 1.5, 2.0)],
                [math.log(1 - math.exp(-2.0)) + gamma_lp(1.7 - 0.5, 2.0, 0.5), -0.1],
            ]
        ]
    )
    torch.testing.assert_close(lp, expected)
    # mean = P(non-zero) * (loc + k theta)
    expected_mean = (1 - torch.exp(-rates)) * torch.tensor([0.5 + 1.0, 0.0 + 3.0])
    torch.testing.assert_close(lik.mean(rates), expected_mean)
    assert lik.n_params == 3


def test_zig_is_a_normalised_density():
    """P(0) + ∫_{loc}^∞ q Gamma(y - loc) dy = 1 for one neuron (trapezoid integral)."""
    lik = ZeroInflatedGamma(1, loc=0.2, shape_init=2.0, scale_init=0.5)
    rate = torch.tensor(0.7)
    y = torch.linspace(0.2 + 1e-5, 15.0, 200001)
    dens = torch.exp(lik.log_prob(rate.expand(len(y), 1), y[:, None]))[:, 0].double()
    total = math.exp(-0.7) + torch.trapezoid(dens, y.double()).item()
    assert total == pytest.approx(1.0, abs=1e-3)


def test_zig_gradients_finite_with_zeros_and_support_check():
    lik = make_likelihood("zig", 2, loc=0.5)
    rates = torch.tensor([[[0.3, 1.2]]], requires_grad=True)
    y = torch.tensor([[[0.0, 2.0]]])
    lik.log_prob(rates, y).sum().backward()
    assert torch.isfinite(rates.grad).all() and torch.isfinite(lik.log_shape.grad).all()
    with pytest.raises(ValueError, match="loc"):
        lik.check_support(torch.tensor([[0.3, 0.0]]))
    lik.set_loc_from_data(torch.tensor([[0.0, 0.4], [0.3, 0.0], [0.8, 0.0]]))
    torch.testing.assert_close(lik.loc, torch.tensor([0.99 * 0.3, 0.99 * 0.4]))


def test_unknown_name_lists_names_and_shape_mismatch():
    with pytest.raises(ValueError, match="negative_binomial") as info:
        make_likelihood("bernoulli", 3)
    for name in LIKELIHOODS:
        assert name in str(info.value)
    lik = make_likelihood("poisson", 3)
    with pytest.raises(ValueError, match="same shape"):
        lik.log_prob(torch.ones(2, 3, 3), torch.ones(2, 3, 4))
    with pytest.raises(ValueError, match=">= 0"):
        lik.check_support(torch.tensor([[-1.0, 0.0, 1.0]]))


@pytest.mark.parametrize("name", sorted(LIKELIHOODS))
def test_every_likelihood_gives_gradients_to_rates_and_own_params(name):
    lik = make_likelihood(name, N)
    rates = _rates().requires_grad_(True)
    y = _counts() + 0.5  # positive, valid for every support (zig loc 0)
    lp = lik.log_prob(rates, y)
    assert lp.shape == (B, T, N) and torch.isfinite(lp).all()
    lp.sum().backward()
    assert torch.isfinite(rates.grad).all() and rates.grad.abs().sum() > 0
    for p in lik.parameters():
        assert p.shape == (N,) and torch.isfinite(p.grad).all()
