"""Fast recurrences: the LFADS controller + generator unroll and clipped-GRU scans with hand-written BPTT.

Why: a recurrence written as a Python loop over time steps is, under autograd, dozens of small ops
per step, each recorded, saved and replayed one by one in backward; and autograd of the per-step
slice `x[:, t]` of a precomputed input zero-fills a full-size gradient tensor at every step (for the
LFADS controller input, 35 fills of 7 MB per training step at the MC_Maze scale). Here each
recurrence is one `torch.autograd.Function`:

- forward runs the time loop with no autograd, writing into preallocated buffers; per step only what
  is sequential (one matmul for the hidden state, a few in-place pointwise ops);
- backward is a hand-written backpropagation through time in one Python loop; everything that does
  not depend on the previous step is hoisted out of the loop and done once over all steps, in
  particular ALL weight and bias gradients (`dW_hh = sum_t dgates_t^T h_{t-1}` is one
  `(3H, T*B) @ (T*B, H)` matmul, not T small ones);
- LFADS: the factor read-out feeding the controller is folded into one (3C, G) matrix, and all the
  randomness (dropout masks, posterior samples) comes in from outside, so the fused and the plain
  loops consume the same draws and agree up to float rounding;
- on CPU the gate math of a step (forward and backward) is one call of a fused, vectorised C++ kernel
  (`neuralnets.nn.native`, built on first use); where it cannot be built, the same math runs as
  PyTorch ops (`_cell_forward` / `_cell_backward` below, the reference), with tanh computed as
  `2 sigmoid(2x) - 1` (the same function; ATen's CPU tanh is ~3x slower than its sigmoid, measured);
- on any device and dtype (pure PyTorch ops); under autocast the recurrence runs in the weights'
  precision (the matmuls around it still autocast); on GPU, `GraphedStep` captures a whole training
  step as one CUDA graph, removing the per-kernel launch cost that dominates small recurrent models.

The math is the clipped GRU of `neuralnets.nn.clipped_gru.ClippedGRUCell` with `reset_after=True`
(gates stacked `[r, u, c]` as in `torch.nn.GRU`):

    r = sigmoid(x_r + h_r),  u = sigmoid(x_u + h_u),  n = tanh(x_c + r * h_c)
    h' = clip(n + u * (h - n), -clip, clip)
    with [x_r, x_u, x_c] = W_ih x + b_ih and [h_r, h_u, h_c] = W_hh h + b_hh

so `torch.nn.GRU` is the special case `clip=None`. `tests/test_fast_path.py` compares outputs and
gradients with the plain per-step autograd code and runs `torch.autograd.gradcheck` in float64 on the
hand-written backward passes.

Public API:
- `RECURRENCES`, `resolve_recurrence(recurrence)`: the `recurrence` option of the models.
- `lfads_unroll(...)`: the LFADS controller + generator recurrence (see its docstring).
- `stacked_gru(x_proj, h0, weight_hh, bias_hh, clip)`: K independent (clipped) GRUs over one sequence,
  one batched matmul per step; `gru_input_proj(xs, w_ih, b_ih)`: their input projections.
- `GraphedStep`: a training step (forward, backward, optimiser) captured as one CUDA graph.

For plain (unclipped) `torch.nn.GRU` layers there is little to gain on CPU: ATen's GRU already hoists
the input projection and loops in C++, and its autograd backward is within a few percent of the
hand-written one (measured at 256 trials x 200 units); the stacked scan helps only by running several
independent GRUs (both directions of both LFADS encoders) as one batched matmul per step. On GPU
those layers run cuDNN's fused kernel.
"""

from __future__ import annotations

import contextlib
import warnings
from collections.abc import Callable

import torch
from torch import Tensor
from torch.autograd.function import once_differentiable

from neuralnets.nn.native import native_ops, use_native

RECURRENCES = ("auto", "plain", "fused")


def resolve_recurrence(recurrence: str) -> str:
    """Map the user-facing `recurrence` option to the implementation to run: 'plain' or 'fused'.

    'plain': per-step PyTorch with autograd (the reference). 'fused': the hand-written BPTT of this
    module, pure PyTorch ops, so it runs on any device and dtype. 'auto' (the default) = 'fused', the
    faster one where measured; a component where the fused version does not apply falls back to
    'plain' under 'auto' (and raises under an explicit 'fused').
    """
    if recurrence not in RECURRENCES:
        raise ValueError(f"recurrence must be one of {RECURRENCES}; got {recurrence!r}")
    return "fused" if recurrence == "auto" else recurrence


