"""Population-based training (PBT) in the AutoLFADS style (Keshtkaran et al. 2022) through Ray Tune.

    pip install "neuralnets[ray]"
    python -m neuralnets.training.pbt experiment=lfads_lorenz pbt.num_samples=8
    python -m neuralnets.training.pbt experiment=lfads_lorenz trainer=gpu \\
        pbt.address=auto pbt.gpus_per_trial=0.25 pbt.num_samples=32        # on a running Ray cluster

A population of `pbt.num_samples` models (each an ordinary `TrainingModule` trained by Lightning) starts
from hyperparameters drawn from its search space (`search_bounds`: the model family's `pbt:` space, or
`pbt.search_space`). Every `pbt.perturbation_interval` epochs (one generation) each member reports its
validation metrics and a checkpoint to Tune; Ray's `PopulationBasedTraining` scheduler then lets the
worst `quantile_fraction` restart from a copy of a best member's checkpoint (weights, optimiser state,
step counters) with that member's hyperparameters perturbed by x0.8 / x1.2 or resampled
(`resample_probability`), kept inside the search bounds. The searched values are any real-valued config
keys: LFADS' space is AutoLFADS' set, the learning rate, dropout, coordinated-dropout rate and the KL /
L2 penalty scales.

Output, under the Hydra run directory (`runs/pbt/<model>_<data>/<time>/`, itself claimed and locked
through `neuralnets.runs`, with config.yaml and status.json):
    tune/        Ray Tune's experiment: one directory per member with its results, its checkpoints (each
                 with its sha256 record) and one run directory per start of the member (`segment`,
                 `segment_1`, ...: config.yaml, status.json, TensorBoard logs; `tensorboard --logdir
                 .../tune`); pbt_*.txt log the exploits
    best/        the best member at the end as a regular run directory (config.yaml, checkpoints/,
                 predictions.h5, metrics.json, TensorBoard hparams), usable by neuralnets-compare
                 and load_pretrained
Ray is an optional dependency; this module imports it only when PBT runs.
"""

from __future__ import annotations

import contextlib
import copy
import logging
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import hydra
import pytorch_lightning as pl
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, OmegaConf
from pytorch_lightning.loggers import TensorBoardLogger

from neuralnets.checkpoints import copy_checkpoint, last_checkpoint, load_checkpoint, save_checkpoint
from neuralnets.cli import hydra_task, run_cli
from neuralnets.config import CONFIG_DIR
from neuralnets.errors import ConfigError
from neuralnets.eval.tables import format_table
from neuralnets.runs import holds_run, recorded_run, settle_run, write_config, write_metrics, write_status
from neuralnets.training.build import build_datamodule
from neuralnets.training.module import TrainingModule
from neuralnets.training.pbt_space import check_config, clip_to_bounds, search_bounds  # noqa: F401 - re-exported
from neuralnets.training.run import finish_run, run_training

log = logging.getLogger(__name__)

TUNE_DIR = "tune"
BEST_DIR = "best"
CKPT_NAME = "model.ckpt"  # the Lightning checkpoint (+ model.ckpt.sha256) in each Tune checkpoint directory
SEGMENT = "segment"  # each start or restart of a member: a run directory <trial dir>/segment[_N]


def tune_metric(name: str) -> str:
    """Tune treats '/' in result keys as nesting: `val/recon` is reported as `val_recon`."""
    return name.replace("/", "_")


def apply_hparams(base: dict, hparams: dict[str, Any]) -> DictConfig:
    """The base config (a plain dict) with `hparams` {dotted key: value} set."""
    cfg = OmegaConf.create(base)
    for key, value in hparams.items():
        OmegaConf.update(cfg, key, value, merge=False)
    return cfg


class _SetLearningRate(pl.Callback):
    """A member restarted from another's checkpoint inherits that optimiser state, learning rate
    included: set its own (perturbed) rate before training resumes."""

    def __init__(self, lr: float | str):
        self.lr = lr  # `auto` (lr not searched): the rate the run resolved from the data (module hparams)

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        lr = float(pl_module.hparams.lr if self.lr == "auto" else self.lr)
        for opt in trainer.optimizers:
            for group in opt.param_groups:
                group["lr"] = lr
                if "initial_lr" in group:
                    group["initial_lr"] = lr


