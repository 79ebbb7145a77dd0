"""Priors of the LFADS latent variables (Sussillo et al. 2016; Pandarinath et al. 2018).

- `MultivariateNormalPrior`: diagonal Gaussian with learnable mean and log-variance, the prior of
  the generator's initial condition g0; the KL of a diagonal Gaussian posterior to it is analytic.
- `AutoregressivePrior`: an independent AR(1) process per inferred-input dimension,
  `u_1 ~ N(0, σ²)`, `u_t = a u_{t−1} + ε_t`, `ε_t ~ N(0, σ² (1 − a²))`, `a = exp(−1/τ)`, with
  learnable `log τ` (in bins) and `log σ²` (the stationary process variance) per dimension. Its KL is
  the Monte-Carlo estimate `log q(u) − log p(u)` at the posterior samples, as in the paper
  (`kl`); `kl_analytic` gives the exact KL for a posterior that is independent across bins.

All KLs are in nats per trial, shape `(B,)`, summed over dimensions (and time).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

_LOG_2PI = math.log(2.0 * math.pi)


def diag_gaussian_log_prob(x: Tensor, mean: Tensor, logvar: Tensor) -> Tensor:
    """Elementwise log N(x; mean, exp(logvar)) in nats (broadcasting)."""
    return -0.5 * (_LOG_2PI + logvar + (x - mean) ** 2 * torch.exp(-logvar))


class MultivariateNormalPrior(nn.Module):
    """Diagonal Gaussian prior N(mean, diag(exp(logvar))) over `dim` dimensions, both learnable."""

    def __init__(self, dim: int, mean_init: float = 0.0, var_init: float = 0.1):
        super().__init__()
        if dim <= 0 or not var_init > 0:
            raise ValueError(f"MultivariateNormalPrior: need dim > 0 and var_init > 0; got {dim}, {var_init}")
        self.mean = nn.Parameter(torch.full((dim,), float(mean_init)))  # (D,)
        self.logvar = nn.Parameter(torch.full((dim,), math.log(var_init)))  # (D,)

    def kl(self, post_mean: Tensor, post_logvar: Tensor) -> Tensor:
        """KL(N(post_mean, exp(post_logvar)) || prior) for `(B, D)` posteriors -> `(B,)` nats.

        `0.5 Σ_d [logvar_p − logvar_q + (var_q + (μ_q − μ_p)²) / var_p − 1]`.
        """
        inv_var_p = torch.exp(-self.logvar)  # (D,)
        kl = 0.5 * (
            self.logvar
            - post_logvar
            + (torch.exp(post_logvar) + (post_mean - self.mean) ** 2) * inv_var_p
            - 1.0
        )  # (B, D)
        return kl.sum(dim=-1)


class AutoregressivePrior(nn.Module):
    """AR(1) prior over inferred inputs `u (B, T, U)`, independent across the U dimensions."""

    def __init__(self, dim: int, tau_init: float = 10.0, noise_var_init: float = 0.1):
        super().__init__()
        if dim <= 0 or not tau_init > 0 or not noise_var_init > 0:
            raise ValueError(
                f"AutoregressivePrior: need dim > 0, tau_init > 0, noise_var_init > 0; "
                f"got {dim}, {tau_init}, {noise_var_init}"
            )
        self.log_tau = nn.Parameter(torch.full((dim,), math.log(tau_init)))  # (U,) time constant, bins
        self.log_var = nn.Parameter(torch.full((dim,), math.log(noise_var_init)))  # (U,) process variance σ²

    def log_prob(self, u: Tensor) -> Tensor:
        """log p(u) of sequences `u (B, T, U)` -> `(B,)` nats (summed over time and dimensions)."""
        a = torch.exp(-torch.exp(-self.log_tau))  # (U,) a = exp(-1/τ)
        lp0 = diag_gaussian_log_prob(u[:, 0], 0.0, self.log_var)  # (B, U) stationary start
        # Innovation variance σ²(1 − a²) keeps the process stationary with variance σ².
        log_innov_var = self.log_var + torch.log1p(-(a**2))  # (U,)
        lpt = diag_gaussian_log_prob(u[:, 1:], a * u[:, :-1], log_innov_var)  # (B, T-1, U)
        return lp0.sum(-1) + lpt.sum(dim=(1, 2))

    def kl(self, samples: Tensor, post_mean: Tensor, post_logvar: Tensor) -> Tensor:
        """Monte-Carlo KL `log q(u) − log p(u)` at `samples (B, T, U)` drawn from the diagonal posterior
        `N(post_mean, exp(post_logvar))` (each `(B, T, U)`) -> `(B,)` nats."""
        log_q = diag_gaussian_log_prob(samples, post_mean, post_logvar).sum(dim=(1, 2))  # (B,)
        return log_q - self.log_prob(samples)

    def kl_analytic(self, post_mean: Tensor, post_logvar: Tensor) -> Tensor:
        """Exact KL(q || p) for the diagonal posterior `N(post_mean, exp(post_logvar))` (each `(B, T, U)`,
        independent across bins) -> `(B,)` nats; the expectation of `kl` over posterior samples.

        Uses `E_q[(u_t − a u_{t−1})²] = (m_t − a m_{t−1})² + v_t + a² v_{t−1}`.
        """
        a = torch.exp(-torch.exp(-self.log_tau))  # (U,)
        log_innov_var = self.log_var + torch.log1p(-(a**2))  # (U,)
        m, v = post_mean, torch.exp(post_logvar)  # (B, T, U)
        neg_entropy = -0.5 * (_LOG_2PI + post_logvar + 1.0).sum(dim=(1, 2))  # E_q[log q], (B,)
        e0 = -0.5 * (_LOG_2PI + self.log_var + (m[:, 0] ** 2 + v[:, 0]) * torch.exp(-self.log_var))  # (B, U)
        sq = (m[:, 1:] - a * m[:, :-1]) ** 2 + v[:, 1:] + a**2 * v[:, :-1]  # (B, T-1, U)
        et = -0.5 * (_LOG_2PI + log_innov_var + sq * torch.exp(-log_innov_var))  # (B, T-1, U)
        return neg_entropy - e0.sum(-1) - et.sum(dim=(1, 2))