def _autocast_enabled(device_type: str) -> bool:
    try:
        return torch.is_autocast_enabled(device_type)
    except TypeError:  # torch < 2.4: no device argument
        return torch.is_autocast_enabled() if device_type == "cuda" else torch.is_autocast_cpu_enabled()


def _full_precision(args: tuple, dtype: torch.dtype) -> tuple[tuple, contextlib.AbstractContextManager]:
    """Under autocast, cast floating tensors to the weights' dtype and return a context that turns
    autocast off: the recurrence runs in full precision (it is latency-bound, so bf16 would buy little,
    and rounding would compound over the unroll); the matmuls around it still autocast."""
    device_type = next(a for a in args if isinstance(a, Tensor)).device.type
    if not _autocast_enabled(device_type):
        return args, contextlib.nullcontext()
    cast = tuple(a.to(dtype) if isinstance(a, Tensor) and a.is_floating_point() else a for a in args)
    return cast, torch.autocast(device_type, enabled=False)


# ------------------------------------------------------------------------------------------ pointwise
def _tanh(a: Tensor, out: Tensor) -> Tensor:
    """tanh(a) into `out`; on CPU as 2 sigmoid(2a) - 1 (the same function, faster there). Clobbers `a`."""
    if a.device.type == "cpu":
        torch.sigmoid(a.mul_(2.0), out=out)
        return out.mul_(2.0).sub_(1.0)
    return torch.tanh(a, out=out)


def _cell_forward(
    xp: Tensor,
    hp: Tensor,
    h: Tensor,
    clip: float | None,
    h_out: Tensor,
    ru_out: Tensor,
    n_out: Tensor,
    keep_out: Tensor | None,
) -> None:
    """Gate math of one step, written into preallocated outputs (any leading dims `...`).

    xp, hp: (..., 3H) input and hidden projections (biases included); h: (..., H) previous state.
    Writes h_out (..., H) new state, ru_out (..., 2H) = [r, u], n_out (..., H) candidate, and
    keep_out (..., H) 1 where the clip was inactive (the gradient passes), else 0, when given.
    On CPU this is one call of the native kernel (`neuralnets.nn.native`) where it is available.
    """
    if use_native(h_out):
        xp = xp.expand(*h_out.shape[:-1], xp.shape[-1])  # the generator's bias-only input broadcasts
        native_ops().gru_cell_forward(xp, hp, h, clip, h_out, ru_out, n_out, keep_out)
        return
    H = h.shape[-1]
    torch.add(xp[..., : 2 * H], hp[..., : 2 * H], out=ru_out).sigmoid_()
    a = torch.addcmul(xp[..., 2 * H :], ru_out[..., :H], hp[..., 2 * H :])  # (..., H) x_c + r * h_c
    n = _tanh(a, n_out)
    if clip is None:
        torch.addcmul(n, ru_out[..., H:], h - n, out=h_out)  # n + u (h - n)
        return
    pre = torch.addcmul(n, ru_out[..., H:], h - n)  # (..., H) unclipped state
    torch.clamp(pre, -clip, clip, out=h_out)
    if keep_out is not None:
        torch.eq(pre, h_out, out=keep_out)  # == (-clip <= pre <= clip): where clamp passes gradient


