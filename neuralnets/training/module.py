"""The one LightningModule: trains any model that follows the contract in `neuralnets.models.base`.

Loss per batch (units: nats per trial):
    recon = mean over scored entries of -log p(y | rates), times T*N  (a per-trial NLL estimate)
    loss  = recon + sum_k ramp_k(step) * aux_losses[k]
Scored entries are observed (SBTT: missing data carry no gradient), and, in training, the entries
that coordinated dropout hid from the input and those the model asks for (`recon_mask`). Averaging
over scored entries and rescaling to a full trial keeps recon on the same scale as the per-trial
KL terms whatever fraction is masked. Validation of a model that masks its own input (`masks_input`:
NDT, STNDT) scores only the entries it never sees (held-out neurons, forward bins): unmasked in eval mode
it copies its held-in input, which would otherwise dominate val/loss. Validation weighs the auxiliary
losses at their full scales, so `val/loss` (the checkpoint, early-stopping and LR-plateau monitor) is
comparable across epochs.
"""

from __future__ import annotations

import logging
import math
import warnings

import pytorch_lightning as pl
import torch
from torch import Tensor, nn

from neuralnets.data.sessions import MultiSessionSpec, spec_from_dict
from neuralnets.errors import ConfigError, DivergenceError, ModelConfigError
from neuralnets.models import create_model
from neuralnets.models.base import ModelOutput, unseen_mask
from neuralnets.nn.augmentations import coordinated_dropout, expand_heldin_mask, masked_trial_sum, sbtt_mask
from neuralnets.nn.likelihoods import make_likelihood

log = logging.getLogger(__name__)


