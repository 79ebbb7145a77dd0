"""One builder of the training objects, from a composed config (`configs/train.yaml`).

Used by `neuralnets-train` (`training/train.py`) and population-based training (`training/pbt.py`):

    dm = build_datamodule(cfg)                          # resolves `auto` batch size / patience in cfg
    module = build_module(cfg, dm.data.spec, init_data=dm.data)   # init_data only for a fresh run
    trainer = build_trainer(cfg, run_dir, dm.data)      # callbacks, logger from cfg.callbacks / cfg.logger;
                                                        # trainer.precision=auto resolved (resolve_precision)

Callbacks and loggers are given in the config by `_target_` (one file per callback in
`configs/callbacks/`). A run's saved `config.yaml` is read again on resume, so a config file must not
be able to name arbitrary callables: only classes under `pytorch_lightning.callbacks.`,
`pytorch_lightning.loggers.` or `neuralnets.training.` that are Lightning callbacks / loggers are
built, with plain option values (no nested `_target_`), and their file and folder options must stay
inside the run directory (`inside_run_dir`; the checkpoint folder, the logger's `save_dir` and
`trainer.default_root_dir` are the run's own and refused in a config).
"""

from __future__ import annotations

import csv
import logging
import math
import os
from pathlib import Path
from typing import Any

import numpy as np
import pytorch_lightning as pl
import torch
from hydra.utils import get_class
from omegaconf import DictConfig, OmegaConf
from pytorch_lightning.callbacks import EarlyStopping, ModelCheckpoint
from pytorch_lightning.loggers import CSVLogger, Logger
from pytorch_lightning.loggers.csv_logs import ExperimentWriter

from neuralnets.config import compose
from neuralnets.data.datamodule import MultiSessionDataModule, SpikeDataModule
from neuralnets.data.loaders import load
from neuralnets.data.sessions import MultiSessionData, MultiSessionSpec
from neuralnets.data.spikedata import DataSpec, SpikeData
from neuralnets.errors import ConfigError, ModelConfigError
from neuralnets.eval.metrics import METRICS
from neuralnets.models import MODELS, check_plain, resolve_model_config
from neuralnets.runs import CHECKPOINT_DIR
from neuralnets.training.callbacks import HarnessEvaluation
from neuralnets.training.module import TrainingModule
from neuralnets.training.terminal import EpochProgressBar, QuietModelSummary, quiet_device_lines

AUTO = "auto"
ALLOWED_PREFIXES = ("pytorch_lightning.callbacks.", "pytorch_lightning.loggers.", "neuralnets.training.")
log = logging.getLogger(__name__)
# Options of Lightning callbacks and loggers that name a file or folder: a config may only name
# places inside the run directory (folders are made absolute there; names are joined by Lightning).
FOLDER_OPTIONS = (
    "dirpath",
    "save_dir",
    "dir",
    "log_dir",
    "root_dir",
    "exclude_batches_path",
    "artifact_location",
)
PATH_OPTIONS = (*FOLDER_OPTIONS, "filename", "name", "version", "sub_dir", "prefix_dir")
# Lightning's rank-zero info logger: where its "💡 Tip: ... try installing litlogger / litmodels" lines
# come from (advertising, printed on every run); `_NoTips` drops them and nothing else.
LIGHTNING_INFO_LOGGERS = (
    "pytorch_lightning.utilities.rank_zero",
    "lightning_fabric.utilities.rank_zero",
    "lightning_utilities.core.rank_zero",
)


class _NoTips(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).lstrip().startswith("💡 Tip:")


for _name in LIGHTNING_INFO_LOGGERS:
    logging.getLogger(_name).addFilter(_NoTips())
# Trainer options that the run sets itself.
RUN_TRAINER_OPTIONS = ("default_root_dir", "logger", "callbacks")

