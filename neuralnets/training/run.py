"""The one run lifecycle: claim the run directory, lock it, seed, build, fit, finish, record the status.

    from neuralnets.training.run import run_training
    result = run_training(cfg)                                   # a new run under cfg.out_dir
    result = run_training(cfg, "runs/mine")                      # a directory the caller names (claimed)
    result = run_training(cfg_with_resume)                       # cfg.resume = a run dir or its checkpoint
    result = run_training(member_cfg, members / "003", callbacks=[pruner], raise_on_failure=False)
    result.status, result.monitor, result.record["metrics"]

Every command that trains goes through `run_training`: `neuralnets-train` (`training/train.py`, the
Hydra layer), tuning members, population-based-training members (`training/pbt.py`, which scores its
best member with `finish_run`), stitching fine-tunes (`finetune_from=`). It

1. refuses a config that cannot train (`check_config`) before anything is made;
2. for a resume, locks the run (`neuralnets.runs.recorded_run`: a second process training the same run is
   refused with one line naming the holder) and reads `checkpoints/last.ckpt` verified
   (`neuralnets.checkpoints.load_checkpoint`: a file without a valid sha256 record is refused unless
   `trust_unverified`);
3. asks one assembly step (`training.assemble`) for everything: seed, data, module, then the run
   directory claimed and locked (`neuralnets.runs.recorded_run`: a config that cannot be built leaves
   nothing behind), callbacks, logger and trainer; writes `config.yaml`;
4. fits, with SIGTERM/SIGINT turned into a saved `last.ckpt`, status `interrupted` and `RunInterrupted`
   (commands exit with `EXIT_INTERRUPTED`, 75, which a scheduler can requeue on);
5. finishes (`training.finish.finish_run`): reloads the best checkpoint, writes `predictions.h5`
   (streamed once, never read back), scores it with the harness, writes `metrics.json`, logs the
   TensorBoard hparams row;
6. records how it ended in `status.json`: finished, failed, diverged or interrupted.
"""

from __future__ import annotations

import contextlib
import dataclasses
import inspect
import logging
import os
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
from omegaconf import DictConfig

from neuralnets.config_schema import validate
from neuralnets.errors import ConfigError, DivergenceError, RunInterrupted
from neuralnets.runs import (
    CHECKPOINT_DIR,
    error_line,
    recorded_run,
    write_config,
    write_metrics,
    write_status,
)
from neuralnets.training import build
from neuralnets.training.assemble import RUN_DIR_ENV, Assembly, assemble  # noqa: F401 - RUN_DIR_ENV re-exported
from neuralnets.training.finish import finish_run, read_verified, recover_spawned_state  # noqa: F401 - re-exported
from neuralnets.training.module import TrainingModule
from neuralnets.training.resume import (  # noqa: F401 - re-exported: moved out of this module
    RESUME_FIXED,
    NothingToDo,
    _flat_group,
    check_resumable,
    check_resume_config,
    resume_checkpoint,
    resume_dir,
)

log = logging.getLogger(__name__)

LOG_FILE = "train.log"


@dataclasses.dataclass(frozen=True)
class RunResult:
    """How a run ended.

    `status`: "finished", "failed", "diverged" (failures are returned only with
    `raise_on_failure=False`; an interruption always raises `RunInterrupted`). `record`: what
    metrics.json holds plus "metrics" and "run_dir" (empty unless the run was scored, and on DDP
    processes other than rank 0). `monitor`: the best value of the checkpoint monitor
    (`cfg.callbacks.monitor`, e.g. val/loss) or None. `epochs`, `steps`: trained so far (all
    segments). `train_time_s`: seconds in `Trainer.fit`, all segments. `error`: one line, or None."""

    run_dir: Path
    status: str
    record: dict[str, Any]
    monitor: float | None = None
    epochs: int = 0
    steps: int = 0
    train_time_s: float = 0.0
    error: str | None = None

    @property
    def finished(self) -> bool:
        return self.status == "finished"