def _cell_backward(
    dh: Tensor,
    h_prev: Tensor,
    ru: Tensor,
    n: Tensor,
    hc: Tensor,
    keep: Tensor | None,
    dhh_out: Tensor,
    dan_out: Tensor,
) -> Tensor:
    """Backward of `_cell_forward` for one step (any leading dims `...`).

    dh (..., H): gradient w.r.t. the new (clipped) state. h_prev, ru, n, hc (= h_c incl. bias), keep:
    saved from forward. Writes dhh_out (..., 3H) = gradient w.r.t. the hidden projection
    [dr_pre, du_pre, dn_pre * r] and dan_out (..., H) = gradient w.r.t. x_c (= dn_pre); the gradient
    w.r.t. the input projection is [dr_pre, du_pre, dn_pre]. Returns the direct part of the gradient
    w.r.t. h_prev, `dh * u` (the caller adds `dhh @ W_hh`).
    """
    if use_native(dh):
        direct = torch.empty_like(n)
        native_ops().gru_cell_backward(dh, h_prev, ru, n, hc, keep, dhh_out, dan_out, direct)
        return direct
    H = n.shape[-1]
    if keep is not None:
        dh = torch.where(keep != 0, dh, 0.0)  # no gradient where the state was clipped
    u = ru[..., H:]
    dh_direct = dh * u
    dn = dh - dh_direct  # dh (1 - u)
    torch.addcmul(dn, dn, n * n, value=-1.0, out=dan_out)  # dn (1 - n^2): through tanh
    s = torch.addcmul(ru, ru, ru, value=-1.0)  # (..., 2H) sigmoid'(.) = s (1 - s) for r and u
    g = dhh_out[..., : 2 * H]
    torch.mul(dan_out, hc, out=g[..., :H])  # dr = dn_pre * h_c
    torch.sub(h_prev, n, out=g[..., H:]).mul_(dh)  # du = dh (h_prev - n)
    g.mul_(s)
    torch.mul(dan_out, ru[..., :H], out=dhh_out[..., 2 * H :])  # dh_c = dn_pre * r
    return dh_direct


def _sum_lead(x: Tensor) -> Tensor:
    """Sum over all but the last dim: (..., D) -> (D,)."""
    return x.reshape(-1, x.shape[-1]).sum(0)


def _bmm_t(a: Tensor, b: Tensor) -> Tensor:
    """sum over steps and trials of a^T b per stack: a (K, T, B, P), b (K, T, B, Q) -> (K, P, Q)."""
    K = a.shape[0]
    return torch.bmm(a.reshape(K, -1, a.shape[-1]).transpose(1, 2), b.reshape(K, -1, b.shape[-1]))


# ------------------------------------------------------------------------------------ stacked GRU scan
def _stacked_forward(x_proj, h0, w_hh, b_hh, clip, save):
    K, T, B, H3 = x_proj.shape
    H = H3 // 3
    new = x_proj.new_empty
    hs = new(K, T, B, H)  # all states, written in place step by step
    w_t = w_hh.transpose(1, 2)  # (K, H, 3H)
    bias = b_hh.unsqueeze(1)  # (K, 1, 3H)
    if save:
        hp_all = new(
            T, K, B, H3
        )  # hidden projections, time-major so that each step's bmm output is contiguous
        ru_all, n_all = new(K, T, B, 2 * H), new(K, T, B, H)
        keep_all = new(K, T, B, H) if clip is not None else None
    else:
        hp1, ru1, n1 = new(K, B, H3), new(K, B, 2 * H), new(K, B, H)
    h = h0
    for t in range(T):
        if save:
            hp, ru, n = hp_all[t], ru_all[:, t], n_all[:, t]
            keep = None if keep_all is None else keep_all[:, t]
        else:
            hp, ru, n, keep = hp1, ru1, n1, None
        torch.baddbmm(bias, h, w_t, out=hp)  # (K, B, 3H)
        _cell_forward(x_proj[:, t], hp, h, clip, hs[:, t], ru, n, keep)
        h = hs[:, t]
    saved = (hp_all, ru_all, n_all, keep_all) if save else None
    return hs, saved


class _StackedGRUScan(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x_proj, h0, w_hh, b_hh, clip):
        hs, (hp_all, ru_all, n_all, keep_all) = _stacked_forward(x_proj, h0, w_hh, b_hh, clip, save=True)
        ctx.save_for_backward(x_proj, h0, w_hh, hs, hp_all, ru_all, n_all, keep_all)
        ctx.set_materialize_grads(False)
        return hs

    @staticmethod
    @once_differentiable
    def backward(ctx, d_hs):
        x_proj, h0, w_hh, hs, hp_all, ru_all, n_all, keep_all = ctx.saved_tensors
        K, T, B, H3 = x_proj.shape
        H = H3 // 3
        if d_hs is None:
            return None, None, None, None, None
        # Laid out like x_proj (empty_like keeps a dense tensor's strides; x_proj is often a transposed
        # view of a batch-major matmul output), so the gradient needs no copy upstream.
        dx = torch.empty_like(x_proj)
        dhh = x_proj.new_empty(K, T, B, H3)
        dh = None
        for t in range(T - 1, -1, -1):
            g = d_hs[:, t] if dh is None else dh + d_hs[:, t]
            h_prev = h0 if t == 0 else hs[:, t - 1]
            keep = None if keep_all is None else keep_all[:, t]
            hc = hp_all[t][..., 2 * H :]
            d_direct = _cell_backward(
                g, h_prev, ru_all[:, t], n_all[:, t], hc, keep, dhh[:, t], dx[:, t, :, 2 * H :]
            )
            dh = torch.baddbmm(d_direct, dhh[:, t], w_hh)  # (K, B, H)
        # d x_proj = [dr, du, dn_pre]: the r, u parts equal those of dhh; one bulk copy, not one per step.
        dx[..., : 2 * H].copy_(dhh[..., : 2 * H])
        # Weight gradients of all steps at once: h_{t-1} is h0 at t = 0, else hs[:, t-1].
        d_w = torch.bmm(dhh[:, 0].transpose(1, 2), h0)  # (K, 3H, H)
        if T > 1:
            d_w += _bmm_t(dhh[:, 1:], hs[:, :-1])
        d_b = dhh.reshape(K, -1, H3).sum(1)  # (K, 3H)
        return dx, dh, d_w, d_b, None


