"""`neuralnets-train`: the Hydra entry point (`python -m neuralnets.training.train`).

    neuralnets-train experiment=lfads_lorenz
    neuralnets-train model=lfads data=mc_maze_small trainer.max_epochs=50
    neuralnets-train resume=runs/lfads_lorenz/2026-11-25_10-00-00   # continue a killed run in place

Each run gets its own directory (`runs/<model>_<data.name>/<time>`, made by `neuralnets.runs`, never
shared even by runs started in the same second) holding `status.json`, `config.yaml`, `train.log`,
TensorBoard logs, `checkpoints/`, `predictions.h5` and `metrics.json`. An existing run is never
overwritten. A user mistake prints one line and exits non-zero (a traceback with NEURALNETS_DEBUG=1).
"""

from __future__ import annotations

import contextlib
import inspect
import logging
import os
import sys
import time
import warnings
from collections.abc import Sequence
from pathlib import Path

import hydra
import pytorch_lightning as pl
import torch
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig, OmegaConf
from pytorch_lightning.callbacks import ModelCheckpoint

from neuralnets.cli import hydra_task, run_cli
from neuralnets.config import CONFIG_DIR, load_saved_config
from neuralnets.data.sessions import MultiSessionData, spec_from_dict
from neuralnets.errors import CheckpointError, ConfigError, DivergenceError
from neuralnets.eval import evaluate
from neuralnets.eval.tables import format_table
from neuralnets.eval.tblog import log_to_tensorboard
from neuralnets.pretrained.checkpoint_file import load_checkpoint
from neuralnets.runs import (
    CHECKPOINT_DIR,
    CONFIG_FILE,
    LAST_CHECKPOINT,
    PREDICTIONS_FILE,
    STATUS_FILE,
    atomic_path,
    claim_run_dir,
    create_run_dir,
    holds_run,
    predict_chunks,
    read_predictions,
    read_status,
    write_metrics,
    write_predictions,
    write_status,
)
from neuralnets.training import build
from neuralnets.training.build import build_datamodule, build_module, build_trainer, load_kwargs
from neuralnets.training.callbacks import TrainingClock, log_figures
from neuralnets.training.module import TrainingModule
from neuralnets.training.stitching import finetune_module, score_sessions

log = logging.getLogger(__name__)
# Lightning 2.6 calls a pytree API that torch deprecated, and says so on every run: not ours to fix.
warnings.filterwarnings("ignore", message=r".*isinstance\(treespec, LeafSpec\)", category=Warning)


RUN_DIR_ENV = "NEURALNETS_RUN_DIR"  # rank 0's run directory, inherited by the DDP processes Lightning starts
LOG_FILE = "train.log"


class NothingToDo(Exception):
    """resume= of a finished run without more epochs to train: nothing is changed."""


def _timestamp() -> str:
    return time.strftime("%Y-%m-%d_%H-%M-%S")


def new_run_location(cfg: DictConfig) -> tuple[Path, str]:
    """(parent, name) of a new run's directory: `<out_dir>/<model>_<data.name>/<time>`, or in a Hydra
    multirun `<sweep dir>/<job number>_<model>_<data.name>`; `neuralnets.runs.create_run_dir` makes it
    unique."""
    model = cfg.model.name
    if HydraConfig.initialized():
        hydra_cfg = HydraConfig.get()
        model = hydra_cfg.runtime.choices.get("model") or model
        if hydra_cfg.mode == RunMode.MULTIRUN:
            return Path(hydra_cfg.sweep.dir), f"{hydra_cfg.job.num}_{model}_{cfg.data.name}"
    return Path(cfg.out_dir) / f"{model}_{cfg.data.name}", _timestamp()


def resume_dir(resume: str) -> Path:
    """The run directory of `resume=` (a run directory, or a checkpoint in its checkpoints/)."""
    path = Path(resume)
    return path.parent.parent if path.suffix == ".ckpt" else path


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
    ckpt = path / CHECKPOINT_DIR / LAST_CHECKPOINT if path.is_dir() else path
    if not ckpt.is_file():
        raise ConfigError(f"resume={resume!r}: no checkpoint at {ckpt}")
    return ckpt


def is_launch_rank_zero() -> bool:
    """False in the extra processes of a distributed run (Lightning's DDP relaunch of the command,
    torchrun, srun), known from the launcher's environment before any Trainer exists. Those processes
    share rank 0's run directory: they must neither write its config nor refuse it as used."""
    return all(int(os.environ.get(k) or 0) == 0 for k in ("RANK", "LOCAL_RANK", "NODE_RANK", "SLURM_PROCID"))


