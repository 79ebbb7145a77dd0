"""Population-based training (PBT) in the AutoLFADS style (Keshtkaran et al. 2022) through Ray Tune.

    pip install "neuralnets[ray]"
    python -m neuralnets.training.pbt experiment=lfads_lorenz pbt.num_samples=8
    python -m neuralnets.training.pbt experiment=lfads_lorenz trainer=gpu \\
        pbt.address=auto pbt.gpus_per_trial=0.25 pbt.num_samples=32        # on a running Ray cluster

A population of `pbt.num_samples` models (each an ordinary `TrainingModule` trained by Lightning) starts
from hyperparameters drawn from `pbt.search_space`. Every `pbt.perturbation_interval` epochs (one
generation) each member reports its validation metrics and a checkpoint to Tune; Ray's
`PopulationBasedTraining` scheduler then lets the worst `quantile_fraction` restart from a copy of
a best member's checkpoint (weights, optimiser state, step counters) with that member's
hyperparameters perturbed by x0.8 / x1.2 or resampled (`resample_probability`), kept inside the
search bounds. The searched values are any config keys: AutoLFADS' set is the learning rate,
dropout, coordinated-dropout rate and the KL / L2 penalty scales.

Output, under the Hydra run directory (`runs/pbt/<model>_<data>/<time>/`):
    tune/        Ray Tune's experiment: one directory per member with its TensorBoard logs
                 (`tensorboard --logdir .../tune`), results and checkpoints; pbt_*.txt log the exploits
    best/        the best member at the end as a regular run directory (config.yaml, checkpoints/,
                 predictions.h5, metrics.json, TensorBoard hparams), usable by neuralnets-compare
                 and load_pretrained
Ray is an optional dependency; this module imports it only when PBT runs.
"""

from __future__ import annotations

import copy
import logging
import shutil
import sys
import tempfile
import time
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import hydra
import pytorch_lightning as pl
import torch
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, OmegaConf
from pytorch_lightning.loggers import TensorBoardLogger

from neuralnets.cli import hydra_task, run_cli
from neuralnets.config import CONFIG_DIR
from neuralnets.errors import ConfigError
from neuralnets.eval.tables import format_table
from neuralnets.pretrained.checkpoint_file import write_checksum
from neuralnets.runs import CHECKPOINT_DIR, CONFIG_FILE, write_metrics
from neuralnets.training.build import build_datamodule, build_module, build_trainer
from neuralnets.training.callbacks import HarnessEvaluation
from neuralnets.training.module import TrainingModule
from neuralnets.training.train import finish_run, read_resume_checkpoint

log = logging.getLogger(__name__)

TUNE_DIR = "tune"
BEST_DIR = "best"
CKPT_NAME = "model.ckpt"  # the Lightning checkpoint inside each Tune checkpoint directory


def tune_metric(name: str) -> str:
    """Tune treats '/' in result keys as nesting: `val/recon` is reported as `val_recon`."""
    return name.replace("/", "_")


def _flatten_space(node: Any, prefix: str = "") -> dict[str, Any]:
    """The nested `pbt.search_space` {module: {lr: {low, high, log}}} as {"module.lr": {...}}."""
    if not OmegaConf.is_dict(node):
        raise ConfigError(f"pbt.search_space.{prefix.rstrip('.')} must be {{low, high, log}}; got {node}")
    if "low" in node or "high" in node:
        return {prefix.rstrip("."): node}
    out: dict[str, Any] = {}
    for key, value in node.items():
        out.update(_flatten_space(value, f"{prefix}{key}."))
    return out


def search_bounds(cfg: DictConfig) -> dict[str, tuple[float, float, bool]]:
    """`pbt.search_space` as {dotted config key: (low, high, log)}, checked against the config."""
    space = cfg.pbt.get("search_space")
    flat = _flatten_space(space) if space else {}
    if not flat:
        raise ConfigError("pbt.search_space is empty: name at least one config key to search")
    bounds = {}
    for key, spec in flat.items():
        current = OmegaConf.select(cfg, key, default=None)
        if isinstance(current, bool) or not isinstance(current, int | float):
            raise ConfigError(
                f"pbt.search_space: {key!r} is not a numeric key of this config; got {current!r}"
            )
        try:
            low, high, use_log = float(spec["low"]), float(spec["high"]), bool(spec.get("log", False))
        except (KeyError, TypeError, ValueError):
            raise ConfigError(f"pbt.search_space.{key} must be {{low, high, log}}; got {spec}") from None
        if not low < high or (use_log and low <= 0):
            raise ConfigError(f"pbt.search_space.{key}: need low < high (and low > 0 with log); got {spec}")
        bounds[key] = (low, high, use_log)
    return bounds


