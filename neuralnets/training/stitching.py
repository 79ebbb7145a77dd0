"""Training on several sessions (a stitched model, `neuralnets.models.stitched`): initialisation from
the data, per-session scoring of a finished run, and fine-tuning on new sessions.

    neuralnets-train model=stitched data=lorenz_sessions data.load_kwargs.keep=[0,1,2]
    neuralnets-train model=stitched data=lorenz_sessions data.load_kwargs.keep=[3] finetune_from=RUN_DIR

Fine-tuning (`finetune_from=` a run directory or checkpoint, or `finetune(...)` in Python) adds a
read-in and read-out for each new session (new neuron counts) to the trained model, freezes the
shared core and the trained sessions, and trains only the new read-ins / read-outs. The checkpoint
is untrusted: it is read with its sha256 verified where recorded and `weights_only=True`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytorch_lightning as pl
from omegaconf import DictConfig, OmegaConf

from neuralnets.data.datamodule import MultiSessionDataModule
from neuralnets.data.sessions import MultiSessionData
from neuralnets.data.spikedata import SpikeData
from neuralnets.eval import evaluate_sessions
from neuralnets.eval.tblog import log_to_tensorboard
from neuralnets.models.stitched import Stitched
from neuralnets.pretrained.checkpoint_file import CheckpointError
from neuralnets.pretrained.loading import build_from_checkpoint, read_checkpoint
from neuralnets.runs import CHECKPOINT_DIR, LAST_CHECKPOINT, METRICS_FILE, read_json, write_metrics
from neuralnets.training.build import init_sessions_from_data, load_kwargs
from neuralnets.training.module import ConfigError, TrainingModule


def checkpoint_of(source: str | Path) -> Path:
    """The checkpoint of `source`: a checkpoint file, or a run directory (the checkpoint its
    metrics.json names, i.e. the best one, else `checkpoints/last.ckpt`)."""
    path = Path(source)
    if path.is_dir():
        metrics = path / METRICS_FILE
        named = read_json(metrics).get("checkpoint") if metrics.is_file() else None
        path = path / named if named else path / CHECKPOINT_DIR / LAST_CHECKPOINT
    if not path.is_file():
        raise ConfigError(f"finetune_from={str(source)!r}: no checkpoint at {path}")
    return path


def load_stitched(source: str | Path) -> tuple[Stitched, dict[str, Any]]:
    """(the trained stitched model in eval mode on CPU, its checkpoint contents) from a run directory
    or checkpoint; sha256 verified where recorded, read with weights_only."""
    path = checkpoint_of(source)
    try:
        ckpt = read_checkpoint(path)
        model = build_from_checkpoint(path, ckpt=ckpt)
    except (CheckpointError, ValueError) as err:
        raise ConfigError(f"refusing to fine-tune from {path}: {err}") from None
    if not isinstance(model, Stitched):
        raise ConfigError(
            f"finetune_from={str(source)!r} holds a {type(model).__name__}; fine-tuning on new sessions "
            "needs a stitched model (model=stitched)"
        )
    return model, ckpt


def finetune_module(
    source: str | Path, data: SpikeData | MultiSessionData, **module_options: Any
) -> tuple[TrainingModule, int]:
    """(a TrainingModule whose model is the stitched model of `source` plus a read-in / read-out for
    each session of `data`, of which only those train; the index of `data`'s first session in it).

    The new sessions' read-outs start at their mean counts and their read-ins from their own data
    (`training.build.init_sessions_from_data`); every other weight is the checkpoint's, bit for bit."""
    data = MultiSessionData.of(data)
    trained, ckpt = load_stitched(source)
    try:
        spec = trained.spec.with_sessions(data.spec)
    except ValueError as err:
        raise ConfigError(f"finetune_from={str(source)!r}: {err}") from None
    model_cfg = {**ckpt["hyper_parameters"]["model"], "train_only_sessions": list(data.names)}
    module_options.setdefault("data_name", data.name)
    module = TrainingModule(model=model_cfg, spec=spec.to_dict(), **module_options)
    first = trained.spec.n_sessions
    new = tuple(f"{part}.{i}." for part in ("model.readins", "model.readouts", "likelihood") for i in
                range(first, spec.n_sessions))  # fmt: skip
    result = module.load_state_dict(ckpt["state_dict"], strict=False)
    missing = [k for k in result.missing_keys if not k.startswith(new)]
    if missing or result.unexpected_keys:
        raise ConfigError(
            f"finetune_from={str(source)!r}: its weights do not fit the model (missing {missing}, "
            f"unexpected {result.unexpected_keys})"
        )
    init_sessions_from_data(module.model, data)
    return module, first


def finetune(
    source: str | Path,
    data: SpikeData | MultiSessionData,
    max_epochs: int = 30,
    batch_size: int = 16,
    lr: float = 1e-2,
    seed: int = 0,
    accelerator: str = "cpu",
) -> Stitched:
    """Fine-tune the stitched model of `source` (run directory or checkpoint) on the new session(s) of
    `data` in this process (no run directory, no logger): only the new read-ins / read-outs train.
    Returns the model in eval mode, knowing the old and new sessions. `accelerator`: as Lightning's
    (`"gpu"` for a GPU)."""
    pl.seed_everything(seed, workers=True)
    module, first = finetune_module(source, data, lr=lr, lr_schedule="none")
    dm = MultiSessionDataModule(
        MultiSessionData.of(data), batch_size=batch_size, seed=seed, first_session=first
    )
    trainer = pl.Trainer(
        max_epochs=max_epochs, accelerator=accelerator, logger=False, enable_checkpointing=False,
        enable_progress_bar=False, enable_model_summary=False,
    )  # fmt: skip
    trainer.fit(module, datamodule=dm)
    return module.model.eval()


def finish_sessions_run(
    cfg: DictConfig, run_dir: Path, data: MultiSessionData, module: TrainingModule, checkpoint, logger,
    train_time: float, step: int,
) -> dict[str, Any]:  # fmt: skip
    """`training.train.finish_run` for multi-session data: reload the best weights, score every session
    with the harness (val and the last split all sessions have), write metrics.json (the mean over
    sessions as `metrics`, each session under `sessions`) and the hparams table."""
    best = checkpoint.best_model_path or checkpoint.last_model_path
    if best:
        try:
            read_checkpoint(Path(best))  # sha256 and weights_only, with a clear error
        except (CheckpointError, ValueError) as err:
            raise ConfigError(f"refusing to load checkpoint: {err}") from None
        module = TrainingModule.load_from_checkpoint(best, map_location=module.device, weights_only=True)
    preds = module.model.predict_sessions(data)
    present = [s for s in ("train", "val", "test") if all(len(d.indices(s)) for _, d in data)]
    split = present[-1]
    scores = {s: evaluate_sessions(preds, data, s) for s in {"val", split} & set(present)}
    record = {
        "model": module.model_name,
        "data": cfg.data.name,
        "data_source": str(cfg.data.source),
        "data_kwargs": load_kwargs(cfg),
        "split": split,
        "val_metrics": scores.get("val", {}).get("mean", {}),
        "sessions": scores[split]["sessions"],
        "train_time_s": round(train_time, 2),
        "n_parameters": module.model.n_parameters,
        "steps": step,
        "skipped_steps": module.skipped_steps,
        "checkpoint": str(Path(best).relative_to(run_dir)) if best else None,
        "monitor": {cfg.callbacks.monitor: None if checkpoint.best_model_score is None else float(
            checkpoint.best_model_score)},
    }  # fmt: skip
    if cfg.get("finetune_from"):
        record["finetune_from"] = str(cfg.finetune_from)
    write_metrics(scores[split]["mean"], run_dir, extra=record)
    record["metrics"] = scores[split]["mean"]
    record["run_dir"] = str(run_dir)
    per_session = {f"{s}/{k}": v for s, m in scores[split]["sessions"].items() for k, v in m.items()}
    hparams = {
        "model": module.model_name,
        "data": cfg.data.name,
        "data_kwargs": load_kwargs(cfg),
        "seed": cfg.seed,
        "batch_size": cfg.data.batch_size,
        "steps": step,
        "model_cfg": OmegaConf.to_container(cfg.model),
        "module": OmegaConf.to_container(cfg.module),
        "finetune_from": str(cfg.get("finetune_from")),
    }
    log_to_tensorboard(logger, hparams, {**scores[split]["mean"], **per_session})
    logger.finalize("success")
    return record
