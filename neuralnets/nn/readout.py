"""Readouts: LFADS' factor layer (unit-norm, bias-free linear map) and the log-rate readout."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn


class NormalizedLinear(nn.Module):
    """Bias-free linear map whose weight vector for each output has unit L2 norm (LFADS factors).

    `x (..., in_features)` -> `(..., out_features)`; `y_k = (w_k / ||w_k||) · x`. Normalising keeps the
    factors' scale tied to the generator state, so the readout, not the factors, sets the rates' scale.
    """

    def __init__(self, in_features: int, out_features: int):
        super().__init__()
        self.in_features, self.out_features = in_features, out_features
        self.weight = nn.Parameter(torch.randn(out_features, in_features) / math.sqrt(in_features))  # (F, H)

    def normalized_weight(self) -> Tensor:
        return self.weight / self.weight.norm(dim=1, keepdim=True).clamp(min=1e-12)  # (F, H)

    def forward(self, x: Tensor) -> Tensor:
        return F.linear(x, self.normalized_weight())

    def extra_repr(self) -> str:
        return f"{self.in_features}, {self.out_features}, bias=False, unit-norm rows"


class LogRateReadout(nn.Linear):
    """Affine map from latents `(..., K)` to log-rates `(..., N)` (per bin); the model exponentiates."""