def prepare_config(cfg: DictConfig, run_dir: Path | None, overrides: list[str]) -> DictConfig:
    """For a new run, refuse a used directory; for a resumed one, reload the run's saved config and
    apply only the overrides given on this command line (e.g. a larger `trainer.max_epochs`)."""
    if cfg.get("resume"):
        saved = resume_dir(cfg.resume) / CONFIG_FILE
        if not saved.is_file():
            raise ConfigError(
                f"resume={cfg.resume!r}: {saved} not found; is this a neuralnets run directory?"
            )
        extra = [o for o in overrides if not o.startswith(("resume=", "hydra."))]
        resumed = OmegaConf.merge(load_saved_config(saved), OmegaConf.from_dotlist(extra))
        resumed.resume = cfg.resume
        return resumed
    if run_dir is not None and is_launch_rank_zero() and holds_run(run_dir):
        raise ConfigError(
            f"{run_dir} already holds a run; refusing to overwrite it (use resume= to continue it)"
        )
    return cfg


def check_config(cfg: DictConfig) -> None:
    """Refuse, before anything is built, a run that cannot mean anything or a `module.` key that
    `TrainingModule` does not take (e.g. a misspelt `+module.x=`)."""
    for key in ("max_epochs", "max_steps"):
        if cfg.trainer.get(key) == 0:
            raise ConfigError(f"trainer.{key}=0: the run would take no training step; give a positive number")
    options = set(inspect.signature(TrainingModule.__init__).parameters) - {"self", "model", "spec"}
    unknown = sorted(set(cfg.module) - options)
    if unknown:
        raise ConfigError(
            f"unknown option(s) {['module.' + k for k in unknown]}; module options: {sorted(options)}"
        )


def check_resumable(run_dir: Path, cfg: DictConfig, ckpt: dict) -> None:
    """NothingToDo for a finished run, unless `trainer.max_epochs` asks for more epochs than it trained."""
    status = read_status(run_dir)
    if status["status"] != "finished":
        return
    trained = int(status.get("epochs") or ckpt.get("epoch", -1) + 1)
    wanted = cfg.trainer.get("max_epochs")
    if wanted is None or wanted < 0 or wanted > trained:
        return
    raise NothingToDo(
        f"{run_dir} is a finished run ({trained} epochs); nothing to do (raise trainer.max_epochs above "
        f"{trained} to train it further)"
    )


def _one_line(err: BaseException) -> str:
    """The error recorded in status.json."""
    if isinstance(err, KeyboardInterrupt | SystemExit):  # Lightning ends Ctrl-C and SIGTERM with SystemExit
        return "interrupted (Ctrl-C or SIGTERM); resume= continues the run"
    return " ".join(f"{type(err).__name__}: {err}".split())


def train(
    cfg: DictConfig, run_dir: str | Path | None = None, extra_callbacks: Sequence[pl.Callback] = ()
) -> dict:
    """Train, then score the best checkpoint with the harness. Returns the contents of metrics.json.

    `run_dir`: a resumed run's own directory, a directory named for a new run (claimed: refused if it
    holds a run), or None for a new unique directory (`new_run_location`). It is made only once data,
    model and trainer could be built; its status.json ends finished, failed or diverged.
    `extra_callbacks` run after the run's own (e.g. `neuralnets-tune`'s report to its study).
    """
    if cfg.get("threads"):
        torch.set_num_threads(int(cfg.threads))
    check_config(cfg)
    pl.seed_everything(cfg.seed, workers=True)
    dm = build_datamodule(cfg)
    data = dm.data
    ckpt_path = resume_checkpoint(cfg.resume) if cfg.get("resume") else None
    previous_s, start_step = 0.0, 0
    if ckpt_path is not None:
        # Verified (sha256 where recorded) and read with weights_only before Lightning opens it.
        ckpt = read_resume_checkpoint(ckpt_path)
        run_dir = resume_dir(cfg.resume)
        check_resumable(run_dir, cfg, ckpt)
        previous_s = float(ckpt.get("callbacks", {}).get("TrainingClock", {}).get("train_time_s", 0.0))
        start_step = int(ckpt.get("global_step", 0))
    if cfg.get("finetune_from"):  # a trained stitched model plus read-in/out for data's sessions
        module, dm.first_session = finetune_module(
            cfg.finetune_from,
            data,
            data_name=cfg.data.name,
            **OmegaConf.to_container(cfg.module, resolve=True),
        )
    else:
        module = build_module(cfg, data.spec, init_data=data if ckpt_path is None else None)
    if ckpt_path is not None:
        saved_spec = spec_from_dict(ckpt["hyper_parameters"]["spec"])
        if saved_spec != module.spec:
            raise ConfigError(f"{ckpt_path} was trained on data {saved_spec}, but data is {module.spec}")
    rank_zero = is_launch_rank_zero()
    if ckpt_path is None and rank_zero:
        run_dir = create_run_dir(*new_run_location(cfg)) if run_dir is None else claim_run_dir(run_dir)
    elif run_dir is None:
        raise ConfigError(
            "this process is not rank 0 of a distributed run and was given no run directory: name it "
            "with hydra.run.dir=... so that every process agrees on it"
        )
    run_dir = Path(run_dir).resolve()  # Lightning makes checkpoint paths absolute
    os.environ[RUN_DIR_ENV] = str(run_dir)  # the DDP processes Lightning starts use the same directory
    clock = TrainingClock()
    clock.previous_s = previous_s
    try:
        # A resumed TensorBoard run purges the events it logged after its checkpoint: no duplicate points.
        purge = {"purge_step": start_step} if ckpt_path and "TensorBoard" in str(cfg.logger._target_) else {}
        callbacks = [*build.build_callbacks(cfg, run_dir, data), clock, *extra_callbacks]
        trainer = build_trainer(cfg, run_dir, data, callbacks, build.build_logger(cfg, run_dir, **purge))
    except BaseException:
        if ckpt_path is None and rank_zero:  # a failed start leaves no run behind: only status.json is there
            (run_dir / STATUS_FILE).unlink(missing_ok=True)
            with contextlib.suppress(OSError):
                run_dir.rmdir()  # if empty
        raise
    if rank_zero:
        if ckpt_path is None:  # a new run: its config is written once model and trainer could be built
            with atomic_path(run_dir / CONFIG_FILE) as tmp:
                OmegaConf.save(cfg, tmp, resolve=True)
        write_status(run_dir, "running", error=None)
    handler = _log_to_file(run_dir / LOG_FILE) if rank_zero else None
    try:
        return _fit_and_finish(cfg, run_dir, dm, module, trainer, clock, ckpt_path)
    finally:
        if handler is not None:
            logging.getLogger().removeHandler(handler)
            handler.close()


