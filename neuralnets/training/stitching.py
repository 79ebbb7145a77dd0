"""Training on several sessions (a stitched model, `neuralnets.models.stitched`): initialisation from
the data, per-session scoring of a finished run, and fine-tuning on new sessions.

    neuralnets-train model=stitched data=lorenz_sessions data.load_kwargs.keep=[0,1,2]
    neuralnets-train model=stitched data=lorenz_sessions data.load_kwargs.keep=[3] finetune_from=RUN_DIR

Fine-tuning (`finetune_from=` a run directory or checkpoint, or `finetune(...)` in Python) adds a
read-in and read-out for each new session (new neuron counts) to the trained model, freezes the
shared core and the trained sessions, and trains only the new read-ins / read-outs. The checkpoint
is untrusted: it is read with its sha256 record verified (a file without one is refused unless
`trust_unverified=true`) and `weights_only=True`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytorch_lightning as pl

from neuralnets.checkpoints import checkpoint_of, read_checkpoint
from neuralnets.data.datamodule import MultiSessionDataModule
from neuralnets.data.sessions import MultiSessionData
from neuralnets.data.spikedata import SpikeData
from neuralnets.errors import CheckpointError, ConfigError
from neuralnets.eval import evaluate_sessions
from neuralnets.models.stitched import Stitched
from neuralnets.pretrained.loading import build_from_checkpoint
from neuralnets.training.build import init_sessions_from_data
from neuralnets.training.module import TrainingModule


def load_stitched(source: str | Path, trust_unverified: bool = False) -> tuple[Stitched, dict[str, Any]]:
    """(the trained stitched model in eval mode on CPU, its checkpoint contents) from a run directory
    or checkpoint; its sha256 record verified (`trust_unverified`: accept a file without one), read
    with weights_only."""
    try:
        path = checkpoint_of(source, "best")
    except CheckpointError as err:
        raise ConfigError(f"finetune_from={str(source)!r}: {err}") from None
    try:
        ckpt = read_checkpoint(path, trust_unverified=trust_unverified)
        model = build_from_checkpoint(path, ckpt=ckpt)
    except (CheckpointError, ValueError) as err:
        raise ConfigError(f"refusing to fine-tune from {path}: {err}") from None
    if not isinstance(model, Stitched):
        raise ConfigError(
            f"finetune_from={str(source)!r} holds a {type(model).__name__}; fine-tuning on new sessions "
            "needs a stitched model (model=stitched)"
        )
    return model, ckpt


def finetune_module(
    source: str | Path,
    data: SpikeData | MultiSessionData,
    trust_unverified: bool = False,
    **module_options: Any,
) -> tuple[TrainingModule, int]:
    """(a TrainingModule whose model is the stitched model of `source` plus a read-in / read-out for
    each session of `data`, of which only those train; the index of `data`'s first session in it).

    The new sessions' read-outs start at their mean counts and their read-ins from their own data
    (`training.build.init_sessions_from_data`); every other weight is the checkpoint's, bit for bit."""
    data = MultiSessionData.of(data)
    trained, ckpt = load_stitched(source, trust_unverified)
    try:
        spec = trained.spec.with_sessions(data.spec)
    except ValueError as err:
        raise ConfigError(f"finetune_from={str(source)!r}: {err}") from None
    model_cfg = {**ckpt["hyper_parameters"]["model"], "train_only_sessions": list(data.names)}
    module_options.setdefault("data_name", data.name)
    module = TrainingModule(model=model_cfg, spec=spec.to_dict(), **module_options)
    first = trained.spec.n_sessions
    new = tuple(f"{part}.{i}." for part in ("model.readins", "model.readouts", "likelihood") for i in
                range(first, spec.n_sessions))  # fmt: skip
    result = module.load_state_dict(ckpt["state_dict"], strict=False)
    missing = [k for k in result.missing_keys if not k.startswith(new)]
    if missing or result.unexpected_keys:
        raise ConfigError(
            f"finetune_from={str(source)!r}: its weights do not fit the model (missing {missing}, "
            f"unexpected {result.unexpected_keys})"
        )
    init_sessions_from_data(module.model, data)
    return module, first


def finetune(
    source: str | Path,
    data: SpikeData | MultiSessionData,
    max_epochs: int = 30,
    batch_size: int = 16,
    lr: float = 1e-2,
    seed: int = 0,
    accelerator: str = "cpu",
    trust_unverified: bool = False,
) -> Stitched:
    """Fine-tune the stitched model of `source` (run directory or checkpoint) on the new session(s) of
    `data` in this process (no run directory, no logger): only the new read-ins / read-outs train.
    Returns the model in eval mode, knowing the old and new sessions. `accelerator`: as Lightning's
    (`"gpu"` for a GPU). `trust_unverified`: accept a checkpoint without a sha256 record."""
    pl.seed_everything(seed, workers=True)
    module, first = finetune_module(source, data, trust_unverified, lr=lr, lr_schedule="none")
    dm = MultiSessionDataModule(
        MultiSessionData.of(data), batch_size=batch_size, seed=seed, first_session=first
    )
    trainer = pl.Trainer(
        max_epochs=max_epochs, accelerator=accelerator, logger=False, enable_checkpointing=False,
        enable_progress_bar=False, enable_model_summary=False,
    )  # fmt: skip
    trainer.fit(module, datamodule=dm)
    return module.model.eval()


def score_sessions(
    model: Stitched, data: MultiSessionData
) -> tuple[str, dict[str, float], dict[str, float], dict[str, dict[str, float]]]:
    """Score every session of a finished multi-session run with the harness, on the last split all
    sessions have (and on val): (that split, its mean over sessions, val's mean, {session: metrics})."""
    preds = model.predict_sessions(data)
    present = [s for s in ("train", "val", "test") if all(len(d.indices(s)) for _, d in data)]
    split = present[-1]
    scores = {s: evaluate_sessions(preds, data, s) for s in {"val", split} & set(present)}
    val_mean = scores.get("val", {}).get("mean", {})
    return split, scores[split]["mean"], val_mean, scores[split]["sessions"]
