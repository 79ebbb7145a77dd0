"""K LFADS members of one architecture as one batched model (a population; docs/tuning.md).

Every parameter of the solo `neuralnets.models.lfads.LFADS` is stacked along a leading member
dimension: `ic_encoder.gru.weight_ih_l0 (3E, N_in)` becomes `(K, 3E, N_in)`, and each layer runs as one
batched call for all members (`bmm`/`baddbmm`; the four encoder directions of all members as one
`stacked_gru` scan per hidden size; the controller + generator unroll as one batched recurrence).
Members differ only in non-architectural settings: dropout, KL / L2 scales and ramps (and, in the
training loop, learning rate, coordinated dropout, seed...).

All randomness is drawn outside, per member, by `draw_member_noise` with that member's own CPU RNG
state, in exactly the order and shapes the solo forward draws it (`LFADS.forward`: input dropout,
initial-condition dropout, g0 sample, controller-input dropout, inferred-input draws, generator
dropout), so member k consumes the random numbers its solo run would (tests/test_population.py).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.func import functional_call, vmap

from neuralnets.models.base import positive_rates
from neuralnets.models.lfads import LFADS
from neuralnets.models.lfads_population_unroll import population_unroll, population_unroll_fused
from neuralnets.models.population import PopulationModel, linear
from neuralnets.nn.fast import stacked_gru

# Model options that may differ between members; every other option is architecture and must agree.
MEMBER_OPTIONS = frozenset(
    {
        "dropout",
        "kl_ic_scale",
        "kl_co_scale",
        "l2_gen_scale",
        "l2_con_scale",
        "kl_ramp_start",
        "kl_ramp_steps",
        "l2_ramp_start",
        "l2_ramp_steps",
        "ic_prior_var",
        "co_prior_var",
        "co_tau_init",
        "recurrence",
    }
)


class PopulationLFADS(PopulationModel):
    """K LFADS members stacked: built from K solo models of one architecture (their weights copied).

    `forward(heldin (K, B, T_obs, N_in), noise)` -> `(rates (K, B, T, N), factors (K, B, T, F),
    aux {name: (K,)})`, aux in the solo model's units (nats per trial, mean over the batch).
    `member_state_dict(k)` gives member k's weights under the solo model's names.
    """

    member_class = LFADS

    def __init__(self, members: Sequence[LFADS], recurrence: str = "fused"):
        super().__init__(members)
        if recurrence not in ("plain", "fused"):
            raise ValueError(f"PopulationLFADS: recurrence must be 'plain' or 'fused'; got {recurrence!r}")
        self.recurrence = recurrence  # 'plain': the per-step autograd reference (population_unroll)
        first = members[0]
        for m in members:
            for a in (m.generator, *([m.controller] if m.co_dim else [])):
                if not a.reset_after or a.clip_value != first.generator.clip_value:
                    raise ValueError("PopulationLFADS: needs reset_after cells with one clip value")
            if m.log_co_var_min != first.log_co_var_min or m.log_ic_var_min != first.log_ic_var_min:
                raise ValueError(
                    "PopulationLFADS: ic/co_post_var_min are architecture: equal for all members"
                )

    @staticmethod
    def draw_noise(model: LFADS, B: int, coordinated_dropout: float):
        """`draw_member_noise`: one training step's random numbers of one member."""
        return draw_member_noise(model, B, coordinated_dropout)

    # ------------------------------------------------------------------ forward
    def forward(self, heldin: Tensor, noise: dict[str, Tensor | None]) -> tuple[Tensor, Tensor, dict]:
        t = self.template
        K, B, T_obs, _ = heldin.shape
        sample = noise.get("g0_eps") is not None
        x = _mul(heldin, noise.get("x_mask"))  # (K, B, T_obs, N_in) dropped-out input
        enc_names = ["ic_encoder"] + (["ci_encoder"] if t.co_dim > 0 else [])
        encoded = {name: self._encode_bidirectional(name, x) for name in enc_names}
        ic_final = _mul(encoded["ic_encoder"][1], noise.get("ic_mask"))  # (K, B, 2E)
        ic_params = linear(ic_final, self.p("ic_linear.weight"), self.p("ic_linear.bias"))  # (K, B, 2 ic)
        ic_mean, ic_raw = ic_params.chunk(2, dim=-1)  # (K, B, ic_dim) each
        ic_logvar = torch.logaddexp(ic_raw, torch.full_like(ic_raw, t.log_ic_var_min))
        g0 = ic_mean + torch.exp(0.5 * ic_logvar) * noise["g0_eps"] if sample else ic_mean
        if t.ic_to_g0 is not None:
            g0 = linear(g0, self.p("ic_to_g0.weight"), self.p("ic_to_g0.bias"))  # (K, B, G)
        ci = None
        if t.co_dim > 0:
            ci = _mul(encoded["ci_encoder"][0], noise.get("ci_mask"))  # (K, B, T_obs, 2 CI)
            if t.ci_lag:
                ci = F.pad(ci, (0, 0, t.ci_lag, 0))[:, :, :T_obs]
        unroll = population_unroll if self.recurrence == "plain" else population_unroll_fused
        factors, co_mean, co_logvar, co_u = unroll(self, g0, ci, noise.get("eps"), noise.get("gen_mask"))
        rates = positive_rates(
            linear(factors, self.p("readout.weight"), self.p("readout.bias"))
        )  # (K, B, T, N)
        aux = {
            "kl_ic": self._vmap(t.ic_prior, "ic_prior", "kl", ic_mean, ic_logvar).mean(-1),  # (K,)
            "l2_gen": 0.5 * self.p("generator.weight_hh").pow(2).mean(dim=(1, 2)),
        }
        if t.co_dim > 0:
            if sample:
                kl_co = self._vmap(t.co_prior, "co_prior", "kl", co_u, co_mean, co_logvar)
            else:
                kl_co = self._vmap(t.co_prior, "co_prior", "kl_analytic", co_mean, co_logvar)
            aux["kl_co"] = kl_co.mean(-1)
            aux["l2_con"] = 0.5 * self.p("controller.weight_hh").pow(2).mean(dim=(1, 2))
        return rates, factors, aux

    def _vmap(self, module: nn.Module, prefix: str, method: str, *args: Tensor) -> Tensor:
        """`module.method(*args)` of each member with its own parameters: args (K, ...) -> (K, ...)."""
        params = {n.split(".", 1)[1]: self.p(n) for n in self.names if n.startswith(prefix + ".")}

        def one(p: dict[str, Tensor], *a: Tensor) -> Tensor:
            return _call(module, p, method, a)

        return vmap(one)(params, *args)

    def _encode_bidirectional(self, name: str, x: Tensor) -> tuple[Tensor, Tensor]:
        """A bidirectional GRU encoder of all members as one `stacked_gru` scan of 2K cells.
        `x (K, B, T, I)` -> `(outputs (K, B, T, 2H), final (K, B, 2H))`, as `BidirectionalGRU`."""
        K, B, T, n_in = x.shape
        g = f"{name}.gru."
        w_ih = torch.cat([self.p(g + "weight_ih_l0"), self.p(g + "weight_ih_l0_reverse")])  # (2K, 3H, I)
        b_ih = torch.cat([self.p(g + "bias_ih_l0"), self.p(g + "bias_ih_l0_reverse")])  # (2K, 3H)
        w_hh = torch.cat([self.p(g + "weight_hh_l0"), self.p(g + "weight_hh_l0_reverse")])  # (2K, 3H, H)
        b_hh = torch.cat([self.p(g + "bias_hh_l0"), self.p(g + "bias_hh_l0_reverse")])  # (2K, 3H)
        h0 = self.p(f"{name}.h0")  # (K, 2, 1, H)
        H = h0.shape[-1]
        h0 = torch.cat([h0[:, 0, 0], h0[:, 1, 0]]).unsqueeze(1).expand(2 * K, B, H)  # (2K, B, H)
        xs = torch.cat([x, x.flip(2)]).reshape(2 * K, B * T, n_in)  # (2K, B T, I) backward: reversed time
        proj = torch.baddbmm(b_ih.unsqueeze(1), xs, w_ih.transpose(1, 2))  # (2K, B T, 3H)
        x_proj = proj.view(2 * K, B, T, 3 * H).transpose(1, 2)  # (2K, T, B, 3H) time-major view
        hs = stacked_gru(x_proj, h0, w_hh, b_hh)  # (2K, T, B, H)
        fwd, bwd = hs[:K], hs[K:]  # (K, T, B, H) each; bwd in reversed time
        outputs = torch.cat([fwd, bwd.flip(1)], dim=-1).transpose(1, 2)  # (K, B, T, 2H)
        final = torch.cat([fwd[:, -1], bwd[:, -1]], dim=-1)  # (K, B, 2H)
        return outputs, final


