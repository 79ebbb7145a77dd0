"""The members of a population (`neuralnets.training.population`): which settings may differ between
them (`check_members`), and each member's state, built exactly as its solo run starts (`build_member`)."""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
import torch
from omegaconf import DictConfig, OmegaConf

from neuralnets.data.datamodule import TrialBatches
from neuralnets.errors import ConfigError
from neuralnets.models.lfads_population import MEMBER_OPTIONS, PopulationLFADS
from neuralnets.models.population import PopulationModel
from neuralnets.models.rnn_population import RNN_MEMBER_OPTIONS, PopulationRNN
from neuralnets.training import build
from neuralnets.training.build import build_datamodule, build_module
from neuralnets.training.fold_ensemble import without_fold
from neuralnets.training.module import TrainingModule
from neuralnets.training.population_optim import Plateau

# The batched model of each model name, and the model options its members may set for themselves.
POPULATION_MODELS: dict[str, tuple[type[PopulationModel], frozenset[str]]] = {
    "lfads": (PopulationLFADS, MEMBER_OPTIONS),
    "rnn": (PopulationRNN, RNN_MEMBER_OPTIONS),
}
# module options each member may set for itself; the others must agree (e.g. the likelihood)
MEMBER_MODULE_OPTIONS = frozenset(
    {
        "lr",
        "lr_min",
        "lr_patience",
        "lr_factor",
        "weight_decay",
        "adam_eps",
        "coordinated_dropout",
        "max_skipped_fraction",
        "divergence_min_steps",
    }
)


@dataclasses.dataclass
class Member:
    """One member: its config, its solo module (the template and hparams), data, RNG and schedule."""

    cfg: DictConfig
    module: TrainingModule
    batches: TrialBatches  # its own training batches (batch order from its seed)
    rng: torch.Tensor  # its CPU RNG state between steps
    plateau: Plateau | None
    run_dir: Path | None = None
    logger: Any = None
    step: int = 0
    epoch: int = 0  # epochs completed
    best: float | None = None  # best value of the checkpoint monitor (callbacks.monitor)
    best_path: str | None = None
    wait: int = 0  # epochs without improvement (early stopping)
    stopped: bool = False
    skipped: int = 0
    diverged: bool = False  # too many non-finite steps (module.max_skipped_fraction): stopped, not scored


def check_members(cfgs: Sequence[DictConfig]) -> None:
    """Members must share architecture, data (folds aside) and batch size: one line naming the first
    difference."""
    first = cfgs[0]
    for i, cfg in enumerate(cfgs):
        if cfg.model.name not in POPULATION_MODELS:
            raise ConfigError(
                f"population member {i}: model={cfg.model.name}; "
                f"populations train {sorted(POPULATION_MODELS)}"
            )
        _, options = POPULATION_MODELS[cfg.model.name]
        for key in set(first.model) | set(cfg.model):
            if key not in options and first.model.get(key) != cfg.model.get(key):
                raise ConfigError(
                    f"population member {i}: model.{key}={cfg.model.get(key)!r} differs from member 0's "
                    f"{first.model.get(key)!r}; members may differ only in {sorted(options)}"
                )
        for key in set(first.module) | set(cfg.module):
            if key not in MEMBER_MODULE_OPTIONS and first.module.get(key) != cfg.module.get(key):
                raise ConfigError(
                    f"population member {i}: module.{key}={cfg.module.get(key)!r} differs from member 0's "
                    f"{first.module.get(key)!r}; members may differ in {sorted(MEMBER_MODULE_OPTIONS)}"
                )
        if _without_fold(cfg.data) != _without_fold(first.data):
            raise ConfigError(
                f"population member {i}: data differs from member 0's (one data set per population; "
                "members may differ only in data.load_kwargs.fold)"
            )
        if OmegaConf.to_container(cfg.logger) != OmegaConf.to_container(first.logger):
            raise ConfigError(f"population member {i}: logger differs from member 0's")
        hp = cfg.module
        if hp.get("sample_validation") or hp.get("augment_shift") or hp.get("augment_jitter"):
            raise ConfigError(
                f"population member {i}: sample validation and spike augmentation are not batched yet"
            )
        if hp.get("likelihood", "poisson") != "poisson":
            raise ConfigError(
                f"population member {i}: module.likelihood={hp.likelihood}; populations use poisson"
            )
        if (cfg.callbacks.monitor, cfg.callbacks.mode) not in (("val/loss", "min"), ("val/co_bps", "max")):
            raise ConfigError(
                f"population member {i}: callbacks.monitor={cfg.callbacks.monitor}; "
                "populations monitor val/loss (min) or val/co_bps (max)"
            )
        if cfg.get("resume") or cfg.get("finetune_from") or cfg.get("refit"):
            raise ConfigError(f"population member {i}: resume/finetune_from/refit are single-run options")
        if str(cfg.trainer.get("precision", "32-true")) not in ("32-true", "32", "auto"):
            raise ConfigError(
                f"population member {i}: trainer.precision={cfg.trainer.precision}; populations run fp32"
            )


def _without_fold(data: DictConfig) -> dict:
    """The data config with `load_kwargs.fold` left out: members may train on different folds of one
    data set (their validation trials differ, their test trials do not; `data.spikedata.default_split`)."""
    return {**OmegaConf.to_container(data), "load_kwargs": without_fold(data.get("load_kwargs"))}


def build_member(cfg: DictConfig) -> Member:
    """Member state exactly as `run_training` builds it: seed, data module, module (initial weights),
    then the RNG state its first training step starts from."""
    build.resolve_threads(cfg)
    pl.seed_everything(cfg.seed, workers=True)
    dm = build_datamodule(cfg)
    module = build_module(cfg, dm.data.spec, init_data=dm.data)
    population_class, _ = POPULATION_MODELS[cfg.model.name]
    if not isinstance(module.model, population_class.member_class):
        raise ConfigError(f"population: {module.model_name} is not {population_class.member_class.__name__}")
    dm.setup("fit")
    hp = module.hparams
    plateau = (
        Plateau(int(hp.lr_patience), float(hp.lr_factor), float(hp.lr_min))
        if hp.lr_schedule == "plateau"
        else None
    )
    member = Member(cfg, module, dm.train_dataloader(), torch.get_rng_state(), plateau)
    member.dm = dm  # type: ignore[attr-defined]  # the validation batches and the data for scoring
    return member
