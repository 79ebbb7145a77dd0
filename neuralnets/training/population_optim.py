"""Per-member optimiser pieces of a population: AdamW over stacked parameters, gradient clipping by
each member's own norm, and each member's LR schedule.

Every stacked parameter is `(K, ...)`; member k's hyperparameters are (K,) tensors broadcast as
`(K, 1, ...)`, so one fused update serves all members. The update is AdamW written out as
`torch.optim.AdamW` computes it (decoupled weight decay; bias corrections from each member's own
step count); tests/test_population.py checks it against `torch.optim.AdamW` per member. A member
that is frozen (stopped early, or skipping a non-finite step) keeps its weights and moments.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor


def _lead(x: Tensor, like: Tensor) -> Tensor:
    """(K,) -> (K, 1, ..., 1) broadcastable against `like (K, ...)`, on its device and in its dtype."""
    return x.view(-1, *([1] * (like.ndim - 1))).to(device=like.device, dtype=like.dtype)


class MemberAdamW:
    """AdamW for stacked parameters with per-member `lr`, `eps`, `weight_decay` (each (K,)) and step
    counts. `step(active)` updates the members where `active (K,)` is True."""

    def __init__(
        self, params: list[Tensor], lr: Tensor, eps: Tensor, weight_decay: Tensor, betas=(0.9, 0.999)
    ):
        self.params = list(params)
        K = self.params[0].shape[0]
        self.lr = lr.detach().clone().double()  # (K,)
        self.eps, self.weight_decay = eps.double(), weight_decay.double()  # (K,) each
        self.beta1, self.beta2 = betas
        self.steps = torch.zeros(K, dtype=torch.float64)  # (K,) Adam step count of each member
        self.exp_avg = [torch.zeros_like(p) for p in self.params]
        self.exp_avg_sq = [torch.zeros_like(p) for p in self.params]

    @torch.no_grad()
    def step(self, active: Tensor) -> None:
        """One update of the members where `active (K,) bool`; the gradients are the params' `.grad`.
        The per-member settings live on the CPU (K numbers); the update runs on the params' device."""
        active = active.cpu()
        if not bool(active.any()):
            return
        steps = self.steps + active.double()
        self.steps = steps
        b1, b2 = self.beta1, self.beta2
        lr = torch.where(active, self.lr, torch.zeros_like(self.lr))  # (K,) 0: frozen
        bc1 = 1 - b1 ** steps.clamp(min=1)  # (K,)
        bc2_sqrt = (1 - b2 ** steps.clamp(min=1)).sqrt()
        step_size = lr / bc1
        for p, m, v in zip(self.params, self.exp_avg, self.exp_avg_sq, strict=True):
            g = p.grad
            if g is None:
                continue
            on = _lead(active, p).bool()
            p.mul_(1 - _lead(lr * self.weight_decay, p))
            m.copy_(torch.where(on, m.lerp(g, 1 - b1), m))
            v.copy_(torch.where(on, v.mul(b2).addcmul_(g, g, value=1 - b2), v))
            denom = (v.sqrt() / _lead(bc2_sqrt, p)).add_(_lead(self.eps, p))
            p.addcdiv_(m * _lead(-step_size, p), denom)

    def state_dict(self) -> dict:
        return {"lr": self.lr, "steps": self.steps, "exp_avg": self.exp_avg, "exp_avg_sq": self.exp_avg_sq}

    def load_state_dict(self, state: dict) -> None:
        self.lr, self.steps = state["lr"].double(), state["steps"].double()
        for mine, saved in zip(
            self.exp_avg + self.exp_avg_sq, state["exp_avg"] + state["exp_avg_sq"], strict=True
        ):
            mine.copy_(saved)


@torch.no_grad()
def member_grad_norms(params: list[Tensor]) -> Tensor:
    """(K,) each member's total gradient 2-norm over all stacked params (None grads count 0)."""
    norms = [p.grad.reshape(p.shape[0], -1).norm(dim=1) for p in params if p.grad is not None]  # (K,) each
    return torch.stack(norms, dim=1).norm(dim=1)


@torch.no_grad()
def clip_member_grads(params: list[Tensor], max_norm: float, norms: Tensor) -> None:
    """Scale member k's gradients by min(1, max_norm / (norm_k + 1e-6)), as `clip_grad_norm_` does for
    one model (Lightning's `gradient_clip_val`)."""
    coef = (max_norm / (norms + 1e-6)).clamp(max=1.0)  # (K,)
    for p in params:
        if p.grad is not None:
            p.grad.mul_(_lead(coef, p.grad))


@dataclass
class Plateau:
    """`torch.optim.lr_scheduler.ReduceLROnPlateau(mode="min", threshold=1e-4, threshold_mode="rel")`
    for one member: `update(value, lr)` after each validation returns the new lr."""

    patience: int
    factor: float
    min_lr: float
    best: float = math.inf
    bad_epochs: int = 0

    def update(self, value: float, lr: float) -> float:
        if value < self.best * (1.0 - 1e-4):
            self.best, self.bad_epochs = value, 0
        else:
            self.bad_epochs += 1
        if self.bad_epochs > self.patience:
            self.bad_epochs = 0
            new = max(lr * self.factor, self.min_lr)
            return new if lr - new > 1e-8 else lr
        return lr


def cosine_lr(base: float, eta_min: float, epoch: int, t_max: int) -> float:
    """CosineAnnealingLR's lr after `epoch` epochs (closed form)."""
    return eta_min + (base - eta_min) * (1 + math.cos(math.pi * epoch / max(t_max, 1))) / 2