# ---------------------------------------------------------------------------------------------- checks
def _timestamp() -> str:
    return time.strftime("%Y-%m-%d_%H-%M-%S")


def new_run_location(cfg: DictConfig) -> tuple[Path, str]:
    """(parent, name) of a new run's directory: `<out_dir>/<model>_<data.name>/<time>`, or in a Hydra
    multirun `<sweep dir>/<job number>_<model>_<data.name>`; `neuralnets.runs.create_run_dir` makes it
    unique."""
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    model = cfg.model.name
    if HydraConfig.initialized():
        hydra_cfg = HydraConfig.get()
        model = hydra_cfg.runtime.choices.get("model") or model
        if hydra_cfg.mode == RunMode.MULTIRUN:
            return Path(hydra_cfg.sweep.dir), f"{hydra_cfg.job.num}_{model}_{cfg.data.name}"
    return Path(cfg.out_dir) / f"{model}_{cfg.data.name}", _timestamp()


def is_launch_rank_zero() -> bool:
    """False in the extra processes of a distributed run (Lightning's DDP relaunch of the command,
    torchrun, srun), known from the launcher's environment before any Trainer exists. Those processes
    share rank 0's run directory: they must neither write its config nor refuse it as used."""
    return all(int(os.environ.get(k) or 0) == 0 for k in ("RANK", "LOCAL_RANK", "NODE_RANK", "SLURM_PROCID"))


def check_config(cfg: DictConfig) -> None:
    """Refuse, before anything is built, a run that cannot mean anything or a `module.` key that
    `TrainingModule` does not take (e.g. a misspelt `+module.x=`), and any key or value the schema
    refuses (`neuralnets.config_schema.validate`)."""
    validate(cfg)
    for key in ("max_epochs", "max_steps"):
        if cfg.trainer.get(key) == 0:
            raise ConfigError(f"trainer.{key}=0: the run would take no training step; give a positive number")
    if cfg.get("refit") and (cfg.trainer.get("max_epochs") or -1) < 1:
        raise ConfigError(
            f"refit=true trains for exactly trainer.max_epochs epochs (got "
            f"{cfg.trainer.get('max_epochs')!r}); give the chosen run's epochs up to its best checkpoint "
            "(best-epoch=E.ckpt: E + 1)"
        )
    options = set(inspect.signature(TrainingModule.__init__).parameters) - {"self", "model", "spec"}
    unknown = sorted(set(cfg.module) - options)
    if unknown:
        raise ConfigError(
            f"unknown option(s) {['module.' + k for k in unknown]}; module options: {sorted(options)}"
        )


