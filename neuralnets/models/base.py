"""The model contract every model family follows (models never import Lightning).

A model is built as `Model(spec=DataSpec, **hparams)` and maps a batch to a `ModelOutput`.

Batch (a dict of tensors on the model's device; B trials):
- `heldin   (B, T_obs, N_in)`  float counts: the only thing a model may read as input;
- `spikes   (B, T, N)`         all neurons over observed + forward bins (targets, for the training module);
- `observed (B, T, N)` bool     False where no data were recorded (absent when everything was);
- `behavior (B, T_obs, D)`      optional; `index (B,)` trial indices into the dataset;
- `inputs   (B, T, U)`          optional known external inputs (no model reads them yet);
- `log_count_factorial (B,)`    sum of log y! over each trial's observed entries (for the training module);
- `session`                     int, multi-session data only: the index of the one session of the batch
                                (a stitched model picks that session's read-in and read-out).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch
from torch import Tensor, nn

from neuralnets.data.sessions import MultiSessionSpec, spec_from_dict
from neuralnets.data.spikedata import DataSpec

READOUT_FLOOR = 1e-3  # counts per bin: the smallest initial rate (silent neurons), e.g. 0.2 Hz in 5 ms bins


@dataclass
class ModelOutput:
    rates: Tensor  # (B, T_obs + T_fwd, N) expected counts per bin, > 0
    latents: Tensor  # (B, T, K) low-dimensional state (LFADS: factors)
    aux_losses: dict[str, Tensor] = field(default_factory=dict)  # scalars, weighted by `Ramp`s
    inputs: Tensor | None = None  # (B, T_obs, U) inferred inputs (LFADS controller)
    recon_mask: Tensor | None = None  # (B, T, N) bool: where to score reconstruction (masked modelling)


@dataclass
class Ramp:
    """Weight of an auxiliary loss: `scale`, ramped linearly from 0 over `steps` after `start` steps."""

    scale: float = 1.0
    start: int = 0
    steps: int = 0

    def __call__(self, step: int) -> float:
        if self.steps <= 0:
            return self.scale if step >= self.start else 0.0
        return self.scale * min(max((step - self.start) / self.steps, 0.0), 1.0)


class SpikeModel(nn.Module):
    """Base class: stores the data spec and the weights of the auxiliary losses.

    Capabilities (class attributes, read by the training module and the tools; override as needed):
    - `masks_input`: the model hides parts of its own input in training and says where to score
      (`ModelOutput.recon_mask`), so the training module applies no coordinated dropout on top;
    - `accepts_coordinated_dropout`: False for a model that must see its input whole (GPFA fits the
      input's own likelihood): the training module refuses `coordinated_dropout > 0` for it;
    - `default_coordinated_dropout`: the rate `module.coordinated_dropout: auto` gives the model;
    - `has_inferred_inputs`: forward returns `inputs` (LFADS with a controller);
    - `has_recurrent_dynamics`: the model's latents come from a recurrent state that evolves by itself
      when its inputs are zero (LFADS generator, RNN decoder, a stitched core), exposed for analysis
      (`neuralnets.analysis`) by `dynamics_states`, `autonomous_step` and `states_to_latents`;
    - `supports_fused_recurrence`: has a `recurrence` option with a fused fast path ('plain'/'fused');
    - `multi_session`: built for several sessions (`MultiSessionSpec`), reads `batch["session"]`.

    Every model names its read-out `self.readout`: an `nn.Linear` from latents to the log-rates
    `(..., N)` of all neurons, whose bias `init_readout_bias` sets from the data.
    """

    # Every capability flag a model family declares (docs/models.md "Adding a model" explains each).
    CAPABILITIES = (
        "masks_input",
        "accepts_coordinated_dropout",
        "default_coordinated_dropout",
        "has_inferred_inputs",
        "has_recurrent_dynamics",
        "supports_fused_recurrence",
        "multi_session",
    )
    masks_input: bool = False
    accepts_coordinated_dropout: bool = True
    default_coordinated_dropout: float = 0.0
    has_inferred_inputs: bool = False
    has_recurrent_dynamics: bool = False
    supports_fused_recurrence: bool = False
    multi_session: bool = False  # accepts a MultiSessionSpec and reads `batch["session"]`

    def __init__(self, spec: DataSpec | MultiSessionSpec | dict):
        super().__init__()
        self.spec = spec_from_dict(spec)
        if isinstance(self.spec, MultiSessionSpec) and not self.multi_session:
            raise ValueError(
                f"{type(self).__name__} models one session; data of {self.spec.n_sessions} sessions "
                f"{list(self.spec.names)} need a stitched model (model=stitched)"
            )
        self.aux_weights: dict[str, Ramp] = {}

    def forward(self, batch: dict[str, Tensor]) -> ModelOutput:  # pragma: no cover - abstract
        raise NotImplementedError

    # ------------------------------------------------------------------ recurrent dynamics (analysis)
    def dynamics_states(self, heldin: Tensor, session: int | str | None = None) -> Tensor:
        """The recurrent states `(B, T, H)` the model visits on held-in spikes `heldin (B, T_obs, N_in)`
        over all T bins (eval mode: posterior means, inferred inputs as inferred). Models with
        `has_recurrent_dynamics` override this."""
        raise NotImplementedError(f"{type(self).__name__} has no recurrent dynamics")

    def autonomous_step(self, h: Tensor) -> Tensor:
        """One bin of the autonomous dynamics F: states `(..., H)` -> next states `(..., H)`, every
        external or inferred input set to zero. Differentiable (fixed-point search, Jacobians)."""
        raise NotImplementedError(f"{type(self).__name__} has no recurrent dynamics")

    def states_to_latents(self, h: Tensor) -> Tensor:
        """The model's latents `(..., K)` (LFADS: factors) read from recurrent states `(..., H)`."""
        raise NotImplementedError(f"{type(self).__name__} has no recurrent dynamics")

    @torch.no_grad()
    def init_readout_bias(self, mean_counts: Tensor | np.ndarray, floor: float = READOUT_FLOOR) -> None:
        """Start each neuron's log-rate at log(its mean count per bin) `mean_counts (N,)`, floored at
        `floor` counts per bin for silent neurons (log(0) would be -inf). Called once when a run starts
        from scratch (`training/build.py`), never on resume or when loading weights."""
        set_log_rate_bias(self, getattr(self, "readout", None), mean_counts, floor)

    def check_input(self, heldin: Tensor, session: int | str | None = None) -> None:
        """Raise a clear error when the input does not match the spec the model was built for."""
        if session is not None:
            raise ValueError(f"{type(self).__name__} models one session; got session={session!r}")
        s = self.spec
        if heldin.ndim != 3 or heldin.shape[1:] != (s.n_obs_bins, s.n_heldin):
            raise ValueError(
                f"{type(self).__name__} expects held-in spikes of shape (B, {s.n_obs_bins}, {s.n_heldin}) "
                f"(trials, observed bins, held-in neurons); got {tuple(heldin.shape)}"
            )

    @torch.no_grad()
    def predict_batches(self, heldin, batch_size: int = 256, session: int | str | None = None):
        """Yield (start, ModelOutput) over trials of `heldin (trials, T_obs, N_in)`, in eval mode.

        Accepts numpy or torch input; each chunk is moved to the model's device, so inputs far
        larger than device memory stream through. The caller restores train mode if needed.
        `session`: the session (name or index) of a multi-session model.
        """
        heldin = torch.as_tensor(heldin)
        if not torch.is_floating_point(heldin):
            heldin = heldin.float()
        self.check_input(heldin, session)
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1; got {batch_size}")
        self.eval()
        device = next(self.parameters()).device
        extra = {} if session is None else {"session": self.spec.index(session)}
        for start in range(0, heldin.shape[0], batch_size):
            chunk = heldin[start : start + batch_size].to(device, torch.float32)  # (b, T_obs, N_in)
            yield start, self({"heldin": chunk, **extra})

    def predict(
        self, heldin, batch_size: int = 256, session: int | str | None = None
    ) -> dict[str, np.ndarray]:
        """Rates `(trials, T, N)`, latents `(trials, T, K)` and, if the model has them, inferred
        inputs `(trials, T_obs, U)` as float32 numpy arrays, computed in eval mode in batches.
        `session`: the session (name or index) of a multi-session model."""
        parts: dict[str, list[np.ndarray]] = {}
        for _, out in self.predict_batches(heldin, batch_size, session):
            for key in ("rates", "latents", "inputs"):
                value = getattr(out, key)
                if value is not None:
                    parts.setdefault(key, []).append(value.float().cpu().numpy())
        out = {k: np.concatenate(v) for k, v in parts.items()}
        if not np.isfinite(out["rates"]).all():
            bad = int((~np.isfinite(out["rates"])).any(axis=(1, 2)).sum())
            raise FloatingPointError(
                f"{type(self).__name__} predicted non-finite rates for {bad} of {len(out['rates'])} trials; "
                "its weights are diverged or corrupt"
            )
        return out

    @property
    def n_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters())


