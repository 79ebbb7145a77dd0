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

Small-data options (all off by default; docs/training.md "Small-data options"), training batches only:
- `sample_validation` (Keshtkaran & Pandarinath 2019): a fixed share of each training trial's held-in
  entries (the same entries every epoch, `nn.augmentations.sample_validation_mask`) is zeroed in the
  input (the rest scaled by 1/(1 - share), as coordinated dropout does) and left out of the training
  loss; at the end of each validation epoch the model, in eval mode and fed the same hidden input, is
  scored on exactly those entries: `val/sv_recon` (Poisson NLL in nats per hidden entry), a checkpoint
  and early-stopping monitor (`callbacks.monitor=val/sv_recon`) that copying input to rates cannot fool.
- `augment_shift`, `augment_shift_per`, `augment_jitter`: each training trial is shifted in time by a
  random whole number of bins (per trial or per neuron; bins shifted in count as unobserved, so they
  carry no loss) and/or each spike is moved by up to `augment_jitter` bins. Input and target move
  together (the model sees and reconstructs the same new trial); validation and prediction never.
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
from neuralnets.nn.augmentations import (
    coordinated_dropout,
    expand_heldin_mask,
    jitter_spikes,
    masked_trial_sum,
    random_shifts,
    sample_validation_mask,
    sbtt_mask,
    shift_trials,
)
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
        sample_validation: float = 0.0,
        sample_validation_seed: int = 0,
        augment_shift: int = 0,
        augment_shift_per: str = "trial",
        augment_jitter: int = 0,
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
        self._check_small_data_options()
        if isinstance(self.spec, MultiSessionSpec):  # per-neuron likelihood parameters: one set per session
            self.likelihood = nn.ModuleList(make_likelihood(likelihood, s.n_neurons) for s in self.spec.specs)
        else:
            self.likelihood = make_likelihood(likelihood, self.spec.n_neurons)
        self.skipped_steps = 0
        self.attempted_steps = 0  # training steps of this segment (skipped ones included)
        self._drop_step = False  # set by training_step under DDP: drop this step's gradients
        self._loss_finite: Tensor | None = None  # () bool: this step's loss is finite (single device)
        self._loss_parts: dict[str, Tensor] = {}

    def _check_small_data_options(self) -> None:
        hp = self.hparams
        if not 0.0 <= hp.sample_validation < 1.0:
            raise ConfigError(f"module.sample_validation must be in [0, 1); got {hp.sample_validation}")
        for key in ("augment_shift", "augment_jitter"):
            value = hp[key]
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise ConfigError(f"module.{key} must be a whole number of bins >= 0; got {value!r}")
        if hp.augment_shift_per not in ("trial", "neuron"):
            raise ConfigError(
                f"module.augment_shift_per must be 'trial' or 'neuron'; got {hp.augment_shift_per!r}"
            )
        specs = self.spec.specs if isinstance(self.spec, MultiSessionSpec) else [self.spec]
        shortest = min(s.n_bins for s in specs)
        for key in ("augment_shift", "augment_jitter"):
            if hp[key] >= shortest:
                raise ConfigError(f"module.{key}={hp[key]} must be below the trial length ({shortest} bins)")
        uses = hp.sample_validation > 0 or hp.augment_shift > 0 or hp.augment_jitter > 0
        if uses and not self.model.accepts_coordinated_dropout:
            raise ConfigError(
                f"{self.model_name} fits its whole input: it takes no sample validation or spike "
                "augmentation (set module.sample_validation=0 module.augment_shift=0 "
                "module.augment_jitter=0)"
            )

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
    def _sample_validation_hidden(self, batch: dict[str, Tensor]) -> Tensor:
        """(B, T, N) bool: the batch's sample-validation entries (held-in neurons, observed bins)."""
        B, T, N = batch["spikes"].shape
        _, T_obs, N_in = batch["heldin"].shape
        hp = self.hparams
        session = int(batch.get("session", 0))
        sv = sample_validation_mask(
            batch["index"], T_obs, N_in, hp.sample_validation, hp.sample_validation_seed, session
        )  # (B, T_obs, N_in)
        hidden = torch.zeros(B, T, N, dtype=torch.bool, device=batch["spikes"].device)  # (B, T, N)
        hidden[:, :T_obs, :N_in] = sv.to(hidden.device)
        return hidden

    def _hide_input(self, batch: dict[str, Tensor], hidden: Tensor) -> dict[str, Tensor]:
        """The batch with the held-in input zeroed at `hidden (B, T, N)` and the rest scaled by
        1/(1 - share), so that the input's expected count matches an unhidden trial's."""
        _, T_obs, N_in = batch["heldin"].shape
        h = hidden[:, :T_obs, :N_in]  # (B, T_obs, N_in)
        heldin = batch["heldin"]
        heldin = torch.where(h, torch.zeros_like(heldin), heldin / (1.0 - self.hparams.sample_validation))
        return {**batch, "heldin": heldin}

    def training_view(self, batch: dict[str, Tensor]) -> tuple[dict[str, Tensor], bool]:
        """The training batch the small-data options make (sample validation, shift, jitter); returns
        `(batch, changed)`. Unchanged (and no random numbers drawn) when they are all off. Changed: the
        batch has `observed (B, T, N)` (hidden and shifted-in entries False) and matching `heldin`."""
        hp = self.hparams
        if not (hp.sample_validation > 0 or hp.augment_shift > 0 or hp.augment_jitter > 0):
            return batch, False
        spikes = batch["spikes"]  # (B, T, N)
        B, T, N = spikes.shape
        _, T_obs, N_in = batch["heldin"].shape
        observed = sbtt_mask(batch.get("observed"), spikes)  # (B, T, N) bool
        hidden = None
        if hp.sample_validation > 0:
            # In the trial's own bins, before any shift: the hidden spikes never reach input or loss.
            hidden = self._sample_validation_hidden(batch)
            spikes = spikes.masked_fill(hidden, 0.0)
            observed = observed & ~hidden
        extra = {}
        if hp.augment_shift > 0:
            per = N if hp.augment_shift_per == "neuron" else 1
            shift = random_shifts(B, per, hp.augment_shift, spikes.device)  # (B, 1 or N)
            spikes = shift_trials(spikes, shift, 0.0)
            observed = shift_trials(observed, shift, False)  # bins shifted in are unknown, not silent
            if hidden is not None:
                hidden = shift_trials(hidden, shift, False)
            if "inputs" in batch and shift.shape[1] == 1:  # external inputs move with their trial
                extra["inputs"] = shift_trials(batch["inputs"], shift, 0.0)
        if hp.augment_jitter > 0:
            spikes = jitter_spikes(spikes, hp.augment_jitter)
        batch = {**batch, **extra, "spikes": spikes, "observed": observed, "heldin": spikes[:, :T_obs, :N_in]}
        if hidden is not None:
            batch = self._hide_input(batch, hidden)
        return batch, True

    @torch.no_grad()
    def sample_validation_nll(self, batch: dict[str, Tensor]) -> tuple[Tensor, Tensor]:
        """The model (in its current mode) fed `batch` with its sample-validation entries hidden, scored on
        exactly those entries: `(sum of NLL over them (), their number ())`."""
        hidden = self._sample_validation_hidden(batch)  # (B, T, N)
        spikes = batch["spikes"]
        scored = hidden & sbtt_mask(batch.get("observed"), spikes)
        out = self.model(self._hide_input(batch, hidden))
        nll = -self.likelihood_of(batch).log_prob(out.rates.to(spikes.dtype), spikes)  # (B, T, N)
        return torch.where(scored, nll, torch.zeros_like(nll)).sum(), scored.sum()

    def _loss(self, batch: dict[str, Tensor], train: bool) -> tuple[Tensor, dict[str, Tensor]]:
        per_step_mask = False  # scored entries chosen per step (coordinated dropout, model masks)
        if train:
            batch, per_step_mask = self.training_view(batch)  # changed: log y! sums no longer apply
        spikes = batch["spikes"]  # (B, T, N)
        B, T, N = spikes.shape
        observed = batch.get("observed")
        scored = None if observed is None else sbtt_mask(observed, spikes)  # (B, T, N) bool; None: all
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

    def on_validation_epoch_end(self) -> None:
        if self.hparams.sample_validation > 0:
            self.log("val/sv_recon", self.sample_validation_score())

    def sample_validation_score(self) -> Tensor:
        """`val/sv_recon`: mean NLL (nats) of the training trials' sample-validation entries, the model
        fed those trials with the entries hidden. Every DDP rank scores every training trial."""
        dm = self.trainer.datamodule if self._trainer is not None else None
        if dm is None or not hasattr(dm, "eval_batches"):
            raise ConfigError(
                "module.sample_validation needs the neuralnets DataModule (its training trials are scored)"
            )
        total = torch.zeros((), device=self.device)
        count = torch.zeros((), device=self.device)
        for batch in dm.eval_batches("train"):
            nll, n = self.sample_validation_nll(batch)
            total, count = total + nll, count + n
        return total / count.clamp(min=1)

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
