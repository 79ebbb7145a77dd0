"""Poisson GLM (log link) with an L2 penalty, fitted by damped Newton iterations in torch: the smoothing
baseline's held-out readout (`baselines.fit_smoothing_glm`) and the few-shot co-bps readout
(`fewshot.fewshot_co_bps`).

Every output (held-out neuron) is its own strictly convex problem; any leading batch of problems (e.g.
resamples) and a block of outputs are solved at once (blocks of at most `OUTPUT_BLOCK_ELEMENTS` per
(..., samples, outputs) array, so that memory stays bounded on large data). Each iteration evaluates the
exact float64 gradient of every problem with two matrix products shared by the block's outputs; the
Newton direction uses each output's Hessian `X^T diag(w·exp(eta)/n) X + alpha·I`, formed in float32 (on
large data or with alpha > 0) on at most `HESSIAN_ROWS` evenly spaced samples and kept, with its LU
factors, while it still shrinks the gradient tenfold per iteration (refreshed and refactorised for the
outputs where it does not). An inexact Hessian only changes the path: the iterations stop on the exact
float64 gradient (max |grad| <= `tol`), far tighter than the previous L-BFGS fit's 1e-6. A backtracking
line search on the exact objective makes every step a descent step.
"""

from __future__ import annotations

import math

import torch

GLM_FLOOR = 1e-9  # counts/bin; never predict exactly 0 from the GLM's exp link
ETA_MAX = 30.0  # log-rates are clamped here, so exp stays finite
HESSIAN_ROWS = 16384  # samples used to form the Hessians (the gradient always uses all of them)
# Elements of one (..., S, J) working array of a block of outputs (16 MiB in float64): bounds the fit's
# memory at large S (the smoothing baseline: 60k samples) without splitting small problems (few-shot).
OUTPUT_BLOCK_ELEMENTS = 1 << 21


def _objective(x: torch.Tensor, beta: torch.Tensor, y, w, n_per, alpha: float, pen) -> tuple:
    """Per-output objective (..., J) and the clamped log-rates eta (..., S, J) at `beta (..., J, F+1)`."""
    # x @ W + b (..., S, J) in one fused product, without a copy of x with a bias column
    w_t, b = beta[..., :-1].transpose(-1, -2), beta[..., None, :, -1]  # (..., F, J), (..., 1, J)
    if x.ndim == 2:
        eta = torch.addmm(b, x, w_t)
    elif x.ndim == 3:
        eta = torch.baddbmm(b, x, w_t)
    else:
        eta = x @ w_t + b
    eta = eta.clamp(max=ETA_MAX)
    nll = (w * (torch.exp(eta) - y * eta)).sum(-2) / n_per  # (..., J)
    return nll + 0.5 * alpha * (beta.square() * pen).sum(-1), eta