@torch.no_grad()
def set_log_rate_bias(model: nn.Module, readout, mean_counts, floor: float = READOUT_FLOOR) -> None:
    """Start each log-rate of `readout` (an nn.Linear with a bias, to log-rates `(..., N)`) at log(the
    neuron's mean count per bin) `mean_counts (N,)`, floored at `floor` (log(0) would be -inf)."""
    name = type(model).__name__
    if not isinstance(readout, nn.Linear) or readout.bias is None:
        raise TypeError(f"{name} has no `readout` nn.Linear with a bias to initialise from the data")
    mean = torch.as_tensor(mean_counts, dtype=readout.bias.dtype, device=readout.bias.device)
    if mean.shape != readout.bias.shape:
        raise ValueError(
            f"{name}.init_readout_bias: mean counts have shape {tuple(mean.shape)}; "
            f"expected {tuple(readout.bias.shape)} (one per neuron)"
        )
    if not torch.isfinite(mean).all() or (mean < 0).any():
        raise ValueError(f"{name}.init_readout_bias: mean counts must be finite and >= 0")
    readout.bias.copy_(torch.log(mean.clamp(min=floor)))


def unseen_mask(spec: DataSpec, batch_size: int, device: torch.device | str | None = None) -> Tensor:
    """(B, T, N) bool, True at the entries a model never gets as input: held-out neurons at every bin
    and all neurons at the forward bins (the entries co-smoothing and forward prediction score)."""
    mask = torch.ones(batch_size, spec.n_bins, spec.n_neurons, dtype=torch.bool, device=device)  # (B, T, N)
    mask[:, : spec.n_obs_bins, : spec.n_heldin] = False
    return mask


def get_heldin(model: SpikeModel, batch: dict[str, Tensor]) -> Tensor:
    """Fetch `batch['heldin'] (B, T_obs, N_in)` as float and check it against the model's spec."""
    if "heldin" not in batch:
        raise ValueError(
            f"{type(model).__name__} needs batch['heldin'] (B, T_obs, N_in) held-in spikes; "
            f"the batch has keys {sorted(batch)}"
        )
    heldin = batch["heldin"]
    model.check_input(heldin)
    return heldin.float()


def positive_rates(log_rates: Tensor) -> Tensor:
    """exp with a clamp so that a diverging readout gives a large finite rate, not inf."""
    return torch.exp(log_rates.clamp(max=20.0))
