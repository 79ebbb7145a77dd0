"""Scoring a trained run (the last step of the one lifecycle, `training.run`, and of PBT's best member):
reload the best checkpoint, write predictions for all trials, score them with the harness, write
metrics.json, log the TensorBoard hparams row and figures."""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path
from typing import Any

import numpy as np
from omegaconf import DictConfig, OmegaConf
from pytorch_lightning.callbacks import ModelCheckpoint

from neuralnets.checkpoints import load_checkpoint
from neuralnets.data.sessions import MultiSessionData
from neuralnets.errors import CheckpointError, ConfigError
from neuralnets.eval import evaluate_splits
from neuralnets.eval.tblog import log_to_tensorboard
from neuralnets.runs import LAST_CHECKPOINT, predict_chunks, write_metrics, write_predictions
from neuralnets.training.build import load_kwargs
from neuralnets.training.callbacks import log_figures
from neuralnets.training.module import TrainingModule
from neuralnets.training.stitching import score_sessions


def read_verified(path: str | Path, trust_unverified: bool = False) -> dict:
    """A training checkpoint's contents, verified (`neuralnets.checkpoints.load_checkpoint`); a
    ConfigError naming the file if it cannot be."""
    try:
        return load_checkpoint(path, trust_unverified=trust_unverified)
    except CheckpointError as err:
        raise ConfigError(f"refusing to load checkpoint: {err}") from None


def _collect(
    chunks: Iterable[tuple[int, Mapping[str, np.ndarray]]], n_trials: int, into: dict[str, np.ndarray]
) -> Iterator[tuple[int, Mapping[str, np.ndarray]]]:
    """Pass `chunks` through (to `write_predictions`) while copying them into whole arrays in `into`
    {"rates": (trials, T, N), ...}: predictions are computed once and never read back from disk."""
    for start, chunk in chunks:
        for key, value in chunk.items():
            if key not in into:
                into[key] = np.empty((n_trials, *value.shape[1:]), dtype=np.float32)
            into[key][start : start + len(value)] = value
        yield start, chunk


def finish_run(
    cfg: DictConfig,
    run_dir: Path,
    data: Any,
    module: TrainingModule,
    *,
    best: Path | None,
    monitor: float | None,
    logger: Any,
    train_time: float,
    step: int,
    epochs: int | None,
) -> dict[str, Any]:
    """Score a trained run: reload the `best` checkpoint (verified: training wrote its record), write
    predictions for all trials, score them, write metrics.json, log the hparams table. Several sessions:
    each session scored (`training.stitching.score_sessions`), no predictions.h5. Returns the record
    (metrics.json's contents plus "metrics" and "run_dir")."""
    if best is not None:
        ckpt = read_verified(best)
        device = module.device
        module = TrainingModule(**ckpt["hyper_parameters"])
        module.load_state_dict(ckpt["state_dict"])
        module.to(device)
    pred: dict[str, np.ndarray] | None = None
    extra: dict[str, Any] = {}
    tb_extra: dict[str, float] = {}
    if isinstance(data, MultiSessionData):
        split, metrics, val_metrics, sessions = score_sessions(module.model, data)
        extra = {"sessions": sessions}
        tb_extra = {f"{name}/{k}": v for name, m in sessions.items() for k, v in m.items()}
    else:
        # A resumed run re-scores its final weights: the new file replaces the old one only once complete.
        pred = {}
        chunks = _collect(predict_chunks(module.model, data), data.n_trials, pred)
        write_predictions(run_dir, chunks, data.n_trials, replace=True)
        # Scored on the test trials, or (data without them, e.g. an LFADS file of train and valid only)
        # on the last split there is; metrics.json and the table name it.
        present = [s for s in ("train", "val", "test") if len(data.indices(s))]
        split = present[-1]
        # Both splits in one call: the train-side fits (few-shot read-outs, velocity ridge) are made once.
        splits = [s for s in ("val", split) if s in present]
        scores = evaluate_splits(
            pred["rates"], data, list(dict.fromkeys(splits)), pred["latents"], inputs=pred.get("inputs")
        )
        metrics, val_metrics = scores[split], scores.get("val", {})
    refit = None
    if cfg.get("refit"):
        # The validation trials were training trials: their scores are in-sample, not a validation.
        val_metrics = {}
        refit = {
            "train_splits": ["train", "val"],
            "epochs": epochs,
            "note": "refit on train + val: no validation score, no early stopping, the last epoch's weights",
        }
    record = {
        "model": module.model_name,
        "data": cfg.data.name,
        "data_source": str(cfg.data.source),
        "data_kwargs": load_kwargs(cfg),
        "split": split,
        "val_metrics": val_metrics,
        **extra,
        "train_time_s": round(train_time, 2),
        "n_parameters": module.model.n_parameters,
        "steps": step,
        "skipped_steps": module.skipped_steps,
        "checkpoint": str(best.relative_to(run_dir)) if best is not None else None,
        # The checkpoint monitor's best value (e.g. {"val/loss": ...}): a sweep objective too.
        "monitor": {cfg.callbacks.monitor: monitor},
    }
    if refit is not None:
        record["refit"] = refit
    if cfg.get("finetune_from"):
        record["finetune_from"] = str(cfg.finetune_from)
    write_metrics(metrics, run_dir, extra=record)
    record["metrics"] = metrics
    record["run_dir"] = str(run_dir)
    # Every setting that tells runs apart, so that TensorBoard's hparams table shows it.
    hparams = {
        "model": module.model_name,
        "data": cfg.data.name,
        "data_source": str(cfg.data.source),
        "data_kwargs": load_kwargs(cfg),
        "recipe": str(cfg.get("recipe")),  # configs/experiment/<recipe>.yaml, "None" without one
        "seed": cfg.seed,
        "batch_size": cfg.data.batch_size,  # the resolved number (`auto` is resolved at start)
        "max_epochs": cfg.trainer.get("max_epochs"),
        "epochs_trained": epochs,
        "steps": step,
        "model_cfg": OmegaConf.to_container(cfg.model),
        "module": OmegaConf.to_container(cfg.module),
    }
    if cfg.get("tune_member"):  # a member of a `neuralnets-tune` study
        hparams["tune_member"] = OmegaConf.to_container(cfg.tune_member, resolve=True)
    if cfg.get("finetune_from"):
        hparams["finetune_from"] = str(cfg.finetune_from)
    log_to_tensorboard(logger, hparams, {**metrics, **tb_extra})
    if pred is not None:
        log_figures(logger, data, pred, split, step)
    logger.finalize("success")
    return record


def recover_spawned_state(checkpoint: ModelCheckpoint, ckpt_dir: Path, trust: bool = False) -> int:
    """After `ddp_spawn` this process gets back the weights and the best path only: read the final
    step from last.ckpt and the best monitored score from the best checkpoint's callback state."""
    last = ckpt_dir / LAST_CHECKPOINT
    step = read_verified(last, trust)["global_step"] if last.is_file() else 0
    if checkpoint.best_model_score is None:
        state = read_verified(Path(checkpoint.best_model_path), trust)
        for key, cb_state in state.get("callbacks", {}).items():
            if key.startswith("ModelCheckpoint") and cb_state.get("best_model_score") is not None:
                checkpoint.best_model_score = cb_state["best_model_score"]
    return int(step)
