"""GRU building blocks for LFADS: the clipped GRU cell, a sequence runner and a bidirectional encoder.

The clipped GRU is the recurrent unit of the LFADS generator and controller (Sussillo et al. 2016;
Pandarinath et al. 2018): a GRU whose hidden state is clipped to `[-clip_value, clip_value]` after
every step, which keeps long unrolls of a sampled initial condition from diverging, and whose
update ("forget") gate bias starts at 1 so that the state is remembered by default at initialisation.

The per-step code of the cell is deliberately plain PyTorch (one fused matmul for the input, one for the
hidden state, then `chunk`): it is the reference. The sequence runners have a `recurrence` option
("auto" = "fused" by default, "plain" = the reference): `ClippedGRU` then runs the whole sequence
through `neuralnets.nn.fast.stacked_gru` (hand-written BPTT; about 2.7x faster than its per-step
autograd loop at 256 trials x 200 units x 45 bins on the 2-core CPU), and `BidirectionalGRU` runs
both directions (and, via `run_bidirectional`, several encoders) as one stacked scan on CPU; on GPU
it always runs cuDNN's `torch.nn.GRU`.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from neuralnets.nn.fast import gru_input_proj, resolve_recurrence, stacked_gru


class ClippedGRUCell(nn.Module):
    """One step of the LFADS GRU with a clipped hidden state.

    With input `x (B, I)`, previous state `h (B, H)` and gates stacked as `[r, u, c]` (reset,
    update, candidate) in `weight_ih (3H, I)`, `weight_hh (3H, H)`, `bias_ih (3H,)`, `bias_hh (3H,)`:

        [x_r, x_u, x_c] = W_ih x + b_ih                       (one matmul, then chunk)
        [h_r, h_u, h_c] = W_hh h + b_hh                       (one matmul, then chunk)
        r  = sigmoid(x_r + h_r)
        u  = sigmoid(x_u + h_u)
        c  = tanh(x_c + r * h_c)                       (reset_after=True, default)
        c  = tanh(x_c + W_hh^c (r * h) + b_hh^c)       (reset_after=False: as printed in Sussillo et al. 2016)
        h' = clip(u * h + (1 - u) * c, -clip_value, clip_value)

    `u` is the gate that keeps the old state, so its bias (`b_ih^u`) is initialised to 1 (LFADS'
    "forget bias"). The default `reset_after=True` applies the reset gate after the hidden matmul
    (as cuDNN's GRU does) so that the hidden state needs one matmul per step; `reset_after=False`
    is the paper's form, which needs a second, dependent matmul for the candidate.
    Weights are drawn from N(0, 1/fan_in); biases are 0 except the update-gate bias.
    `clip_value=None` disables clipping.
    """

    def __init__(
        self,
        input_size: int,
        hidden_size: int,
        clip_value: float | None = 5.0,
        bias: bool = True,
        reset_after: bool = True,
        forget_bias: float = 1.0,
    ):
        super().__init__()
        if input_size < 0 or hidden_size <= 0:
            raise ValueError(
                f"ClippedGRUCell: need input_size >= 0 and hidden_size > 0; got {input_size}, {hidden_size}"
            )
        if clip_value is not None and not clip_value > 0:
            raise ValueError(f"ClippedGRUCell: clip_value must be > 0 or None; got {clip_value}")
        self.input_size = input_size
        self.hidden_size = hidden_size
        self.clip_value = clip_value
        self.reset_after = reset_after
        H = hidden_size
        self.weight_ih = nn.Parameter(torch.empty(3 * H, input_size))  # (3H, I) rows: [r, u, c]
        self.weight_hh = nn.Parameter(torch.empty(3 * H, H))  # (3H, H)
        if bias:
            self.bias_ih = nn.Parameter(torch.zeros(3 * H))
            self.bias_hh = nn.Parameter(torch.zeros(3 * H))
        else:
            self.register_parameter("bias_ih", None)
            self.register_parameter("bias_hh", None)
        self.reset_parameters(forget_bias)

    def reset_parameters(self, forget_bias: float = 1.0) -> None:
        H = self.hidden_size
        with torch.no_grad():
            if self.input_size > 0:
                nn.init.normal_(self.weight_ih, std=1.0 / math.sqrt(self.input_size))
            nn.init.normal_(self.weight_hh, std=1.0 / math.sqrt(H))
            if self.bias_ih is not None:
                self.bias_ih.zero_()
                self.bias_hh.zero_()
                self.bias_ih[H : 2 * H].fill_(forget_bias)  # update gate u: remember by default

    def input_proj(self, x: Tensor) -> Tensor:
        """`W_ih x + b_ih`: (..., I) -> (..., 3H). Hoist this out of a time loop when inputs are known."""
        return F.linear(x, self.weight_ih, self.bias_ih)

    def step(self, x_proj: Tensor, h: Tensor) -> Tensor:
        """One step from a precomputed input projection `x_proj (B, 3H)` and state `h (B, H)` -> (B, H)."""
        x_r, x_u, x_c = x_proj.chunk(3, dim=-1)
        if self.reset_after:
            h_r, h_u, h_c = F.linear(h, self.weight_hh, self.bias_hh).chunk(3, dim=-1)
            r = torch.sigmoid(x_r + h_r)
            c = torch.tanh(x_c + r * h_c)
        else:
            H = self.hidden_size
            b = self.bias_hh
            h_r, h_u = F.linear(h, self.weight_hh[: 2 * H], None if b is None else b[: 2 * H]).chunk(
                2, dim=-1
            )
            r = torch.sigmoid(x_r + h_r)
            c = torch.tanh(x_c + F.linear(r * h, self.weight_hh[2 * H :], None if b is None else b[2 * H :]))
        u = torch.sigmoid(x_u + h_u)
        h_new = u * h + (1.0 - u) * c
        if self.clip_value is not None:
            h_new = h_new.clamp(-self.clip_value, self.clip_value)
        return h_new

    def forward(self, x: Tensor, h: Tensor) -> Tensor:
        """`x (B, I)`, `h (B, H)` -> new state `(B, H)`."""
        return self.step(self.input_proj(x), h)

    def extra_repr(self) -> str:
        return (
            f"{self.input_size}, {self.hidden_size}, clip_value={self.clip_value}, "
            f"bias={self.bias_ih is not None}, reset_after={self.reset_after}"
        )


class ClippedGRU(nn.Module):
    """Runs a `ClippedGRUCell` over a sequence: `x (B, T, I)`, `h0 (B, H)` (zeros if None) -> `(B, T, H)`.

    The input projection of all steps is one matmul before the loop; the loop does only the
    hidden-state part. The final state is `output[:, -1]`.
    """

    def __init__(
        self,
        input_size: int,
        hidden_size: int,
        clip_value: float | None = 5.0,
        reset_after: bool = True,
        recurrence: str = "auto",
    ):
        super().__init__()
        resolve_recurrence(recurrence)  # validates the name
        self.cell = ClippedGRUCell(input_size, hidden_size, clip_value=clip_value, reset_after=reset_after)
        self.recurrence = recurrence

    @property
    def hidden_size(self) -> int:
        return self.cell.hidden_size

    def forward(self, x: Tensor, h0: Tensor | None = None) -> Tensor:
        if x.ndim != 3 or x.shape[2] != self.cell.input_size:
            raise ValueError(f"ClippedGRU expects input (B, T, {self.cell.input_size}); got {tuple(x.shape)}")
        B, T, _ = x.shape
        h = x.new_zeros(B, self.hidden_size) if h0 is None else h0  # (B, H)
        cell = self.cell
        if self.recurrence == "fused" and not cell.reset_after:
            raise ValueError("ClippedGRU: recurrence='fused' needs reset_after=True ('auto' falls back)")
        if resolve_recurrence(self.recurrence) == "fused" and cell.reset_after:
            x_proj = cell.input_proj(x).transpose(0, 1).unsqueeze(0)  # (1, T, B, 3H) time-major view
            b_hh = None if cell.bias_hh is None else cell.bias_hh.unsqueeze(0)
            hs = stacked_gru(x_proj, h.unsqueeze(0), cell.weight_hh.unsqueeze(0), b_hh, cell.clip_value)
            return hs[0].transpose(0, 1)  # (B, T, H)
        x_proj = self.cell.input_proj(x)  # (B, T, 3H), all steps at once
        outs = []
        for t in range(T):
            h = self.cell.step(x_proj[:, t], h)
            outs.append(h)
        return torch.stack(outs, dim=1)  # (B, T, H)


class BidirectionalGRU(nn.Module):
    """Bidirectional GRU encoder (LFADS' initial-condition and controller-input encoders).

    A plain `torch.nn.GRU` (the papers' encoders are unclipped GRUs) with a learnable initial state
    per direction. `x (B, T, I)` -> `(outputs (B, T, 2H), final (B, 2H))`, where `outputs[:, t]` is
    `[forward state after x_0..x_t, backward state after x_{T-1}..x_t]` and `final` is
    `[forward state at T-1, backward state at 0]` (each direction's last state, having seen all bins).

    `recurrence`: "plain" runs `torch.nn.GRU` (ATen on CPU, cuDNN on GPU); "fused" (= "auto") runs
    both directions as one `stacked_gru` scan on CPU (on GPU cuDNN is kept: it is already fused).
    Measured inside a full LFADS training step on the 2-core CPU the scan is a modest gain over ATen's
    GRU (~4% of the step on a quiet machine; ATen's GRU already hoists the input projection and loops
    in C++). Several encoders reading the same input run as one scan with `run_bidirectional`.
    """

    def __init__(self, input_size: int, hidden_size: int, recurrence: str = "auto"):
        super().__init__()
        resolve_recurrence(recurrence)  # validates the name
        self.hidden_size = hidden_size
        self.recurrence = recurrence
        self.gru = nn.GRU(input_size, hidden_size, batch_first=True, bidirectional=True)
        self.h0 = nn.Parameter(torch.zeros(2, 1, hidden_size))  # (directions, 1, H)

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        return run_bidirectional([self], x)[0]

    @property
    def fused(self) -> bool:
        return resolve_recurrence(self.recurrence) == "fused"

    def plain_forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """The reference: `torch.nn.GRU`. `x (B, T, I)` -> `(outputs (B, T, 2H), final (B, 2H))`."""
        h0 = self.h0.expand(2, x.shape[0], self.hidden_size).contiguous()  # (2, B, H)
        outputs, h_n = self.gru(x, h0)  # (B, T, 2H), (2, B, H)
        final = torch.cat([h_n[0], h_n[1]], dim=-1)  # (B, 2H)
        return outputs, final


def run_bidirectional(
    encoders: list[BidirectionalGRU], x: Tensor, fused: bool | None = None
) -> list[tuple[Tensor, Tensor]]:
    """Run several `BidirectionalGRU`s over the same input `x (B, T, I)`; one `(outputs, final)` each.

    `fused`: None = each encoder's own `recurrence`. Fused encoders of equal hidden size run on CPU as
    ONE `stacked_gru` scan (2 cells per encoder: forward and time-reversed), so a step costs one
    batched matmul for all of them; the others (and all on GPU, where cuDNN is fused) run `nn.GRU`.
    """
    use = [(e.fused if fused is None else fused) and x.device.type == "cpu" for e in encoders]
    results: dict[int, tuple[Tensor, Tensor]] = {
        i: enc.plain_forward(x) for i, enc in enumerate(encoders) if not use[i]
    }
    B = x.shape[0]
    x_rev = x.flip(1) if any(use) else None  # (B, T, I) time-reversed input of the backward directions
    for H in dict.fromkeys(e.hidden_size for e, u in zip(encoders, use, strict=True) if u):
        group = [i for i, e in enumerate(encoders) if use[i] and e.hidden_size == H]  # one scan per size
        grus = [encoders[i].gru for i in group]
        n = len(group)
        cells = [(g, "") for g in grus] + [(g, "_reverse") for g in grus]  # K = 2n cells
        w_ih = torch.stack([getattr(g, f"weight_ih_l0{s}") for g, s in cells])  # (K, 3H, I)
        w_hh = torch.stack([getattr(g, f"weight_hh_l0{s}") for g, s in cells])  # (K, 3H, H)
        b_ih = torch.stack([getattr(g, f"bias_ih_l0{s}") for g, s in cells])  # (K, 3H)
        b_hh = torch.stack([getattr(g, f"bias_hh_l0{s}") for g, s in cells])  # (K, 3H)
        h0 = torch.cat([encoders[i].h0[0] for i in group] + [encoders[i].h0[1] for i in group])  # (K, H)
        x_proj = gru_input_proj([x] * n + [x_rev] * n, w_ih, b_ih)  # (K, T, B, 3H)
        hs = stacked_gru(x_proj, h0.unsqueeze(1).expand(2 * n, B, H), w_hh, b_hh)  # (K, T, B, H)
        # unbind, not indexing: its backward stacks the K gradients once instead of zero-filling a
        # full (K, T, B, H) gradient per view.
        cells_out = hs.unbind(0)  # K x (T, B, H)
        for j, i in enumerate(group):
            fwd, bwd = cells_out[j], cells_out[n + j]  # (T, B, H) each; bwd in reversed time
            outputs = torch.cat([fwd, bwd.flip(0)], dim=-1).transpose(0, 1)  # (B, T, 2H) time-major view
            final = torch.cat([fwd[-1], bwd[-1]], dim=-1)  # (B, 2H)
            results[i] = (outputs, final)
    return [results[i] for i in range(len(encoders))]
