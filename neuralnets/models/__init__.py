"""Model families, built by name: `create_model("lfads", spec, gen_dim=100)`.

`FAMILIES` is the registry, an explicit dict: one `ModelFamily` record per family declares everything it
provides (its class and so its capability flags, its model config, its tune and PBT search spaces), so
adding a model is one line here; `MODELS` is the same registry seen as {name: class}. A model config is a
registered name plus plain option values (numbers, strings, booleans, None, and lists/dicts of
those): no config file can name a callable. Legacy configs and checkpoints that give the model as
`_target_: neuralnets.models.lfads.LFADS` are accepted when that string is exactly the class path of
a registered model; any other `_target_` is refused without importing anything.
"""

from __future__ import annotations

import inspect
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from neuralnets.data.sessions import MultiSessionSpec, spec_from_dict
from neuralnets.data.spikedata import DataSpec
from neuralnets.errors import ModelConfigError
from neuralnets.models.base import ModelOutput, SpikeModel
from neuralnets.models.gpfa import GPFA
from neuralnets.models.lfads import LFADS
from neuralnets.models.ndt import NDT
from neuralnets.models.rnn import RNNSeq2Seq
from neuralnets.models.stitched import Stitched
from neuralnets.models.stndt import STNDT


@dataclass(frozen=True)
class ModelFamily:
    """Everything a model family provides, declared once (docs/models.md, "Adding a model").

    `model`: the `SpikeModel` subclass; its capability flags are its class attributes (`capabilities`).
    `config`: its model config, `configs/model/<config>.yaml` (`model=<config>`).
    `search_space`: its search spaces, `configs/tune/<name>.yaml` (a name) or a YAML file (a Path):
    `params:` a list of `{key, low, high, log}` for `neuralnets-tune`, `pbt:` a nested
    `{group: {key: {low, high, log}}}` for `neuralnets-pbt`; None: the family is not tuned.
    """

    model: type[SpikeModel]
    config: str
    search_space: str | Path | None = None

    @property
    def capabilities(self) -> dict[str, bool | float | None]:
        """{flag: value} of every capability flag (`SpikeModel.CAPABILITIES`) of the family's class; None
        where the flag depends on the options (a property, e.g. LFADS' `has_inferred_inputs`)."""
        flags = {flag: inspect.getattr_static(self.model, flag) for flag in SpikeModel.CAPABILITIES}
        return {flag: None if isinstance(value, property) else value for flag, value in flags.items()}


FAMILIES: dict[str, ModelFamily] = {
    "lfads": ModelFamily(LFADS, config="lfads", search_space="lfads"),
    "rnn": ModelFamily(RNNSeq2Seq, config="rnn", search_space="rnn"),
    "ndt": ModelFamily(NDT, config="ndt", search_space="ndt"),
    "gpfa": ModelFamily(GPFA, config="gpfa"),  # fitted by EM: nothing to tune by gradient
    "stitched": ModelFamily(Stitched, config="stitched"),
    "stndt": ModelFamily(STNDT, config="stndt", search_space="ndt"),
}


class _FamilyClasses(Mapping[str, type[SpikeModel]]):
    """`FAMILIES` seen as {name: model class}: read-only, always in step with it."""

    def __getitem__(self, name: str) -> type[SpikeModel]:
        return FAMILIES[name].model

    def __iter__(self) -> Iterator[str]:
        return iter(FAMILIES)

    def __len__(self) -> int:
        return len(FAMILIES)

    def __repr__(self) -> str:
        return repr({name: family.model.__name__ for name, family in FAMILIES.items()})


MODELS: Mapping[str, type[SpikeModel]] = _FamilyClasses()


def model_family(name: str) -> ModelFamily:
    """The registered family `name`, or a ModelConfigError listing the registered ones."""
    if name not in FAMILIES:
        raise ModelConfigError(f"unknown model name={name!r}; registered models: {sorted(FAMILIES)}")
    return FAMILIES[name]


_PLAIN = (bool, int, float, str, type(None))


def class_path(cls: type) -> str:
    """`module.Class`, the form legacy configs give as `_target_`."""
    return f"{cls.__module__}.{cls.__qualname__}"


def model_name(cls: type[SpikeModel]) -> str:
    """The registered name of a model class (raises if it is not registered)."""
    for name, registered in MODELS.items():
        if registered is cls:
            return name
    raise ModelConfigError(f"{class_path(cls)} is not a registered model; registered: {sorted(MODELS)}")


def model_options(cls: type[SpikeModel]) -> dict[str, Any]:
    """The keyword options of a model class with their defaults (`spec` excluded)."""
    params = inspect.signature(cls.__init__).parameters
    return {
        k: p.default
        for k, p in params.items()
        if k not in ("self", "spec") and p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)
    }


