"""`load_pretrained(name_or_path)`: a trained model, ready for inference, in one line.

    model = neuralnets.load_pretrained("lfads_lorenz")          # bundled with the package
    model = neuralnets.load_pretrained("runs/lfads_lorenz/2026-11-25_10-00-00")   # a run directory
    model = neuralnets.load_pretrained("path/to/best-epoch=12.ckpt")              # a checkpoint file
    out = model.predict(spikes)   # {"rates", "latents", ("inputs")} numpy arrays

Loading reads local files only (never the network) and does not import PyTorch Lightning: the model
is rebuilt by `neuralnets.models.create_model` from the hyperparameters saved in the checkpoint (its
model config and the data spec) and its weights are loaded with `torch.load(weights_only=True)`.
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch

from neuralnets.checkpoints import read_checkpoint, run_checkpoint
from neuralnets.config import load_saved_config
from neuralnets.data.sessions import MultiSessionData, MultiSessionSpec, spec_from_dict
from neuralnets.data.spikedata import DataSpec, SpikeData, check_counts
from neuralnets.errors import CheckpointError, ConfigError, DataError, ModelConfigError
from neuralnets.models import MODELS, create_model, resolve_model_config
from neuralnets.models.base import SpikeModel
from neuralnets.pretrained.registry import (
    CHECKPOINT_FILE,
    CHECKPOINTS_DIR,
    bundled_digest,
    bundled_dir,
    list_pretrained,
    read_card,
)
from neuralnets.runs import CHECKPOINT_DIR as RUN_CHECKPOINTS
from neuralnets.runs import CONFIG_FILE as RUN_CONFIG
from neuralnets.runs import METRICS_FILE as RUN_METRICS
from neuralnets.runs import read_json, read_status


class PretrainedModel:
    """A trained `SpikeModel` in eval mode with what is known about it.

    Attributes: `model` (the SpikeModel, eval mode, on `device`), `spec` (DataSpec it was trained for;
    a MultiSessionSpec for a stitched model, whose `heldin` / `predict` / `evaluate` take `session=`),
    `config` (dict: the training config, or what the checkpoint holds of it), `metrics` (dict: harness
    metrics on the test split of its data; empty when unknown), `card` (the model card of a bundled
    model, else None), `name`, `path` (the checkpoint file).
    """

    def __init__(
        self,
        model: SpikeModel,
        *,
        name: str,
        path: Path,
        config: dict[str, Any],
        metrics: dict[str, float],
        card: dict[str, Any] | None = None,
    ):
        self.model = model.eval()
        self.name, self.path = name, Path(path)
        self.config, self.metrics, self.card = config, metrics, card

    # ------------------------------------------------------------------ properties
    @property
    def spec(self) -> DataSpec | MultiSessionSpec:
        return self.model.spec

    def session_spec(self, session: str | int | None = None) -> DataSpec:
        """The DataSpec of one session (`session` names it for a multi-session model, else None)."""
        if not isinstance(self.spec, MultiSessionSpec):
            if session is not None:
                raise DataError(f"model {self.name!r} models one session; got session={session!r}")
            return self.spec
        if session is None:
            if self.spec.n_sessions > 1:
                raise DataError(f"model {self.name!r} has sessions {list(self.spec.names)}: pass session=")
            session = 0
        try:
            return self.spec[session]
        except ValueError as err:
            raise DataError(f"model {self.name!r}: {err}") from None

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    @property
    def n_parameters(self) -> int:
        return self.model.n_parameters

    def to(self, device: str | torch.device) -> PretrainedModel:
        """Move the model to `device` ('cpu', 'cuda', 'cuda:1', 'auto'); returns self."""
        self.model.to(resolve_device(device))
        return self

    def __repr__(self) -> str:
        metrics = ", ".join(f"{k}={v:.3f}" for k, v in self.metrics.items()) or "unknown"
        if isinstance(self.spec, MultiSessionSpec):
            sessions = ", ".join(f"{n} ({d.n_heldin} held-in of {d.n_neurons})" for n, d in zip(
                self.spec.names, self.spec.specs, strict=True))  # fmt: skip
            name = type(self.model).__name__
            return (
                f"PretrainedModel({self.name!r}: {name}, {self.n_parameters} parameters, on {self.device})\n"
                f"  sessions: {sessions}; {self.spec.n_obs_bins} observed + "
                f"{self.spec.n_fwd_bins} forward bins of {self.spec.bin_size * 1e3:g} ms\n"
                f"  test metrics (mean over the sessions it was scored on): {metrics}"
            )
        s = self.spec
        return (
            f"PretrainedModel({self.name!r}: {type(self.model).__name__}, {self.n_parameters} parameters, "
            f"on {self.device})\n"
            f"  input: held-in spikes (trials, {s.n_obs_bins}, {s.n_heldin}), bin {s.bin_size * 1e3:g} ms\n"
            f"  output: rates (trials, {s.n_bins}, {s.n_neurons}) = {s.n_obs_bins} observed + "
            f"{s.n_fwd_bins} forward bins, {s.n_heldin} held-in + {s.n_heldout} held-out neurons\n"
            f"  test metrics: {metrics}"
        )

    # ------------------------------------------------------------------ inference
    def heldin(
        self,
        spikes: SpikeData | np.ndarray | torch.Tensor,
        bin_size: float | None = None,
        session: str | int | None = None,
    ) -> np.ndarray:
        """The model input `(trials, T_obs, N_in)` from `spikes`, after checking it against `spec`.

        `spikes` is a SpikeData, held-in spikes `(trials, T_obs, N_in)`, or full spikes
        `(trials, T_obs + T_fwd, N_in + N_out)` (held-in neurons first, observed bins first, the
        SpikeData convention; only the held-in observed part is read). `bin_size` (seconds) is checked
        when given; a SpikeData's own bin size is always checked. `session`: which session of a
        multi-session (stitched) model the spikes come from.
        """
        s = self.session_spec(session)
        if isinstance(spikes, SpikeData):
            got = spikes.spec
            if (got.n_heldin, got.n_obs_bins, got.n_neurons) != (s.n_heldin, s.n_obs_bins, s.n_neurons):
                raise DataError(
                    f"{spikes.source}: data have {got.n_heldin} held-in of {got.n_neurons} neurons and "
                    f"{got.n_obs_bins} observed bins, but model {self.name!r} was trained on {s.n_heldin} "
                    f"held-in of {s.n_neurons} neurons and {s.n_obs_bins} observed bins"
                )
            if bin_size is not None and not np.isclose(bin_size, spikes.bin_size):
                raise DataError(f"bin_size={bin_size} s contradicts the data's bin_size={spikes.bin_size} s")
            bin_size = spikes.bin_size
            x = spikes.heldin_obs  # (trials, T_obs, N_in)
        else:
            if isinstance(spikes, torch.Tensor):
                spikes = spikes.detach().cpu().numpy()
            x = np.asarray(spikes)
            if x.dtype.kind not in "biuf":
                raise DataError(f"spikes must be a numeric array of counts; got dtype {x.dtype}")
            if x.ndim != 3:
                hint = " (for one trial, pass spikes[None])" if x.ndim == 2 else ""
                raise DataError(f"spikes must have rank 3 (trials, bins, neurons); got shape {x.shape}{hint}")
            heldin_shape, full_shape = (s.n_obs_bins, s.n_heldin), (s.n_bins, s.n_neurons)
            if x.shape[1:] == heldin_shape:
                pass
            elif x.shape[1:] == full_shape:
                x = x[:, : s.n_obs_bins, : s.n_heldin]  # (trials, T_obs, N_in)
            else:
                raise DataError(
                    f"spikes have shape {x.shape}, but model {self.name!r} expects held-in spikes "
                    f"(trials, {s.n_obs_bins}, {s.n_heldin}) or full spikes (trials, {s.n_bins}, "
                    f"{s.n_neurons}) (trials, bins, neurons); got {x.shape[1]} bins and {x.shape[2]} "
                    f"neurons, the model was trained on {s.n_obs_bins} observed + {s.n_fwd_bins} forward "
                    f"bins and {s.n_heldin} held-in + {s.n_heldout} held-out neurons"
                )
            if x.shape[0] == 0:
                raise DataError(f"spikes have no trials (shape {x.shape})")
            check_counts(x, "spikes")
        if bin_size is not None and not np.isclose(bin_size, s.bin_size, rtol=1e-6, atol=0.0):
            raise DataError(
                f"bin_size is {bin_size} s ({bin_size * 1e3:g} ms), but model {self.name!r} was trained on "
                f"{s.bin_size} s ({s.bin_size * 1e3:g} ms) bins; rebin the data to {s.bin_size * 1e3:g} ms"
            )
        return x

    def predict(
        self,
        spikes: SpikeData | np.ndarray | torch.Tensor,
        bin_size: float | None = None,
        batch_size: int = 256,
        session: str | int | None = None,
    ) -> dict[str, np.ndarray]:
        """Infer rates and latents for every trial of `spikes` (see `heldin` for the accepted inputs).

        Returns float32 numpy arrays: `rates (trials, T_obs + T_fwd, N_all)` expected counts per bin
        (divide by `spec.bin_size` for Hz), `latents (trials, T, K)` (LFADS: factors) and, for models
        with a controller, `inputs (trials, T_obs, U)` (LFADS inferred inputs). Runs in eval mode,
        `batch_size` trials at a time on the model's device, so large inputs fit in memory.
        `session`: which session of a multi-session (stitched) model the spikes come from.
        """
        x = self.heldin(spikes, bin_size, session)
        if session is not None:
            session = self.spec.index(session)
        try:
            return self.model.predict(x, batch_size=batch_size, session=session)
        except FloatingPointError as err:
            raise FloatingPointError(f"pretrained model {self.name!r} ({self.path}): {err}") from None

    def evaluate(
        self, data: SpikeData | MultiSessionData, split: str = "test", batch_size: int = 256
    ) -> dict[str, Any]:
        """Harness metrics (`neuralnets.eval.evaluate`) of this model on `data`'s `split` trials.

        Predicts every trial of `data` (the harness fits its regressions on the train trials).
        Several sessions: `evaluate_sessions`' {"sessions": {name: metrics}, "mean": metrics}."""
        from neuralnets.eval import evaluate, evaluate_sessions

        if isinstance(data, MultiSessionData):
            preds = {n: self.predict(d, batch_size=batch_size, session=n) for n, d in data}
            return evaluate_sessions(preds, data, split)
        session = None if not isinstance(self.spec, MultiSessionSpec) else data.name
        out = self.predict(data, batch_size=batch_size, session=session)
        return evaluate(out["rates"], data, split, latents=out["latents"], inputs=out.get("inputs"))


