"""Every error the toolkit raises on purpose, with one base, and the exit codes of every command.

A `NeuralnetsError` is a user-facing problem (bad config, data, checkpoint or run directory): the
command-line tools print its message on one line and exit with `EXIT_USER_ERROR` (a traceback with
NEURALNETS_DEBUG=1). Anything else escaping a command is a bug: traceback, exit `EXIT_BUG`.

Exit codes (the same for every `neuralnets-*` command):

    0   EXIT_OK           done
    1   EXIT_BUG          an unexpected error (a bug): the traceback is printed
    2   EXIT_USER_ERROR   a NeuralnetsError: bad config, data, checkpoint or run directory
    3   EXIT_DIVERGED     training diverged (non-finite loss or gradients); the run is marked diverged
    75  EXIT_INTERRUPTED  stopped by SIGTERM/SIGINT after saving `last.ckpt`: resume it (sysexits EX_TEMPFAIL,
                          the code a scheduler can requeue on)
"""

from __future__ import annotations

EXIT_OK = 0
EXIT_BUG = 1
EXIT_USER_ERROR = 2
EXIT_DIVERGED = 3
EXIT_INTERRUPTED = 75


class NeuralnetsError(Exception):
    """Base of the errors a user can act on; the message names the file, field or value at fault."""


class ConfigError(NeuralnetsError, ValueError):
    """A configuration (training, model, tuning, command-line option) that cannot work."""


class ModelConfigError(ConfigError):
    """A model name or option that cannot be built; the message names the field and the value."""


class DataError(NeuralnetsError, ValueError):
    """Spiking data that are malformed; the message names the source, field and problem."""


class CheckpointError(NeuralnetsError, ValueError):
    """A checkpoint that cannot be read safely (corrupt, truncated, tampered with, unverified, not data)."""


class RunStatusError(NeuralnetsError, ValueError):
    """A run directory that is not in the state the caller needs (not finished, locked, already used)."""


class UntrustedLibrary(NeuralnetsError, RuntimeError):
    """A kept native library (or its folder) that fails the ownership or permission checks."""


class DivergenceError(NeuralnetsError, RuntimeError):
    """Training diverged: too large a share of its steps had a non-finite loss or gradient."""


class AnalysisError(NeuralnetsError, ValueError):
    """An analysis asked of a model or data that lack what it needs (e.g. fixed points of a model without
    recurrent dynamics, input events of a model without inferred inputs); the message names both."""


class CheckpointNotFound(CheckpointError, FileNotFoundError):
    """No checkpoint where one was looked for (a run directory without one, a missing file)."""


class RunInterrupted(NeuralnetsError):
    """Training stopped by SIGTERM/SIGINT after saving `last.ckpt`; the run is marked interrupted and
    `resume=` continues it. Commands exit with `EXIT_INTERRUPTED` (not `EXIT_USER_ERROR`)."""

    exit_code = EXIT_INTERRUPTED