def clip_to_bounds(config: dict[str, Any], bounds: dict[str, tuple[float, float, bool]]) -> dict[str, Any]:
    """PBT perturbs by a factor with no regard for the range: keep each searched value inside it."""
    for key, (low, high, _) in bounds.items():
        if key in config:
            config[key] = min(max(float(config[key]), low), high)
    return config


def apply_hparams(base: dict, hparams: dict[str, Any]) -> DictConfig:
    """The base config (a plain dict) with `hparams` {dotted key: value} set."""
    cfg = OmegaConf.create(base)
    for key, value in hparams.items():
        OmegaConf.update(cfg, key, value, merge=False)
    return cfg


class _SetLearningRate(pl.Callback):
    """A member restarted from another's checkpoint inherits that optimiser state, learning rate
    included: set its own (perturbed) rate before training resumes."""

    def __init__(self, lr: float):
        self.lr = lr

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        for opt in trainer.optimizers:
            for group in opt.param_groups:
                group["lr"] = self.lr
                if "initial_lr" in group:
                    group["initial_lr"] = self.lr


class _ReportToTune(pl.Callback):
    """At the end of each generation: checkpoint, and report the validation metrics to Tune."""

    def __init__(self, every_n_epochs: int):
        self.every = every_n_epochs

    def on_validation_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        from ray import tune

        if trainer.sanity_checking or (trainer.current_epoch + 1) % self.every:
            return
        # on_validation_end runs after the epoch's val/* (harness metrics included) are aggregated.
        metrics = {
            tune_metric(k): float(v) for k, v in trainer.callback_metrics.items() if k.startswith("val/")
        }
        metrics["epoch"] = trainer.current_epoch + 1
        metrics["step"] = trainer.global_step
        with tempfile.TemporaryDirectory() as tmp:
            trainer.save_checkpoint(Path(tmp) / CKPT_NAME)
            tune.report(metrics, checkpoint=tune.Checkpoint.from_directory(tmp))  # copied before return


def pbt_trial(config: dict[str, Any], base: dict, interval: int) -> None:
    """One population member (runs in a Ray worker): build the module from the base config with this
    member's hyperparameters, restore the checkpoint PBT hands it (its own or a better member's),
    and train to `trainer.max_epochs`, reporting every `interval` epochs."""
    from ray import tune

    ctx = tune.get_context()
    cpus = ctx.get_trial_resources().required_resources.get("CPU", 1)
    torch.set_num_threads(max(1, int(cpus)))
    cfg = apply_hparams(base, config)
    trial_dir = Path(ctx.get_trial_dir())
    # A different initialisation for each member (trial ids end in a running number).
    pl.seed_everything(int(cfg.seed) + int(ctx.get_trial_id().rsplit("_", 1)[-1]), workers=True)
    dm = build_datamodule(cfg)
    checkpoint = tune.get_checkpoint()
    module = build_module(cfg, dm.data.spec, init_data=dm.data if checkpoint is None else None)
    ckpt_path = None
    if checkpoint is not None:
        with checkpoint.as_directory() as src:
            ckpt_path = Path(tempfile.mkdtemp(prefix="pbt_restore_")) / CKPT_NAME
            shutil.copy(Path(src) / CKPT_NAME, ckpt_path)
    logger = TensorBoardLogger(save_dir=str(trial_dir), name="", version="", default_hp_metric=False)
    trainer = build_trainer(
        cfg,
        trial_dir,
        dm.data,
        callbacks=[
            HarnessEvaluation(dm.data, every_n_epochs=interval, split="val", figures=False),
            _SetLearningRate(float(cfg.module.lr)),
            _ReportToTune(interval),
        ],
        logger=logger,
        enable_checkpointing=False,
    )
    trainer.fit(module, datamodule=dm, ckpt_path=ckpt_path, weights_only=True)
    if ckpt_path is not None:
        shutil.rmtree(ckpt_path.parent, ignore_errors=True)