def stacked_gru(
    x_proj: Tensor, h0: Tensor, weight_hh: Tensor, bias_hh: Tensor | None, clip: float | None = None
) -> Tensor:
    """K independent GRUs (gates `[r, u, c]`, reset after the hidden matmul, optional clip) over T steps.

    Args:
        x_proj: (K, T, B, 3H) input projections `W_ih x_t + b_ih` of every step (any strides; a
            time-reversed direction is a GRU fed the time-reversed projections).
        h0: (K, B, H) initial states. weight_hh: (K, 3H, H). bias_hh: (K, 3H) or None.
        clip: clip the state to [-clip, clip] after every step (LFADS), None for a plain GRU.
    Returns:
        (K, T, B, H) states after each step. Differentiable w.r.t. x_proj, h0, weight_hh, bias_hh
        (hand-written backward; not twice differentiable).
    """
    if x_proj.ndim != 4 or h0.ndim != 3 or weight_hh.ndim != 3:
        raise ValueError(
            f"stacked_gru expects x_proj (K, T, B, 3H), h0 (K, B, H), weight_hh (K, 3H, H); got "
            f"{tuple(x_proj.shape)}, {tuple(h0.shape)}, {tuple(weight_hh.shape)}"
        )
    K, T, B, H3 = x_proj.shape
    H = h0.shape[-1]
    if H3 != 3 * H or h0.shape[:2] != (K, B) or weight_hh.shape != (K, 3 * H, H) or T < 1:
        raise ValueError(
            f"stacked_gru: inconsistent shapes x_proj {tuple(x_proj.shape)}, h0 {tuple(h0.shape)}, "
            f"weight_hh {tuple(weight_hh.shape)} (need T >= 1, 3H = {3 * H})"
        )
    if bias_hh is None:
        bias_hh = weight_hh.new_zeros(K, 3 * H)
    (x_proj, h0, weight_hh, bias_hh), ctx = _full_precision((x_proj, h0, weight_hh, bias_hh), weight_hh.dtype)
    h0 = h0.contiguous()
    with ctx:
        if torch.is_grad_enabled() and any(t.requires_grad for t in (x_proj, h0, weight_hh, bias_hh)):
            return _StackedGRUScan.apply(x_proj, h0, weight_hh, bias_hh, clip)
        return _stacked_forward(x_proj, h0, weight_hh, bias_hh, clip, save=False)[0]


# ------------------------------------------------------------------------------ LFADS decoder unroll
_UNROLL_ARGS = (
    "ci_proj c0 g0 w_fb w_ch b_ch w_co b_co w_gi b_gi w_gh b_gh eps mask n_bins clip lv_min".split()
)