# `data.batch_size: auto` = clip(n_train // STEPS_PER_EPOCH, MIN_BATCH, MAX_BATCH): about 16 optimiser
# steps per epoch (60 trials -> 8, 240 -> 15, 600 -> 37), batches of 64 from 1024 training trials up.
# Chosen on validation co-bps (experiments/results/defaults_mc_maze_small.md): at a fixed number of
# epochs smaller batches did better on chaotic_rnn and tied on lorenz.
STEPS_PER_EPOCH, MIN_BATCH, MAX_BATCH = 16, 8, 64
# `callbacks.early_stopping_patience: auto` = max(MIN_PATIENCE, ceil(PATIENCE_STEPS / steps per epoch))
# epochs: with few steps per epoch an epoch is little training, so patience is counted in steps.
MIN_PATIENCE, PATIENCE_STEPS = 30, 500
# Small data (fewer than SMALL_DATA_TRIALS training trials, where the batch floor leaves fewer than
# STEPS_PER_EPOCH steps per epoch; MC_Maze_Small 60, CA1 laps 29): `module.lr: auto` is LR_SMALL instead
# of LR for the recurrent models (`has_recurrent_dynamics`: LFADS, RNN; the transformers and GPFA keep
# LR, untried), and `module.lr_patience: auto` = max(MIN_LR_PATIENCE, ceil(LR_PATIENCE_STEPS / steps
# per epoch)) epochs, so the plateau schedule waits as many steps as on larger data (10 epochs of 16).
# Larger data (Lorenz, chaotic_rnn) keep lr 3e-3 and patience 10. Chosen on validation co-bps
# (experiments/results/defaults_real_data.md): with 4-8 steps per epoch, lr 3e-3 halved every 10 epochs
# left the RNN on CA1 laps below the mean-rate model after 200 epochs.
SMALL_DATA_TRIALS = STEPS_PER_EPOCH * MIN_BATCH  # 128
LR, LR_SMALL = 3e-3, 1e-2
MIN_LR_PATIENCE, LR_PATIENCE_STEPS = 10, 160


def _plain(value: Any, where: str) -> Any:
    """Refuse anything but plain data (and any nested `_target_`) in `where`: a ConfigError."""
    return check_plain(value, where, ConfigError)


def _allowed_class(target: Any, where: str, base: type) -> type:
    """The class named by `target`, if it is under an allowed prefix and a subclass of `base`."""
    if not isinstance(target, str) or not target.startswith(ALLOWED_PREFIXES):
        raise ConfigError(
            f"{where}._target_={target!r} is not accepted: only classes under {list(ALLOWED_PREFIXES)} "
            "may be named in a training config"
        )
    try:
        cls = get_class(target)
    except Exception as err:  # noqa: BLE001 - hydra wraps import errors in several types
        raise ConfigError(f"{where}._target_={target!r} cannot be imported: {err}") from None
    if not (isinstance(cls, type) and issubclass(cls, base)):
        raise ConfigError(f"{where}._target_={target!r} is not a {base.__module__}.{base.__qualname__}")
    return cls


def inside_run_dir(value: str, where: str, run_dir: Path, under: Path | None = None) -> Path:
    """`under / value` (`under` defaults to `run_dir`) if it stays inside `run_dir`, else a ConfigError
    naming `where`: no absolute path, no `~` or `$VAR` (Lightning expands them), no `..` or link
    that leads out of the run directory."""
    run_dir = Path(run_dir)
    if "$" in value or value.startswith("~") or Path(value).is_absolute():
        raise ConfigError(
            f"{where}={value!r}: a config may only name places inside the run directory, as a relative "
            "path without '~' or '$'"
        )
    path = Path(os.path.normpath((under or run_dir) / value))
    for candidate, top in ((path, Path(os.path.normpath(run_dir))), (path.resolve(), run_dir.resolve())):
        if candidate != top and top not in candidate.parents:
            raise ConfigError(f"{where}={value!r} leads outside the run directory {run_dir}")
    return path


def _confine(options: dict[str, Any], where: str, run_dir: Path, runtime: dict[str, Any]) -> dict[str, Any]:
    """`options` with every file or folder option checked to stay inside `run_dir` (folders given as
    absolute paths there); an option the run sets itself (`runtime`: a checkpoint's `dirpath`, a
    logger's `save_dir`) is refused."""
    options = dict(options)
    for key, value in options.items():
        if key in runtime:
            raise ConfigError(f"{where}.{key} is set by the run ({runtime[key]}); remove it from the config")
        if key not in PATH_OPTIONS or not isinstance(value, str) or not value:
            continue
        if key in FOLDER_OPTIONS:
            options[key] = str(inside_run_dir(value, f"{where}.{key}", run_dir))
        else:  # joined by Lightning under the folder the run gives (checkpoints/, the logger's save_dir)
            under = Path(runtime.get("dirpath", run_dir))
            inside_run_dir(value, f"{where}.{key}", run_dir, under)
    return options


