"""Multi-session stitching: one shared core over sessions with different neurons (Pandarinath et al.
2018, Nat. Methods, "stitching" LFADS).

Each session s has its own linear read-in `W_s: N_in_s -> D` from its held-in spikes into a shared
input space of `readin_dim` D, and its own read-out `K -> N_s` from the core's latents (LFADS: the
factors) to the log-rates of all its neurons. Everything in between is one core model (LFADS or the
RNN seq2seq), trained on all sessions, so the sessions share one latent dynamical system.
As in the paper, the read-ins start aligned (`init_readins`): the principal components of the
condition-averaged, smoothed held-in rates of all sessions together are the shared space, and each
session's read-in is the ridge regression from its own condition averages onto those components.

A batch holds trials of one session, given by `batch["session"]` (its index in `spec.names`). With
`train_only_sessions`, only those sessions' read-in and read-out train: the core and every other
session are frozen (fine-tuning on a new recording, `neuralnets.training.stitching`).
"""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor, nn

from neuralnets.data.sessions import MultiSessionData, MultiSessionSpec
from neuralnets.data.spikedata import DataSpec
from neuralnets.models.base import ModelOutput, SpikeModel, positive_rates, set_log_rate_bias
from neuralnets.models.lfads import LFADS
from neuralnets.models.rnn import RNNSeq2Seq

CORES: dict[str, type[SpikeModel]] = {"lfads": LFADS, "rnn": RNNSeq2Seq}
SINGLE_SESSION = "data"  # the session name of a stitched model built for a plain DataSpec