def _lfads_forward(args: tuple, save: bool):
    """Forward of `lfads_unroll` (arguments in `_UNROLL_ARGS` order), no autograd. With `save`, also
    returns the activations that the backward needs (else None)."""
    ci_proj, c0, g0, w_fb, w_ch, b_ch, w_co, b_co, w_gi, b_gi, w_gh, b_gh, eps, mask, n_bins, clip, lv_min = (
        args
    )
    T, (B, G) = n_bins, g0.shape
    T_obs = 0 if ci_proj is None else ci_proj.shape[0]
    new = g0.new_empty
    gs = new(T, B, G)
    n_keep = T if save else 1
    hp_g, ru_g, n_g = new(n_keep, B, 3 * G), new(n_keep, B, 2 * G), new(n_keep, B, G)
    keep_g = new(n_keep, B, G) if save and clip is not None else None
    w_gh_t = w_gh.t()
    c_state = None
    if T_obs:
        C, U = c0.shape[1], w_gi.shape[1]
        n_c = T_obs if save else 1
        cs = new(T_obs, B, C)
        hp_c, ru_c, n_cand = new(n_c, B, 3 * C), new(n_c, B, 2 * C), new(n_c, B, C)
        keep_c = new(n_c, B, C) if save and clip is not None else None
        out_co = new(T_obs, B, 2 * U)  # [mean, raw log-variance] of the inferred inputs
        logvar, us = new(T_obs, B, U), new(T_obs, B, U)
        lv_floor = torch.full((B, U), lv_min, dtype=g0.dtype, device=g0.device)
        w_fb_t, w_ch_t, w_co_t, w_gi_t = w_fb.t(), w_ch.t(), w_co.t(), w_gi.t()
        c_state = c0
    g = g0
    for t in range(T):
        i = t if save else 0
        if t < T_obs:
            # Controller: input [ci_t, factors_{t-1}] with the factor read-in folded into w_fb (3C, G).
            d = g if mask is None else g * mask[t]  # (B, G) dropped-out generator state
            xc = torch.addmm(ci_proj[t], d, w_fb_t)  # (B, 3C)
            torch.addmm(b_ch, c_state, w_ch_t, out=hp_c[i])
            _cell_forward(
                xc, hp_c[i], c_state, clip, cs[t], ru_c[i], n_cand[i], None if keep_c is None else keep_c[i]
            )
            c_state = cs[t]
            torch.addmm(b_co, c_state, w_co_t, out=out_co[t])
            torch.logaddexp(out_co[t, :, U:], lv_floor, out=logvar[t])  # floored log-variance
            if eps is None:
                us[t].copy_(out_co[t, :, :U])
            else:
                torch.addcmul(out_co[t, :, :U], torch.exp(0.5 * logvar[t]), eps[t], out=us[t])
            xg = torch.addmm(b_gi, us[t], w_gi_t)  # (B, 3G)
        else:
            xg = b_gi  # no inferred input: the input projection of zeros is the bias
        torch.addmm(b_gh, g, w_gh_t, out=hp_g[i])
        _cell_forward(xg, hp_g[i], g, clip, gs[t], ru_g[i], n_g[i], None if keep_g is None else keep_g[i])
        g = gs[t]
    saved = None
    if save:
        ctrl = (cs, hp_c, ru_c, n_cand, keep_c, out_co, logvar, us) if T_obs else (None,) * 8
        saved = (hp_g, ru_g, n_g, keep_g, *ctrl)
    if not T_obs:
        return gs, None, None, None, saved
    return gs, out_co[..., :U], logvar, us, saved