def instantiate_safe(node: Any, where: str, base: type, run_dir: Path | None = None, **runtime: Any):
    """Build `node` (`{_target_: allowed class, **plain options}`) with `runtime` objects added. With
    `run_dir`, its file and folder options must stay inside that directory (`_confine`)."""
    options = OmegaConf.to_container(node, resolve=True) if OmegaConf.is_config(node) else dict(node)
    cls = _allowed_class(options.pop("_target_", None), where, base)
    odd = sorted(k for k in options if str(k).startswith("_"))
    if odd:
        raise ConfigError(f"{where}: Hydra keys {odd} are not accepted here")
    if run_dir is not None:
        options = _confine(options, where, Path(run_dir), runtime)
    return cls(**{k: _plain(v, f"{where}.{k}") for k, v in options.items()}, **runtime)


def resolve_threads(cfg: DictConfig) -> int | None:
    """Set torch's CPU threads from `cfg.threads` and record the number there: an int as given; `auto`:
    1 on CPU (the project's models are small: a second thread saves little on a quiet machine and costs
    up to 20x on a busy one, experiments/results/threads.md), torch's default with an accelerator; null:
    torch's default. Returns the number set, or None."""
    threads = cfg.get("threads")
    if threads == AUTO:
        on_cpu = str(cfg.trainer.get("accelerator", "cpu")) == "cpu"
        threads = 1 if on_cpu else None
        cfg.threads = threads
    if threads:
        torch.set_num_threads(int(threads))
    return threads


def load_kwargs(cfg: DictConfig) -> dict:
    """The data loader's keyword arguments as a plain dict (`data.load_kwargs` may be absent or empty)."""
    kwargs = cfg.data.get("load_kwargs")
    return OmegaConf.to_container(kwargs, resolve=True) if kwargs else {}