def check_plain(value: Any, where: str, error: type[Exception] = ModelConfigError) -> Any:
    """`value` as plain Python data (OmegaConf containers converted: numbers, strings, booleans, None,
    lists and dicts of those), or `error` naming `where`; a dict with `_target_` anywhere is refused, so
    no config or checkpoint can name a callable."""
    if hasattr(value, "_metadata") and hasattr(value, "_get_node"):  # an OmegaConf container
        from omegaconf import OmegaConf

        value = OmegaConf.to_container(value, resolve=True)
    if isinstance(value, _PLAIN):
        return value
    if isinstance(value, list | tuple):
        return [check_plain(v, f"{where}[{i}]", error) for i, v in enumerate(value)]
    if isinstance(value, Mapping):
        if "_target_" in value:
            raise error(
                f"{where} names a callable (_target_={value['_target_']!r}); options must be plain values "
                "(numbers, strings, booleans, None, lists and dicts of those)"
            )
        return {str(k): check_plain(v, f"{where}.{k}", error) for k, v in value.items()}
    raise error(
        f"{where} = {value!r} has type {type(value).__name__}; options must be plain values "
        "(numbers, strings, booleans, None, lists and dicts of those)"
    )


def resolve_model_config(name_or_cfg: str | Mapping[str, Any], **options: Any) -> tuple[str, dict[str, Any]]:
    """(registered name, checked options) from a name or a `{"name": ..., **options}` config (or a
    legacy one with `_target_`), plus `options` on top. Raises ModelConfigError naming the problem."""
    if isinstance(name_or_cfg, str):
        name, cfg = name_or_cfg, {}
    elif isinstance(name_or_cfg, Mapping) or hasattr(name_or_cfg, "items"):
        cfg = _as_dict(name_or_cfg)
        has_name, has_target = "name" in cfg, "_target_" in cfg
        if has_name and has_target:
            raise ModelConfigError(
                f"model config gives both name={cfg['name']!r} and _target_; give only name"
            )
        if has_target:
            target = cfg.pop("_target_")
            by_path = {class_path(cls): n for n, cls in MODELS.items()}
            if target not in by_path:
                raise ModelConfigError(
                    f"model config _target_={target!r} is not a registered model class; use name: one of "
                    f"{sorted(MODELS)} (legacy _target_ values accepted: {sorted(by_path)})"
                )
            name = by_path[target]
        elif has_name:
            name = cfg.pop("name")
        else:
            raise ModelConfigError(
                f"model config needs `name` (one of {sorted(MODELS)}); got fields {sorted(cfg)}"
            )
    else:
        raise ModelConfigError(
            f"model must be a registered name or a config dict; got {type(name_or_cfg).__name__}"
        )
    if not isinstance(name, str) or name not in MODELS:
        raise ModelConfigError(f"unknown model name={name!r}; registered models: {sorted(MODELS)}")
    cfg.update(options)
    valid = model_options(MODELS[name])
    unknown = sorted(set(cfg) - set(valid))
    if unknown:
        raise ModelConfigError(f"model {name!r} has no option(s) {unknown}; valid options: {sorted(valid)}")
    return name, {k: check_plain(v, f"{name}.{k}") for k, v in cfg.items()}


def _as_dict(cfg: Any) -> dict[str, Any]:
    """A mapping (dict or OmegaConf DictConfig) as a plain dict with string keys; values checked later."""
    if hasattr(cfg, "_metadata") and hasattr(cfg, "_get_node"):
        from omegaconf import OmegaConf

        cfg = OmegaConf.to_container(cfg, resolve=True)
    return {str(k): v for k, v in cfg.items()}


def create_model(
    name_or_cfg: str | Mapping[str, Any], spec: DataSpec | MultiSessionSpec | dict, **options: Any
) -> SpikeModel:
    """Build a registered model for data of shape `spec`.

    `name_or_cfg`: a registered name (`MODELS`) or a config `{"name": "lfads", **options}` (a dict or
    an OmegaConf DictConfig); `options` are set on top. Unknown names, unknown options and non-plain
    option values raise `ModelConfigError`; errors from the model's own checks (e.g. a negative size)
    are ValueErrors naming the option.
    """
    name, opts = resolve_model_config(name_or_cfg, **options)
    if not isinstance(spec, DataSpec | MultiSessionSpec):
        spec = spec_from_dict(check_plain(dict(spec), "spec"))
    if isinstance(spec, MultiSessionSpec) and not MODELS[name].multi_session:
        multi = sorted(n for n, cls in MODELS.items() if cls.multi_session)
        raise ModelConfigError(
            f"model {name!r} models one session; data of {spec.n_sessions} sessions {list(spec.names)} "
            f"need a multi-session model: one of {multi} (e.g. model=stitched)"
        )
    return MODELS[name](spec, **opts)


__all__ = [
    "FAMILIES",
    "GPFA",
    "LFADS",
    "MODELS",
    "ModelFamily",
    "NDT",
    "ModelConfigError",
    "ModelOutput",
    "RNNSeq2Seq",
    "STNDT",
    "SpikeModel",
    "Stitched",
    "check_plain",
    "create_model",
    "model_family",
    "model_name",
    "model_options",
    "resolve_model_config",
]