def check_config(cfg: DictConfig) -> None:
    """Refuse settings PBT cannot run with, before any Ray process starts."""
    p = cfg.pbt
    if int(p.num_samples) < 2:
        raise ConfigError(f"pbt.num_samples={p.num_samples}: a population needs at least 2 members")
    interval, epochs = int(p.perturbation_interval), int(cfg.trainer.max_epochs)
    if interval < 1 or epochs % interval:
        raise ConfigError(
            f"trainer.max_epochs={epochs} must be a multiple of pbt.perturbation_interval={interval} "
            "(every generation ends with a report)"
        )
    if p.mode not in ("min", "max"):
        raise ConfigError(f"pbt.mode must be 'min' or 'max'; got {p.mode!r}")
    if not 0 < float(p.quantile_fraction) <= 0.5:
        raise ConfigError(f"pbt.quantile_fraction must be in (0, 0.5]; got {p.quantile_fraction}")
    if str(cfg.trainer.get("devices", 1)) != "1" or int(cfg.trainer.get("num_nodes", 1)) != 1:
        raise ConfigError("PBT trains each member in one process: use trainer.devices=1 (no DDP)")
    gpu = str(cfg.trainer.get("accelerator", "cpu")) in ("gpu", "cuda")
    if gpu != (float(p.gpus_per_trial) > 0):
        raise ConfigError(
            f"trainer.accelerator={cfg.trainer.accelerator} with pbt.gpus_per_trial={p.gpus_per_trial}: "
            "use trainer=gpu with gpus_per_trial > 0 (e.g. 0.25), or trainer=cpu with 0"
        )
    if not (p.metric.startswith("val/")):
        raise ConfigError(
            f"pbt.metric must be a validation metric (val/recon, val/co_bps, ...); got {p.metric}"
        )
    search_bounds(cfg)


def run_pbt(
    cfg: DictConfig,
    run_dir: str | Path,
    num_samples: int | None = None,
    perturbation_interval: int | None = None,
) -> dict:
    """Run PBT with the settings in `cfg.pbt` (`num_samples` / `perturbation_interval` override them),
    write the Tune experiment to `run_dir/tune` and the best member as a run directory `run_dir/best`.
    Returns the best member's record (as `train.train` does) with `record["pbt"]` = its searched
    hyperparameters, its metric value and its Tune trial directory."""
    try:
        import ray
        from ray import tune
        from ray.tune.schedulers import PopulationBasedTraining
    except ImportError:
        raise ConfigError('PBT needs Ray Tune, an optional extra: pip install "neuralnets[ray]"') from None
    cfg = copy.deepcopy(cfg)
    if num_samples is not None:
        cfg.pbt.num_samples = num_samples
    if perturbation_interval is not None:
        cfg.pbt.perturbation_interval = perturbation_interval
    check_config(cfg)
    p, bounds = cfg.pbt, search_bounds(cfg)
    run_dir = Path(run_dir).resolve()
    run_dir.mkdir(parents=True, exist_ok=True)
    source = Path(str(cfg.data.source))
    if not source.is_absolute() and source.exists():  # Ray workers run in their own directories
        cfg.data.source = str(source.resolve())
    OmegaConf.save(cfg, run_dir / CONFIG_FILE, resolve=True)
    base = OmegaConf.to_container(cfg, resolve=True)
    base.pop("hydra", None)

    space = {k: (tune.loguniform if lg else tune.uniform)(lo, hi) for k, (lo, hi, lg) in bounds.items()}
    metric = tune_metric(p.metric)
    scheduler = PopulationBasedTraining(
        # Time is the epoch each member reports: restored with the checkpoint on an exploit, so it
        # stays consistent across the population (Tune's own iteration count is per trial).
        time_attr="epoch",
        perturbation_interval=int(p.perturbation_interval),
        metric=metric,
        mode=p.mode,
        hyperparam_mutations=space,
        quantile_fraction=float(p.quantile_fraction),
        resample_probability=float(p.resample_probability),
        custom_explore_fn=lambda config: clip_to_bounds(config, bounds),
        synch=bool(p.synch),
    )
    interval = int(p.perturbation_interval)
    trainable = tune.with_resources(
        tune.with_parameters(pbt_trial, base=base, interval=interval),
        {"cpu": float(p.cpus_per_trial), "gpu": float(p.gpus_per_trial)},
    )
    started_ray = not ray.is_initialized()
    if started_ray:
        local = p.address is None
        ray.init(
            address=p.address,
            num_cpus=(int(p.num_cpus) if p.num_cpus else None) if local else None,
            include_dashboard=False,
        )
    start = time.perf_counter()
    try:
        tuner = tune.Tuner(
            trainable,
            param_space=space,
            # Reused actors keep their imports: an exploit restarts a member in the same process.
            tune_config=tune.TuneConfig(
                scheduler=scheduler, num_samples=int(p.num_samples), reuse_actors=True
            ),
            run_config=tune.RunConfig(
                name=TUNE_DIR,
                storage_path=str(run_dir),
                checkpoint_config=tune.CheckpointConfig(num_to_keep=4),
                # Stop at the last report, before the scheduler could exploit once more for nothing.
                stop={"epoch": int(cfg.trainer.max_epochs)},
                verbose=1,
            ),
        )
        results = tuner.fit()
    finally:
        if started_ray:
            ray.shutdown()
    train_time = time.perf_counter() - start
    if results.errors:
        if len(results.errors) == len(results):
            raise RuntimeError(f"every PBT member failed; the first error: {results.errors[0]}")
        log.warning("%d of %d PBT members failed: %s", len(results.errors), len(results), results.errors[0])
    best = results.get_best_result(metric=metric, mode=p.mode, scope="last")
    return _write_best(cfg, base, best, run_dir / BEST_DIR, train_time, metric)