def auto_batch_size(n_train: int) -> int:
    """The batch size of `data.batch_size: auto` for `n_train` training trials (rule above)."""
    return min(max(n_train // STEPS_PER_EPOCH, MIN_BATCH), MAX_BATCH)


def auto_patience(steps_per_epoch: int) -> int:
    """The early-stopping patience (epochs) of `callbacks.early_stopping_patience: auto`."""
    return max(MIN_PATIENCE, math.ceil(PATIENCE_STEPS / max(steps_per_epoch, 1)))


def auto_lr(n_train: int, recurrent: bool = True) -> float:
    """The learning rate of `module.lr: auto` for `n_train` training trials and a model that is
    `recurrent` (`SpikeModel.has_recurrent_dynamics`) or not (rule above)."""
    return LR_SMALL if recurrent and n_train < SMALL_DATA_TRIALS else LR


def _model_class(model_cfg: Any) -> type:
    """The registered class of the model config `model_cfg` (a name or `{name: ..., ...}`)."""
    try:
        name, _ = resolve_model_config(model_cfg)
    except ModelConfigError as err:
        raise ConfigError(str(err)) from None
    return MODELS[name]


def auto_lr_patience(steps_per_epoch: int) -> int:
    """The plateau-schedule patience (epochs) of `module.lr_patience: auto` (rule above)."""
    return max(MIN_LR_PATIENCE, math.ceil(LR_PATIENCE_STEPS / max(steps_per_epoch, 1)))


def auto_coordinated_dropout(model_cfg: Any) -> float:
    """`module.coordinated_dropout: auto`: the model's own default (`SpikeModel.default_coordinated_dropout`:
    0.3 for LFADS, 0 for the others) for the model config `model_cfg` (a name or `{name: ..., ...}`)."""
    return float(_model_class(model_cfg).default_coordinated_dropout)


def resolve_module_defaults(cfg: DictConfig, n_train: int | None, steps_per_epoch: int | None) -> None:
    """Replace `auto` in `cfg.module.lr`, `lr_patience` and `coordinated_dropout` (in place). Without the
    data (`n_train`/`steps_per_epoch` None: a module built without `build_datamodule`) the rules of
    large data apply (lr 3e-3, patience 10)."""
    module = cfg.get("module")
    if module is None:
        return
    if module.get("lr") == AUTO:
        recurrent = bool(_model_class(cfg.model).has_recurrent_dynamics)
        module.lr = LR if n_train is None else auto_lr(n_train, recurrent)
    if module.get("lr_patience") == AUTO:
        module.lr_patience = MIN_LR_PATIENCE if steps_per_epoch is None else auto_lr_patience(steps_per_epoch)
    if module.get("coordinated_dropout") == AUTO:
        module.coordinated_dropout = auto_coordinated_dropout(cfg.model)


def _whole(value: Any, where: str, minimum: int) -> int:
    """`value` if it is an int >= `minimum`, else a ConfigError naming `where`."""
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ConfigError(f"{where}={value!r}: expected 'auto' or a whole number >= {minimum}")
    return value


def resolve_data_defaults(cfg: DictConfig, data: SpikeData | MultiSessionData) -> None:
    """Replace `auto` in `cfg.data.batch_size`, `cfg.callbacks.early_stopping_patience` and `cfg.module`
    (`resolve_module_defaults`) in place, so the run's saved config and hparams hold the numbers used,
    and log what was chosen. Several
    sessions: from their training trials together (each batch holds one session's trials)."""
    sessions = [d for _, d in data] if isinstance(data, MultiSessionData) else [data]
    n_trains = [int(d.indices("train").size) for d in sessions]
    n_train = sum(n_trains)
    batch = cfg.data.get("batch_size", AUTO)
    batch = auto_batch_size(n_train) if batch == AUTO else _whole(batch, "data.batch_size", 1)
    cfg.data.batch_size = batch
    steps = sum(math.ceil(n / batch) for n in n_trains)
    callbacks = cfg.get("callbacks")
    patience = callbacks.get("early_stopping_patience") if callbacks is not None else None
    if patience == AUTO:
        callbacks.early_stopping_patience = auto_patience(steps)
    elif patience is not None:
        _whole(patience, "callbacks.early_stopping_patience", 0)
    resolve_module_defaults(cfg, n_train, steps)
    module = cfg.get("module") or {}
    log.info(
        "%s: %d training trials, batch size %d (%d steps per epoch), early-stopping patience %s epochs, "
        "lr %s, lr patience %s epochs, coordinated dropout %s",
        cfg.data.name,
        n_train,
        batch,
        steps,
        callbacks.get("early_stopping_patience") if callbacks else None,
        module.get("lr"),
        module.get("lr_patience"),
        module.get("coordinated_dropout"),
    )


def build_datamodule(cfg: DictConfig) -> SpikeDataModule:
    """The DataModule of `cfg.data` (loads the data: `dm.data`), after resolving `auto` settings in
    `cfg` from the data (`resolve_data_defaults`). Several sessions (or fine-tuning a stitched model,
    `finetune_from`): a `MultiSessionDataModule`, one session per batch."""
    data = load(cfg.data.source, **load_kwargs(cfg))
    if cfg.get("finetune_from"):
        data = MultiSessionData.of(data)
    resolve_data_defaults(cfg, data)
    if isinstance(data, MultiSessionData):
        if cfg.get("refit"):
            raise ConfigError(
                "refit=true trains on one data set's train + val trials, not on several sessions"
            )
        return MultiSessionDataModule(data, batch_size=cfg.data.batch_size, seed=cfg.seed)
    splits = ("train", "val") if cfg.get("refit") else ("train",)
    return SpikeDataModule(data, batch_size=cfg.data.batch_size, seed=cfg.seed, train_splits=splits)


def train_mean_counts(data: SpikeData) -> np.ndarray:
    """(N,) each neuron's mean count per bin over the training trials' observed entries
    (`SpikeData.observed_mask()`); 0 for a neuron never observed in training."""
    return np.nan_to_num(data.mean_counts(data.indices("train")), nan=0.0).astype(np.float32)


def init_sessions_from_data(model, data: MultiSessionData, sessions: list[str] | None = None) -> str:
    """Start the read-outs of a stitched model's `sessions` (default: all of `data`'s) at each neuron's
    mean training count and their read-ins from the data (`Stitched.init_readins`); returns how the
    read-ins were set ('aligned' or 'pca')."""
    names = list(data.names) if sessions is None else list(sessions)
    for name in names:
        model.init_readout_bias(train_mean_counts(data[name]), session=name)
    how = model.init_readins(data, names)
    log.info("read-ins of sessions %s initialised from their training trials (%s)", names, how)
    return how


def build_module(
    cfg: DictConfig, spec: DataSpec | MultiSessionSpec, init_data: SpikeData | MultiSessionData | None = None
) -> TrainingModule:
    """The TrainingModule of `cfg.model` (built by name through the model registry) and `cfg.module`.

    `init_data`: for a run that starts from scratch (never on resume or when loading weights), the
    data whose training split sets the model's read-out bias (`SpikeModel.init_readout_bias`; several
    sessions: `init_sessions_from_data`, which also sets the read-ins)."""
    resolve_module_defaults(cfg, None, None)  # a run resolved them from the data (build_datamodule) already
    module = TrainingModule(
        model=OmegaConf.to_container(cfg.model, resolve=True),
        spec=spec.to_dict(),
        data_name=cfg.data.name,
        **OmegaConf.to_container(cfg.module, resolve=True),
    )
    if isinstance(init_data, MultiSessionData):
        init_sessions_from_data(module.model, init_data)
    elif init_data is not None:
        module.model.init_readout_bias(train_mean_counts(init_data))
    return module


def _default_callbacks() -> DictConfig:
    """The callback entries of the default `callbacks` config (`callbacks=default`), as composed."""
    return compose(["callbacks=default"]).callbacks


def callback_configs(cfg: DictConfig) -> dict[str, Any]:
    """{name: config} of the callbacks in `cfg.callbacks` (entries with `_target_`). A run config
    written before callbacks had one file each (flat keys only) gets the default entries, which read
    those same keys."""
    entries = {k: v for k, v in cfg.callbacks.items() if OmegaConf.is_dict(v) and "_target_" in v}
    if not entries and not any(OmegaConf.is_dict(v) for v in cfg.callbacks.values()):
        merged = OmegaConf.merge(_default_callbacks(), cfg.callbacks)
        OmegaConf.set_struct(cfg, False)
        cfg.callbacks = merged
        entries = {k: v for k, v in cfg.callbacks.items() if OmegaConf.is_dict(v) and "_target_" in v}
    return entries


def check_monitor(cfg: DictConfig) -> None:
    """A ConfigError if `callbacks.monitor` is a harness metric (`val/co_bps`, ...) that the harness
    evaluation does not log every epoch: the checkpoint and early stopping read it after every epoch."""
    monitor = str(cfg.callbacks.get("monitor"))
    every = cfg.callbacks.get("eval_every_n_epochs")
    split, _, metric = monitor.partition("/")
    if split == "val" and metric in METRICS and every != 1:
        raise ConfigError(
            f"callbacks.monitor={monitor} is logged by the harness evaluation only every "
            f"callbacks.eval_every_n_epochs={every} epochs; set callbacks.eval_every_n_epochs=1 "
            "(callbacks=val_co_bps does, for val/co_bps)"
        )


def build_callbacks(cfg: DictConfig, run_dir: Path, data: SpikeData) -> list[pl.Callback]:
    """The callbacks of `cfg.callbacks`; checkpoints go to `<run_dir>/checkpoints`, the harness
    evaluation scores `data`. An EarlyStopping with patience 0, or in a refit, is left out."""
    check_monitor(cfg)
    callbacks = []
    for name, node in callback_configs(cfg).items():
        where = f"callbacks.{name}"
        cls = _allowed_class(node.get("_target_"), where, pl.Callback)
        runtime: dict[str, Any] = {}
        if issubclass(cls, ModelCheckpoint):
            runtime["dirpath"] = Path(run_dir) / CHECKPOINT_DIR
        if issubclass(cls, HarnessEvaluation):
            runtime["data"] = data
        if issubclass(cls, EarlyStopping) and (not node.get("patience") or cfg.get("refit")):
            continue  # refit: the validation trials are trained on; the run is exactly max_epochs long
        callbacks.append(instantiate_safe(node, where, pl.Callback, run_dir=run_dir, **runtime))
    return callbacks


class AppendingCSVWriter(ExperimentWriter):
    """Lightning's CSV metrics writer, except that a metrics.csv already in the run directory (a resumed
    run's) is continued: Lightning's own writer deletes it."""

    def _check_log_dir_exists(self) -> None:
        if self._fs.isfile(self.metrics_file_path):
            with self._fs.open(self.metrics_file_path, "r", newline="") as f:
                header = next(csv.reader(f), [])
            self.metrics_keys = sorted(header)  # a new column rewrites the header, every row kept


def build_logger(cfg: DictConfig, run_dir: Path, **runtime: Any) -> Logger:
    """The logger of `cfg.logger` (TensorBoard or CSV), writing into `run_dir`, with `runtime` options.
    A CSV logger appends to the run's metrics.csv (`AppendingCSVWriter`)."""
    logger = instantiate_safe(cfg.logger, "logger", Logger, run_dir=run_dir, save_dir=str(run_dir), **runtime)
    if isinstance(logger, CSVLogger):
        os.makedirs(logger.log_dir, exist_ok=True)
        logger._experiment = AppendingCSVWriter(logger.log_dir)  # what `logger.experiment` would create
    return logger


def native_bf16_cpu() -> bool:
    """Whether this CPU multiplies bf16 matrices natively (AMX tiles or AVX512-BF16), as torch detects it
    at run time (other CPUs emulate bf16: correct, but no faster than fp32)."""
    probes = ("_is_amx_tile_supported", "_is_avx512_bf16_supported")
    return any(getattr(torch.cpu, name, lambda: False)() for name in probes)


def resolve_precision(precision: Any, accelerator: Any) -> tuple[Any, str]:
    """The Lightning precision for `trainer.precision` (`auto` resolved here) and why.

    `auto`: `bf16-mixed` on a CUDA GPU with bf16, and on a CPU with native bf16 matmuls (AMX or
    AVX512-BF16); `32-true` elsewhere. Under `bf16-mixed` the models' matmuls outside the recurrences
    (input projections, encoders' projections, factors) run in bf16; recurrent states, log-rates and
    the loss stay fp32. Any other value is returned unchanged.
    """
    if str(precision) != "auto":
        return precision, "as configured"
    on_gpu = str(accelerator) in ("gpu", "cuda") or (str(accelerator) == "auto" and torch.cuda.is_available())
    if on_gpu:
        ok = torch.cuda.is_available() and torch.cuda.is_bf16_supported()
        return ("bf16-mixed", "GPU with bf16") if ok else ("32-true", "GPU without bf16")
    if native_bf16_cpu():
        return "bf16-mixed", "CPU with native bf16 matmuls (AMX / AVX512-BF16)"
    return "32-true", "CPU without native bf16 matmuls"


def build_trainer(
    cfg: DictConfig,
    run_dir: str | Path,
    data: SpikeData,
    callbacks: list[pl.Callback] | None = None,
    logger: Logger | None = None,
    **overrides: Any,
) -> pl.Trainer:
    """The Trainer of `cfg.trainer` writing into `run_dir`, with the callbacks and logger of the
    config (or those given) and `overrides` of the trainer settings."""
    run_dir = Path(run_dir)
    settings = _plain(OmegaConf.to_container(cfg.trainer, resolve=True), "trainer")
    owned = [k for k in RUN_TRAINER_OPTIONS if k in settings]
    if owned:
        raise ConfigError(f"trainer.{owned[0]} is set by the run (the run directory {run_dir}); remove it")
    settings.update(overrides)
    if "precision" in settings:
        settings["precision"], why = resolve_precision(settings["precision"], settings.get("accelerator"))
        log.info("trainer.precision: %s (%s)", settings["precision"], why)
    callbacks = build_callbacks(cfg, run_dir, data) if callbacks is None else list(callbacks)
    if settings.get("enable_model_summary", True):  # a quiet terminal: training/terminal.py
        callbacks.append(QuietModelSummary())
    if settings.get("enable_progress_bar", True):
        callbacks.append(EpochProgressBar())
    quiet_device_lines()
    return pl.Trainer(
        **settings,
        logger=build_logger(cfg, run_dir) if logger is None else logger,
        callbacks=callbacks,
        default_root_dir=str(run_dir),
    )