class TrainingModule(pl.LightningModule):
    """Wraps a `SpikeModel` with likelihood, auxiliary-loss ramps, optimiser and LR schedule.

    `model` is a model config for `neuralnets.models.create_model` (`{"name": "lfads", **options}`).
    Everything needed to rebuild the model (that config and the data spec) is saved as
    hyperparameters, so `TrainingModule.load_from_checkpoint(path, map_location="cpu")` needs no
    config tree (checkpoints whose model config gives a registered class as `_target_` load too).
    `spec` is a `DataSpec` or, for a multi-session model, a `MultiSessionSpec` as a dict: then each
    session has its own likelihood (per-neuron parameters) and a batch holds one `session`.
    """

    def __init__(
        self,
        model: dict,
        spec: dict,
        likelihood: str = "poisson",
        lr: float = 3e-3,
        lr_min: float = 1e-5,
        lr_schedule: str = "plateau",
        lr_patience: int = 10,
        lr_factor: float = 0.5,
        weight_decay: float = 0.0,
        adam_eps: float = 1e-8,
        coordinated_dropout: float = 0.0,
        data_name: str = "",
        max_skipped_fraction: float = 0.5,
        divergence_min_steps: int = 20,
    ):
        super().__init__()
        self.save_hyperparameters()
        numbers = {"lr": lr, "lr_patience": lr_patience, "coordinated_dropout": coordinated_dropout}
        for key, value in numbers.items():
            if isinstance(value, bool) or not isinstance(value, int | float):
                raise ConfigError(
                    f"module.{key}={value!r}: expected a number ('auto' is resolved from the data and model "
                    "by neuralnets.training.build.resolve_data_defaults / build_module)"
                )
        if lr_schedule not in ("plateau", "cosine", "none"):
            raise ConfigError(f"lr_schedule must be 'plateau', 'cosine' or 'none'; got {lr_schedule!r}")
        if not 0.0 <= coordinated_dropout < 1.0:
            raise ConfigError(f"coordinated_dropout must be in [0, 1); got {coordinated_dropout}")
        if not 0.0 < max_skipped_fraction <= 1.0:
            raise ConfigError(f"max_skipped_fraction must be in (0, 1]; got {max_skipped_fraction}")
        try:
            self.spec = spec_from_dict(spec)
        except (TypeError, ValueError) as err:
            raise ConfigError(f"spec {spec!r} is not a data spec nor a multi-session spec: {err}") from None
        try:
            self.model = create_model(model, self.spec)
        except ModelConfigError as err:
            raise ConfigError(str(err)) from None
        if coordinated_dropout > 0 and not self.model.accepts_coordinated_dropout:
            raise ConfigError(
                f"{self.model_name} takes no coordinated dropout (it fits its whole input); "
                f"set module.coordinated_dropout=0 (got {coordinated_dropout})"
            )
        if isinstance(self.spec, MultiSessionSpec):  # per-neuron likelihood parameters: one set per session
            self.likelihood = nn.ModuleList(make_likelihood(likelihood, s.n_neurons) for s in self.spec.specs)
        else:
            self.likelihood = make_likelihood(likelihood, self.spec.n_neurons)
        self.skipped_steps = 0
        self.attempted_steps = 0  # training steps of this segment (skipped ones included)
        self._drop_step = False  # set by training_step under DDP: drop this step's gradients
        self._loss_finite: Tensor | None = None  # () bool: this step's loss is finite (single device)
        self._loss_parts: dict[str, Tensor] = {}

    @property
    def model_name(self) -> str:
        return type(self.model).__name__

    def forward(self, batch: dict[str, Tensor]) -> ModelOutput:
        return self.model(batch)

    def likelihood_of(self, batch: dict[str, Tensor]) -> nn.Module:
        """The likelihood of the batch's session (the one likelihood of single-session data)."""
        if isinstance(self.likelihood, nn.ModuleList):
            return self.likelihood[self.spec.index(batch.get("session", 0))]
        return self.likelihood

    # ------------------------------------------------------------------ loss
    def _loss(self, batch: dict[str, Tensor], train: bool) -> tuple[Tensor, dict[str, Tensor]]:
        spikes = batch["spikes"]  # (B, T, N)
        B, T, N = spikes.shape
        observed = batch.get("observed")
        scored = None if observed is None else sbtt_mask(observed, spikes)  # (B, T, N) bool; None: all
        per_step_mask = False  # scored entries chosen per step (coordinated dropout, model masks)
        cd_rate = self.hparams.coordinated_dropout
        # A model that masks its own input (NDT) gets no coordinated dropout on top.
        if train and cd_rate > 0 and not self.model.masks_input:
            heldin, dropped = coordinated_dropout(batch["heldin"], cd_rate)  # (B, T_obs, N_in) each
            batch = {**batch, "heldin": heldin}
            scored = sbtt_mask(observed, spikes) & expand_heldin_mask(dropped, T, N)
            per_step_mask = True
        out = self.model(batch)
        if train and out.recon_mask is not None:
            scored = out.recon_mask if scored is None else scored & out.recon_mask
            per_step_mask = True
        if not train and self.model.masks_input:
            # Unmasked in eval mode, a masked-modelling model reconstructs its held-in input by copying it;
            # that score would dominate val/loss and reward copying. Score only what it never sees.
            unseen = unseen_mask(self.model.spec, B, spikes.device)  # (B, T, N)
            scored = unseen if scored is None else scored & unseen
            per_step_mask = True
        # The likelihood's target-only term (log y! for Poisson) is constant: with the data's own mask,
        # add the per-trial sums the DataModule computed once instead of evaluating it at every entry.
        likelihood = self.likelihood_of(batch)
        use_counts = likelihood.has_count_term and not per_step_mask
        counts = batch.get("log_count_factorial") if use_counts else None  # (B,)
        rates = out.rates.to(spikes.dtype)  # (B, T, N) fp32 loss even when the model ran under autocast
        if counts is None:
            nll = -likelihood.log_prob(rates, spikes)  # (B, T, N)
        else:
            nll = -likelihood.log_prob(rates, spikes, count_term=False)
        recon = masked_trial_sum(nll, scored)
        if counts is not None:
            n_scored = B * T * N if scored is None else scored.sum().clamp(min=1)
            recon = recon + counts.sum() * (T * N / n_scored)  # counts: Σ log y! over each trial's scored
        parts = {"recon": recon}
        loss = recon
        for name, value in out.aux_losses.items():
            ramp = self.model.aux_weights.get(name)
            # Validation uses the full weights, so val/loss is one objective across epochs: with the
            # ramped weights it would rise while the ramps do and favour the earliest checkpoints.
            weight = 1.0 if ramp is None else ramp(self.global_step) if train else ramp.scale
            parts[name] = value
            loss = loss + weight * value
        return loss, parts

    def _skip_step(self, why: str) -> None:
        """Count a skipped step; raise DivergenceError once more than `max_skipped_fraction` of the
        steps (after `divergence_min_steps` of them) were skipped. Every DDP rank decides the same."""
        self.skipped_steps += 1
        log.warning("%s at step %d; step skipped", why, self.global_step)
        self.log("train/skipped_steps", float(self.skipped_steps))
        hp = self.hparams
        if self.attempted_steps >= hp.divergence_min_steps and (
            self.skipped_steps > hp.max_skipped_fraction * self.attempted_steps
        ):
            raise DivergenceError(
                f"training diverged: {self.skipped_steps} of {self.attempted_steps} steps had a non-finite "
                f"loss or gradient (limit module.max_skipped_fraction={hp.max_skipped_fraction}); "
                "try a lower module.lr"
            )

    def training_step(self, batch: dict[str, Tensor], batch_idx: int) -> Tensor | None:
        self.attempted_steps += 1
        loss, parts = self._loss(batch, train=True)
        distributed = self._trainer is not None and self._trainer.world_size > 1
        if not distributed:
            # No host read here: whether the loss is finite is checked together with the gradients, in
            # one device op read once before the optimiser step (`on_before_optimizer_step`). A
            # non-finite loss back-propagates non-finite gradients, and the step is skipped there.
            self._loss_finite = torch.isfinite(loss.detach())  # () bool, on the loss's device
            self._loss_parts = {k: v.detach() for k, v in parts.items()}  # for the warning only
        elif not self.trainer.strategy.reduce_boolean_decision(bool(torch.isfinite(loss)), all=True):
            # Under DDP every rank must take the same decision, or the ranks fall out of step. DDP cannot
            # skip backward (every rank must join the gradient all-reduce, and Lightning refuses a None
            # loss there): back-propagate a zeroed loss and let `on_before_optimizer_step` drop this
            # step's gradients on every rank.
            self._skip_step(f"non-finite training loss ({parts})")
            self._drop_step = True
            return torch.nan_to_num(loss, nan=0.0, posinf=0.0, neginf=0.0) * 0.0
        bs = batch["spikes"].shape[0]
        self.log("train/loss", loss, prog_bar=True, batch_size=bs)
        for name, value in parts.items():
            self.log(f"train/{name}", value, batch_size=bs)
        for name, ramp in self.model.aux_weights.items():
            self.log(f"weights/{name}", ramp(self.global_step), batch_size=bs)
        return loss

    def on_before_optimizer_step(self, optimizer) -> None:
        if self._drop_step:  # non-finite loss under DDP (already counted in training_step)
            self._drop_step = False
            for p in self.parameters():
                p.grad = None
            return
        loss_finite, self._loss_finite = self._loss_finite, None
        grads = [p.grad for p in self.parameters() if p.grad is not None and p.grad.numel()]
        if not grads and loss_finite is None:
            return
        # One device op and one host read per step (not one per parameter): the largest |g| of each
        # gradient is inf or NaN exactly when that gradient has a non-finite entry (no overflow).
        ok = torch.stack(torch._foreach_norm(grads, ord=math.inf)).isfinite().all() if grads else None
        if loss_finite is not None:
            ok = loss_finite if ok is None else ok & loss_finite
        if not bool(ok):
            # A non-finite loss, or a finite loss that back-propagated inf/NaN: drop this step's gradients
            # entirely. (Under DDP the gradients are already all-reduced, so every rank decides the same.)
            for p in self.parameters():
                p.grad = None
            if loss_finite is not None and not bool(loss_finite):
                self._skip_step(f"non-finite training loss ({self._loss_parts})")
            else:
                self._skip_step("non-finite gradient")

    def validation_step(self, batch: dict[str, Tensor], batch_idx: int) -> None:
        loss, parts = self._loss(batch, train=False)
        bs = batch["spikes"].shape[0]
        self.log("val/loss", loss, prog_bar=True, batch_size=bs, sync_dist=True)
        for name, value in parts.items():
            self.log(f"val/{name}", value, batch_size=bs, sync_dist=True)

    # ------------------------------------------------------------------ optimiser
    def configure_optimizers(self):
        hp = self.hparams
        trainable = [p for p in self.parameters() if p.requires_grad]  # frozen parts (fine-tuning) left out
        opt = torch.optim.AdamW(trainable, lr=hp.lr, eps=hp.adam_eps, weight_decay=hp.weight_decay)
        if hp.lr_schedule == "none":
            return opt
        if hp.lr_schedule == "cosine":
            max_epochs = max(int(self.trainer.max_epochs or 1), 1) if self.trainer else 1
            sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=max_epochs, eta_min=hp.lr_min)
            return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "epoch"}}
        sched = torch.optim.lr_scheduler.ReduceLROnPlateau(
            opt, mode="min", factor=hp.lr_factor, patience=hp.lr_patience, min_lr=hp.lr_min
        )
        return {
            "optimizer": opt,
            "lr_scheduler": {"scheduler": sched, "monitor": "val/loss", "interval": "epoch"},
        }


def __getattr__(name: str):
    if name == "SpikeModule":  # the name before 0.2, one letter from SpikeModel
        warnings.warn("SpikeModule is now TrainingModule", DeprecationWarning, stacklevel=2)
        return TrainingModule
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