def _log_to_file(path: Path) -> logging.Handler:
    """Copy this process's log records to `path` (the run's train.log) until the handler is removed."""
    handler = logging.FileHandler(path)
    handler.setFormatter(logging.Formatter("[%(asctime)s][%(name)s][%(levelname)s] - %(message)s"))
    logging.getLogger().addHandler(handler)
    return handler


def _fit_and_finish(cfg, run_dir: Path, dm, module: TrainingModule, trainer: pl.Trainer, clock, ckpt_path):
    """trainer.fit, then `finish_run` on rank 0; status.json records how it ended."""
    data = dm.data
    logger, checkpoint = trainer.logger, trainer.checkpoint_callback
    log.info("%s: %s (%d parameters) on %s", run_dir, module.model_name, module.model.n_parameters, data.name)
    previous_s, start = clock.previous_s, time.perf_counter()
    try:
        trainer.fit(module, datamodule=dm, ckpt_path=ckpt_path, weights_only=True)
        if not trainer.is_global_zero:
            return {}
        train_time = previous_s + time.perf_counter() - start  # also right after ddp_spawn
        step = trainer.global_step
        if step == 0 and checkpoint.best_model_path:
            step = recover_spawned_state(checkpoint, run_dir / CHECKPOINT_DIR)
        if step == 0:
            raise ConfigError(
                f"{run_dir}: training took no optimizer step (trainer: {dict(cfg.trainer)}); nothing to score"
            )
        record = finish_run(cfg, run_dir, data, module, checkpoint, logger, train_time, step)
    except DivergenceError as err:
        if trainer.is_global_zero:
            train_time = previous_s + time.perf_counter() - start
            extra = {"model": module.model_name, "data": cfg.data.name, "status": "diverged"}
            counts = {"skipped_steps": module.skipped_steps, "attempted_steps": module.attempted_steps}
            write_metrics({}, run_dir, extra={**extra, **counts, "train_time_s": round(train_time, 2)})
            write_status(run_dir, "diverged", error=str(err), train_time_s=round(train_time, 2), **counts)
        raise
    except BaseException as err:
        if is_launch_rank_zero():
            train_time = previous_s + time.perf_counter() - start
            write_status(run_dir, "failed", error=_one_line(err), train_time_s=round(train_time, 2))
        raise
    write_status(
        run_dir,
        "finished",
        error=None,
        epochs=trainer.current_epoch,
        train_time_s=record["train_time_s"],
        skipped_steps=module.skipped_steps,
    )
    return record


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
    """Reload the best weights, write predictions for all trials, score them, log the hparams table.
    Several sessions: each session scored (`training.stitching.score_sessions`), no predictions.h5."""
    best = checkpoint.best_model_path or checkpoint.last_model_path
    if best:
        read_resume_checkpoint(Path(best))  # sha256 and weights_only, with a clear error
        module = TrainingModule.load_from_checkpoint(best, map_location=module.device, weights_only=True)
    pred, extra, tb_extra = None, {}, {}
    if isinstance(data, MultiSessionData):
        split, metrics, val_metrics, sessions = score_sessions(module.model, data)
        extra = {"sessions": sessions}
        tb_extra = {f"{name}/{k}": v for name, m in sessions.items() for k, v in m.items()}
    else:
        # A resumed run re-scores its final weights: the new file replaces the old one only once complete.
        write_predictions(run_dir, predict_chunks(module.model, data), data.n_trials, replace=True)
        pred = read_predictions(run_dir / PREDICTIONS_FILE)
        # Scored on the test trials, or (data without them, e.g. an LFADS file of train and valid only)
        # on the last split there is; metrics.json and the table name it.
        present = [s for s in ("train", "val", "test") if len(data.indices(s))]
        split = present[-1]
        scores = {
            s: evaluate(pred["rates"], data, s, latents=pred["latents"], inputs=pred.get("inputs"))
            for s in {"val", split} & set(present)
        }
        metrics, val_metrics = scores[split], scores.get("val", {})
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
        "checkpoint": str(Path(best).relative_to(run_dir)) if best else None,
        # The checkpoint monitor's best value (e.g. {"val/loss": ...}): a sweep objective too.
        "monitor": {cfg.callbacks.monitor: _float_or_none(checkpoint.best_model_score)},
    }
    if cfg.get("finetune_from"):
        record["finetune_from"] = str(cfg.finetune_from)
    write_metrics(metrics, run_dir, extra=record)
    record["metrics"] = metrics
    record["run_dir"] = str(run_dir)
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
    if cfg.get("finetune_from"):
        hparams["finetune_from"] = str(cfg.finetune_from)
    log_to_tensorboard(logger, hparams, {**metrics, **tb_extra})
    if pred is not None:
        log_figures(logger, data, pred, split, step)
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


