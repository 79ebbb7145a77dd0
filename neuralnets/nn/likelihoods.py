"""Observation likelihoods for the reconstruction loss.

Representation: every model emits one positive time-varying quantity per neuron, `rates (B, T, N)`
(expected counts per bin). Any further distribution parameter (Gaussian log-variance, Gamma shape,
negative-binomial dispersion, zero-inflated-Gamma amplitude parameters) is a learnable per-neuron
`nn.Parameter` of shape `(N,)` owned by the likelihood module, so the model contract stays
"rates only" and the training module picks a likelihood by name:

    lik = make_likelihood("poisson", n_neurons)
    nll = -lik.log_prob(out.rates, batch["spikes"])      # (B, T, N) nats, elementwise

`mean(rates)` is the expected observation `E[y]` (identical to `rates` for every likelihood except
the zero-inflated Gamma, where `rates` are event rates; see `ZeroInflatedGamma`).
Poisson and negative binomial have a term of the targets alone, `count_term(y) = −log Γ(y + 1)`
(`has_count_term`); `log_prob(rates, y, count_term=False)` leaves it out, so that a training loop
can add it from per-trial sums computed once per dataset (`neuralnets.data.datamodule.batch_tensors`)
instead of evaluating `lgamma` on every entry at every step.
`check_support(y)` raises a ValueError when targets are outside the support (call it once on the
dataset, not every step: it synchronises with the device).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

_LOG_2PI = math.log(2.0 * math.pi)


class Likelihood(nn.Module):
    """Interface. `n_params`: distribution parameters per neuron (the time-varying mean counts as one;
    the others are per-neuron parameters of this module, shape (N,))."""

    name: str = "likelihood"
    n_params: int = 1
    has_count_term: bool = False  # log_prob includes count_term(y), which depends on the targets only

    def __init__(self, n_neurons: int):
        super().__init__()
        if n_neurons <= 0:
            raise ValueError(f"{type(self).__name__}: n_neurons must be > 0; got {n_neurons}")
        self.n_neurons = n_neurons

    def log_prob(self, rates: Tensor, y: Tensor) -> Tensor:
        """Elementwise log-likelihood (nats): `rates (B, T, N) > 0`, `y (B, T, N)` -> `(B, T, N)`."""
        raise NotImplementedError

    def mean(self, rates: Tensor) -> Tensor:
        """Expected observation `E[y]` (B, T, N)."""
        return rates

    @staticmethod
    def count_term(y: Tensor) -> Tensor:
        """`−log Γ(y + 1) = −log y!` elementwise (..., N): the term of the targets alone in `log_prob` of
        the likelihoods with `has_count_term`."""
        return -torch.lgamma(y + 1.0)

    def check_support(self, y: Tensor) -> None:
        """Raise ValueError if any target is outside the distribution's support."""
        _check_finite(y, self.name)
        if (y < 0).any():
            raise ValueError(f"{self.name} likelihood: targets must be >= 0; min is {float(y.min())}")

    def _check_rates(self, rates: Tensor, y: Tensor) -> None:
        if rates.shape != y.shape or rates.shape[-1] != self.n_neurons:
            raise ValueError(
                f"{self.name} likelihood: rates {tuple(rates.shape)} and targets {tuple(y.shape)} must have "
                f"the same shape (..., {self.n_neurons})"
            )


class PoissonLikelihood(Likelihood):
    """`log p(y | λ) = y log λ − λ − log Γ(y + 1)` with `λ = rates`. No extra parameters."""

    name = "poisson"
    n_params = 1
    has_count_term = True

    def log_prob(self, rates: Tensor, y: Tensor, count_term: bool = True) -> Tensor:
        """`count_term=False`: without `−log Γ(y + 1)` (see `Likelihood.count_term`)."""
        self._check_rates(rates, y)
        lp = torch.xlogy(y, rates) - rates
        return lp + self.count_term(y) if count_term else lp