# ---------------------------------------------------------------------------------------------- loading
def resolve_device(device: str | torch.device) -> torch.device:
    """'auto' is CUDA when available, else CPU; anything else goes to `torch.device`."""
    if isinstance(device, str) and device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dev = torch.device(device)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"device={str(device)!r} requested but CUDA is not available; use 'cpu' or 'auto'")
    return dev


def load_pretrained(
    name_or_path: str | Path, device: str | torch.device = "cpu", *, trust_unverified: bool = False
) -> PretrainedModel:
    """Load a trained model for inference, in eval mode on `device` ('cpu', 'cuda', 'auto').

    `name_or_path`: a bundled name (`neuralnets.pretrained.list_pretrained()`; a string equal to a
    bundled name always means the bundled model, pass a `Path` or './name' for a local folder of that
    name), a checkpoint file written by training (`.ckpt`), a training run directory (its scored
    checkpoint: the one `metrics.json` names, else `best-*.ckpt`, else `last.ckpt`), or a bundled-style
    folder holding `model.ckpt` and `model_card.json`. Reads local files only.

    The checkpoint's sha256 is verified first: a bundled model against the digest shipped in the
    package (`registry.BUNDLED_SHA256`), a folder against its model card, a training checkpoint
    against its `.sha256` record. A file without any is refused (`CheckpointError`) unless
    `trust_unverified=True`, which logs the digest it accepted.
    """
    dev = resolve_device(device)
    trust = {"trust_unverified": trust_unverified}
    if isinstance(name_or_path, str) and name_or_path in list_pretrained():
        return _load_folder(bundled_dir(name_or_path), dev, name=name_or_path, **trust)
    path = Path(name_or_path)
    if not path.exists():
        if isinstance(name_or_path, str) and not any(c in name_or_path for c in "/\\."):
            bundled_dir(name_or_path)  # raises, listing the bundled names
        raise FileNotFoundError(
            f"{path}: no such checkpoint file or run directory "
            f"(bundled models: {list_pretrained() or 'none'})"
        )
    if path.is_dir():
        if (path / CHECKPOINT_FILE).is_file() and (path / "model_card.json").is_file():
            return _load_folder(path, dev, name=path.name, **trust)
        return _load_run_dir(path, dev, **trust)
    return _load_checkpoint_file(path, dev, **trust)


