"""Where the Hydra configs live, the one way to compose them, and a run's saved config read safely.

    from neuralnets.config import compose
    cfg = compose(["model=ndt", "data=chaotic_rnn", "trainer.max_epochs=5"])   # as neuralnets-train would
    cfg = compose(["experiment=lfads_lorenz"], config_name="tune")            # neuralnets-tune's root
    compose(config_name="tune/lfads").params                                  # one file of a group

The configs are the repository's top-level `configs/` tree. The package reaches it as
`neuralnets/configs` (a link in the source tree; real files in a wheel, which carries them as package
data), so a source checkout, an editable install and a wheel install all find the same files.

A run's `config.yaml` is written resolved (`OmegaConf.save(..., resolve=True)`), so it holds no
interpolation; `load_saved_config` refuses one that does (e.g. `${oc.env:HOME}` written into the
file by hand): a saved config is never resolved against the environment on resume or evaluation.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from neuralnets.errors import ConfigError

if TYPE_CHECKING:
    from omegaconf import DictConfig

__all__ = [
    "CONFIG_DIR",
    "compose",
    "config_groups",
    "config_names",
    "load_config_file",
    "load_saved_config",
    "model_config",
]


def _config_dir() -> Path:
    packaged = Path(__file__).resolve().parent / "configs"  # the wheel's copy, or the source tree's link
    if packaged.is_dir():
        return packaged
    return Path(__file__).resolve().parents[1] / "configs"  # a checkout where the link is a plain file


CONFIG_DIR = _config_dir()


def config_names(group: str) -> list[str]:
    """The config names of a group (e.g. `model` -> ['gpfa', 'lfads', ...])."""
    return sorted(p.stem for p in (CONFIG_DIR / group).glob("*.yaml"))


def compose(
    overrides: Sequence[str] = (), config_name: str = "train", hydra_node: bool = False
) -> DictConfig:
    """The config `config_name` (`train`, `tune`, `pbt`, or a group file such as `tune/lfads`) with
    Hydra `overrides`, composed from the packaged configs exactly as the command-line tools compose
    it (the `hydra` node only with `hydra_node=True`). Works inside a running `@hydra.main` app too.
    Raises ConfigError (an unknown option, a group choice that does not exist), naming the choices
    where it can."""
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra
    from hydra.errors import HydraException
    from omegaconf.errors import OmegaConfBaseException

    state = GlobalHydra.instance()
    running = state.hydra if state.is_initialized() else None  # inside a @hydra.main app: put it back after
    state.clear()
    try:
        with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
            return hydra_compose(config_name, overrides=list(overrides), return_hydra_config=hydra_node)
    except (HydraException, OmegaConfBaseException) as err:
        message = " ".join(str(err).split("\nConfig search path")[0].split())
        for item in overrides:  # `model=lfadz`: say which models there are
            group, _, choice = str(item).lstrip("+~").partition("=")
            if (CONFIG_DIR / group).is_dir() and choice and choice not in config_names(group):
                message += f"; {group} configs: {config_names(group)}"
        raise ConfigError(f"config {config_name!r} with overrides {list(overrides)}: {message}") from None
    finally:
        if running is not None:
            GlobalHydra.instance().clear()
            GlobalHydra.instance().initialize(running)


def config_groups() -> dict[str, list[str]]:
    """{group: its config names} of every config group but Hydra's own (`hydra/...`), e.g.
    {'data': ['ca1_linear_track', ...], 'model': [...], 'hydra_free/sub': [...]}."""
    groups = {}
    for folder in sorted(p for p in CONFIG_DIR.rglob("*") if p.is_dir()):
        group = folder.relative_to(CONFIG_DIR).as_posix()
        if group != "hydra" and not group.startswith("hydra/") and config_names(group):
            groups[group] = config_names(group)
    return groups


def model_config(name: str) -> dict[str, Any]:
    """The model config `model=<name>` (`configs/model/<name>.yaml` with its defaults merged, as
    `neuralnets-train model=<name>` composes it) as a plain dict, e.g. `model_config("lfads_mc_maze")`."""
    from omegaconf import OmegaConf

    if name not in config_names("model"):
        raise ConfigError(f"no model config {name!r}; model configs: {config_names('model')}")
    return OmegaConf.to_container(compose([f"model={name}"]).model, resolve=True)


def _interpolations(node: Any, where: str) -> list[str]:
    """Dotted keys of `node` (an OmegaConf container) whose value is an interpolation (`${...}`)."""
    from omegaconf import DictConfig, ListConfig, OmegaConf

    found = []
    keys = node.keys() if isinstance(node, DictConfig) else range(len(node))
    for key in keys:
        here = f"{where}.{key}" if where else str(key)
        if OmegaConf.is_interpolation(node, key):
            found.append(here)
            continue
        child = node._get_node(key)  # the node itself: reading the value would resolve it
        if isinstance(child, DictConfig | ListConfig) and not child._is_none():
            found += _interpolations(child, here)
    return found


def load_saved_config(path: str | Path) -> DictConfig:
    """A run's saved `config.yaml`, never resolved: a ConfigError naming the file and the keys if it
    holds an interpolation (`${oc.env:VAR}`, `${now:...}`, `${a.b}`), which a saved config never
    needs (it is written resolved) and which would read the environment of whoever loads it."""
    return load_config_file(path, "saved run config is written resolved and")


def load_config_file(path: str | Path, what: str = "config file outside the config tree") -> DictConfig:
    """A YAML config that is not part of the config tree (a run's `config.yaml`, a user's search-space
    file), read as plain data: a ConfigError naming the file if it is not a readable mapping or holds an
    interpolation (never resolved: it could read the environment). `what` names the file in that error."""
    from omegaconf import DictConfig, OmegaConf

    path = Path(path)
    try:
        cfg = OmegaConf.load(path)
    except FileNotFoundError:
        raise
    except Exception as err:  # noqa: BLE001 - yaml and OmegaConf raise several types
        raise ConfigError(f"{path}: not a readable config ({' '.join(str(err).split())})") from None
    if not isinstance(cfg, DictConfig):
        raise ConfigError(f"{path}: a config must be a mapping; got a {type(cfg).__name__}")
    found = _interpolations(cfg, "")
    if found:
        raise ConfigError(
            f"{path}: {found[0]} holds an interpolation ({len(found)} key(s) in all: {found[:5]}); a "
            f"{what} is never resolved (it could read the environment)"
        )
    return cfg
