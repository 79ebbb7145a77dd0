"""K `RNNSeq2Seq` members (GRU cells) of one architecture as one batched model (a population).

The solo model (`neuralnets.models.rnn.RNNSeq2Seq`): dropout on the held-in input, a (bidirectional) GRU
encoder from zero states, dropout on its final states, a linear map to z (variational: a sample of its
posterior), a linear map to the decoder's initial state, an autonomous GRU decoder (zero input), dropout
on its states, factors and log-rates. Here the encoder directions and the decoder of all members run as
`stacked_gru` scans (one batched call per step for all members; `torch.nn.GRU` is its `clip=None` case)
and every linear map is one batched matmul. Randomness: `draw_noise` draws one member's step in the solo
path's order and layout (`nn.Dropout` on CPU fills `empty_like(x).bernoulli_(1 - p)` in x's memory
order; the decoder's batch-first output is a transposed view of a time-major tensor).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from neuralnets.models.base import positive_rates
from neuralnets.models.population import PopulationModel, linear
from neuralnets.models.rnn import RNNSeq2Seq
from neuralnets.nn.fast import stacked_gru

# Model options that may differ between members; every other option is architecture and must agree.
RNN_MEMBER_OPTIONS = frozenset({"dropout", "kl_scale", "kl_start", "kl_ramp_steps"})


def _dropout_noise(shape: tuple[int, ...], p: float) -> Tensor | None:
    """nn.Dropout's multipliers on CPU in training mode (None when p is 0: it draws nothing)."""
    if p == 0:
        return None
    return torch.empty(shape).bernoulli_(1 - p).div_(1 - p)


class PopulationRNN(PopulationModel):
    """K `RNNSeq2Seq` members with GRU cells. `forward(heldin (K, B, T_obs, N_in), noise)` ->
    `(rates (K, B, T, N), factors (K, B, T, F), aux {name: (K,)})`."""

    member_class = RNNSeq2Seq

    def __init__(self, members: Sequence[RNNSeq2Seq]):
        super().__init__(members)
        if any(m.cell != "gru" for m in members):
            raise ValueError("PopulationRNN: populations batch GRU cells only (model.cell=gru)")
        self.bidirectional = self.template.encoder.bidirectional

    @staticmethod
    def draw_noise(model: RNNSeq2Seq, B: int, coordinated_dropout: float):
        """One training step's random numbers of one member in the solo order: coordinated dropout's
        uniforms (B, T_obs, N_in) (None when off), then input dropout, summary dropout, the z sample,
        decoder-state dropout."""
        s = model.spec
        cd = torch.rand((B, s.n_obs_bins, s.n_heldin)) if coordinated_dropout > 0 else None
        p = float(model.dropout.p)
        E = model.encoder.hidden_size * (2 if model.encoder.bidirectional else 1)
        noise = {"x_mask": _dropout_noise((B, s.n_obs_bins, s.n_heldin), p)}
        noise["summary_mask"] = _dropout_noise((B, E), p)
        noise["z_eps"] = torch.randn(B, model.latent_dim) if model.variational else None
        dec = _dropout_noise((s.n_bins, B, model.dec_dim), p)  # time-major: the GRU output's memory order
        noise["dec_mask"] = None if dec is None else dec.transpose(0, 1)  # (B, T, dec_dim)
        return cd, noise

    def forward(self, heldin: Tensor, noise: dict[str, Tensor | None]) -> tuple[Tensor, Tensor, dict]:
        t = self.template
        K, B, T_obs, n_in = heldin.shape
        T = self.spec.n_bins
        p = self.p
        x = heldin if noise.get("x_mask") is None else heldin * noise["x_mask"]  # (K, B, T_obs, N_in)
        dirs = ["_l0"] + (["_l0_reverse"] if self.bidirectional else [])
        D = len(dirs)
        w_ih = torch.cat([p(f"encoder.weight_ih{d}") for d in dirs])  # (D K, 3E, N_in)
        b_ih = torch.cat([p(f"encoder.bias_ih{d}") for d in dirs])
        w_hh = torch.cat([p(f"encoder.weight_hh{d}") for d in dirs])  # (D K, 3E, E)
        b_hh = torch.cat([p(f"encoder.bias_hh{d}") for d in dirs])
        E = w_hh.shape[-1]
        xs = torch.cat([x, x.flip(2)][:D]).reshape(D * K, B * T_obs, n_in)  # backward direction: reversed
        proj = torch.baddbmm(b_ih.unsqueeze(1), xs, w_ih.transpose(1, 2))  # (D K, B T_obs, 3E)
        x_proj = proj.view(D * K, B, T_obs, 3 * E).transpose(1, 2)  # (D K, T_obs, B, 3E)
        hs = stacked_gru(x_proj, x.new_zeros(D * K, B, E), w_hh, b_hh)  # (D K, T_obs, B, E)
        summary = torch.cat([hs[i * K : (i + 1) * K, -1] for i in range(D)], dim=-1)  # (K, B, D E)
        if noise.get("summary_mask") is not None:
            summary = summary * noise["summary_mask"]
        out = linear(summary, p("to_latent.weight"), p("to_latent.bias"))  # (K, B, L or 2L)
        aux: dict[str, Tensor] = {}
        if t.variational:
            mean, logvar = out.chunk(2, dim=-1)
            logvar = logvar.clamp(-12.0, 12.0)
            z = mean if noise.get("z_eps") is None else mean + noise["z_eps"] * torch.exp(0.5 * logvar)
            aux["kl"] = (0.5 * (torch.exp(logvar) + mean.pow(2) - 1.0 - logvar).sum(-1)).mean(-1)  # (K,)
        else:
            z = out
        h0 = linear(z, p("to_h0.weight"), p("to_h0.bias"))  # (K, B, H)
        H = h0.shape[-1]
        dec_in = p("decoder.bias_ih_l0").view(K, 1, 1, 3 * H).expand(K, T, B, 3 * H)  # zero input: the bias
        states = stacked_gru(dec_in, h0, p("decoder.weight_hh_l0"), p("decoder.bias_hh_l0"))  # (K, T, B, H)
        states = states.transpose(1, 2)  # (K, B, T, H)
        if noise.get("dec_mask") is not None:
            states = states * noise["dec_mask"]
        factors = linear(states, p("to_factors.weight"), p("to_factors.bias"))  # (K, B, T, F)
        rates = positive_rates(linear(factors, p("readout.weight"), p("readout.bias")))  # (K, B, T, N)
        return rates, factors, aux
