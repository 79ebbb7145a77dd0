"""Pretrained models: `load_pretrained(name_or_path)`, the registry of bundled checkpoints, export.

    import neuralnets
    neuralnets.pretrained.list_pretrained()            # ['lfads_lorenz', ...]
    model = neuralnets.load_pretrained("lfads_lorenz")  # PretrainedModel, eval mode, CPU
    out = model.predict(spikes)                         # {"rates", "latents", "inputs"} numpy arrays
    model.card                                          # data, config, training command, metrics

Bundled checkpoints live in `neuralnets/pretrained/checkpoints/<name>/` (see `registry`) and are
trained by `experiments/train_pretrained.py`. Nothing here touches the network.
"""

from neuralnets.pretrained.loading import (
    PretrainedModel,
    build_from_checkpoint,
    load_pretrained,
    read_checkpoint,
)
from neuralnets.pretrained.registry import CHECKPOINTS_DIR, list_pretrained, model_card, read_card

__all__ = [
    "CHECKPOINTS_DIR",
    "PretrainedModel",
    "build_from_checkpoint",
    "export_run",
    "list_pretrained",
    "load_pretrained",
    "model_card",
    "read_card",
    "read_checkpoint",
]


def __getattr__(name: str):
    # export needs the harness and OmegaConf; only the training script and tests use it.
    if name == "export_run":
        from neuralnets.pretrained.bundle import export_run

        return export_run
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
