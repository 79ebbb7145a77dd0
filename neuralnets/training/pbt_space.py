"""PBT's search space (`pbt.search_space`: {dotted config key: (low, high, log)}, values kept inside it)
and the settings PBT runs with, checked before any member starts: shared by Ray's PBT
(`training.pbt`) and the one-process population mode (`training.pbt_population`)."""

from __future__ import annotations

from typing import Any

from omegaconf import DictConfig, OmegaConf

from neuralnets.errors import ConfigError
from neuralnets.training.study import read_spaces, space_file


def _flatten_space(node: Any, where: str, prefix: str = "") -> dict[str, Any]:
    """The nested space {module: {lr: {low, high, log}}} at `where` (pbt.search_space, or the family's
    file) as {"module.lr": {...}}."""
    if not OmegaConf.is_dict(node):
        raise ConfigError(f"{where}.{prefix.rstrip('.')} must be {{low, high, log}}; got {node}")
    if "low" in node or "high" in node:
        return {prefix.rstrip("."): node}
    out: dict[str, Any] = {}
    for key, value in node.items():
        out.update(_flatten_space(value, where, f"{prefix}{key}."))
    return out


def search_bounds(cfg: DictConfig) -> dict[str, tuple[float, float, bool]]:
    """The PBT search space as {dotted config key: (low, high, log)}, checked against the config:
    `pbt.search_space`, or where it is null the model family's (`pbt:` in its search-space file,
    `ModelFamily.search_space`). Errors name where the space came from."""
    space, where = cfg.pbt.get("search_space"), "pbt.search_space"
    if space is None:
        space, where = read_spaces(cfg).get("pbt"), f"{space_file(cfg)}: pbt"
        if space is None:
            raise ConfigError(
                f"{space_file(cfg)} holds no `pbt:` search space for model {cfg.model.name!r}; give one "
                "with pbt.search_space={module: {lr: {low: 1e-4, high: 1e-2, log: true}}}"
            )
    flat = _flatten_space(space, where) if space else {}
    if not flat:
        raise ConfigError(f"{where} is empty: name at least one config key to search")
    bounds = {}
    for key, spec in flat.items():
        current = OmegaConf.select(cfg, key, default=None)
        numeric = isinstance(current, int | float) and not isinstance(current, bool)
        if not numeric and current != "auto":  # `auto` (module.lr, ...): a number once resolved
            raise ConfigError(f"{where}: {key!r} is not a numeric key of this config; got {current!r}")
        if isinstance(current, int) and not isinstance(current, bool):  # x0.8 / x1.2 makes floats
            raise ConfigError(
                f"{where}: {key} is an integer setting ({current}); PBT searches real-valued ones"
            )
        try:
            low, high, use_log = float(spec["low"]), float(spec["high"]), bool(spec.get("log", False))
        except (KeyError, TypeError, ValueError):
            raise ConfigError(f"{where}.{key} must be {{low, high, log}}; got {spec}") from None
        if not low < high or (use_log and low <= 0):
            raise ConfigError(f"{where}.{key}: need low < high (and low > 0 with log); got {spec}")
        bounds[key] = (low, high, use_log)
    return bounds


def clip_to_bounds(config: dict[str, Any], bounds: dict[str, tuple[float, float, bool]]) -> dict[str, Any]:
    """PBT perturbs by a factor with no regard for the range: keep each searched value inside it."""
    for key, (low, high, _) in bounds.items():
        if key in config:
            config[key] = min(max(float(config[key]), low), high)
    return config


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
