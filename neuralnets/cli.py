"""The one wrapper of every `neuralnets-*` command: how an error ends a command (exit codes in
`neuralnets.errors`).

    def cli() -> int:                               # a console script's target
        return run_cli("neuralnets-train", main)    # main: a Hydra app or a function of argv

- a `NeuralnetsError` (bad config, data, checkpoint, run directory), an `OSError` (a missing file,
  a full disk) or a Hydra/OmegaConf composition error (unknown override, missing config group
  choice): one line `PROG: error: MESSAGE` on stderr, exit `EXIT_USER_ERROR` (2);
- a `DivergenceError`: the same one line, exit `EXIT_DIVERGED` (3);
- anything else is a bug: Python's traceback, exit `EXIT_BUG` (1).

With NEURALNETS_DEBUG=1 the traceback is printed as well, and the exit code stays the same.
Importing this module is cheap: Hydra is neither imported nor required.
"""

from __future__ import annotations

import os
import sys
import traceback
from collections.abc import Callable
from typing import Any

from neuralnets import debug_mode
from neuralnets.errors import EXIT_DIVERGED, EXIT_OK, EXIT_USER_ERROR, DivergenceError, NeuralnetsError

__all__ = ["exit_code", "one_line", "run_cli"]


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
    """The exit code for `err` when it is the user's to fix (2, or 3 for divergence); None for a bug."""
    if isinstance(err, DivergenceError):
        return EXIT_DIVERGED
    if isinstance(err, NeuralnetsError | OSError) or isinstance(err, _config_error_types()):
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
    if isinstance(err, KeyError) and not message:
        message = type(err).__name__
    return " ".join(message.split()) or type(err).__name__


def run_cli(prog: str, main: Callable[..., Any], *args: Any) -> int:
    """Run `main(*args)` as the command `prog` and return its exit code (see the module docstring).

    `main` may be a `@hydra.main` app: Hydra is told to raise its errors (HYDRA_FULL_ERROR=1) so that
    they reach this wrapper instead of being printed over several lines. Its return value (a sweep
    objective, say) is not an exit code: an int is returned as is, anything else gives 0."""
    os.environ["HYDRA_FULL_ERROR"] = "1"
    try:
        result = main(*args)
    except Exception as err:  # noqa: BLE001 - sorted into user errors and bugs below
        code = exit_code(err)
        if code is None:
            raise  # a bug: Python prints the traceback, exit 1
        if debug_mode():
            traceback.print_exc()
        print(f"{prog}: error: {one_line(err)}", file=sys.stderr)
        return code
    return result if isinstance(result, int) and not isinstance(result, bool) else EXIT_OK