class _LFADSUnroll(torch.autograd.Function):
    @staticmethod
    def forward(ctx, *args):
        gs, mean, logvar, us, saved = _lfads_forward(args, save=True)
        a = dict(zip(_UNROLL_ARGS, args, strict=True))
        inputs = [a[k] for k in ("c0", "g0", "w_fb", "w_ch", "w_co", "w_gi", "w_gh", "eps", "mask")]
        ctx.save_for_backward(*inputs, gs, *saved)
        ctx.set_materialize_grads(False)
        return gs, mean, logvar, us

    @staticmethod
    @once_differentiable
    def backward(ctx, d_gs, d_mean_ext, d_logvar, d_us):
        c0, g0, w_fb, w_ch, w_co, w_gi, w_gh, eps, mask, gs, *rest = ctx.saved_tensors
        hp_g, ru_g, n_g, keep_g, cs, hp_c, ru_c, n_cand, keep_c, out_co, logvar, us = rest
        T, B, G = gs.shape
        T_obs = 0 if cs is None else cs.shape[0]
        new = gs.new_empty
        dhh_g, dan_g = new(T, B, 3 * G), new(T, B, G)
        if T_obs:
            C, U = cs.shape[2], us.shape[2]
            dhh_c, dx_c = new(T_obs, B, 3 * C), new(T_obs, B, 3 * C)
            d_out = new(T_obs, B, 2 * U)  # gradient w.r.t. [mean, raw log-variance]
            # d logaddexp(raw, floor) / d raw = exp(raw - logvar); the sample's std is exp(logvar / 2).
            dlv_draw = torch.exp(out_co[..., U:] - logvar)  # (T_obs, B, U)
            half_std_eps = None if eps is None else 0.5 * torch.exp(0.5 * logvar) * eps
            dc = torch.zeros_like(c0)
        dg = torch.zeros_like(g0) if d_gs is None else None
        for t in range(T - 1, -1, -1):
            if d_gs is not None:
                dg = d_gs[t] if dg is None else dg + d_gs[t]
            g_prev = g0 if t == 0 else gs[t - 1]
            keep = None if keep_g is None else keep_g[t]
            d_direct = _cell_backward(
                dg, g_prev, ru_g[t], n_g[t], hp_g[t, :, 2 * G :], keep, dhh_g[t], dan_g[t]
            )
            dg = torch.addmm(d_direct, dhh_g[t], w_gh)  # (B, G) gradient w.r.t. g_{t-1}
            if t >= T_obs:
                continue
            # Generator input u_t: d u = d x_g @ W_gi with d x_g = [dr, du, dn_pre].
            du = torch.addmm(dan_g[t] @ w_gi[2 * G :], dhh_g[t, :, : 2 * G], w_gi[: 2 * G])  # (B, U)
            if d_us is not None:
                du += d_us[t]
            d_mean, d_raw = d_out[t, :, :U], d_out[t, :, U:]
            # u = mean + exp(logvar / 2) eps  ->  d mean = d u, d logvar = d u eps exp(logvar / 2) / 2
            if d_mean_ext is None:
                d_mean.copy_(du)
            else:
                torch.add(du, d_mean_ext[t], out=d_mean)
            d_lv = None if half_std_eps is None else du * half_std_eps[t]
            if d_logvar is not None:
                d_lv = d_logvar[t] if d_lv is None else d_lv + d_logvar[t]
            if d_lv is None:
                d_raw.zero_()
            else:
                torch.mul(d_lv, dlv_draw[t], out=d_raw)
            dc = torch.addmm(dc, d_out[t], w_co)  # (B, C) gradient w.r.t. c_t
            c_prev = c0 if t == 0 else cs[t - 1]
            keep = None if keep_c is None else keep_c[t]
            d_direct = _cell_backward(
                dc, c_prev, ru_c[t], n_cand[t], hp_c[t, :, 2 * C :], keep, dhh_c[t], dx_c[t, :, 2 * C :]
            )
            dx_c[t, :, : 2 * C].copy_(dhh_c[t, :, : 2 * C])
            dc = torch.addmm(d_direct, dhh_c[t], w_ch)  # (B, C) gradient w.r.t. c_{t-1}
            d_fb = dx_c[t] @ w_fb  # (B, G) through the factor feedback into the controller
            if mask is None:
                dg += d_fb
            else:
                dg.addcmul_(d_fb, mask[t])
        # All weight and bias gradients at once, over every step (h_{t-1} is the initial state at t = 0).
        d_w_gh = dhh_g[0].t() @ g0
        if T > 1:
            d_w_gh.addmm_(dhh_g[1:].reshape(-1, 3 * G).t(), gs[:-1].reshape(-1, G))
        d_b_gh = _sum_lead(dhh_g)
        d_b_gi = torch.cat([d_b_gh[: 2 * G], _sum_lead(dan_g)])  # r, u parts: the same sums as d_b_gh
        if not T_obs:
            d_w_gi = torch.zeros_like(w_gi) if ctx.needs_input_grad[8] else None  # (3G, 0): no input
            return (None, None, dg) + (None,) * 5 + (d_w_gi, d_b_gi, d_w_gh, d_b_gh) + (None,) * 5
        us2 = us.reshape(-1, U)  # (T_obs B, U)
        d_w_gi = torch.cat(
            [dhh_g[:T_obs, :, : 2 * G].reshape(-1, 2 * G).t() @ us2, dan_g[:T_obs].reshape(-1, G).t() @ us2]
        )  # (3G, U)
        d_w_ch = dhh_c[0].t() @ c0
        fb_in = g0 if mask is None else g0 * mask[0]  # the controller's feedback input at t = 0
        d_w_fb = dx_c[0].t() @ fb_in
        if T_obs > 1:
            d_w_ch.addmm_(dhh_c[1:].reshape(-1, 3 * C).t(), cs[:-1].reshape(-1, C))
            fb_in = gs[: T_obs - 1] if mask is None else gs[: T_obs - 1] * mask[1:T_obs]
            d_w_fb.addmm_(dx_c[1:].reshape(-1, 3 * C).t(), fb_in.reshape(-1, G))
        d_b_ch = _sum_lead(dhh_c)
        d_w_co = d_out.reshape(-1, 2 * U).t() @ cs.reshape(-1, C)
        d_b_co = _sum_lead(d_out)
        grads = (dx_c, dc, dg, d_w_fb, d_w_ch, d_b_ch, d_w_co, d_b_co, d_w_gi, d_b_gi, d_w_gh, d_b_gh)
        return (*grads, None, None, None, None, None)