def requested_run_dir(cfg: DictConfig, hydra_cfg) -> Path | None:
    """The run directory this command must use, or None for a new one (`new_run_location`): the
    resumed run's, rank 0's (in a DDP process Lightning started), or the one the user named with
    `hydra.run.dir=...` (used as is; refused if it already holds a run)."""
    if cfg.get("resume"):
        return resume_dir(cfg.resume)
    if not is_launch_rank_zero() and os.environ.get(RUN_DIR_ENV):
        return Path(os.environ[RUN_DIR_ENV])
    named = any(o.split("=", 1)[0].lstrip("+") == "hydra.run.dir" for o in hydra_cfg.overrides.hydra)
    if named and hydra_cfg.mode != RunMode.MULTIRUN:
        return Path(hydra_cfg.run.dir)
    return None


@hydra.main(version_base="1.3", config_path=str(CONFIG_DIR), config_name="train")
@hydra_task("neuralnets-train")
def main(cfg: DictConfig) -> float | None:
    hydra_cfg = HydraConfig.get()
    try:
        if hydra_cfg.mode == RunMode.MULTIRUN and _relaunches_command(cfg.trainer):
            # Lightning would re-run this whole command line (the sweep included) in each extra process.
            raise ConfigError(
                f"trainer.strategy={cfg.trainer.strategy} re-runs the command in each extra process, which "
                "would restart the whole sweep (a Lightning limitation); in a multirun use one device per "
                "run (trainer=gpu), trainer.strategy=ddp_spawn, or the SLURM launcher (hydra/launcher=slurm) "
                "with hydra.launcher.tasks_per_node equal to trainer.devices"
            )
        run_dir = requested_run_dir(cfg, hydra_cfg)
        cfg = prepare_config(cfg, run_dir, list(hydra_cfg.overrides.task))
        record = train(cfg, run_dir)
        sweeping = hydra_cfg.mode == RunMode.MULTIRUN and bool(record)
        value = sweep_value(record, cfg.get("sweep_metric", "co_bps")) if sweeping else None
    except NothingToDo as done:  # not an error: exit 0
        print(done)
        return None
    if not record:
        return None
    # Baseline rows are single-session: a multi-session run prints its mean over sessions alone.
    print(format_table([record], baselines=cfg.print_baselines and "sessions" not in record))
    print(f"run directory: {record['run_dir']}")
    return value  # what Hydra sweepers (Optuna) optimise


def cli() -> int:
    """Entry point of `neuralnets-train`: `main` through the one command wrapper (`neuralnets.cli`):
    a user's mistake (config, data, Hydra override) is one line and exit 2, a divergence exit 3."""
    return run_cli("neuralnets-train", main)


if __name__ == "__main__":
    sys.exit(cli())
