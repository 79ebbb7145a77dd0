"""`neuralnets-train`: the Hydra entry point (`python -m neuralnets.training.train`).

    neuralnets-train experiment=lfads_lorenz
    neuralnets-train model=lfads data=mc_maze_small trainer.max_epochs=50
    neuralnets-train resume=runs/lfads_lorenz/2026-11-25_10-00-00   # continue a killed run in place

Each run gets its own directory (`runs/<model>_<data>/<time>`) holding `config.yaml`, TensorBoard
logs, `checkpoints/`, `predictions.h5` and `metrics.json`. An existing run is never overwritten.
"""

from __future__ import annotations

import logging
import os
import time
import warnings
from pathlib import Path

import hydra
import pytorch_lightning as pl
import torch
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig, OmegaConf
from pytorch_lightning.callbacks import ModelCheckpoint

from neuralnets.data.spikedata import DataError, DataSpec
from neuralnets.eval import evaluate
from neuralnets.eval.tables import format_table
from neuralnets.eval.tblog import log_to_tensorboard
from neuralnets.pretrained.checkpoint_file import CheckpointError, load_checkpoint
from neuralnets.runs import (
    CHECKPOINT_DIR,
    CONFIG_FILE,
    PREDICTIONS_FILE,
    predict_chunks,
    read_predictions,
    write_metrics,
    write_predictions,
)
from neuralnets.training.build import CONFIG_DIR, build_datamodule, build_module, build_trainer, load_kwargs
from neuralnets.training.callbacks import log_figures
from neuralnets.training.module import ConfigError, TrainingModule

log = logging.getLogger(__name__)
# Lightning 2.6 calls a pytree API that torch deprecated, and says so on every run: not ours to fix.
warnings.filterwarnings("ignore", message=r".*isinstance\(treespec, LeafSpec\)", category=Warning)



def _run_dir(resume: str | None, new_dir: str) -> str:
    """Hydra's run directory: the resumed run's own directory, or a new one."""
    if not resume:
        return new_dir
    path = Path(resume)
    return str(path.parent.parent if path.suffix == ".ckpt" else path)


OmegaConf.register_new_resolver("run_dir", _run_dir, replace=True)


def read_resume_checkpoint(path: Path) -> dict:
    """A training checkpoint's contents, read safely (sha256 verified where recorded, weights_only);
    a ConfigError naming the file if it cannot be."""
    try:
        return load_checkpoint(path)
    except CheckpointError as err:
        raise ConfigError(f"refusing to load checkpoint: {err}") from None


def resume_checkpoint(resume: str) -> Path:
    """`resume` is a run directory (its `checkpoints/last.ckpt` is used) or a checkpoint file."""
    path = Path(resume)
    ckpt = path / CHECKPOINT_DIR / "last.ckpt" if path.is_dir() else path
    if not ckpt.is_file():
        raise ConfigError(f"resume={resume!r}: no checkpoint at {ckpt}")
    return ckpt


def is_launch_rank_zero() -> bool:
    """False in the extra processes of a distributed run (Lightning's DDP relaunch of the command,
    torchrun, srun), known from the launcher's environment before any Trainer exists. Those processes
    share rank 0's run directory: they must neither write its config nor refuse it as used."""
    return all(int(os.environ.get(k) or 0) == 0 for k in ("RANK", "LOCAL_RANK", "NODE_RANK", "SLURM_PROCID"))


def prepare_config(cfg: DictConfig, run_dir: Path, overrides: list[str]) -> DictConfig:
    """For a new run, refuse a used directory; for a resumed one, reload the run's saved config and
    apply only the overrides given on this command line (e.g. a larger `trainer.max_epochs`)."""
    saved = run_dir / CONFIG_FILE
    if cfg.get("resume"):
        if not saved.is_file():
            raise ConfigError(
                f"resume={cfg.resume!r}: {saved} not found; is this a neuralnets run directory?"
            )
        extra = [o for o in overrides if not o.startswith(("resume=", "hydra."))]
        resumed = OmegaConf.merge(OmegaConf.load(saved), OmegaConf.from_dotlist(extra))
        resumed.resume = cfg.resume
        return resumed
    if is_launch_rank_zero() and (saved.exists() or (run_dir / CHECKPOINT_DIR).exists()):
        raise ConfigError(
            f"{run_dir} already holds a run; refusing to overwrite it (use resume= to continue it)"
        )
    return cfg


