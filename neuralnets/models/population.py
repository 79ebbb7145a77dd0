"""The base of a population model: K solo models of one architecture with every parameter stacked
along a leading member dimension (`neuralnets.models.lfads_population`, `neuralnets.models.rnn_population`).

`member_state_dict(k)` / `load_member(k, state)` read and write member k under the solo model's parameter
names; `aux_weights(steps)` gives each member's auxiliary-loss weights at its own step. Subclasses add
`forward(heldin (K, B, T_obs, N_in), noise) -> (rates (K, B, T, N), latents, aux {name: (K,)})` and
`draw_noise(model, B, coordinated_dropout)`, the random numbers of one member's training step drawn in
its solo path's order.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn

from neuralnets.models.base import SpikeModel


def _key(name: str) -> str:
    """A state-dict name as a ParameterDict key ('.' is not allowed there)."""
    return name.replace(".", "__")


class PopulationModel(nn.Module):
    """K members of one architecture (solo `SpikeModel`s of class `member_class`), weights stacked."""

    member_class: type[SpikeModel] = SpikeModel

    def __init__(self, members: Sequence[SpikeModel]):
        super().__init__()
        name = type(self).__name__
        if not members:
            raise ValueError(f"{name}: no members")
        first = members[0]
        for m in members:
            if not isinstance(m, self.member_class):
                raise TypeError(
                    f"{name}: members must be {self.member_class.__name__}; got {type(m).__name__}"
                )
            if m.spec != first.spec:
                raise ValueError(f"{name}: members see different data ({m.spec} vs {first.spec})")
            if any(p.dtype != torch.float32 for p in m.parameters()):
                raise ValueError(f"{name}: members must be float32")
        self.template = first  # the solo layout: sizes, spec, submodules whose math is reused
        self.K = len(members)
        self.spec = first.spec
        names = [n for n, _ in first.named_parameters()]
        for m in members[1:]:
            shapes = {n: p.shape for n, p in m.named_parameters()}
            if list(shapes) != names or any(shapes[n] != p.shape for n, p in first.named_parameters()):
                raise ValueError(f"{name}: members differ in architecture (parameter shapes)")
        self.names = names
        self.params = nn.ParameterDict(
            {
                _key(n): nn.Parameter(torch.stack([dict(m.named_parameters())[n].detach() for m in members]))
                for n in names
            }
        )
        self.dropout_p = [float(m.dropout.p) for m in members]  # each member's dropout rate
        self.aux_ramps = {k: [m.aux_weights[k] for m in members] for k in first.aux_weights}

    def p(self, name: str) -> Tensor:
        """The stacked parameter `(K, ...)` of the solo parameter `name`."""
        return self.params[_key(name)]

    def member_state_dict(self, k: int) -> dict[str, Tensor]:
        """Member k's weights under the solo model's parameter names (copies, detached)."""
        return {n: self.p(n)[k].detach().clone() for n in self.names}

    @torch.no_grad()
    def load_member(self, k: int, state: dict[str, Tensor]) -> None:
        """Write a solo model's weights (`state`, its parameter names) into member slot k."""
        for n in self.names:
            self.p(n)[k].copy_(state[n])

    def aux_weights(self, step: Sequence[int] | None) -> dict[str, Tensor]:
        """{aux name: (K,) weight}: each member's ramp at its own step, or its full scale (step None)."""
        out = {}
        for name, ramps in self.aux_ramps.items():
            w = [
                r.scale if step is None else r(int(s))
                for r, s in zip(ramps, step or [0] * self.K, strict=True)
            ]
            out[name] = torch.tensor(w, dtype=torch.float32)
        return out


def linear(x: Tensor, w: Tensor, b: Tensor | None) -> Tensor:
    """Per-member linear map: x (K, ..., I), w (K, O, I), b (K, O) -> (K, ..., O), one batched matmul."""
    K, n_in = x.shape[0], x.shape[-1]
    flat = x.reshape(K, -1, n_in)  # (K, M, I)
    wt = w.transpose(1, 2)
    out = torch.bmm(flat, wt) if b is None else torch.baddbmm(b.unsqueeze(1), flat, wt)
    return out.view(*x.shape[:-1], w.shape[1])
