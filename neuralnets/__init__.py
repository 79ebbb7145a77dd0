"""neuralnets: deep-learning models for neural population spiking data.

`import neuralnets` stays cheap (no PyTorch, no Lightning): `load_pretrained` and the subpackages
are imported on first use.
"""

__version__ = "0.1.0"

__all__ = ["__version__", "load_pretrained"]


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
