"""The one assembly step of a run: from the composed config, everything it fits with.

    a = assemble(cfg, ckpt, claim=lambda: run_dir, trust=False)
    a.trainer.fit(a.module, datamodule=a.dm)

In order: seed; the data module (`build.build_datamodule`); the TrainingModule around its model
(`build.build_module`, or a stitched model's fine-tune, `finetune_from=`), checked against the
checkpoint's data spec; only then `claim()` the run directory (so a config that cannot be built leaves
nothing behind); the training clock, the interrupt watcher, the config's callbacks and the caller's,
the logger and the trainer (`build.build_trainer`). If those last fail, the claim is undone
(`neuralnets.runs.abandon_run_dir`) when `undo_claim`.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
from omegaconf import DictConfig, OmegaConf

from neuralnets.data.sessions import spec_from_dict
from neuralnets.errors import ConfigError
from neuralnets.runs import abandon_run_dir
from neuralnets.training import build
from neuralnets.training.callbacks import TrainingClock
from neuralnets.training.interrupts import _Interrupts
from neuralnets.training.module import TrainingModule
from neuralnets.training.stitching import finetune_module

RUN_DIR_ENV = "NEURALNETS_RUN_DIR"  # rank 0's run directory, inherited by the DDP processes Lightning starts


@dataclasses.dataclass
class Assembly:
    """Everything one run fits with; `run_dir` is absolute (Lightning makes checkpoint paths absolute)."""

    run_dir: Path
    dm: Any  # SpikeDataModule | MultiSessionDataModule; `dm.data` the dataset
    module: TrainingModule
    trainer: pl.Trainer
    clock: TrainingClock
    interrupts: _Interrupts


def assemble(
    cfg: DictConfig,
    ckpt: dict | None,
    *,
    claim: Callable[[], Path],
    trust: bool = False,
    callbacks: Sequence[pl.Callback] = (),
    undo_claim: bool = False,
    ckpt_path: Path | None = None,
) -> Assembly:
    """Build data, module, callbacks, logger and trainer for `cfg` (see the module docstring). `ckpt`:
    the verified checkpoint the run starts from (a resume, PBT's restore) or None, read from `ckpt_path`."""
    pl.seed_everything(cfg.seed, workers=True)
    dm = build.build_datamodule(cfg)
    data = dm.data
    if cfg.get("finetune_from"):  # a trained stitched model plus read-in/out for data's sessions
        module, dm.first_session = finetune_module(
            cfg.finetune_from,
            data,
            data_name=cfg.data.name,
            trust_unverified=trust,
            **OmegaConf.to_container(cfg.module, resolve=True),
        )
    else:
        module = build.build_module(cfg, data.spec, init_data=data if ckpt is None else None)
    if ckpt is not None:
        saved_spec = spec_from_dict(ckpt["hyper_parameters"]["spec"])
        if saved_spec != module.spec:
            raise ConfigError(f"{ckpt_path} was trained on data {saved_spec}, but data is {module.spec}")
    run_dir = Path(claim()).resolve()
    os.environ[RUN_DIR_ENV] = str(run_dir)  # the DDP processes Lightning starts use the same directory
    clock = TrainingClock()
    if ckpt is not None:
        clock.previous_s = float(ckpt.get("callbacks", {}).get("TrainingClock", {}).get("train_time_s", 0))
    interrupts = _Interrupts()
    try:
        # A resumed TensorBoard run purges the events it logged after its checkpoint: no duplicates.
        tb = "TensorBoard" in str(cfg.logger._target_)
        purge = {"purge_step": int(ckpt.get("global_step", 0))} if ckpt is not None and tb else {}
        all_callbacks = [*build.build_callbacks(cfg, run_dir, data), clock, interrupts, *callbacks]
        logger = build.build_logger(cfg, run_dir, **purge)
        trainer = build.build_trainer(cfg, run_dir, data, all_callbacks, logger)
    except BaseException:
        if undo_claim:  # a failed start leaves no run behind
            abandon_run_dir(run_dir)
        raise
    return Assembly(run_dir, dm, module, trainer, clock, interrupts)