# ---------------------------------------------------------------------------------------------- lifecycle
def run_training(
    cfg: DictConfig,
    run_dir: str | Path | tuple[Path, str] | None = None,
    *,
    callbacks: Sequence[pl.Callback] = (),
    restore: str | Path | None = None,
    trust_unverified: bool = False,
    score: bool = True,
    raise_on_failure: bool = True,
) -> RunResult:
    """Train one run from the composed config `cfg` (`configs/train.yaml`) and score it.

    `run_dir`: None for a new unique directory (`new_run_location`), (parent, name) for a new unique
    directory `parent/name[_N]`, a directory to claim for a new run (refused if it holds a run), or,
    with `cfg.resume` set, ignored (the resumed run's own).
    `callbacks`: extra Lightning callbacks, after the config's (e.g. a tuner's pruning callback: to
    prune, set `trainer.should_stop`; the run then finishes and is scored where it stopped).
    `restore`: a checkpoint to start a *new* run from (weights, optimiser, counters; PBT's exploit).
    `trust_unverified` (or `cfg.trust_unverified`): accept checkpoints without a sha256 record (the
    digest is logged); never saved in the run's config. `score=False`: finish without predictions,
    metrics or hparams row (a PBT member segment). `raise_on_failure=False`: a failed or diverged run
    is returned (status recorded) instead of raised; `RunInterrupted` (SIGTERM/SIGINT) always raises.
    """
    trust = bool(trust_unverified or cfg.get("trust_unverified"))
    if "trust_unverified" in cfg:
        cfg.trust_unverified = False  # trusted once, for this process: never saved in config.yaml
    check_config(cfg)
    build.resolve_threads(cfg)
    rank_zero = is_launch_rank_zero()
    resuming = bool(cfg.get("resume"))
    if resuming and restore is not None:
        raise ConfigError("resume= continues a run in place; restore= starts a new one: give one of them")
    with contextlib.ExitStack() as stack:
        if resuming:
            run_dir = resume_dir(cfg.resume)
            if rank_zero:  # before anything is read: a second resume of the same run stops here
                if not Path(run_dir).is_dir():
                    raise ConfigError(f"resume={cfg.resume!r}: no run directory {run_dir}")
                stack.enter_context(recorded_run(run_dir, claim=False))
                check_resume_config(Path(run_dir), cfg)  # before the run's checkpoint or logs are touched
        ckpt_path = resume_checkpoint(cfg.resume) if resuming else (Path(restore) if restore else None)
        ckpt = read_verified(ckpt_path, trust) if ckpt_path is not None else None
        if resuming:
            check_resumable(Path(run_dir), cfg, ckpt)

        def claim() -> Path:  # after data and model are built: a run that cannot be built leaves nothing
            if resuming:
                return Path(run_dir)
            if rank_zero:
                return stack.enter_context(recorded_run(run_dir or new_run_location(cfg)))
            if run_dir is None:
                raise ConfigError(
                    "this process is not rank 0 of a distributed run and was given no run directory: name "
                    "it with hydra.run.dir=... so that every process agrees on it"
                )
            return Path(run_dir)

        undo = not resuming and rank_zero
        a = assemble(
            cfg, ckpt, claim=claim, trust=trust, callbacks=callbacks, undo_claim=undo, ckpt_path=ckpt_path
        )
        if rank_zero:
            if not resuming:  # a new run: its config is written once model and trainer could be built
                write_config(a.run_dir, cfg)
            write_status(a.run_dir, "running", error=None)
            handler = _log_to_file(a.run_dir / LOG_FILE)
            stack.callback(_remove_handler, handler)
        stack.enter_context(a.interrupts.installed())
        return _fit_and_finish(cfg, a, ckpt_path, trust, score, raise_on_failure)
    raise AssertionError("unreachable")  # pragma: no cover - the ExitStack block returns or raises


def _log_to_file(path: Path) -> logging.Handler:
    """Copy this process's log records to `path` (the run's train.log) until the handler is removed."""
    handler = logging.FileHandler(path)
    handler.setFormatter(logging.Formatter("[%(asctime)s][%(name)s][%(levelname)s] - %(message)s"))
    logging.getLogger().addHandler(handler)
    return handler


def _remove_handler(handler: logging.Handler) -> None:
    logging.getLogger().removeHandler(handler)
    handler.close()