def _load_folder(folder: Path, device: torch.device, name: str, trust_unverified: bool) -> PretrainedModel:
    """A bundled-style folder: model.ckpt + model_card.json."""
    card = read_card(folder)
    ckpt_path = folder / CHECKPOINT_FILE
    # Verified before anything is read from the file: a bundled folder against the digest in the
    # package (editing its card changes nothing), any other against the digest its card records.
    expected, source = bundled_digest(folder), "the digest shipped in the package"
    if expected is None:
        expected, source = card["checkpoint"].get("sha256"), "its model card"
    ckpt = read_checkpoint(ckpt_path, expected, source, trust_unverified=trust_unverified)
    model = build_from_checkpoint(ckpt_path, device, ckpt)
    check_card_matches(card, type(model).__name__, folder)
    return PretrainedModel(
        model,
        name=name,
        path=ckpt_path,
        config=dict(card["config"]),
        metrics=dict(card["metrics"]),
        card=card,
    )


def check_card_matches(card: Mapping[str, Any], model_class: str, folder: Path) -> None:
    """A CheckpointError naming the card when its `model` or `config.model` names another model class
    than `model_class`, the one its checkpoint rebuilds: the card's config and metrics describe that
    model, so both must agree."""
    where = folder / "model_card.json"
    named = {"model": card.get("model")}
    if isinstance(card["config"], Mapping) and card["config"].get("model") is not None:
        try:
            named["config.model"] = MODELS[resolve_model_config(card["config"]["model"])[0]].__name__
        except ModelConfigError as e:
            raise CheckpointError(f"{where}: config.model refused: {e}") from None
    for key, value in named.items():
        if value != model_class:
            raise CheckpointError(
                f"{where}: {key} names {value!r}, but the checkpoint {CHECKPOINT_FILE} holds {model_class}; "
                "a model card must describe its own checkpoint"
            )