class Stitched(SpikeModel):
    """Per-session read-in `Linear(N_in_s -> readin_dim)` and read-out `Linear(K -> N_s)` around one
    shared `core` ('lfads' or 'rnn', built with `core_options`). `forward(batch)` reads
    `batch['heldin'] (B, T_obs, N_in_s)` of session `batch['session']` and returns that session's
    `rates (B, T, N_s)` and the core's `latents (B, T, K)`, aux losses and inferred inputs."""

    multi_session = True

    def __init__(
        self,
        spec: DataSpec | MultiSessionSpec | dict,
        core: str = "lfads",
        readin_dim: int = 16,
        core_options: dict | None = None,
        train_only_sessions: list[str] | None = None,
    ):
        super().__init__(spec)
        if isinstance(self.spec, DataSpec):  # one session: stitching reduces to a read-in before the core
            self.spec = MultiSessionSpec((SINGLE_SESSION,), (self.spec,))
        if core not in CORES:
            raise ValueError(f"Stitched: core={core!r} is not supported; expected one of {sorted(CORES)}")
        if isinstance(readin_dim, bool) or not isinstance(readin_dim, int) or readin_dim < 1:
            raise ValueError(f"Stitched: readin_dim must be an integer >= 1; got {readin_dim!r}")
        s = self.spec
        core_spec = DataSpec(
            n_heldin=readin_dim, n_neurons=1, n_obs_bins=s.n_obs_bins, n_fwd_bins=s.n_fwd_bins,
            bin_size=s.bin_size,
        )  # fmt: skip
        try:
            self.core = CORES[core](core_spec, **dict(core_options or {}))
        except TypeError as err:  # an option the core does not take
            raise ValueError(f"Stitched: core_options do not fit core={core!r}: {err}") from None
        # The core's own read-out (to one placeholder neuron) is replaced by the per-session read-outs:
        # frozen, so it takes no gradient and no optimiser state.
        self.core.readout.requires_grad_(False)
        self.core_name, self.readin_dim = core, readin_dim
        self.latent_dim = self.core.readout.in_features  # K: LFADS factors / RNN factors
        self.readins = nn.ModuleList(nn.Linear(d.n_heldin, readin_dim) for d in s.specs)
        self.readouts = nn.ModuleList(nn.Linear(self.latent_dim, d.n_neurons) for d in s.specs)
        self.aux_weights = self.core.aux_weights
        self.train_only_sessions = None if train_only_sessions is None else list(train_only_sessions)
        if self.train_only_sessions is not None:
            trained = {s.index(name) for name in self.train_only_sessions}  # ValueError for unknown names
            self.requires_grad_(False)
            for i in trained:
                self.readins[i].requires_grad_(True)
                self.readouts[i].requires_grad_(True)

    @property
    def has_inferred_inputs(self) -> bool:
        return self.core.has_inferred_inputs

    @property
    def has_recurrent_dynamics(self) -> bool:
        return self.core.has_recurrent_dynamics

    # ------------------------------------------------------------------ dynamics (analysis): the core's
    def dynamics_states(self, heldin: Tensor, session: int | str | None = None) -> Tensor:
        """The core's recurrent states `(B, T, H)` on session `session`'s `heldin (B, T_obs, N_in_s)`."""
        i = self.spec.index(0 if session is None and self.spec.n_sessions == 1 else session)
        self.check_input(heldin, i)
        with torch.no_grad():
            x = self.readins[i](heldin.to(self.readins[i].weight.dtype))  # (B, T_obs, D)
        return self.core.dynamics_states(x)

    def autonomous_step(self, h: Tensor) -> Tensor:
        return self.core.autonomous_step(h)

    def states_to_latents(self, h: Tensor) -> Tensor:
        return self.core.states_to_latents(h)

    def session_of(self, batch: dict[str, Tensor]) -> int:
        """The batch's session index (`batch['session']`; may be omitted for a one-session model)."""
        session = batch.get("session")
        if session is None:
            if self.spec.n_sessions == 1:
                return 0
            raise ValueError(
                f"Stitched: batch['session'] is needed to pick one of the sessions {list(self.spec.names)}"
            )
        if isinstance(session, Tensor):
            values = session.unique()
            if values.numel() != 1:
                raise ValueError(f"Stitched: a batch must hold one session; got sessions {values.tolist()}")
            session = int(values)
        return self.spec.index(session)

    def check_input(self, heldin: Tensor, session: int | str | None = None) -> None:
        i = self.spec.index(0 if session is None and self.spec.n_sessions == 1 else session)
        d = self.spec.specs[i]
        if heldin.ndim != 3 or heldin.shape[1:] != (d.n_obs_bins, d.n_heldin):
            raise ValueError(
                f"Stitched: session {self.spec.names[i]!r} expects held-in spikes of shape "
                f"(B, {d.n_obs_bins}, {d.n_heldin}) (trials, observed bins, held-in neurons); "
                f"got {tuple(heldin.shape)}"
            )

    def forward(self, batch: dict[str, Tensor]) -> ModelOutput:
        i = self.session_of(batch)
        heldin = batch["heldin"]  # (B, T_obs, N_in_s)
        self.check_input(heldin, i)
        x = self.readins[i](heldin.to(self.readins[i].weight.dtype))  # (B, T_obs, D)
        out = self.core({"heldin": x})
        latents = out.latents  # (B, T, K)
        with torch.autocast(device_type=latents.device.type, enabled=False):  # log-rates in fp32
            log_rates = self.readouts[i](latents.to(self.readouts[i].weight.dtype))  # (B, T, N_s)
        return ModelOutput(
            rates=positive_rates(log_rates), latents=latents, aux_losses=out.aux_losses, inputs=out.inputs
        )

    def predict_sessions(
        self, data: MultiSessionData, batch_size: int = 256
    ) -> dict[str, dict[str, np.ndarray]]:
        """{session: `predict` of all its trials} for every session of `data` (names must be known)."""
        return {name: self.predict(s.heldin_obs, batch_size, session=name) for name, s in data}

    # ------------------------------------------------------------------ initialisation from data
    def init_readout_bias(self, mean_counts, floor: float | None = None, session: int | str = 0) -> None:
        """Start session `session`'s log-rates at log(mean count per bin) `mean_counts (N_s,)`."""
        kw = {} if floor is None else {"floor": floor}
        set_log_rate_bias(self, self.readouts[self.spec.index(session)], mean_counts, **kw)

    @torch.no_grad()
    def init_readins(self, data: MultiSessionData, sessions: list[str] | None = None) -> str:
        """Set the read-ins of `sessions` (default: all of `data`'s) from their training trials, as
        `readin_init` computes them; returns how ('aligned' or 'pca')."""
        names = list(data.names) if sessions is None else list(sessions)
        train = [data[n].subset("train") for n in names]
        heldin = [d.heldin_obs for d in train]  # each (trials, T_obs, N_in_s)
        conds = None if any(d.condition is None for d in train) else [d.condition for d in train]
        weights, how = readin_init(heldin, conds, self.readin_dim)
        for name, (w, b) in zip(names, weights, strict=True):
            layer = self.readins[self.spec.index(name)]
            k = w.shape[0]  # components found (may be < D): the other rows keep their random start
            layer.weight[:k] = torch.as_tensor(w, dtype=layer.weight.dtype)
            layer.bias[:k] = torch.as_tensor(b, dtype=layer.bias.dtype)
        return how