def _fit_and_finish(
    cfg: DictConfig, a: Assembly, ckpt_path: Path | None, trust: bool, score: bool, raise_on_failure: bool
) -> RunResult:
    """trainer.fit, then `finish_run` on rank 0; status.json records how it ended."""
    run_dir, dm, module, trainer, clock, interrupts = (
        a.run_dir,
        a.dm,
        a.module,
        a.trainer,
        a.clock,
        a.interrupts,
    )
    data = dm.data
    checkpoint = trainer.checkpoint_callback
    log.info("%s: %s (%d parameters) on %s", run_dir, module.model_name, module.model.n_parameters, data.name)
    previous_s, start = clock.previous_s, time.perf_counter()
    record: dict[str, Any] = {}

    def seconds() -> float:
        return round(previous_s + time.perf_counter() - start, 2)  # also right after ddp_spawn

    try:
        with interrupts.fitting():
            # The checkpoint was verified above; Lightning reads it again, with weights_only.
            trainer.fit(module, datamodule=a.dm, ckpt_path=ckpt_path, weights_only=True)
        if interrupts.signal is not None:  # a SIGTERM that arrived after the last batch
            raise KeyboardInterrupt
        if not trainer.is_global_zero:
            return RunResult(run_dir, "finished", {}, epochs=trainer.current_epoch, steps=trainer.global_step)
        train_time = seconds()
        step = trainer.global_step
        if step == 0 and checkpoint is not None and checkpoint.best_model_path:
            step = recover_spawned_state(checkpoint, run_dir / CHECKPOINT_DIR, trust)
        if step == 0:
            raise ConfigError(
                f"{run_dir}: training took no optimizer step (trainer: {dict(cfg.trainer)}); nothing to score"
            )
        monitor = _float_or_none(checkpoint.best_model_score) if checkpoint is not None else None
        if score:
            best = (
                (checkpoint.best_model_path or checkpoint.last_model_path) if checkpoint is not None else ""
            )
            if cfg.get("refit"):  # validation trials were trained on: no choice by them, the last weights
                best = checkpoint.last_model_path if checkpoint is not None else ""
                monitor = None
            record = finish_run(
                cfg, run_dir, data, module, best=Path(best) if best else None, monitor=monitor,
                logger=trainer.logger, train_time=train_time, step=step, epochs=trainer.current_epoch,
            )  # fmt: skip
    except DivergenceError as err:
        if trainer.is_global_zero:
            counts = {"skipped_steps": module.skipped_steps, "attempted_steps": module.attempted_steps}
            extra = {"model": module.model_name, "data": cfg.data.name, "status": "diverged"}
            write_metrics({}, run_dir, extra={**extra, **counts, "train_time_s": seconds()})
            write_status(run_dir, "diverged", error=str(err), train_time_s=seconds(), **counts)
        if raise_on_failure:
            raise
        return _ended(run_dir, "diverged", trainer, seconds(), str(err))
    except BaseException as err:
        if interrupts.caused(err):
            how = interrupts.signal or "SIGINT"
            message = (
                f"interrupted by {how} at step {trainer.global_step}; resume={run_dir} continues the run"
            )
            if is_launch_rank_zero():
                write_status(run_dir, "interrupted", error=message, train_time_s=seconds())
            raise RunInterrupted(message) from None
        if isinstance(err, SystemExit) and err.code in (0, None):  # e.g. Ray Tune ending a PBT member
            if is_launch_rank_zero():
                message = f"stopped by its host (SystemExit({err.code})) at step {trainer.global_step}"
                write_status(run_dir, "interrupted", error=message, train_time_s=seconds())
            raise
        if is_launch_rank_zero():
            write_status(run_dir, "failed", error=error_line(err), train_time_s=seconds())
        if raise_on_failure or not isinstance(err, Exception):
            raise
        return _ended(run_dir, "failed", trainer, seconds(), error_line(err))
    refit = {"refit": "train+val, last epoch, no validation"} if cfg.get("refit") else {}
    write_status(
        run_dir,
        "finished",
        error=None,
        **refit,
        epochs=trainer.current_epoch,
        train_time_s=record.get("train_time_s", seconds()),
        skipped_steps=module.skipped_steps,
    )
    return RunResult(
        run_dir,
        "finished",
        record,
        monitor=monitor,
        epochs=trainer.current_epoch,
        steps=step,
        train_time_s=record.get("train_time_s", seconds()),
    )


def _ended(run_dir: Path, status: str, trainer: pl.Trainer, seconds: float, error: str) -> RunResult:
    checkpoint = trainer.checkpoint_callback
    monitor = _float_or_none(checkpoint.best_model_score) if checkpoint is not None else None
    return RunResult(
        run_dir, status, {}, monitor=monitor, epochs=trainer.current_epoch, steps=trainer.global_step,
        train_time_s=seconds, error=error,
    )  # fmt: skip


def _float_or_none(x: Any) -> float | None:
    return None if x is None else float(x)