def lfads_unroll(
    g0: Tensor,
    n_bins: int,
    w_gh: Tensor,
    b_gh: Tensor,
    b_gi: Tensor,
    w_gi: Tensor | None = None,
    ci_proj: Tensor | None = None,
    c0: Tensor | None = None,
    w_fb: Tensor | None = None,
    w_ch: Tensor | None = None,
    b_ch: Tensor | None = None,
    w_co: Tensor | None = None,
    b_co: Tensor | None = None,
    eps: Tensor | None = None,
    mask: Tensor | None = None,
    clip: float | None = 5.0,
    log_var_min: float = 0.0,
) -> tuple[Tensor, Tensor | None, Tensor | None, Tensor | None]:
    """The LFADS generator (and, with `ci_proj`, controller) recurrence with a hand-written BPTT.

    Shapes: B trials, G generator units, C controller units, U inferred inputs, T = `n_bins` steps of
    which the first T_obs = `ci_proj.shape[0]` have a controller. All sequences are time-major.

    Generator (clipped GRU `w_gi (3G, U)`, `b_gi`, `w_gh (3G, G)`, `b_gh`) from `g0 (B, G)`; its input is
    the inferred input u_t for t < T_obs and zero after (its projection is then `b_gi`).
    Controller (only with `ci_proj`): a clipped GRU with state `c` from `c0 (B, C)`, input projection
    `ci_proj[t] + (mask[t] * g_{t-1}) @ w_fb^T` where `ci_proj (T_obs, B, 3C)` is the projection of the
    controller-input encoding (bias included), `w_fb (3C, G)` the factor feedback folded into one matrix
    (controller input weights of the factors @ unit-norm factor weights) and g_{-1} = g0; recurrent
    weights `w_ch (3C, C)`, `b_ch`. Its output `[mean, raw] = c_t @ w_co^T + b_co` (`w_co (2U, C)`) gives
    `logvar = logaddexp(raw, log_var_min)` and `u_t = mean + exp(logvar / 2) * eps[t]` (`eps (T_obs, B, U)`
    standard normal draws; None = use the mean).
    `mask (T + 1, B, G)`: dropout multipliers of g0 (index 0) and g_t (index t + 1) on the feedback
    path (None = no dropout); the caller applies `mask[1:]` to the returned states for the factors.

    Returns `states (T, B, G)` (g_0 .. g_{T-1}) and, with a controller, `mean, logvar, u` (each
    `(T_obs, B, U)`), else three None. Differentiable w.r.t. every weight, `g0`, `c0` and `ci_proj`.
    """
    if ci_proj is not None:
        missing = [
            k
            for k, v in dict(c0=c0, w_fb=w_fb, w_ch=w_ch, b_ch=b_ch, w_co=w_co, b_co=b_co).items()
            if v is None
        ]
        if missing or w_gi is None:
            raise ValueError(f"lfads_unroll: a controller (ci_proj given) also needs {missing or ['w_gi']}")
        if not 1 <= ci_proj.shape[0] <= n_bins:
            raise ValueError(f"lfads_unroll: ci_proj has {ci_proj.shape[0]} steps; need 1..n_bins={n_bins}")
        c0 = c0.contiguous()
    for name, noise in (("eps", eps), ("mask", mask)):
        if noise is not None and noise.requires_grad:
            raise ValueError(f"lfads_unroll: {name} is random noise and must not require grad")
    if mask is not None and mask.shape[0] != n_bins + 1:
        raise ValueError(f"lfads_unroll: mask needs n_bins + 1 = {n_bins + 1} steps; got {tuple(mask.shape)}")
    tensors = (ci_proj, c0, g0.contiguous(), w_fb, w_ch, b_ch, w_co, b_co, w_gi, b_gi, w_gh, b_gh, eps, mask)
    args = (*tensors, n_bins, clip, float(log_var_min))
    args, ctx = _full_precision(args, w_gh.dtype)
    with ctx:
        if torch.is_grad_enabled() and any(isinstance(a, Tensor) and a.requires_grad for a in args):
            return _LFADSUnroll.apply(*args)
        return _lfads_forward(args, save=False)[:4]


