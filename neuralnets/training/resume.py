"""Resuming a run: which directory and checkpoint `resume=` names, whether the run can go on (a finished
run with no more epochs to train is NothingToDo), and that the resume keeps the run's model, data,
module and seed (`RESUME_FIXED`). `training.run.run_training` calls these with the run locked."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from neuralnets.checkpoints import checkpoint_of
from neuralnets.config import load_saved_config
from neuralnets.errors import CheckpointError, ConfigError
from neuralnets.runs import CONFIG_FILE, read_status


class NothingToDo(Exception):
    """resume= of a finished run without more epochs to train: nothing is changed."""


def resume_dir(resume: str | Path) -> Path:
    """The run directory of `resume=` (a run directory, or a checkpoint in its checkpoints/)."""
    path = Path(resume)
    return path.parent.parent if path.suffix == ".ckpt" else path


def resume_checkpoint(resume: str | Path) -> Path:
    """`resume` is a run directory (its `checkpoints/last.ckpt`) or a checkpoint file (used as given)."""
    try:
        return checkpoint_of(resume, "last")
    except CheckpointError as err:
        raise ConfigError(f"resume={str(resume)!r}: {err}") from None


def check_resumable(run_dir: Path, cfg: DictConfig, ckpt: dict) -> None:
    """NothingToDo for a finished run, unless `trainer.max_epochs` asks for more epochs than it trained."""
    status = read_status(run_dir)
    if status["status"] != "finished":
        return
    trained = int(status.get("epochs") or ckpt.get("epoch", -1) + 1)
    wanted = cfg.trainer.get("max_epochs")
    if wanted is None or wanted < 0 or wanted > trained:
        return
    raise NothingToDo(
        f"{run_dir} is a finished run ({trained} epochs); nothing to do (raise trainer.max_epochs above "
        f"{trained} to train it further)"
    )


# The groups a resume must keep: another model or data cannot continue the run's checkpoint (others, e.g.
# trainer.max_epochs, threads, callbacks.figures, may change).
RESUME_FIXED = ("model", "data", "module", "seed")


def check_resume_config(run_dir: Path, cfg: DictConfig) -> None:
    """A ConfigError naming the first key of RESUME_FIXED whose value in `cfg` differs from the run's
    saved config.yaml: raised before anything in the run is read or written."""
    if not (run_dir / CONFIG_FILE).is_file():  # a run without one cannot be resumed from the command line
        return
    saved = load_saved_config(run_dir / CONFIG_FILE)
    for group in RESUME_FIXED:
        mine, theirs = _flat_group(cfg, group), _flat_group(saved, group)
        for key in sorted(set(mine) | set(theirs)):
            new, old = mine.get(key, "(absent)"), theirs.get(key, "(absent)")
            if new != old:
                raise ConfigError(
                    f"resume={cfg.resume}: {key}={new!r}, but the run was trained with {key}={old!r} "
                    f"({run_dir / CONFIG_FILE}); a resume continues the same model on the same data "
                    f"({', '.join(RESUME_FIXED)} fixed): start a new run instead"
                )


def _flat_group(cfg: DictConfig, group: str) -> dict[str, Any]:
    """{"group.a.b": value} of `cfg[group]`, resolved (a scalar group: {"group": value})."""
    node = OmegaConf.select(cfg, group)
    if isinstance(node, DictConfig):
        node = OmegaConf.to_container(node, resolve=True)
    out: dict[str, Any] = {}
    stack = [(group, node)]
    while stack:
        key, value = stack.pop()
        if isinstance(value, dict):
            stack += [(f"{key}.{k}", v) for k, v in value.items()]
        else:
            out[key] = value
    return out
