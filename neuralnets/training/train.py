"""`neuralnets-train`: the Hydra entry point (`python -m neuralnets.training.train`).

    neuralnets-train experiment=lfads_lorenz
    neuralnets-train model=lfads data=mc_maze_small trainer.max_epochs=50
    neuralnets-train resume=runs/lfads_lorenz/2026-11-25_10-00-00   # continue a killed run in place

Each run gets its own directory (`runs/<model>_<data.name>/<time>`, made by `neuralnets.runs`, never
shared even by runs started in the same second) holding `status.json`, `config.yaml`, `train.log`,
TensorBoard logs, `checkpoints/`, `predictions.h5` and `metrics.json`. An existing run is never
overwritten. A user mistake prints one line and exits non-zero (a traceback with NEURALNETS_DEBUG=1);
SIGTERM/SIGINT saves `last.ckpt`, marks the run interrupted and exits with 75 (requeue, then resume=).
A checkpoint without a sha256 record is refused unless `trust_unverified=true` is given.

This module is the Hydra layer only: the run itself is `neuralnets.training.run.run_training`.
"""

from __future__ import annotations

import gc
import os
import sys
import warnings
from pathlib import Path

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig, OmegaConf

from neuralnets.cli import hydra_task, run_cli
from neuralnets.config import CONFIG_DIR, load_saved_config
from neuralnets.errors import ConfigError
from neuralnets.eval.tables import format_table
from neuralnets.runs import CONFIG_FILE, holds_run
from neuralnets.training.run import (
    RUN_DIR_ENV,
    NothingToDo,
    is_launch_rank_zero,
    resume_dir,
    run_training,
)

# Lightning 2.6 calls a pytree API that torch deprecated, and says so on every run: not ours to fix.
warnings.filterwarnings("ignore", message=r".*isinstance\(treespec, LeafSpec\)", category=Warning)

__all__ = ["CONFIG_DIR", "NothingToDo", "main", "prepare_config", "sweep_value", "train"]


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


def train(cfg: DictConfig, run_dir: str | Path | None = None) -> dict:
    """Train and score one run (`neuralnets.training.run.run_training`); returns the contents of
    metrics.json plus "metrics" and "run_dir" ({} on DDP processes other than rank 0). Failures raise."""
    record = run_training(cfg, run_dir).record
    # The run's trainer, module and data hold reference cycles (Lightning's trainer <-> callbacks <->
    # module): free them now, before anything else (the baseline rows) needs memory.
    gc.collect()
    return record


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
