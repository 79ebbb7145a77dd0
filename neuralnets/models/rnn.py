"""RNN encoder/decoder models.

- `RNNSeq2Seq`: a sequence-to-sequence model of spiking (a SpikeModel). A bidirectional GRU/LSTM encoder
  reads held-in spikes over the observed bins and summarises them as one latent state `z` per trial
  (deterministic, or a Gaussian posterior with a KL term to N(0, I) when `variational=True`). A GRU/LSTM
  decoder starts from `z` and runs autonomously (zero input) over all `T_obs + T_fwd` bins; its state is
  read out to low-dimensional factors and then to log-rates of all neurons (held-in and held-out).
- `RNNBehaviorDecoder`: a causal GRU/LSTM from spikes or inferred rates to behaviour (e.g. hand
  velocity), for BCI-style decoding. Not a SpikeModel; `experiments/behavior.py` fits it.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from neuralnets.data.spikedata import DataSpec
from neuralnets.models.base import ModelOutput, Ramp, SpikeModel, get_heldin, positive_rates

_CELLS = {"gru": nn.GRU, "lstm": nn.LSTM}


def _cell_class(cell: str) -> type[nn.RNNBase]:
    if cell not in _CELLS:
        raise ValueError(f"cell={cell!r} is not supported; expected one of {sorted(_CELLS)}")
    return _CELLS[cell]


def _check_positive(**values: float) -> None:
    for name, value in values.items():
        if not value > 0:
            raise ValueError(f"{name} must be > 0; got {value!r}")


def _check_dropout(**values: float) -> None:
    for name, value in values.items():
        if not 0.0 <= value < 1.0:
            raise ValueError(f"{name} must be in [0, 1); got {value!r}")


class RNNSeq2Seq(SpikeModel):
    """GRU/LSTM encoder -> latent state z -> autonomous GRU/LSTM decoder -> factors -> rates.

    Args:
        spec: the data spec (or its dict); fixes N_in, N, T_obs and T_fwd.
        cell: 'gru' or 'lstm', for both encoder and decoder.
        enc_dim: encoder hidden size per direction.
        latent_dim: size of the per-trial latent state z.
        dec_dim: decoder hidden size.
        fac_dim: number of low-dimensional factors (the returned `latents`).
        variational: if True, z ~ N(mean, exp(logvar)) with a KL term to N(0, I) (`aux_losses['kl']`);
            sampled by reparameterisation in train mode, the posterior mean in eval mode.
        dropout: dropout on the input spikes, on the encoder summary and on the decoder states.
        kl_scale, kl_start, kl_ramp_steps: the `Ramp` weighting the KL term (variational only).
        bidirectional_encoder: read the observed bins in both directions (the summary concatenates the
            final states of both directions).

    forward(batch) -> ModelOutput with rates (B, T_obs+T_fwd, N) in counts per bin and latents
    (B, T_obs+T_fwd, fac_dim) (the factors).
    """

    has_recurrent_dynamics = True  # the decoder runs autonomously (zero input)

    def __init__(
        self,
        spec: DataSpec | dict,
        cell: str = "gru",
        enc_dim: int = 64,
        latent_dim: int = 16,
        dec_dim: int = 64,
        fac_dim: int = 8,
        variational: bool = False,
        dropout: float = 0.1,
        kl_scale: float = 1.0,
        kl_start: int = 0,
        kl_ramp_steps: int = 1000,
        bidirectional_encoder: bool = True,
    ):
        super().__init__(spec)
        rnn = _cell_class(cell)
        _check_positive(enc_dim=enc_dim, latent_dim=latent_dim, dec_dim=dec_dim, fac_dim=fac_dim)
        _check_dropout(dropout=dropout)
        if kl_scale < 0 or kl_start < 0 or kl_ramp_steps < 0:
            raise ValueError(
                f"kl_scale, kl_start, kl_ramp_steps must be >= 0; got {kl_scale}, {kl_start}, {kl_ramp_steps}"
            )
        self.cell = cell
        self.variational = bool(variational)
        self.latent_dim = latent_dim
        self.dec_dim = dec_dim
        s = self.spec

        self.dropout = nn.Dropout(dropout)
        self.encoder = rnn(s.n_heldin, enc_dim, batch_first=True, bidirectional=bidirectional_encoder)
        summary_dim = enc_dim * (2 if bidirectional_encoder else 1)
        # Deterministic: z = W s + b. Variational: [mean, logvar] = W s + b.
        self.to_latent = nn.Linear(summary_dim, latent_dim * (2 if self.variational else 1))
        # z -> initial decoder state (h0; for an LSTM also c0).
        self.to_h0 = nn.Linear(latent_dim, dec_dim * (2 if cell == "lstm" else 1))
        # The decoder runs autonomously: its input is a single zero channel, so nn.GRU/LSTM (cuDNN) does
        # the whole unroll in one call.
        self.decoder = rnn(1, dec_dim, batch_first=True)
        self.to_factors = nn.Linear(dec_dim, fac_dim)
        self.readout = nn.Linear(fac_dim, s.n_neurons)
        if self.variational:
            self.aux_weights["kl"] = Ramp(
                scale=float(kl_scale), start=int(kl_start), steps=int(kl_ramp_steps)
            )

    def encode(self, heldin: Tensor) -> tuple[Tensor, Tensor | None, Tensor | None]:
        """heldin (B, T_obs, N_in) -> z (B, latent_dim), and posterior mean/logvar (B, latent_dim) or None."""
        x = self.dropout(heldin)
        _, h_n = self.encoder(x)
        if self.cell == "lstm":
            h_n = h_n[0]  # (h_n, c_n) -> h_n
        # h_n (directions, B, enc_dim) -> (B, directions * enc_dim): final states of both directions.
        summary = self.dropout(h_n.transpose(0, 1).reshape(heldin.shape[0], -1))
        out = self.to_latent(summary)
        if not self.variational:
            return out, None, None
        mean, logvar = out.chunk(2, dim=-1)  # (B, latent_dim) each
        logvar = logvar.clamp(-12.0, 12.0)  # keeps exp(logvar) finite early in training
        if self.training:
            z = mean + torch.randn_like(mean) * torch.exp(0.5 * logvar)
        else:
            z = mean
        return z, mean, logvar

    def decode(self, z: Tensor) -> tuple[Tensor, Tensor]:
        """z (B, latent_dim) -> factors (B, T, fac_dim), log-rates (B, T, N) over T = T_obs + T_fwd."""
        b = z.shape[0]
        h0 = self.to_h0(z)
        if self.cell == "lstm":
            h, c = h0.chunk(2, dim=-1)
            state = (h.unsqueeze(0).contiguous(), c.unsqueeze(0).contiguous())  # (1, B, dec_dim) each
        else:
            state = h0.unsqueeze(0)  # (1, B, dec_dim)
        inputs = z.new_zeros(b, self.spec.n_bins, 1)  # (B, T, 1) no external input
        states, _ = self.decoder(inputs, state)  # (B, T, dec_dim)
        factors = self.to_factors(self.dropout(states))  # (B, T, fac_dim)
        return factors, self.readout(factors)

    # ------------------------------------------------------------------ dynamics (analysis)
    def _initial_state(self, z: Tensor) -> Tensor:
        """Decoder state `(B, H)` before the first bin; H = dec_dim, or 2 dec_dim for an LSTM ([h, c])."""
        return self.to_h0(z)

    @torch.no_grad()
    def dynamics_states(self, heldin: Tensor, session: int | str | None = None) -> Tensor:
        """Decoder states `(B, T, H)` on `heldin (B, T_obs, N_in)` (eval mode: z is the posterior mean);
        for an LSTM each state is `[h, c]` (H = 2 dec_dim)."""
        self.check_input(heldin, session)
        was_training = self.training
        self.eval()
        try:
            z, _, _ = self.encode(heldin.float())
            h = self._initial_state(z)  # (B, H)
            states = []
            for _ in range(self.spec.n_bins):
                h = self.autonomous_step(h)
                states.append(h)
        finally:
            self.train(was_training)
        return torch.stack(states, dim=1)  # (B, T, H)

    def autonomous_step(self, h: Tensor) -> Tensor:
        """One decoder step with its zero input (PyTorch's GRU/LSTM equations): `(..., H)` -> `(..., H)`."""
        d = self.decoder  # zero input: W_ih x vanishes, the input gates are their biases
        if self.cell == "gru":
            H = self.dec_dim
            gh = F.linear(h, d.weight_hh_l0, d.bias_hh_l0)  # (..., 3H) rows [r, z, n]
            gi = d.bias_ih_l0
            r = torch.sigmoid(gi[:H] + gh[..., :H])
            u = torch.sigmoid(gi[H : 2 * H] + gh[..., H : 2 * H])
            n = torch.tanh(gi[2 * H :] + r * gh[..., 2 * H :])
            return (1 - u) * n + u * h
        hx, cx = h.chunk(2, dim=-1)
        gates = F.linear(hx, d.weight_hh_l0, d.bias_ih_l0 + d.bias_hh_l0)  # (..., 4 dec_dim)
        i, f, g, o = gates.chunk(4, dim=-1)  # rows [i, f, g, o]
        c = torch.sigmoid(f) * cx + torch.sigmoid(i) * torch.tanh(g)
        return torch.cat([torch.sigmoid(o) * torch.tanh(c), c], dim=-1)

    def states_to_latents(self, h: Tensor) -> Tensor:
        """Factors `(..., fac_dim)` of decoder states (an LSTM's factors read its h, not c)."""
        return self.to_factors(h[..., : self.dec_dim])

    def forward(self, batch: dict[str, Tensor]) -> ModelOutput:
        heldin = get_heldin(self, batch)  # (B, T_obs, N_in)
        z, mean, logvar = self.encode(heldin)
        factors, log_rates = self.decode(z)
        aux: dict[str, Tensor] = {}
        if self.variational:
            # KL(N(mean, var) || N(0, I)) summed over latent dims, averaged over trials (per-trial scale).
            kl = 0.5 * (torch.exp(logvar) + mean.pow(2) - 1.0 - logvar).sum(-1)  # (B,)
            aux["kl"] = kl.mean()
        return ModelOutput(rates=positive_rates(log_rates), latents=factors, aux_losses=aux)


# --------------------------------------------------------------------------- behaviour decoding


class RNNBehaviorDecoder(nn.Module):
    """Causal (unidirectional) GRU/LSTM + linear readout: inputs (B, T, C) -> behaviour (B, T, D).

    The prediction at bin t uses inputs at bins <= t only, as for online (BCI) decoding.
    """

    def __init__(
        self,
        in_dim: int,
        out_dim: int,
        hidden_dim: int = 64,
        n_layers: int = 1,
        cell: str = "gru",
        dropout: float = 0.0,
    ):
        super().__init__()
        rnn = _cell_class(cell)
        _check_positive(in_dim=in_dim, out_dim=out_dim, hidden_dim=hidden_dim, n_layers=n_layers)
        _check_dropout(dropout=dropout)
        self.in_dim = in_dim
        self.rnn = rnn(
            in_dim,
            hidden_dim,
            num_layers=n_layers,
            batch_first=True,
            dropout=dropout if n_layers > 1 else 0.0,
        )
        self.dropout = nn.Dropout(dropout)
        self.readout = nn.Linear(hidden_dim, out_dim)

    def forward(self, x: Tensor) -> Tensor:
        """x (B, T, C) -> (B, T, D)."""
        if x.ndim != 3 or x.shape[2] != self.in_dim:
            raise ValueError(f"RNNBehaviorDecoder expects inputs (B, T, {self.in_dim}); got {tuple(x.shape)}")
        h, _ = self.rnn(x)  # (B, T, hidden_dim)
        return self.readout(self.dropout(h))
