"""Fast (clipped) GRU recurrences: one autograd Function per recurrence with a hand-written BPTT.

The math is the clipped GRU of `neuralnets.nn.clipped_gru.ClippedGRUCell` with `reset_after=True`
(gates stacked `[r, u, c]` as in `torch.nn.GRU`):

    r = sigmoid(x_r + h_r),  u = sigmoid(x_u + h_u),  n = tanh(x_c + r * h_c)
    h' = clip(n + u * (h - n), -clip, clip)
    with [x_r, x_u, x_c] = W_ih x + b_ih and [h_r, h_u, h_c] = W_hh h + b_hh

(`torch.nn.GRU` is the case `clip=None`). Forward loops over time without autograd into preallocated
buffers; backward is hand-written and computes all weight gradients as one matmul over all steps.
On CPU the gate math of a step is one call of the native kernel (`neuralnets.nn.native`) where it
builds, else the PyTorch ops of `_cell_forward` / `_cell_backward` (the reference). Under autocast
the recurrence runs in the weights' precision. Same numbers as the plain per-step code up to float
rounding (`tests/test_fast_path.py`, with gradchecks). Speed measurements: `experiments/results/`.

Public API: `RECURRENCES` and `resolve_recurrence` (the models' `recurrence` option);
`stacked_gru` (K independent GRUs over one sequence) and `gru_input_proj` (their input projections).
The step helpers (`_cell_forward`, `_cell_backward`, `_full_precision`, `_sum_lead`) are shared with
the LFADS controller + generator unroll, `neuralnets.models.lfads_unroll`.
"""

from __future__ import annotations

import contextlib

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