def train(cfg: DictConfig, run_dir: str | Path) -> dict:
    """Train, then score the best checkpoint with the harness. Returns the contents of metrics.json."""
    run_dir = Path(run_dir).resolve()  # Lightning makes checkpoint paths absolute
    if cfg.get("threads"):
        torch.set_num_threads(int(cfg.threads))
    pl.seed_everything(cfg.seed, workers=True)
    dm = build_datamodule(cfg)
    data = dm.data
    ckpt_path = resume_checkpoint(cfg.resume) if cfg.get("resume") else None
    if ckpt_path is not None:
        # Verified (sha256 where recorded) and read with weights_only before Lightning opens it.
        saved_spec = DataSpec(**read_resume_checkpoint(ckpt_path)["hyper_parameters"]["spec"])
        if saved_spec != data.spec:
            raise ConfigError(f"{ckpt_path} was trained on data {saved_spec}, but data is {data.spec}")
    module = build_module(cfg, data.spec, init_data=data if ckpt_path is None else None)
    trainer = build_trainer(cfg, run_dir, data)
    if ckpt_path is None:  # a new run: its config is written once model and trainer could be built
        run_dir.mkdir(parents=True, exist_ok=True)
        if is_launch_rank_zero():
            OmegaConf.save(cfg, run_dir / CONFIG_FILE, resolve=True)
    # The configured checkpoint callback (Lightning adds a plain one if the config has none).
    logger, checkpoint = trainer.logger, trainer.checkpoint_callback
    log.info("%s: %s (%d parameters) on %s", run_dir, module.model_name, module.model.n_parameters, data.name)
    start = time.perf_counter()
    trainer.fit(module, datamodule=dm, ckpt_path=ckpt_path, weights_only=True)
    train_time = time.perf_counter() - start
    if not trainer.is_global_zero:
        return {}
    step = trainer.global_step
    if step == 0 and checkpoint.best_model_path:
        step = recover_spawned_state(checkpoint, run_dir / CHECKPOINT_DIR)
    return finish_run(cfg, run_dir, data, module, checkpoint, logger, train_time, step)


def recover_spawned_state(checkpoint: ModelCheckpoint, ckpt_dir: Path) -> int:
    """After `ddp_spawn` this process gets back the weights and the best path only: read the final
    step from last.ckpt and the best monitored score from the best checkpoint's callback state."""
    last = ckpt_dir / "last.ckpt"
    step = read_resume_checkpoint(last)["global_step"] if last.is_file() else 0
    if checkpoint.best_model_score is None:
        state = read_resume_checkpoint(Path(checkpoint.best_model_path))
        for key, cb_state in state.get("callbacks", {}).items():
            if key.startswith("ModelCheckpoint") and cb_state.get("best_model_score") is not None:
                checkpoint.best_model_score = cb_state["best_model_score"]
    return int(step)


def finish_run(
    cfg, run_dir: Path, data, module: TrainingModule, checkpoint, logger, train_time: float, step: int
):
    """Reload the best weights, write predictions for all trials, score them, log the hparams table."""
    best = checkpoint.best_model_path or checkpoint.last_model_path
    if best:
        read_resume_checkpoint(Path(best))  # sha256 and weights_only, with a clear error
        module = TrainingModule.load_from_checkpoint(best, map_location=module.device, weights_only=True)
    pred_path = run_dir / PREDICTIONS_FILE
    if pred_path.exists():  # a resumed run re-scores its final weights
        pred_path.unlink()
    write_predictions(run_dir, predict_chunks(module.model, data), data.n_trials)
    pred = read_predictions(pred_path)
    scores = {
        split: evaluate(pred["rates"], data, split, latents=pred["latents"]) for split in ("val", "test")
    }
    record = {
        "model": module.model_name,
        "data": cfg.data.name,
        "data_source": str(cfg.data.source),
        "data_kwargs": load_kwargs(cfg),
        "split": "test",
        "val_metrics": scores["val"],
        "train_time_s": round(train_time, 2),
        "n_parameters": module.model.n_parameters,
        "steps": step,
        "checkpoint": str(Path(best).relative_to(run_dir)) if best else None,
        # The checkpoint monitor's best value (e.g. {"val/loss": ...}): a sweep objective too.
        "monitor": {cfg.callbacks.monitor: _float_or_none(checkpoint.best_model_score)},
    }
    write_metrics(scores["test"], run_dir, extra=record)
    record["metrics"] = scores["test"]
    last = Path(checkpoint.last_model_path) if checkpoint.last_model_path else None
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
        "epochs_trained": read_resume_checkpoint(last)["epoch"] + 1 if last and last.is_file() else None,
        "steps": step,
        "model_cfg": OmegaConf.to_container(cfg.model),
        "module": OmegaConf.to_container(cfg.module),
    }
    if cfg.get("tune_member"):  # a member of a `neuralnets-tune` study
        hparams["tune_member"] = OmegaConf.to_container(cfg.tune_member, resolve=True)
    log_to_tensorboard(logger, hparams, scores["test"])
    log_figures(logger, data, pred, "test", step)
    logger.finalize("success")
    return record