class GaussianLikelihood(Likelihood):
    """Normal with mean `rates` and a learnable per-neuron log-variance `logvar (N,)` (init log var_init)."""

    name = "gaussian"
    n_params = 2

    def __init__(self, n_neurons: int, var_init: float = 1.0):
        super().__init__(n_neurons)
        self.logvar = nn.Parameter(torch.full((n_neurons,), math.log(var_init)))  # (N,)

    def log_prob(self, rates: Tensor, y: Tensor) -> Tensor:
        self._check_rates(rates, y)
        return -0.5 * (_LOG_2PI + self.logvar + (y - rates) ** 2 * torch.exp(-self.logvar))

    def check_support(self, y: Tensor) -> None:
        _check_finite(y, self.name)  # any real value


class GammaLikelihood(Likelihood):
    """Gamma with mean `rates` and learnable per-neuron shape `α = exp(log_shape) (N,)`; rate `β = α / rates`.

    `log p(y) = α log β − log Γ(α) + (α − 1) log y − β y`, support `y > 0` (zeros are not allowed: use
    the zero-inflated Gamma for data with exact zeros).
    """

    name = "gamma"
    n_params = 2

    def __init__(self, n_neurons: int, shape_init: float = 1.0):
        super().__init__(n_neurons)
        self.log_shape = nn.Parameter(torch.full((n_neurons,), math.log(shape_init)))  # (N,)

    def log_prob(self, rates: Tensor, y: Tensor) -> Tensor:
        self._check_rates(rates, y)
        alpha = torch.exp(self.log_shape)  # (N,)
        log_beta = self.log_shape - torch.log(rates)  # (B, T, N)
        return alpha * log_beta - torch.lgamma(alpha) + (alpha - 1.0) * torch.log(y) - torch.exp(log_beta) * y

    def check_support(self, y: Tensor) -> None:
        _check_finite(y, self.name)
        if (y <= 0).any():
            raise ValueError(
                f"gamma likelihood: targets must be > 0; found {int((y <= 0).sum())} values <= 0 "
                "(use 'zig' for data with exact zeros)"
            )


class ZeroInflatedGamma(Likelihood):
    """Zero-inflated Gamma for deconvolved calcium traces (Wei et al. 2023).

    An observation is 0 with probability `1 − q`, otherwise `y = s + z` with `z ~ Gamma(k, θ)` above a
    per-neuron location (threshold) `s`:

        p(y) = (1 − q) · δ(y)  +  q · Gamma(y − s; k, θ),    support  y = 0  or  y > s.

    Here the model's `rates r (B, T, N)` are event rates (expected events per bin) and the probability
    of a non-zero bin is `q = 1 − exp(−r)` (at least one event under a Poisson count), so
    `log(1 − q) = −r`. The amplitude shape `k (N,)` and scale `θ (N,)` are learnable per neuron; the
    location `s (N,)` is a fixed buffer (`loc`, default 0; `set_loc_from_data` sets it just below each
    neuron's smallest non-zero value). `mean(r) = (1 − e^{−r}) (s + k θ)`.
    """

    name = "zig"
    n_params = 3

    def __init__(
        self, n_neurons: int, loc: float | Tensor = 0.0, shape_init: float = 1.0, scale_init: float = 1.0
    ):
        super().__init__(n_neurons)
        self.log_shape = nn.Parameter(torch.full((n_neurons,), math.log(shape_init)))  # (N,) log k
        self.log_scale = nn.Parameter(torch.full((n_neurons,), math.log(scale_init)))  # (N,) log θ
        loc_t = torch.as_tensor(loc, dtype=torch.float32).expand(n_neurons).clone()  # (N,)
        if (loc_t < 0).any():
            raise ValueError(f"zig likelihood: loc must be >= 0; got min {float(loc_t.min())}")
        self.register_buffer("loc", loc_t)

    @torch.no_grad()
    def set_loc_from_data(self, y: Tensor, frac: float = 0.99) -> None:
        """`loc[n] = frac · (smallest non-zero value of neuron n)` from targets `y (..., N)`; 0 if none."""
        flat = y.reshape(-1, self.n_neurons)  # (samples, N)
        pos = torch.where(flat > 0, flat, torch.full_like(flat, float("inf")))
        mins = pos.min(dim=0).values  # (N,)
        self.loc.copy_(torch.where(torch.isfinite(mins), frac * mins, torch.zeros_like(mins)))

    def log_prob(self, rates: Tensor, y: Tensor) -> Tensor:
        self._check_rates(rates, y)
        k, log_theta = torch.exp(self.log_shape), self.log_scale  # (N,), (N,)
        nonzero = y > 0
        # Evaluate the Gamma branch only where it is selected; elsewhere use a dummy 1 so no NaN leaks
        # into gradients through torch.where.
        z = torch.where(nonzero, y - self.loc, torch.ones_like(y))  # (B, T, N)
        log_gamma = (k - 1.0) * torch.log(z) - z * torch.exp(-log_theta) - torch.lgamma(k) - k * log_theta
        log_q = torch.log(-torch.expm1(-rates))  # log(1 - e^{-r})
        return torch.where(nonzero, log_q + log_gamma, -rates)

    def mean(self, rates: Tensor) -> Tensor:
        amp = self.loc + torch.exp(self.log_shape + self.log_scale)  # (N,) s + kθ
        return -torch.expm1(-rates) * amp

    def check_support(self, y: Tensor) -> None:
        super().check_support(y)
        bad = (y > 0) & (y <= self.loc)
        if bad.any():
            raise ValueError(
                f"zig likelihood: {int(bad.sum())} non-zero targets are <= the location loc (per neuron); "
                "lower loc or call set_loc_from_data"
            )


