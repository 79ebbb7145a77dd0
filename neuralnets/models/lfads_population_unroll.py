"""The controller + generator recurrence of K LFADS members at once (`PopulationLFADS`).

The same math as `LFADS._unroll` (the per-step reference) with every matmul batched over members
(`baddbmm` on `(K, B, .)` states and `(K, 3H, .)` weights): one kernel call per step for all members
instead of one per member.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
from torch import Tensor

from neuralnets.models.lfads_unroll import lfads_unroll

if TYPE_CHECKING:
    from neuralnets.models.lfads_population import PopulationLFADS


def gru_step(x_proj: Tensor, h: Tensor, w_hh: Tensor, b_hh: Tensor, clip: float | None) -> Tensor:
    """One clipped-GRU step (gates [r, u, c], reset after the hidden matmul) of K members:
    x_proj (K, B, 3H) (input projection incl. bias), h (K, B, H), w_hh (K, 3H, H), b_hh (K, 3H)."""
    hp = torch.baddbmm(b_hh.unsqueeze(1), h, w_hh.transpose(1, 2))  # (K, B, 3H)
    x_r, x_u, x_c = x_proj.chunk(3, dim=-1)
    h_r, h_u, h_c = hp.chunk(3, dim=-1)
    r = torch.sigmoid(x_r + h_r)
    c = torch.tanh(x_c + r * h_c)
    u = torch.sigmoid(x_u + h_u)
    h_new = u * h + (1.0 - u) * c
    return h_new if clip is None else h_new.clamp(-clip, clip)


def population_unroll(
    pop: PopulationLFADS, g0: Tensor, ci: Tensor | None, eps: Tensor | None, mask: Tensor | None
) -> tuple[Tensor, Tensor | None, Tensor | None, Tensor | None]:
    """`g0 (K, B, G)`, `ci (K, B, T_obs, CI)` or None, `eps (K, T_obs, B, U)` or None, `mask (K, T + 1, B,
    G)` or None -> `factors (K, B, T, F)` and the inferred inputs' `mean, logvar, u` (each `(K, B, T_obs,
    U)`, or None without a controller)."""
    t = pop.template
    T_obs, T = pop.spec.n_obs_bins, pop.spec.n_bins
    K, B, _ = g0.shape
    clip = t.generator.clip_value
    p = pop.p
    w_fac = p("factors.weight")  # (K, F, G)
    w_fac = w_fac / w_fac.norm(dim=2, keepdim=True).clamp(min=1e-12)  # unit-norm rows, as NormalizedLinear
    w_fac_t = w_fac.transpose(1, 2)  # (K, G, F)
    w_gi, b_gi = p("generator.weight_ih"), p("generator.bias_ih")  # (K, 3G, U), (K, 3G)
    w_gh, b_gh = p("generator.weight_hh"), p("generator.bias_hh")
    zero_in = b_gi.unsqueeze(1)  # (K, 1, 3G) input projection of a zero input
    drop = (lambda h, i: h) if mask is None else (lambda h, i: h * mask[:, i])  # noqa: E731

    states: list[Tensor] = []
    means, logvars, us, facs = [], [], [], []
    g = g0
    if ci is not None:
        C = t.controller.hidden_size
        ci_dim = t.ci_dim
        w_ci = p("controller.weight_ih")  # (K, 3C, CI + F)
        ci_proj = torch.baddbmm(
            p("controller.bias_ih").unsqueeze(1),
            ci.reshape(K, -1, ci_dim),
            w_ci[:, :, :ci_dim].transpose(1, 2),
        ).view(K, B, T_obs, 3 * C)  # (K, B, T_obs, 3C)
        w_fb_t = w_ci[:, :, ci_dim:].transpose(1, 2)  # (K, F, 3C)
        w_ch, b_ch = p("controller.weight_hh"), p("controller.bias_hh")
        w_co, b_co = p("co_linear.weight"), p("co_linear.bias")  # (K, 2U, C), (K, 2U)
        c = p("con_h0").unsqueeze(1).expand(K, B, C)  # (K, B, C)
        f = torch.bmm(drop(g0, 0), w_fac_t)  # (K, B, F) f_{-1}
        for step in range(T_obs):
            c = gru_step(torch.baddbmm(ci_proj[:, :, step], f, w_fb_t), c, w_ch, b_ch, clip)
            mean, raw = torch.baddbmm(b_co.unsqueeze(1), c, w_co.transpose(1, 2)).chunk(
                2, dim=-1
            )  # (K, B, U)
            logvar = torch.logaddexp(raw, torch.full_like(raw, t.log_co_var_min))
            u = mean if eps is None else mean + torch.exp(0.5 * logvar) * eps[:, step]
            g = gru_step(torch.baddbmm(b_gi.unsqueeze(1), u, w_gi.transpose(1, 2)), g, w_gh, b_gh, clip)
            f = torch.bmm(drop(g, step + 1), w_fac_t)  # (K, B, F)
            means.append(mean)
            logvars.append(logvar)
            us.append(u)
            facs.append(f)
    fwd = []
    for step in range(len(facs), T):  # bins without inferred input (all of them without a controller)
        g = gru_step(zero_in, g, w_gh, b_gh, clip)
        fwd.append(drop(g, step + 1))
    if fwd:
        fwd_states = torch.stack(fwd, dim=2)  # (K, B, T_fwd, G)
        facs_fwd = torch.bmm(fwd_states.reshape(K, -1, fwd_states.shape[-1]), w_fac_t).view(
            K, B, len(fwd), -1
        )
    del states
    if not facs:
        return facs_fwd, None, None, None
    factors = torch.stack(facs, dim=2)  # (K, B, T_obs, F)
    if fwd:
        factors = torch.cat([factors, facs_fwd], dim=2)  # (K, B, T, F)
    st = lambda xs: torch.stack(xs, dim=2)  # noqa: E731  list of (K, B, U) -> (K, B, T_obs, U)
    return factors, st(means), st(logvars), st(us)


def population_unroll_fused(
    pop: PopulationLFADS, g0: Tensor, ci: Tensor | None, eps: Tensor | None, mask: Tensor | None
) -> tuple[Tensor, Tensor | None, Tensor | None, Tensor | None]:
    """Same inputs, outputs and numbers as `population_unroll` (up to float rounding), through the
    hand-written BPTT of `neuralnets.models.lfads_unroll.lfads_unroll` run with a leading member dim
    (every per-step matmul one `baddbmm` for all members; the gate math one native call)."""
    t = pop.template
    p = pop.p
    K, B, G = g0.shape
    w_fac = p("factors.weight")  # (K, F, G)
    w_fac = w_fac / w_fac.norm(dim=2, keepdim=True).clamp(min=1e-12)  # unit-norm rows
    mask_t = None if mask is None else mask.transpose(0, 1)  # (T + 1, K, B, G) time-major view
    kwargs = {}
    if ci is not None:
        C, ci_dim = t.controller.hidden_size, t.ci_dim
        T_obs = ci.shape[2]
        w_ci = p("controller.weight_ih")  # (K, 3C, CI + F)
        ci_proj = torch.baddbmm(
            p("controller.bias_ih").unsqueeze(1),
            ci.transpose(1, 2).reshape(K, -1, ci_dim),
            w_ci[:, :, :ci_dim].transpose(1, 2),
        ).view(K, T_obs, B, 3 * C)  # (K, T_obs B, 3C) time-major within each member
        kwargs = dict(
            ci_proj=ci_proj.transpose(0, 1),  # (T_obs, K, B, 3C)
            c0=p("con_h0").unsqueeze(1).expand(K, B, C).contiguous(),  # (K, B, C)
            w_fb=torch.bmm(w_ci[:, :, ci_dim:], w_fac),  # (K, 3C, G): factor read-in folded in
            w_ch=p("controller.weight_hh"),
            b_ch=p("controller.bias_hh"),
            w_co=p("co_linear.weight"),
            b_co=p("co_linear.bias"),
            eps=None if eps is None else eps.transpose(0, 1),  # (T_obs, K, B, U)
        )
    states, mean, logvar, u = lfads_unroll(
        g0,
        pop.spec.n_bins,
        p("generator.weight_hh"),
        p("generator.bias_hh"),
        p("generator.bias_ih"),
        w_gi=p("generator.weight_ih"),
        mask=mask_t,
        clip=t.generator.clip_value,
        log_var_min=t.log_co_var_min,
        **kwargs,
    )  # fmt: skip  states (T, K, B, G)
    if mask_t is not None:
        states = states * mask_t[1:]  # dropout of the states read by the factors
    T = states.shape[0]
    flat = states.transpose(0, 1).reshape(K, T * B, G)  # (K, T B, G)
    factors = torch.bmm(flat, w_fac.transpose(1, 2)).view(K, T, B, -1).transpose(1, 2)  # (K, B, T, F)
    if ci is None:
        return factors, None, None, None
    km = lambda x: x.permute(1, 2, 0, 3)  # noqa: E731  (T_obs, K, B, U) -> (K, B, T_obs, U)
    return factors, km(mean), km(logvar), km(u)
