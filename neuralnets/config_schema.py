"""The training config's schema: the known keys of every group and the type of each value, checked
before anything heavy is imported (no torch, no Lightning) and before a run directory is claimed.

    from neuralnets.config_schema import validate
    validate(cfg)                      # ConfigError naming the first unknown key or ill-typed value

A type is a string: `int`, `float` (an int is accepted), `bool`, `str`, `mapping`, `list`, `any`,
alternatives joined by `|`, a quoted word for one allowed string (`'auto'`), and `?` at the end for
"null allowed". `int` never accepts a bool, nor a string that looks like a number (a config value
`abc` or `"5"` for an epoch count is a mistake, said in one line).

Which groups are checked how:
- top-level keys, `module` (`TrainingModule`'s options: tests check MODULE against its signature),
  `trainer` (the `pytorch_lightning.Trainer` arguments the configs use: tests check they are real),
  `data` and `callbacks` (its scalar settings; each callback is a mapping with `_target_`): declared here;
- `model`: its `name`; the options are the model class's (checked when it is built, still before the
  run directory is claimed); a value of the wrong type for the chosen config's own default is refused
  here (`validate(cfg, reference=...)`);
- `tune`, `pbt`: the keys of `configs/tune.yaml` / `configs/pbt.yaml`, typed by their defaults;
- `logger` (a `_target_` and its arguments), `hydra`, `tune_member`: mappings, not looked into.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from neuralnets.errors import ConfigError

__all__ = ["CALLBACKS", "DATA", "MODULE", "TOP_LEVEL", "TRAINER", "check_data_source", "type_ok", "validate"]

MODULE = {
    "likelihood": "'poisson'|'gaussian'|'gamma'|'zig'|'negative_binomial'",
    "lr": "float|'auto'",
    "lr_min": "float",
    "lr_schedule": "'plateau'|'cosine'|'none'",
    "lr_patience": "int|'auto'",
    "lr_factor": "float",
    "weight_decay": "float",
    "adam_eps": "float",
    "coordinated_dropout": "float|'auto'",
    "data_name": "str",
    "max_skipped_fraction": "float",
    "divergence_min_steps": "int",
    "sample_validation": "float",
    "sample_validation_seed": "int",
    "augment_shift": "int",
    "augment_shift_per": "'trial'|'neuron'",
    "augment_jitter": "int",
}

TRAINER = {
    "accelerator": "str",
    "devices": "int|str|list",
    "strategy": "str",
    "num_nodes": "int",
    "precision": "str|int",
    "max_epochs": "int?",
    "min_epochs": "int?",
    "max_steps": "int",
    "min_steps": "int?",
    "max_time": "str|mapping?",
    "gradient_clip_val": "float?",
    "gradient_clip_algorithm": "str?",
    "accumulate_grad_batches": "int",
    "log_every_n_steps": "int?",
    "check_val_every_n_epoch": "int?",
    "val_check_interval": "int|float?",
    "limit_train_batches": "int|float?",
    "limit_val_batches": "int|float?",
    "num_sanity_val_steps": "int?",
    "enable_progress_bar": "bool?",
    "enable_model_summary": "bool?",
    "enable_checkpointing": "bool?",
    "deterministic": "bool|'warn'?",
    "benchmark": "bool?",
    "detect_anomaly": "bool",
    "fast_dev_run": "int|bool",
    "sync_batchnorm": "bool",
    "use_distributed_sampler": "bool",
    "reload_dataloaders_every_n_epochs": "int",
    "profiler": "str?",
}

DATA = {"name": "str", "source": "str", "batch_size": "int|'auto'", "load_kwargs": "mapping?"}

CALLBACKS = {
    "monitor": "str",
    "mode": "'min'|'max'",
    "early_stopping_patience": "int|'auto'",
    "eval_every_n_epochs": "int",
    "figures": "bool",
    "eval_fewshot": "bool",
}

TOP_LEVEL = {
    "seed": "int",
    "recipe": "str?",
    "threads": "int|'auto'?",
    "out_dir": "str",
    "resume": "str?",
    "trust_unverified": "bool",
    "finetune_from": "str?",
    "refit": "bool",
    "print_baselines": "bool",
    "sweep_metric": "str",
    "module": MODULE,
    "trainer": TRAINER,
    "data": DATA,
    "callbacks": "mapping",  # CALLBACKS, and the callbacks themselves (see `validate`)
    "model": "mapping",
    "logger": "mapping",
    "hydra": "mapping",
    "tune_member": "mapping?",
    "tune": "mapping",
    "pbt": "mapping",
}

_KINDS = {
    "int": lambda v: isinstance(v, int) and not isinstance(v, bool),
    "float": lambda v: isinstance(v, int | float) and not isinstance(v, bool),
    "bool": lambda v: isinstance(v, bool),
    "str": lambda v: isinstance(v, str),
    "mapping": lambda v: isinstance(v, Mapping),
    "list": lambda v: isinstance(v, list | tuple),
    "any": lambda v: True,
}


def type_ok(value: Any, kind: str) -> bool:
    """True if `value` (plain Python: a converted config node) has the type `kind` (module docstring)."""
    if kind.endswith("?"):
        if value is None:
            return True
        kind = kind[:-1]
    for alternative in kind.split("|"):
        if alternative.startswith("'"):
            if value == alternative.strip("'"):
                return True
        elif _KINDS[alternative](value):
            return True
    return False


def _kind_of_default(value: Any) -> str:
    """The type a key takes from its default value (a null default takes anything)."""
    if value is None:
        return "any"
    for kind in ("bool", "int", "float", "str", "mapping", "list"):
        if _KINDS[kind](value):  # an int default (a scale, a bound) takes a float too
            return "int|float" if kind == "int" else kind
    return "any"


def _check(node: Mapping[str, Any], schema: Mapping[str, Any], where: str) -> None:
    for key, value in node.items():
        name = f"{where}.{key}" if where else str(key)
        if key not in schema:
            known = ", ".join(sorted(schema))
            raise ConfigError(
                f"unknown config key {name} (= {value!r}); the keys of {where or 'the config'}: {known}"
            )
        kind = schema[key]
        if value == "???":
            raise ConfigError(f"{name} must be given (the config leaves it ???), e.g. {name}=...")
        if isinstance(value, str) and value.startswith("${"):
            continue  # an interpolation: checked as the value it resolves to, by whoever reads it
        if isinstance(kind, Mapping):
            if not isinstance(value, Mapping):
                raise ConfigError(f"{name} must be a group of settings; got {value!r}")
            _check(value, kind, name)
        elif not type_ok(value, kind):
            shown = kind.replace("|", " or ").replace("?", " or null")
            raise ConfigError(
                f"{name}={value!r} has the wrong type ({type(value).__name__}); expected {shown}"
            )


def _from_defaults(defaults: Mapping[str, Any]) -> dict[str, str]:
    """A schema with the keys of `defaults`, each typed by its default (a mapping, e.g. PBT's search
    space, is not looked into: its keys are the user's to choose)."""
    return {k: _kind_of_default(v) for k, v in defaults.items()}


def _plain(cfg: Any) -> dict[str, Any]:
    if isinstance(cfg, Mapping) and not hasattr(cfg, "_get_node"):
        return dict(cfg)
    from omegaconf import OmegaConf

    return OmegaConf.to_container(cfg, resolve=False)  # interpolations are resolved by their users


def validate(cfg: Any, reference: Any | None = None) -> None:
    """Refuse a config with an unknown key or an ill-typed value: a ConfigError naming the first one.

    `cfg`: the composed root config (train, tune or pbt; a DictConfig or a dict). `reference`: the
    same root composed with the same group choices but no value overrides (what the config files say):
    the keys of its `model`, `tune` and `pbt` take their types from it."""
    plain, ref = _plain(cfg), _plain(reference) if reference is not None else {}
    _check(plain, TOP_LEVEL, "")
    callbacks = plain.get("callbacks") or {}
    _check({k: v for k, v in callbacks.items() if k in CALLBACKS}, CALLBACKS, "callbacks")
    for key, node in callbacks.items():  # the callbacks themselves: a `_target_` and its settings
        if (
            key not in CALLBACKS
            and node is not None
            and not (isinstance(node, Mapping) and "_target_" in node)
        ):
            raise ConfigError(
                f"unknown config key callbacks.{key}={node!r}: callbacks settings are {sorted(CALLBACKS)}, "
                "and every other key is a callback (a mapping with _target_, or null to remove it)"
            )
    model = plain.get("model") or {}
    if not isinstance(model.get("name", ""), str):
        raise ConfigError(f"model.name={model['name']!r} must be a model name (a string)")
    typed_by_default = {k: v for k, v in (ref.get("model") or {}).items() if k != "name"}
    for key, value in model.items():
        if isinstance(value, str) and value.startswith("${"):
            continue
        if key in typed_by_default and not type_ok(value, _kind_of_default(typed_by_default[key])):
            kind = _kind_of_default(typed_by_default[key])
            raise ConfigError(
                f"model.{key}={value!r} has the wrong type ({type(value).__name__}); expected {kind}"
            )
    for group in ("tune", "pbt"):
        if group in plain and group in ref:
            _check(plain[group], _from_defaults(ref[group]), group)


DATA_SUFFIXES = (".nwb", ".h5", ".hdf5", ".npz")  # the file formats `neuralnets.data.loaders.load` reads


def check_data_source(cfg: Any) -> None:
    """A `data.source` that names a file (a path, or a data file's suffix) must exist: said before the
    data loaders (h5py, pynwb) and PyTorch are imported. Built-in names (`lorenz`, ...) pass."""
    from pathlib import Path

    source = (cfg.get("data") or {}).get("source")
    if not isinstance(source, str) or source.startswith("${"):
        return
    path = Path(source).expanduser()
    if ("/" in source or path.suffix.lower() in DATA_SUFFIXES) and not path.exists():
        raise ConfigError(f"data.source={source!r}: no such file")