class _ReportToTune(pl.Callback):
    """At the end of each generation: checkpoint (with its sha256 record, `neuralnets.checkpoints`), and
    report the validation metrics to Tune."""

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
            save_checkpoint(Path(tmp) / CKPT_NAME, lambda p: trainer.save_checkpoint(p, weights_only=False))
            tune.report(metrics, checkpoint=tune.Checkpoint.from_directory(tmp))  # copied before return


def member_config(base: dict, hparams: dict[str, Any], interval: int) -> DictConfig:
    """A member's training config: the base with its hyperparameters, the harness evaluation at each
    report, no early stopping (PBT decides who goes on) and the checkpoint on val/loss (logged every
    epoch; Tune keeps the checkpoints PBT uses)."""
    cfg = apply_hparams(base, hparams)
    cbs = cfg.callbacks  # resolved in `base`: each callback's entry is set, not only the shared keys
    cbs.eval_every_n_epochs, cbs.early_stopping_patience, cbs.figures = interval, 0, False
    cbs.monitor, cbs.mode = "val/loss", "min"
    for node in cbs.values():
        target = str(node.get("_target_", "")) if OmegaConf.is_dict(node) else ""
        if target.endswith("EarlyStopping"):
            node.patience = 0  # left out by the builder
        elif target.endswith("HarnessEvaluation"):
            node.every_n_epochs, node.figures = interval, False
        elif target.endswith("ModelCheckpoint"):
            node.monitor, node.mode = "val/loss", "min"
    return cfg


def pbt_trial(config: dict[str, Any], base: dict, interval: int, tune_dir: str) -> None:
    """One population member (runs in a Ray worker) as an ordinary run through the one lifecycle
    (`training.run.run_training`): each segment (a start, or a restart from the checkpoint PBT hands
    it: its own or a better member's) is a run directory `segment[_N]` in the member's Tune directory
    (`tune_dir/<trial>`), restored from that checkpoint (its sha256 record verified), trained to
    `trainer.max_epochs` and reporting every `interval` epochs. Not scored: `best/` is."""
    from ray import tune

    ctx = tune.get_context()
    cpus = ctx.get_trial_resources().required_resources.get("CPU", 1)
    cfg = member_config(base, config, interval)
    cfg.threads = max(1, int(cpus))
    # A different initialisation for each member (trial ids end in a running number).
    cfg.seed = int(cfg.seed) + int(ctx.get_trial_id().rsplit("_", 1)[-1])
    # Written straight into the study's directory: Ray's own trial directory is a staging copy that it
    # syncs to storage in the background, so files written there can miss its last sync.
    trial_dir = Path(tune_dir) / Path(ctx.get_trial_dir()).name
    checkpoint = tune.get_checkpoint()
    lr = cfg.module.lr
    callbacks = [_SetLearningRate(lr if lr == "auto" else float(lr)), _ReportToTune(interval)]
    with contextlib.ExitStack() as stack:
        restore = None
        if checkpoint is not None:
            restore = (
                Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="pbt_restore_"))) / CKPT_NAME
            )
            with checkpoint.as_directory() as src:
                copy_checkpoint(
                    Path(src) / CKPT_NAME, restore, trust_unverified=bool(base.get("trust_unverified"))
                )
        run_training(cfg, (trial_dir, SEGMENT), callbacks=callbacks, restore=restore, score=False)


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
    source = Path(str(cfg.data.source))
    if not source.is_absolute() and source.exists():  # Ray workers run in their own directories
        cfg.data.source = str(source.resolve())
    trust = bool(cfg.get("trust_unverified"))
    if "trust_unverified" in cfg:
        cfg.trust_unverified = False  # never saved: it holds for this command only
    base = OmegaConf.to_container(cfg, resolve=True)
    base["trust_unverified"] = trust
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
        tune.with_parameters(pbt_trial, base=base, interval=interval, tune_dir=str(run_dir / TUNE_DIR)),
        {"cpu": float(p.cpus_per_trial), "gpu": float(p.gpus_per_trial)},
    )
    # The study's own directory: refused if it holds a run or an earlier study.
    with recorded_run(run_dir):
        write_config(run_dir, cfg)
        record = _run_population(cfg, base, trainable, scheduler, space, run_dir, metric)
        write_status(run_dir, "finished", error=None, train_time_s=record["train_time_s"])
    return record