def _call(module: nn.Module, params: dict[str, Tensor], method: str, args: tuple) -> Tensor:
    """`module.<method>(*args)` with `params` swapped in (torch.func.functional_call of a method)."""

    class _Method(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.m = module

        def forward(self, *a: Tensor) -> Tensor:
            return getattr(self.m, method)(*a)

    return functional_call(_Method(), {f"m.{k}": v for k, v in params.items()}, args, strict=True)


def _mul(x: Tensor, mask: Tensor | None) -> Tensor:
    return x if mask is None else x * mask


# ---------------------------------------------------------------------------------------- the noise
def _dropout_mask(shape: tuple[int, ...], p: float) -> Tensor | None:
    """As `LFADS._dropout_mask` in training mode: the same draw (uniform < 1 - p) and values."""
    if p == 0:
        return None
    keep = 1.0 - p
    return torch.rand(shape, dtype=torch.float32).lt_(keep).div_(keep)


def draw_member_noise(
    model: LFADS, B: int, coordinated_dropout: float
) -> tuple[Tensor | None, dict[str, Tensor | None]]:
    """One training step's random numbers of one member, from the global CPU RNG (the caller swaps in
    the member's state), in the solo path's order: coordinated dropout's uniforms `(B, T_obs, N_in)`
    (None when off), then `LFADS.forward`'s draws in training mode. Returns `(cd_uniforms, noise)`;
    noise holds `x_mask (B, T_obs, N_in)`, `ic_mask (B, 2E)`, `g0_eps (B, ic_dim)`, `ci_mask (B, T_obs,
    2CI)`, `eps (T_obs, B, U)`, `gen_mask (T + 1, B, G)` (masks None where dropout is off)."""
    s = model.spec
    T_obs, T = s.n_obs_bins, s.n_bins
    cd = torch.rand((B, T_obs, s.n_heldin)) if coordinated_dropout > 0 else None
    p = float(model.dropout.p)
    noise: dict[str, Tensor | None] = {"x_mask": _dropout_mask((B, T_obs, s.n_heldin), p)}
    noise["ic_mask"] = _dropout_mask((B, 2 * model.ic_encoder.hidden_size), p)
    noise["g0_eps"] = torch.randn(B, model.ic_dim)
    noise["ci_mask"] = _dropout_mask((B, T_obs, model.ci_dim), p) if model.co_dim > 0 else None
    noise["eps"] = torch.randn(T_obs, B, model.co_dim)
    noise["gen_mask"] = _dropout_mask((T + 1, B, model.gen_dim), p)
    return cd, noise


def stack_noise(
    per_member: Sequence[dict[str, Tensor | None]], device: torch.device
) -> dict[str, Tensor | None]:
    """Stack the members' noise along a leading member dim; a mask that is None for some members (no
    dropout) becomes ones there; None for all stays None."""
    out: dict[str, Tensor | None] = {}
    for key in per_member[0]:
        values = [n[key] for n in per_member]
        like = next((v for v in values if v is not None), None)
        if like is None:
            out[key] = None
            continue
        out[key] = torch.stack([torch.ones_like(like) if v is None else v for v in values]).to(device)
    return out