# ------------------------------------------------------------------------------------- GRU helpers
def gru_input_proj(xs: list[Tensor], w_ih: Tensor, b_ih: Tensor | None) -> Tensor:
    """Input projections of K GRUs for `stacked_gru`, one batched matmul over all steps.

    xs: K inputs, each (B, T, I) batch-first (or one shared by all); w_ih (K, 3H, I); b_ih (K, 3H) or
    None. Returns x_proj (K, T, B, 3H), a time-major view of a batch-major result (no copy).
    """
    K = w_ih.shape[0]
    if len(xs) not in (1, K):
        raise ValueError(f"gru_input_proj: got {len(xs)} inputs for {K} GRUs")
    B, T, n_in = xs[0].shape
    x = torch.stack([xi.reshape(B * T, n_in) for xi in (xs * K if len(xs) == 1 else xs)])  # (K, B T, I)
    if b_ih is None:
        proj = torch.bmm(x, w_ih.transpose(1, 2))
    else:
        proj = torch.baddbmm(b_ih.unsqueeze(1), x, w_ih.transpose(1, 2))  # (K, B T, 3H)
    return proj.view(K, B, T, -1).transpose(1, 2)  # (K, T, B, 3H)


# ---------------------------------------------------------------------------------------- CUDA graphs
class GraphedStep:
    """One training step (forward, backward, optimiser step) captured as a CUDA graph and replayed.

    For static shapes (fixed batch size) this removes the per-kernel launch cost that dominates small
    recurrent models on a GPU. `loss_fn(batch) -> loss` must be capturable: no host synchronisation
    (`.item()`, data-dependent shapes), and any value that changes between steps must live in a
    device tensor (a Python float is frozen into the graph at capture). The optimiser must be built
    with `capturable=True` (e.g. `torch.optim.Adam(..., capturable=True)`).

    `step(batch)` copies the batch into the graph's static input tensors, replays, and returns the
    static loss tensor (overwritten by the next step). `warmup` eager steps on a side stream (as
    CUDA graphs require) happen at construction and are real training steps. If capture fails,
    `step` falls back to eager execution (`self.graphed` is False) with a warning.
    """

    def __init__(
        self,
        loss_fn: Callable[[dict[str, Tensor]], Tensor],
        optimizer: torch.optim.Optimizer,
        example_batch: dict[str, Tensor],
        warmup: int = 3,
    ):
        if not torch.cuda.is_available() or not all(v.is_cuda for v in example_batch.values()):
            raise ValueError("GraphedStep needs CUDA tensors; run the eager step on other devices")
        self.loss_fn, self.optimizer = loss_fn, optimizer
        self.static = {k: v.clone() for k, v in example_batch.items()}
        self.graphed = False
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):
            for _ in range(warmup):
                self._eager(self.static)
        torch.cuda.current_stream().wait_stream(side)
        try:
            self.graph = torch.cuda.CUDAGraph()
            optimizer.zero_grad(set_to_none=True)
            with torch.cuda.graph(self.graph):
                self.static_loss = loss_fn(self.static)
                self.static_loss.backward()
                optimizer.step()
            self.graphed = True
        except Exception as err:  # capture is best effort: fall back to eager, never fail training
            warnings.warn(f"CUDA graph capture failed ({err!r}); running eagerly", stacklevel=2)
            torch.cuda.synchronize()

    def _eager(self, batch: dict[str, Tensor]) -> Tensor:
        self.optimizer.zero_grad(set_to_none=True)
        loss = self.loss_fn(batch)
        loss.backward()
        self.optimizer.step()
        return loss.detach()

    def step(self, batch: dict[str, Tensor]) -> Tensor:
        if not self.graphed:
            return self._eager(batch)
        for k, v in batch.items():
            self.static[k].copy_(v, non_blocking=True)
        self.graph.replay()
        return self.static_loss