def _run_population(cfg, base, trainable, scheduler, space, run_dir: Path, metric: str) -> dict:
    """Tune's run of the population, then the best member written as `run_dir/best`."""
    import ray
    from ray import tune

    p = cfg.pbt
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
        settle_segments(run_dir / TUNE_DIR)  # before shutdown ends the workers
    finally:
        if started_ray:
            ray.shutdown()
    train_time = round(time.perf_counter() - start, 2)
    if results.errors:
        if len(results.errors) == len(results):
            raise RuntimeError(f"every PBT member failed; the first error: {results.errors[0]}")
        log.warning("%d of %d PBT members failed: %s", len(results.errors), len(results), results.errors[0])
    best = results.get_best_result(metric=metric, mode=p.mode, scope="last")
    return _write_best(cfg, base, best, run_dir / BEST_DIR, train_time, metric)


def settle_segments(tune_dir: Path, timeout_s: float = 60.0) -> None:
    """Tune ends a member without waiting for its thread to return, so a segment can still be writing
    its end when the study returns. Wait (up to `timeout_s` in all) for each segment to be let go of, and
    record a segment whose worker vanished while "running" as interrupted by Tune."""
    deadline = time.monotonic() + timeout_s
    stopped = SystemExit("stopped by Ray Tune before it recorded its end")
    for segment in sorted(tune_dir.glob(f"*/{SEGMENT}*")):
        if holds_run(segment) and not settle_run(segment, deadline, stopped):
            log.warning("%s is still held by its member after the study ended", segment)


def _write_best(cfg: DictConfig, base: dict, best, best_dir: Path, train_time: float, metric: str) -> dict:
    """The best member as an ordinary run directory (claimed, locked, config.yaml, its checkpoint copied
    with its record verified, status.json), scored by `training.run.finish_run` like any training run."""
    hparams = {k: best.config[k] for k in search_bounds(cfg)}
    best_cfg = apply_hparams(base, hparams)
    best_cfg.callbacks.monitor, best_cfg.callbacks.mode = cfg.pbt.metric, cfg.pbt.mode
    value = float(best.metrics[metric])
    with recorded_run(best_dir):
        write_config(best_dir, best_cfg)
        ckpt = last_checkpoint(best_dir)
        with best.checkpoint.as_directory() as src:
            copy_checkpoint(Path(src) / CKPT_NAME, ckpt, trust_unverified=bool(base.get("trust_unverified")))
        state = load_checkpoint(ckpt)
        module = TrainingModule(**state["hyper_parameters"])
        module.load_state_dict(state["state_dict"])
        data = build_datamodule(best_cfg).data
        logger = TensorBoardLogger(save_dir=str(best_dir), name="", version="", default_hp_metric=False)
        record = finish_run(
            best_cfg, best_dir, data, module, best=ckpt, monitor=value, logger=logger,
            train_time=train_time, step=int(state["global_step"]), epochs=int(state["epoch"]) + 1,
        )  # fmt: skip
        record["pbt"] = {"hparams": hparams, cfg.pbt.metric: value, "trial_dir": str(best.path)}
        write_metrics(record["metrics"], best_dir, extra={"pbt": record["pbt"]})
        write_status(
            best_dir, "finished", error=None, epochs=int(state["epoch"]) + 1, train_time_s=train_time
        )
    return record


@hydra.main(version_base="1.3", config_path=str(CONFIG_DIR), config_name="pbt")
@hydra_task("neuralnets-pbt")
def main(cfg: DictConfig) -> float | None:
    run_dir = Path(HydraConfig.get().runtime.output_dir)
    if cfg.pbt.get("population"):  # one batched population in this process, no Ray
        from neuralnets.training.pbt_population import run_population_pbt

        records = run_population_pbt(cfg, run_dir)
        print(format_table(records, baselines=cfg.print_baselines))
        print(f"members, best first: {', '.join(r['run_dir'] for r in records)}")
        return records[0]["pbt"][cfg.pbt.metric]
    record = run_pbt(cfg, run_dir)
    print(format_table([record], baselines=cfg.print_baselines))
    print(f"best member: {run_dir / BEST_DIR}   (all members: tensorboard --logdir {run_dir / TUNE_DIR})")
    return record["pbt"][cfg.pbt.metric]


def cli() -> int:
    """Entry point of `neuralnets-pbt` (errors and exit codes: `neuralnets.cli.run_cli`)."""
    return run_cli("neuralnets-pbt", main)


if __name__ == "__main__":
    sys.exit(cli())