def readin_init(
    heldin: list[np.ndarray], conditions: list[np.ndarray] | None, dim: int, smooth_bins: float = 2.0
) -> tuple[list[tuple[np.ndarray, np.ndarray]], str]:
    """Read-in weights `(k, N_in_s)` and biases `(k,)` per session (k <= dim) and 'aligned' or 'pca'.

    With conditions shared by all sessions ('aligned', Pandarinath et al. 2018): the condition-averaged
    held-in counts of every session, smoothed with a Gaussian of `smooth_bins`, side by side
    `(C * T_obs, sum N_in_s)`; their top principal components, scaled to unit variance, are the shared
    space; each session's read-in is the ridge regression from its own centred condition averages onto
    those components, all divided by one number so that single trials' read-in outputs have unit
    variance on average. Otherwise ('pca'): each session's own top principal components of its (smoothed)
    trials, scaled to unit variance: no alignment across sessions, only a sensible scale.
    """
    shared = None
    if conditions is not None:
        shared = sorted(set.intersection(*(set(np.unique(c).tolist()) for c in conditions)))
    if shared and len(shared) >= 2:
        psths = [  # each (C * T_obs, N_in_s)
            np.concatenate([_smooth(x[c == k].mean(axis=0), smooth_bins) for k in shared])
            for x, c in zip(heldin, conditions, strict=True)
        ]
        centred = [p - p.mean(axis=0) for p in psths]
        scores = _top_components(np.concatenate(centred, axis=1), dim)  # (C * T_obs, k)
        out, trial_var = [], []
        for x, p, cp in zip(heldin, psths, centred, strict=True):
            lam = 1e-2 * np.trace(cp.T @ cp) / cp.shape[1]  # ridge, relative to the data's scale
            w = np.linalg.solve(cp.T @ cp + lam * np.eye(cp.shape[1]), cp.T @ scores).T  # (k, N_in_s)
            out.append((w, -w @ p.mean(axis=0)))
            trial_var.append((x.reshape(-1, x.shape[-1]) @ w.T).var(axis=0).mean())
        # Single trials are noisier than condition averages: one scale for all sessions (alignment kept)
        # gives the read-in outputs of single trials unit variance.
        scale = float(np.sqrt(np.mean(trial_var)))
        return [(w / scale, b / scale) for w, b in out], "aligned"
    out = []
    for x in heldin:
        flat = _smooth(x, smooth_bins).reshape(-1, x.shape[-1])  # (trials * T_obs, N_in_s)
        mean = flat.mean(axis=0)
        _, s, vt = np.linalg.svd(flat - mean, full_matrices=False)
        k = min(dim, int((s > 1e-8 * max(s[0], 1e-30)).sum()))
        w = vt[:k] / (s[:k, None] / np.sqrt(len(flat)))  # (k, N_in_s): unit-variance projections
        out.append((w, -w @ mean))
    return out, "pca"


def _top_components(x: np.ndarray, dim: int) -> np.ndarray:
    """Scores `(samples, k)` of the top k <= dim principal components of centred `x`, unit variance."""
    u, s, _ = np.linalg.svd(x, full_matrices=False)
    k = min(dim, int((s > 1e-8 * max(s[0], 1e-30)).sum()))
    return u[:, :k] * np.sqrt(len(x))  # columns of u have unit norm: scale to unit variance


def _smooth(x: np.ndarray, sigma: float) -> np.ndarray:
    """Gaussian smoothing along the time axis (-2) of `x (..., T, N)`, normalised at the edges."""
    if sigma <= 0:
        return x
    t = np.arange(x.shape[-2])
    kernel = np.exp(-0.5 * ((t[:, None] - t[None, :]) / sigma) ** 2)  # (T, T)
    kernel /= kernel.sum(axis=1, keepdims=True)
    return np.einsum("st,...tn->...sn", kernel, x)
