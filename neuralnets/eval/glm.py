"""Poisson GLM (log link) fitted with L-BFGS in torch: the smoothing baseline's held-out readout and the
few-shot co-bps readout (`fewshot.fewshot_co_bps`)."""

from __future__ import annotations

import torch

GLM_FLOOR = 1e-9  # counts/bin; never predict exactly 0 from the GLM's exp link


def fit_poisson_glm(
    x: torch.Tensor,
    y: torch.Tensor,
    w: torch.Tensor,
    alpha: float,
    max_iter: int = 500,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Joint Poisson GLM for all outputs: y[..., :, j] ~ Poisson(exp(x @ W[..., :, j] + b[..., j])).

    x (..., S, F) features, y (..., S, J) counts, w (..., S, J) 0/1 weights (recorded entries); leading
    dims `...` are independent problems (e.g. resamples) fitted at once. Minimises, per output, the mean
    negative log-likelihood over its recorded samples + alpha/2 · ||W[..., :, j]||² (bias not
    penalised), for all outputs at once with L-BFGS (the outputs are independent, so the sum of their
    objectives has the same minimiser). Returns W (..., F, J), b (..., J).
    """
    n_per = w.sum(-2).clamp(min=1.0)  # (..., J)
    mean_y = (w * y).sum(-2) / n_per
    weights = torch.zeros(
        *x.shape[:-2], x.shape[-1], y.shape[-1], dtype=x.dtype, device=x.device, requires_grad=True
    )  # (..., F, J)
    bias = torch.log(mean_y.clamp(min=GLM_FLOOR)).clone().requires_grad_(True)  # (..., J)
    opt = torch.optim.LBFGS(
        [weights, bias], lr=1.0, max_iter=max_iter, tolerance_grad=1e-6, tolerance_change=1e-12,
        history_size=20, line_search_fn="strong_wolfe",
    )  # fmt: skip

    def closure() -> torch.Tensor:
        opt.zero_grad()
        eta = (x @ weights + bias.unsqueeze(-2)).clamp(max=30.0)  # (..., S, J) log-rates; exp stays finite
        nll = ((w * (torch.exp(eta) - y * eta)).sum(-2) / n_per).sum()
        loss = nll + 0.5 * alpha * (weights**2).sum()
        loss.backward()
        return loss

    with torch.enable_grad():  # callers may sit inside torch.no_grad() (e.g. evaluation during training)
        opt.step(closure)
    return weights.detach(), bias.detach()
