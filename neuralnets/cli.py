"""The one wrapper of every `neuralnets-*` command: how an error ends a command (exit codes in
`neuralnets.errors`).

    def cli() -> int:                               # a console script's target
        return run_cli("neuralnets-train", main)    # main: a Hydra app or a function of argv

    @hydra.main(config_path=str(CONFIG_DIR), config_name="train", version_base="1.3")
    @hydra_task("neuralnets-train")                 # a Hydra app's task: errors end here, not in Hydra
    def main(cfg): ...

- a `NeuralnetsError` (bad config, data, checkpoint, run directory), an `OSError` (a missing file,
  a full disk) or a Hydra/OmegaConf composition error (unknown override, missing config group
  choice): one line `PROG: error: MESSAGE` on stderr, exit `EXIT_USER_ERROR` (2);
- a `DivergenceError`: the same one line, exit `EXIT_DIVERGED` (3);
- anything else is a bug: Python's traceback, exit `EXIT_BUG` (1).

With NEURALNETS_DEBUG=1 the traceback is printed as well, and the exit code stays the same.
A Hydra app's task function is decorated with `hydra_task` as well: Hydra would otherwise add its
own "Error executing job with overrides ..." line to the one line. Importing this module is cheap:
Hydra is neither imported nor required.
"""

from __future__ import annotations

import functools
import importlib
import os
import sys
import traceback
from collections.abc import Callable
from typing import Any

from neuralnets import debug_mode
from neuralnets.errors import EXIT_DIVERGED, EXIT_OK, EXIT_USER_ERROR, DivergenceError, NeuralnetsError

__all__ = [
    "exit_code",
    "hydra_command",
    "hydra_task",
    "one_line",
    "pbt",
    "report",
    "run_cli",
    "train",
    "tune",
]


def _config_error_types() -> tuple[type, ...]:
    """Hydra's and OmegaConf's error bases, if those modules are loaded (a config the user gave)."""
    types = []
    hydra_errors, omegaconf_errors = sys.modules.get("hydra.errors"), sys.modules.get("omegaconf.errors")
    if hydra_errors is not None:
        types.append(hydra_errors.HydraException)
    if omegaconf_errors is not None:
        types.append(omegaconf_errors.OmegaConfBaseException)
    return tuple(types)


def exit_code(err: BaseException) -> int | None:
    """The exit code for `err` when it is the user's to fix (2; 3 for divergence; an error's own
    `exit_code`, e.g. 75 for an interrupted run); None for a bug."""
    if isinstance(err, DivergenceError):
        return EXIT_DIVERGED
    if isinstance(err, NeuralnetsError):
        return getattr(err, "exit_code", EXIT_USER_ERROR)
    if isinstance(err, OSError) or isinstance(err, _config_error_types()):
        return EXIT_USER_ERROR
    return None


def one_line(err: BaseException) -> str:
    """`err`'s message on one line (Hydra's config search path dropped, an OmegaConf cause added)."""
    message = str(err)
    omegaconf_errors = sys.modules.get("omegaconf.errors")
    if isinstance(err, _config_error_types()):
        message = message.split("\nConfig search path")[0]  # Hydra's search path is noise here
        cause = err.__cause__
        if omegaconf_errors is not None and isinstance(cause, omegaconf_errors.OmegaConfBaseException):
            message += f" ({str(cause).splitlines()[0]})"
    return " ".join(message.split()) or type(err).__name__


def report(prog: str, err: Exception) -> int:
    """Print `err` as one line `PROG: error: ...` (and its traceback with NEURALNETS_DEBUG=1) and
    return its exit code; re-raise it if it is a bug (not a user's error)."""
    code = exit_code(err)
    if code is None:
        raise err
    if debug_mode():
        traceback.print_exception(err)
    print(f"{prog}: error: {one_line(err)}", file=sys.stderr)
    return code