class NegativeBinomialLikelihood(Likelihood):
    """Negative binomial with mean `μ = rates` and learnable per-neuron total count (inverse dispersion)
    `r = exp(log_total_count) (N,)`; variance `μ + μ²/r` (Poisson as r → ∞).

    `log p(y) = log Γ(y + r) − log Γ(r) − log Γ(y + 1) + r log(r / (r + μ)) + y log(μ / (r + μ))`.
    """

    name = "negative_binomial"
    n_params = 2
    has_count_term = True

    def __init__(self, n_neurons: int, total_count_init: float = 10.0):
        super().__init__(n_neurons)
        self.log_total_count = nn.Parameter(torch.full((n_neurons,), math.log(total_count_init)))  # (N,)

    def log_prob(self, rates: Tensor, y: Tensor, count_term: bool = True) -> Tensor:
        """`count_term=False`: without `−log Γ(y + 1)` (see `Likelihood.count_term`)."""
        self._check_rates(rates, y)
        r = torch.exp(self.log_total_count)  # (N,)
        log_r_mu = torch.logaddexp(self.log_total_count, torch.log(rates))  # log(r + μ), (B, T, N)
        lp = (
            torch.lgamma(y + r)
            - torch.lgamma(r)
            + r * (self.log_total_count - log_r_mu)
            + torch.xlogy(y, rates)
            - y * log_r_mu
        )
        return lp + self.count_term(y) if count_term else lp


LIKELIHOODS: dict[str, type[Likelihood]] = {
    "poisson": PoissonLikelihood,
    "gaussian": GaussianLikelihood,
    "gamma": GammaLikelihood,
    "zig": ZeroInflatedGamma,
    "negative_binomial": NegativeBinomialLikelihood,
}


def make_likelihood(name: str, n_neurons: int, **kwargs) -> Likelihood:
    """Build a likelihood by name: 'poisson' (default), 'gaussian', 'gamma', 'zig', 'negative_binomial'.

    `kwargs` go to the class (e.g. `loc=` for 'zig', `var_init=` for 'gaussian').
    """
    try:
        cls = LIKELIHOODS[name]
    except KeyError:
        raise ValueError(f"unknown likelihood {name!r}; expected one of {sorted(LIKELIHOODS)}") from None
    return cls(n_neurons, **kwargs)


def _check_finite(y: Tensor, name: str) -> None:
    if not torch.isfinite(y).all():
        raise ValueError(f"{name} likelihood: targets contain non-finite values")
