"""neuralnets: deep-learning models for neural population spiking data.

`import neuralnets` stays cheap (no PyTorch, no Lightning): `load_pretrained` and the subpackages
are imported on first use.
"""

import os

__version__ = "0.1.0"

__all__ = ["__version__", "debug_mode", "load_pretrained"]

DEBUG_ENV = "NEURALNETS_DEBUG"  # NEURALNETS_DEBUG=1: the command-line tools show full tracebacks


def debug_mode() -> bool:
    """True when NEURALNETS_DEBUG is set (to anything but 0 or empty): command-line errors keep their
    traceback instead of one line."""
    return os.environ.get(DEBUG_ENV, "0") not in ("", "0")


def __getattr__(name: str):
    if name == "load_pretrained":
        from neuralnets.pretrained.loading import load_pretrained

        return load_pretrained
    if name in ("data", "eval", "models", "nn", "pretrained", "training"):
        import importlib

        return importlib.import_module(f"neuralnets.{name}")
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted([*globals(), "load_pretrained", "data", "eval", "models", "nn", "pretrained", "training"])