def _load_run_dir(run_dir: Path, device: torch.device, trust_unverified: bool) -> PretrainedModel:
    status = read_status(run_dir)["status"]
    if status not in ("finished", "unknown"):  # unknown: a folder of checkpoints, not a run directory
        warnings.warn(
            f"{run_dir} is not a finished run (status {status}): loading its latest checkpoint",
            stacklevel=3,
        )
    ckpt = run_checkpoint(run_dir, "best")
    return _load_checkpoint_file(ckpt, device, name=run_dir.name, trust_unverified=trust_unverified)


def _load_checkpoint_file(
    path: Path, device: torch.device, name: str | None = None, trust_unverified: bool = False
) -> PretrainedModel:
    ckpt = read_checkpoint(path, trust_unverified=trust_unverified)
    model = build_from_checkpoint(path, device, ckpt)
    hp = ckpt["hyper_parameters"]
    # A checkpoint inside a run directory (run/checkpoints/x.ckpt) takes the run's config and, if this
    # is the checkpoint the run scored, its metrics.
    run_dir = path.resolve().parent.parent
    config: dict[str, Any] | None = None
    metrics: dict[str, float] = {}
    if path.resolve().parent.name == RUN_CHECKPOINTS and (run_dir / RUN_CONFIG).is_file():
        from omegaconf import OmegaConf

        config = OmegaConf.to_container(load_saved_config(run_dir / RUN_CONFIG))
        record = _read_json(run_dir / RUN_METRICS)
        if record and record.get("checkpoint"):
            scored = (run_dir / record["checkpoint"]).resolve()
            if scored == path.resolve():
                metrics = dict(record.get("metrics", {}))
    if config is None:
        module = {k: v for k, v in hp.items() if k not in ("model", "spec", "data_name")}
        config = {"model": dict(hp["model"]), "module": module, "data": {"name": hp.get("data_name", "")}}
    return PretrainedModel(
        model,
        name=name or path.stem,
        path=path,
        config=config,
        metrics=metrics,
        card=None,
    )


def _read_json(path: Path) -> dict[str, Any] | None:
    if not path.is_file():
        return None
    return read_json(path)


def build_from_checkpoint(
    path: str | Path, device: torch.device | str = "cpu", ckpt: Mapping[str, Any] | None = None
) -> SpikeModel:
    """Rebuild the `SpikeModel` saved in a training checkpoint, load its weights, eval mode on `device`.

    The model is built by `neuralnets.models.create_model` from the saved config: only registered
    model classes with plain option values (a legacy `_target_` must be a registered class's path).
    Without `ckpt`, the file is read by `neuralnets.checkpoints.read_checkpoint` (verified)."""
    path = Path(path)
    ckpt = read_checkpoint(path) if ckpt is None else ckpt
    hp = ckpt["hyper_parameters"]
    try:
        name, options = resolve_model_config(hp["model"])
    except ModelConfigError as e:
        raise CheckpointError(f"{path}: saved model config refused: {e}") from None
    cls = MODELS[name]
    try:
        model = create_model(name, spec_from_dict(hp["spec"]), **options)
    except Exception as e:  # noqa: BLE001 - surface which file and class failed to build
        raise CheckpointError(f"{path}: cannot rebuild {cls.__name__} from its saved config ({e})") from None
    prefix = "model."
    state = {k[len(prefix) :]: v for k, v in ckpt["state_dict"].items() if k.startswith(prefix)}
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as e:
        raise CheckpointError(
            f"{path}: weights do not fit {cls.__name__} built from its saved config: {e}"
        ) from None
    return model.to(device).eval()


__all__ = [
    "CHECKPOINTS_DIR",
    "PretrainedModel",
    "build_from_checkpoint",
    "load_pretrained",
    "read_checkpoint",
    "resolve_device",
]
