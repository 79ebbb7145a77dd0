"""Callbacks: score the model with the shared harness during training, log figures, checkpoint with
a sha256 recorded beside each file, and keep the training time across resumed segments."""

from __future__ import annotations

import time
from typing import Any
from weakref import proxy

import numpy as np
import pytorch_lightning as pl
from pytorch_lightning.callbacks import ModelCheckpoint
from pytorch_lightning.utilities.exceptions import SIGTERMException

from neuralnets.checkpoints import commit_checkpoint, digest_path, partial_path
from neuralnets.data.sessions import MultiSessionData
from neuralnets.data.spikedata import SpikeData
from neuralnets.eval import evaluate, evaluate_sessions
from neuralnets.training import figures


def log_figures(logger, data: SpikeData, pred: dict[str, np.ndarray], split: str, step: int) -> None:
    """Raster vs rates, latent trajectories and (with conditions) PSTH fits for trials of `split`."""
    writer = getattr(logger, "experiment", None)
    if writer is None or not hasattr(writer, "add_figure"):
        return
    idx = data.indices(split)
    spikes, rates = data.spikes[idx], pred["rates"][idx]  # (trials, T, N)
    figs = {
        "figures/raster_vs_rates": figures.raster_vs_rates(spikes, rates, data.bin_size),
        "figures/latents": figures.latent_trajectories(
            pred["latents"][idx], None if data.condition is None else data.condition[idx]
        ),
    }
    if data.condition is not None:
        # PSTHs over the observed bins, where every trial has data.
        t_obs = data.n_obs
        figs["figures/psth"] = figures.psth_fits(
            rates[:, :t_obs], spikes[:, :t_obs], data.condition[idx], data.bin_size
        )
    for tag, fig in figs.items():
        writer.add_figure(tag, fig, global_step=step)


class HarnessEvaluation(pl.Callback):
    """Every `every_n_epochs` validation epochs: predict all trials, score the `split` trials with
    `neuralnets.eval.evaluate`, log the metrics as `val/<metric>`, and log figures. `fewshot`: also
    few-shot co-bps (off by default: its GLM fits made the callback ~4x slower; the evaluation after
    training computes it). Multi-session data: each session is scored, the mean over sessions is logged
    as `val/<metric>` and each session as `val/<session>/<metric>` (no figures)."""

    def __init__(
        self,
        data: SpikeData | MultiSessionData,
        every_n_epochs: int = 5,
        split: str = "val",
        figures: bool = True,
        fewshot: bool = False,
    ):
        self.data, self.every_n_epochs, self.split, self.figures = data, every_n_epochs, split, figures
        self.fewshot = fewshot

    def on_validation_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if trainer.sanity_checking or self.every_n_epochs <= 0:
            return
        if (trainer.current_epoch + 1) % self.every_n_epochs and not trainer.should_stop:
            return
        # Every rank computes the same numbers (eval mode is deterministic), so monitors agree under DDP.
        if isinstance(self.data, MultiSessionData):
            self._score_sessions(pl_module)
            return
        was_training = pl_module.model.training
        pred = pl_module.model.predict(self.data.heldin_obs)
        pl_module.model.train(was_training)
        latents = pred["latents"]
        metrics = evaluate(pred["rates"], self.data, self.split, latents=latents, fewshot=self.fewshot)
        for name, value in metrics.items():
            pl_module.log(f"{self.split}/{name}", float(value), sync_dist=False)
        if self.figures and trainer.is_global_zero:
            log_figures(trainer.logger, self.data, pred, self.split, trainer.global_step)

    def _score_sessions(self, pl_module: pl.LightningModule) -> None:
        was_training = pl_module.model.training
        preds = pl_module.model.predict_sessions(self.data)
        pl_module.model.train(was_training)
        scores = evaluate_sessions(preds, self.data, self.split, fewshot=self.fewshot)
        for name, value in scores["mean"].items():
            pl_module.log(f"{self.split}/{name}", float(value), sync_dist=False)
        for session, metrics in scores["sessions"].items():
            for name, value in metrics.items():
                pl_module.log(f"{self.split}/{session}/{name}", float(value), sync_dist=False)


class HashedModelCheckpoint(ModelCheckpoint):
    """`ModelCheckpoint` that writes every checkpoint with its sha256 record `<file>.sha256` in one
    atomic step (`neuralnets.checkpoints.commit_checkpoint`: a kill at any moment leaves a file that
    matches its record), verified by `neuralnets.checkpoints.load_checkpoint` on resume and loading,
    and removes that record with the file.

    Names are never versioned (`enable_version_counter=False`): last.ckpt is always last.ckpt. With
    `save_last`, `last.ckpt` is rewritten at the end of every training epoch whether or not the
    monitored value improved (Lightning 2.6 writes it only alongside a top-k save), and on Ctrl-C or
    SIGTERM, so a kill loses at most the current epoch.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        # No `last-v1.ckpt`: a run directory that was moved or copied would otherwise resume into a
        # new name (Lightning forgets the old paths when the directory changes) and keep an old last.ckpt.
        kwargs.setdefault("enable_version_counter", False)
        super().__init__(*args, **kwargs)

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        super().on_train_epoch_end(trainer, pl_module)  # runs after the epoch's validation
        self._save_last_now(trainer)

    def on_exception(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, exception: BaseException
    ) -> None:
        super().on_exception(trainer, pl_module, exception)
        if isinstance(exception, KeyboardInterrupt | SIGTERMException):
            self._save_last_now(trainer)

    def _save_last_now(self, trainer: pl.Trainer) -> None:
        """Write last.ckpt unless it already holds this step (or checkpointing is off right now)."""
        if self.save_last and not self._should_skip_saving_checkpoint(trainer):
            self._save_last_checkpoint(trainer, self._monitor_candidates(trainer))

    def _save_checkpoint(self, trainer: pl.Trainer, filepath: str) -> None:
        # As ModelCheckpoint._save_checkpoint, but written under a temporary name and committed with
        # its record. Trainer.save_checkpoint writes on rank 0 only and ends with a barrier.
        tmp = partial_path(filepath)
        trainer.save_checkpoint(tmp, self.save_weights_only)
        if trainer.is_global_zero:
            try:
                commit_checkpoint(tmp, filepath)
            finally:
                tmp.unlink(missing_ok=True)
        self._last_global_step_saved = trainer.global_step
        self._last_checkpoint_saved = filepath
        if trainer.is_global_zero:
            for logger in trainer.loggers:
                logger.after_save_checkpoint(proxy(self))

    def _remove_checkpoint(self, trainer: pl.Trainer, filepath: str) -> None:
        super()._remove_checkpoint(trainer, filepath)
        if trainer.is_global_zero:
            digest_path(filepath).unlink(missing_ok=True)


class TrainingClock(pl.Callback):
    """Wall-clock seconds spent in `Trainer.fit`, summed over every segment of a resumed run: the
    total so far is saved in each checkpoint and read back on resume (`elapsed_s`)."""

    def __init__(self) -> None:
        self.previous_s = 0.0  # earlier segments, from the checkpoint resumed
        self._start: float | None = None

    @property
    def elapsed_s(self) -> float:
        return self.previous_s + (0.0 if self._start is None else time.perf_counter() - self._start)

    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._start = time.perf_counter()

    def on_fit_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.previous_s, self._start = self.elapsed_s, None

    def state_dict(self) -> dict[str, Any]:
        return {"train_time_s": self.elapsed_s}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.previous_s = float(state_dict.get("train_time_s", 0.0))