def _float_or_none(x) -> float | None:
    return None if x is None else float(x)


def sweep_value(record: dict, metric: str) -> float:
    """The number a Hydra sweeper optimises: a harness metric on the validation trials (`co_bps`,
    `fp_bps`, ...) or the checkpoint monitor's best value (`val/loss`, `val/recon`)."""
    if metric in record["val_metrics"]:
        return record["val_metrics"][metric]
    if record["monitor"].get(metric) is not None:
        return record["monitor"][metric]
    raise ConfigError(
        f"sweep_metric={metric!r} is neither a validation metric {sorted(record['val_metrics'])} nor the "
        f"checkpoint monitor {sorted(record['monitor'])} (set callbacks.monitor={metric} to optimise it)"
    )


def _relaunches_command(trainer_cfg: DictConfig) -> bool:
    """True when Lightning would start the extra DDP processes by re-running this command line
    (strategy `ddp` on one node without torchrun/SLURM having started the processes already)."""
    strategy = str(trainer_cfg.get("strategy", "auto"))
    if not strategy.startswith("ddp") or strategy.startswith(("ddp_spawn", "ddp_fork", "ddp_notebook")):
        return False
    devices = trainer_cfg.get("devices", 1)
    several = int(trainer_cfg.get("num_nodes", 1)) > 1 or str(devices) not in ("1", "[0]")
    launched_outside = "WORLD_SIZE" in os.environ or int(os.environ.get("SLURM_NTASKS") or 1) > 1
    return several and not launched_outside


@hydra.main(version_base="1.3", config_path=str(CONFIG_DIR), config_name="train")
def main(cfg: DictConfig) -> float | None:
    hydra_cfg = HydraConfig.get()
    run_dir = Path(hydra_cfg.runtime.output_dir)
    try:
        if hydra_cfg.mode == RunMode.MULTIRUN and _relaunches_command(cfg.trainer):
            # Lightning would re-run this whole command line (the sweep included) in each extra process.
            raise ConfigError(
                f"trainer.strategy={cfg.trainer.strategy} re-runs the command in each extra process, which "
                "would restart the whole sweep (a Lightning limitation); in a multirun use one device per "
                "run (trainer=gpu), trainer.strategy=ddp_spawn, or the SLURM launcher (hydra/launcher=slurm) "
                "with hydra.launcher.tasks_per_node equal to trainer.devices"
            )
        cfg = prepare_config(cfg, run_dir, list(hydra_cfg.overrides.task))
        record = train(cfg, run_dir)
        sweeping = hydra_cfg.mode == RunMode.MULTIRUN and bool(record)
        value = sweep_value(record, cfg.get("sweep_metric", "co_bps")) if sweeping else None
    except (ConfigError, DataError, FileExistsError) as err:
        # A config or data problem is the user's to fix: say what and where, no traceback.
        log.error("%s", err)
        raise SystemExit(f"error: {err}") from None
    if not record:
        return None
    print(format_table([record], baselines=cfg.print_baselines))
    print(f"run directory: {run_dir}")
    return value  # what Hydra sweepers (Optuna) optimise


if __name__ == "__main__":
    main()