def _write_best(cfg: DictConfig, base: dict, best, best_dir: Path, train_time: float, metric: str) -> dict:
    """The best member as an ordinary run directory, scored by the harness like any training run."""
    hparams = {k: best.config[k] for k in search_bounds(cfg)}
    best_cfg = apply_hparams(base, hparams)
    best_cfg.callbacks.monitor, best_cfg.callbacks.mode = cfg.pbt.metric, cfg.pbt.mode
    (best_dir / CHECKPOINT_DIR).mkdir(parents=True, exist_ok=True)
    OmegaConf.save(best_cfg, best_dir / CONFIG_FILE, resolve=True)
    ckpt = best_dir / CHECKPOINT_DIR / "last.ckpt"
    with best.checkpoint.as_directory() as src:
        shutil.copy(Path(src) / CKPT_NAME, ckpt)
    write_checksum(ckpt)
    step = int(read_resume_checkpoint(ckpt)["global_step"])
    module = TrainingModule.load_from_checkpoint(ckpt, map_location="cpu", weights_only=True)
    data = build_datamodule(best_cfg).data
    value = float(best.metrics[metric])
    checkpoint = SimpleNamespace(best_model_path=str(ckpt), last_model_path=str(ckpt), best_model_score=value)
    logger = TensorBoardLogger(save_dir=str(best_dir), name="", version="", default_hp_metric=False)
    record = finish_run(best_cfg, best_dir, data, module, checkpoint, logger, train_time, step)
    record["pbt"] = {"hparams": hparams, cfg.pbt.metric: value, "trial_dir": str(best.path)}
    write_metrics(record["metrics"], best_dir, extra={"pbt": record["pbt"]})
    return record


@hydra.main(version_base="1.3", config_path=str(CONFIG_DIR), config_name="pbt")
@hydra_task("neuralnets-pbt")
def main(cfg: DictConfig) -> float | None:
    run_dir = Path(HydraConfig.get().runtime.output_dir)
    record = run_pbt(cfg, run_dir)
    print(format_table([record], baselines=cfg.print_baselines))
    print(f"best member: {run_dir / BEST_DIR}   (all members: tensorboard --logdir {run_dir / TUNE_DIR})")
    return record["pbt"][cfg.pbt.metric]


def cli() -> int:
    """Entry point of `neuralnets-pbt` (errors and exit codes: `neuralnets.cli.run_cli`)."""
    return run_cli("neuralnets-pbt", main)


if __name__ == "__main__":
    sys.exit(cli())