def fit_poisson_glm(
    x: torch.Tensor,
    y: torch.Tensor,
    w: torch.Tensor,
    alpha: float,
    max_iter: int = 100,
    tol: float = 1e-10,
    init: tuple[torch.Tensor, torch.Tensor] | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Poisson GLMs for all outputs: y[..., :, j] ~ Poisson(exp(x @ W[..., :, j] + b[..., j])).

    x (..., S, F) features, y (..., S, J) counts, w (..., S, J) 0/1 weights (recorded entries); leading
    dims `...` are independent problems (e.g. resamples) fitted at once. Minimises, per output, the mean
    negative log-likelihood over its recorded samples + alpha/2 · ||W[..., :, j]||² (bias not
    penalised), log-rates clamped at 30. Stops when every output's gradient has max |.| <= `tol` (or after
    `max_iter` iterations). `init`: (W, b) to start from (e.g. the fit at a neighbouring alpha), default
    W = 0 and b = log of each output's mean count. Returns W (..., F, J), b (..., J) in x's dtype.
    """
    if not alpha >= 0:
        raise ValueError(f"fit_poisson_glm: alpha must be >= 0; got {alpha!r}")
    stride = max(1, math.ceil(x.shape[-2] / HESSIAN_ROWS))
    # float32 Hessians (they only steer; the exact float64 gradient decides convergence) on large data, and
    # whenever the L2 penalty keeps them well conditioned; float64 for an unpenalised fit on few samples.
    h_dtype = torch.float32 if x.shape[-2] > HESSIAN_ROWS or alpha > 0 else x.dtype
    xs = x[..., ::stride, :]
    xh = torch.cat([xs, torch.ones_like(xs[..., :1])], -1).to(h_dtype)  # (..., S_h, F+1) Hessians' samples
    # Outputs are independent problems: fitted a block at a time so that the (..., S, J) working arrays
    # (log-rates, gradient weights, line-search candidates) stay near OUTPUT_BLOCK_ELEMENTS each.
    n_out = y.shape[-1]
    block = max(1, OUTPUT_BLOCK_ELEMENTS // max(1, math.prod(y.shape[:-1])))
    weights, biases = [], []
    for j0 in range(0, n_out, block):
        j = slice(j0, min(j0 + block, n_out))
        start = None if init is None else (init[0][..., j], init[1][..., j])
        wj, bj = _fit_block(x, xh, stride, y[..., j], w[..., j], alpha, max_iter, tol, start)
        weights.append(wj)
        biases.append(bj)
    if len(weights) == 1:
        return weights[0], biases[0]
    return torch.cat(weights, -1), torch.cat(biases, -1)


def _fit_block(
    x: torch.Tensor,
    xh: torch.Tensor,
    stride: int,
    y: torch.Tensor,
    w: torch.Tensor,
    alpha: float,
    max_iter: int,
    tol: float,
    init: tuple[torch.Tensor, torch.Tensor] | None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """`fit_poisson_glm` for a block of outputs: x (..., S, F) features (the bias is the last coefficient), xh
    (..., S_h, F+1) every `stride`-th of them (the Hessians' samples), y and w (..., S, J)."""
    dtype, dev, h_dtype = x.dtype, x.device, xh.dtype
    n_feat, n_out = x.shape[-1], y.shape[-1]
    n_per = w.sum(-2).clamp(min=1.0)  # (..., J) recorded samples per output
    pen = torch.ones(n_feat + 1, dtype=dtype, device=dev)  # (F+1,) penalised coordinates: not the bias
    pen[-1] = 0.0
    if init is None:
        beta = torch.zeros(*y.shape[:-2], n_out, n_feat + 1, dtype=dtype, device=dev)  # (..., J, F+1)
        beta[..., -1] = torch.log(((w * y).sum(-2) / n_per).clamp(min=GLM_FLOOR))
    else:
        beta = torch.cat([init[0].transpose(-1, -2), init[1][..., None]], -1).to(dtype).clone()
    f, eta = _objective(x, beta, y, w, n_per, alpha, pen)
    # LU factors of each output's Hessian (torch.linalg.lu_factor), kept column-major as LAPACK wants
    # them (no copy per solve), and their 1-based pivots; identity (no row swaps) until an output's first
    # Hessian, so that outputs never refreshed (inactive) solve to a finite 0 step.
    eye = torch.eye(n_feat + 1, dtype=dtype, device=dev)
    lu = eye.expand(*beta.shape, n_feat + 1).mT.contiguous().mT  # (..., J, F+1, F+1), column-major
    piv = torch.arange(1, n_feat + 2, dtype=torch.int32, device=dev)  # 1-based: no row swaps
    piv = piv.expand(beta.shape).clone()  # (..., J, F+1)
    ridge = torch.diag(alpha * pen)  # (F+1, F+1)
    g_prev = None  # (J,) max |grad| of each output at the previous iteration
    stuck = torch.zeros(n_out, dtype=torch.bool, device=dev)  # outputs whose line search failed
    for _ in range(max_iter):
        inside = (eta < ETA_MAX).to(dtype)  # the clamp has zero gradient beyond ETA_MAX
        mu = torch.exp(eta) * inside * w / n_per[..., None, :]  # (..., S, J) d(nll)/d(eta) + y-part below
        resid = (mu - y * inside * w / n_per[..., None, :]).transpose(-1, -2)  # (..., J, S)
        grad = torch.cat([resid @ x, resid.sum(-1, keepdim=True)], -1) + alpha * beta * pen  # (..., J, F+1)
        del resid
        g_max = grad.abs().amax(-1)  # (..., J)
        g_out = g_max.reshape(-1, n_out).amax(0)  # (J,) worst problem of each output
        active = (g_out > tol) & ~stuck
        if not bool(active.any()):
            break
        # Outputs whose kept Hessian no longer shrinks the gradient tenfold get a fresh one.
        refresh = active if g_prev is None else active & (g_out > 0.1 * g_prev)
        g_prev = g_out
        if bool(refresh.any()):
            d = mu[..., ::stride, :].to(h_dtype) * stride  # (..., S_h, J) curvature weights
            fresh = torch.nonzero(refresh).flatten()
            hess = torch.empty(*beta.shape[:-2], len(fresh), n_feat + 1, n_feat + 1, dtype=dtype, device=dev)
            for i, j in enumerate(fresh.tolist()):
                h = (xh * d[..., :, j, None]).transpose(-1, -2) @ xh  # (..., F+1, F+1)
                h = h.to(dtype) + ridge
                # A tiny relative ridge keeps the solve defined for features that are all zero.
                damp = 1e-12 * h.diagonal(dim1=-2, dim2=-1).amax(-1).clamp(min=1e-300)
                hess[..., i, :, :] = h + damp[..., None, None] * eye
            # A kept Hessian keeps its LU factors: only the fresh ones are factorised (the solve with
            # the factors is what `torch.linalg.solve` does, without refactorising every iteration).
            lu_j, piv_j = torch.linalg.lu_factor(hess)
            lu[..., fresh, :, :], piv[..., fresh, :] = lu_j, piv_j
            del hess, lu_j
        step = -torch.linalg.lu_solve(lu, piv, grad.unsqueeze(-1)).squeeze(-1)  # (..., J, F+1)
        step = step * active[:, None].to(dtype)
        slope = (grad * step).sum(-1)  # (..., J) directional derivative, < 0
        # Steps whose predicted decrease is below float64 rounding of f are taken whole (near the optimum).
        tiny = slope.abs() <= 1e-15 * f.abs().clamp(min=1.0)
        t = torch.ones_like(f)
        todo = active.expand_as(f).clone()
        for _ in range(60):  # backtracking (Armijo) on the exact objective, per problem and output
            cand = beta + t[..., None] * step
            f_c, eta_c = _objective(x, cand, y, w, n_per, alpha, pen)
            ok = todo & ((f_c <= f + 1e-4 * t * slope) | tiny)
            beta = torch.where(ok[..., None], cand, beta)
            f = torch.where(ok, f_c, f)
            eta = torch.where(ok[..., None, :], eta_c, eta)
            todo = todo & ~ok
            if not bool(todo.any()):
                break
            t = torch.where(todo, 0.5 * t, t)
        stuck |= todo.reshape(-1, n_out).any(0)
    return beta[..., :-1].transpose(-1, -2).contiguous(), beta[..., -1].contiguous()
