"""The model contract every model family follows (models never import Lightning).

A model is built as `Model(spec=DataSpec, **hparams)` and maps a batch to a `ModelOutput`.

Batch (a dict of tensors on the model's device; B trials):
- `heldin   (B, T_obs, N_in)`  float counts: the only thing a model may read as input;
- `spikes   (B, T, N)`         all neurons over observed + forward bins (targets, for the training module);
- `observed (B, T, N)` bool     False where no data were recorded (absent when everything was);
- `behavior (B, T_obs, D)`      optional; `index (B,)` trial indices into the dataset.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import Tensor, nn

from neuralnets.data.spikedata import DataSpec


@dataclass
class ModelOutput:
    rates: Tensor  # (B, T_obs + T_fwd, N) expected counts per bin, > 0
    latents: Tensor  # (B, T, K) low-dimensional state (LFADS: factors)
    aux_losses: dict[str, Tensor] = field(default_factory=dict)  # scalars, weighted by `Ramp`s
    inputs: Tensor | None = None  # (B, T_obs, U) inferred inputs (LFADS controller)
    recon_mask: Tensor | None = None  # (B, T, N) bool: where to score reconstruction (masked modelling)


@dataclass
class Ramp:
    """Weight of an auxiliary loss: `scale`, ramped linearly from 0 over `steps` after `start` steps."""

    scale: float = 1.0
    start: int = 0
    steps: int = 0

    def __call__(self, step: int) -> float:
        if self.steps <= 0:
            return self.scale if step >= self.start else 0.0
        return self.scale * min(max((step - self.start) / self.steps, 0.0), 1.0)


class SpikeModel(nn.Module):
    """Base class: stores the data spec and the weights of the auxiliary losses."""

    def __init__(self, spec: DataSpec | dict):
        super().__init__()
        self.spec = spec if isinstance(spec, DataSpec) else DataSpec(**spec)
        self.aux_weights: dict[str, Ramp] = {}

    def forward(self, batch: dict[str, Tensor]) -> ModelOutput:  # pragma: no cover - abstract
        raise NotImplementedError

    def check_input(self, heldin: Tensor) -> None:
        """Raise a clear error when the input does not match the spec the model was built for."""
        s = self.spec
        if heldin.ndim != 3 or heldin.shape[1:] != (s.n_obs_bins, s.n_heldin):
            raise ValueError(
                f"{type(self).__name__} expects held-in spikes of shape (B, {s.n_obs_bins}, {s.n_heldin}) "
                f"(trials, observed bins, held-in neurons); got {tuple(heldin.shape)}"
            )

    @property
    def n_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters())


def positive_rates(log_rates: Tensor) -> Tensor:
    """exp with a clamp so that a diverging readout gives a large finite rate, not inf."""
    return torch.exp(log_rates.clamp(max=20.0))