def hydra_task(prog: str) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """Decorate a `@hydra.main` task function: a user's error ends the command with its one line and
    exit code (SystemExit passes through Hydra untouched), a bug goes on to Hydra with its traceback."""

    def decorate(task: Callable[..., Any]) -> Callable[..., Any]:
        @functools.wraps(task)
        def wrapped(*args: Any, **kwargs: Any) -> Any:
            try:
                return task(*args, **kwargs)
            except Exception as err:  # noqa: BLE001 - sorted by report()
                raise SystemExit(report(prog, err)) from None

        return wrapped

    return decorate


def run_cli(prog: str, main: Callable[..., Any], *args: Any) -> int:
    """Run `main(*args)` as the command `prog` and return its exit code (see the module docstring).

    `main` may be a `@hydra.main` app: Hydra is told to raise its errors (HYDRA_FULL_ERROR=1) so that
    they reach this wrapper instead of being printed over several lines. Its return value (a sweep
    objective, say) is not an exit code: an int is returned as is, anything else gives 0."""
    os.environ["HYDRA_FULL_ERROR"] = "1"
    try:
        result = main(*args)
    except Exception as err:  # noqa: BLE001 - a bug is raised again by report(): traceback, exit 1
        return report(prog, err)
    return result if isinstance(result, int) and not isinstance(result, bool) else EXIT_OK


HELP_FLAGS = ("--help", "-h")


def hydra_help(config_name: str) -> str:
    """The --help text of the Hydra app composing `config_name`: its `hydra.help.template` (a
    header, the config groups and their choices, the most used overrides, exit codes) filled in from
    the configs alone, without importing the app (PyTorch, Lightning) or Hydra's slow group scan."""
    from neuralnets.config import compose, config_groups

    template = compose([], config_name, hydra_node=True).hydra.help.template
    groups = "\n".join(f"{group}: {', '.join(names)}" for group, names in config_groups().items())
    return template.replace("$APP_CONFIG_GROUPS", groups)


def precheck(config_name: str, args: list[str]) -> None:
    """Compose `config_name` with the command line's overrides and validate it against the schema
    (`neuralnets.config_schema`) before the app (PyTorch, Lightning) is imported: a config mistake is
    answered in about a second. Command lines with Hydra flags (`-m`, `--cfg`, ...) are left to the app,
    which validates the same way before a run directory is claimed."""
    from neuralnets.config import compose, config_names
    from neuralnets.config_schema import check_data_source, validate

    if any(arg.startswith("-") for arg in args):
        return

    def sets_the_files(arg: str) -> bool:  # a group choice (model=ndt) or Hydra's own (its search path)
        key = arg.lstrip("+~").partition("=")[0]
        return key.startswith(("hydra.", "hydra/")) or ("." not in key and bool(config_names(key)))

    cfg = compose(args, config_name)
    validate(cfg, compose([a for a in args if sets_the_files(a)], config_name))  # reference: as in the files
    check_data_source(cfg)


def hydra_command(prog: str, module: str, config_name: str) -> int:
    """The console script of the Hydra app `module.main` (composing `config_name`): `--help` / `-h`
    is answered without importing `module` (`hydra_help`), and a config mistake too (`precheck`);
    otherwise `run_cli(prog, module.main)` (`--hydra-help`: Hydra's own options)."""
    if any(arg in HELP_FLAGS for arg in sys.argv[1:]):
        return run_cli(prog, lambda: print(hydra_help(config_name)))
    code = run_cli(prog, precheck, config_name, sys.argv[1:])
    if code != EXIT_OK:
        return code
    return run_cli(prog, importlib.import_module(module).main)


def train() -> int:
    """`neuralnets-train` (`neuralnets.training.train`)."""
    return hydra_command("neuralnets-train", "neuralnets.training.train", "train")


def tune() -> int:
    """`neuralnets-tune` (`neuralnets.training.tune`)."""
    return hydra_command("neuralnets-tune", "neuralnets.training.tune", "tune")


def pbt() -> int:
    """`neuralnets-pbt` (`neuralnets.training.pbt`)."""
    return hydra_command("neuralnets-pbt", "neuralnets.training.pbt", "pbt")
