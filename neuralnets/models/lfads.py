"""LFADS: latent factor analysis via dynamical systems (Sussillo et al. 2016; Pandarinath et al. 2018).

A sequential VAE for single-trial spiking. A bidirectional GRU encodes the held-in spikes
`(B, T_obs, N_in)` into the Gaussian posterior of the generator's initial state g0 (with `ic_dim`, of
a low-dimensional initial condition z mapped linearly to g0 = W z + b; Pandarinath et al. 2018); with
`co_dim > 0` a second encoder feeds a controller whose output is the posterior of the inferred inputs
u_t (under an AR(1) prior). The controller at bin t reads that encoder's output at bin t - `ci_lag`
(zeros before), as the papers lag it to weaken the incentive to copy input to output; note that the
encoder is bidirectional, so its backward half at bin t - ci_lag has still read bins >= t. A
clipped-GRU generator driven by u_t (zero over the T_fwd forward bins) gives low-dimensional factors
and, through an exponential readout, rates of ALL neurons over T = T_obs + T_fwd bins. Train mode
samples g0 and u_t; eval mode uses the posterior means, or with `posterior_samples = n > 0` averages
the outputs of n posterior samples (no dropout), as LFADS does at inference.

Contract with the training module (units: nats per trial, MEAN over the batch): `aux_losses` holds
`kl_ic`, `l2_gen` and, with a controller, `kl_co`, `l2_con`, with the same keys in `aux_weights`;
with the reconstruction term summed over bins and neurons, `loss = recon + Σ_k weight_k · aux_k` is
the negative ELBO (plus L2) once the ramps reach scale 1. `recurrence`: "plain" is the per-step
autograd loop (the reference), "fused" the hand-written BPTT of `neuralnets.models.lfads_unroll`,
"auto" = fused where it applies. Defaults suit the small built-in datasets and equal
`configs/model/lfads.yaml`.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from neuralnets.data.spikedata import DataSpec
from neuralnets.models.base import ModelOutput, Ramp, SpikeModel, positive_rates
from neuralnets.models.lfads_unroll import lfads_unroll
from neuralnets.nn.clipped_gru import BidirectionalGRU, ClippedGRUCell, run_bidirectional
from neuralnets.nn.fast import resolve_recurrence
from neuralnets.nn.priors import AutoregressivePrior, MultivariateNormalPrior
from neuralnets.nn.readout import LogRateReadout, NormalizedLinear


class LFADS(SpikeModel):
    """LFADS sequential VAE. `forward(batch)` reads `batch['heldin'] (B, T_obs, N_in)` and returns
    `ModelOutput(rates (B, T, N), latents = factors (B, T, fac_dim), aux_losses,
    inputs (B, T_obs, co_dim) or None)`.
    """

    supports_fused_recurrence = True
    has_recurrent_dynamics = True  # the generator, run with zero inferred input
    # Coordinated dropout (Keshtkaran & Pandarinath 2019) keeps the autoencoder from passing held-in
    # spikes straight through to their own rates; every LFADS recipe uses 0.3.
    default_coordinated_dropout = 0.3

    def __init__(
        self,
        spec: DataSpec | dict,
        gen_dim: int = 64,
        ic_dim: int | None = None,
        fac_dim: int = 8,
        ic_enc_dim: int = 64,
        ci_enc_dim: int = 32,
        con_dim: int = 32,
        co_dim: int = 2,
        ci_lag: int = 0,
        dropout: float = 0.1,
        cell_clip: float = 5.0,
        ic_post_var_min: float = 1e-4,
        co_post_var_min: float = 1e-4,
        ic_prior_var: float = 0.1,
        co_tau_init: float = 10.0,
        co_prior_var: float = 0.1,
        kl_ic_scale: float = 1.0,
        kl_co_scale: float = 1.0,
        l2_gen_scale: float = 2000.0,
        l2_con_scale: float = 0.0,
        kl_ramp_start: int = 0,
        kl_ramp_steps: int = 400,
        l2_ramp_start: int = 0,
        l2_ramp_steps: int = 400,
        recurrence: str = "auto",
        posterior_samples: int = 0,
    ):
        super().__init__(spec)
        resolve_recurrence(recurrence)  # validates the name early
        for name, value in dict(gen_dim=gen_dim, fac_dim=fac_dim, ic_enc_dim=ic_enc_dim).items():
            if value <= 0:
                raise ValueError(f"LFADS: {name} must be > 0; got {value}")
        if co_dim < 0:
            raise ValueError(f"LFADS: co_dim must be >= 0 (0 disables the controller); got {co_dim}")
        if co_dim > 0 and (ci_enc_dim <= 0 or con_dim <= 0):
            raise ValueError(
                f"LFADS: with co_dim > 0, ci_enc_dim and con_dim must be > 0; got {ci_enc_dim}, {con_dim}"
            )
        if ic_dim is not None:
            _check_int("ic_dim", ic_dim, 1, "or null: a posterior over the whole generator state")
        _check_int("ci_lag", ci_lag, 0, "bins")
        _check_int("posterior_samples", posterior_samples, 0, "0 = posterior means")
        if ci_lag > 0 and co_dim == 0:
            raise ValueError(f"LFADS: ci_lag={ci_lag} needs a controller (co_dim > 0); got co_dim=0")
        if ci_lag >= self.spec.n_obs_bins:
            raise ValueError(
                f"LFADS: ci_lag={ci_lag} must be < the data's observed bins T_obs={self.spec.n_obs_bins}, "
                "or the controller reads only zeros"
            )
        if not 0.0 <= dropout < 1.0:
            raise ValueError(f"LFADS: dropout must be in [0, 1); got {dropout}")
        if not (ic_post_var_min > 0 and co_post_var_min > 0):
            raise ValueError("LFADS: posterior variance floors must be > 0")
        s = self.spec
        self.gen_dim, self.fac_dim, self.co_dim = gen_dim, fac_dim, co_dim
        self.ic_dim = gen_dim if ic_dim is None else ic_dim  # dimension of the initial-condition posterior
        self.ci_lag, self.posterior_samples = ci_lag, posterior_samples
        self.recurrence = recurrence  # may be changed after construction; read at every forward
        self.ci_dim = 2 * ci_enc_dim if co_dim > 0 else 0
        self.log_ic_var_min = math.log(ic_post_var_min)
        self.log_co_var_min = math.log(co_post_var_min)

        self.dropout = nn.Dropout(dropout)
        self.ic_encoder = BidirectionalGRU(s.n_heldin, ic_enc_dim)
        self.ic_linear = nn.Linear(2 * ic_enc_dim, 2 * self.ic_dim)  # -> [mean, raw log-var] of z (or g0)
        self.ic_prior = MultivariateNormalPrior(self.ic_dim, var_init=ic_prior_var)
        _init_logvar_bias(self.ic_linear, self.ic_dim, ic_prior_var)
        # ic_dim null: the posterior is over g0 itself (no map; the bundled checkpoints' layout).
        self.ic_to_g0 = None if ic_dim is None else nn.Linear(ic_dim, gen_dim)  # z (B, ic_dim) -> g0 (B, G)
        if co_dim > 0:
            self.ci_encoder = BidirectionalGRU(s.n_heldin, ci_enc_dim)
            self.controller = ClippedGRUCell(self.ci_dim + fac_dim, con_dim, clip_value=cell_clip)
            self.con_h0 = nn.Parameter(torch.zeros(con_dim))  # (C,) learnable controller initial state
            self.co_linear = nn.Linear(con_dim, 2 * co_dim)  # -> [mean, raw log-var] of u_t
            self.co_prior = AutoregressivePrior(co_dim, tau_init=co_tau_init, noise_var_init=co_prior_var)
            _init_logvar_bias(self.co_linear, co_dim, co_prior_var)
        self.generator = ClippedGRUCell(co_dim, gen_dim, clip_value=cell_clip)
        self.factors = NormalizedLinear(gen_dim, fac_dim)
        self.readout = LogRateReadout(fac_dim, s.n_neurons)

        self.aux_weights = {
            "kl_ic": Ramp(kl_ic_scale, kl_ramp_start, kl_ramp_steps),
            "l2_gen": Ramp(l2_gen_scale, l2_ramp_start, l2_ramp_steps),
        }
        if co_dim > 0:
            self.aux_weights["kl_co"] = Ramp(kl_co_scale, kl_ramp_start, kl_ramp_steps)
            self.aux_weights["l2_con"] = Ramp(l2_con_scale, l2_ramp_start, l2_ramp_steps)

    @property
    def has_inferred_inputs(self) -> bool:
        """With a controller (co_dim > 0), forward returns the inferred inputs."""
        return self.co_dim > 0

    # ------------------------------------------------------------------ forward
    def uses_fused(self) -> bool:
        """Whether forward runs the fused recurrences (`lfads_unroll`) under `self.recurrence`."""
        if resolve_recurrence(self.recurrence) == "plain":
            return False
        cells = [self.generator] + ([self.controller] if self.co_dim > 0 else [])
        ok = all(c.reset_after for c in cells) and len({c.clip_value for c in cells}) == 1
        ok = ok and not (torch.jit.is_scripting() or torch.jit.is_tracing())
        if not ok and self.recurrence == "fused":
            raise ValueError("LFADS: recurrence='fused' needs reset_after cells with one clip value")
        return ok  # 'auto' falls back to the plain loop when the fused one does not apply

    def forward(self, batch: dict[str, Tensor], sample: bool | None = None) -> ModelOutput:
        """`sample`: draw from the posteriors or use their means. Default: draw in training mode; in eval
        mode use the means, or average `posterior_samples` draws when that option is > 0."""
        heldin = batch["heldin"]
        self.check_input(heldin)
        if sample is None and not self.training and self.posterior_samples > 0:
            return self._average_samples(batch, self.posterior_samples)
        sample = self.training if sample is None else sample
        fused = self.uses_fused()
        x, g0, ic_mean, ic_logvar, ci = self._encode(heldin, sample, fused)
        B = x.shape[0]
        T_obs, T = self.spec.n_obs_bins, self.spec.n_bins

        # All randomness of the unroll is drawn here, in one fixed layout, so that the plain and the
        # fused paths consume the same random numbers (and give the same result for the same seed).
        eps = torch.randn(T_obs, B, self.co_dim, dtype=x.dtype, device=x.device) if sample else None
        mask = self._dropout_mask((T + 1, B, self.gen_dim), x)  # dropout multipliers of g0, g_0 .. g_{T-1}
        unroll = self._unroll_fused if fused else self._unroll
        factors, co_mean, co_logvar, co_u = unroll(g0, ci, eps if self.co_dim > 0 else None, mask)
        # Log-rates in float32 even under autocast: bf16 rounding of log-rates would blur the likelihood.
        with torch.autocast(device_type=factors.device.type, enabled=False):
            rates = positive_rates(self.readout(factors.to(self.readout.weight.dtype)))  # (B, T, N)

        aux = {
            "kl_ic": self.ic_prior.kl(ic_mean, ic_logvar).mean(),
            "l2_gen": _half_mean_square(self.generator.weight_hh),
        }
        if self.co_dim > 0:
            # Sampled: the paper's Monte-Carlo KL at the samples. Not sampled (eval): the exact KL, since
            # the MC formula evaluated at the posterior mean is not a KL estimate (it can be negative).
            if sample:
                kl_co = self.co_prior.kl(co_u, co_mean, co_logvar)
            else:
                kl_co = self.co_prior.kl_analytic(co_mean, co_logvar)
            aux["kl_co"] = kl_co.mean()
            aux["l2_con"] = _half_mean_square(self.controller.weight_hh)
        return ModelOutput(rates=rates, latents=factors, aux_losses=aux, inputs=co_u)

    def _encode(self, heldin: Tensor, sample: bool, fused: bool) -> tuple[Tensor, ...]:
        """Encoders: `heldin (B, T_obs, N_in)` -> the dropped-out input `x`, the generator's initial
        state `g0 (B, G)` (sampled or the posterior mean), the initial-condition posterior `ic_mean,
        ic_logvar (B, ic_dim)` and the controller's encoder input `ci (B, T_obs, CI)` (None without one)."""
        x = self._dropout(heldin.to(self.readout.weight.dtype))  # (B, T_obs, N_in)
        encoders = [self.ic_encoder] + ([self.ci_encoder] if self.co_dim > 0 else [])
        # One stacked scan for both encoders (CPU) unless plain; each encoder's own setting otherwise.
        encoded = run_bidirectional(encoders, x, fused=False if not fused else None)
        ic_final = encoded[0][1]  # (B, 2·ic_enc_dim)
        # The posterior parameters in the weights' precision (fp32) under autocast: the KL stays fp32.
        ic_params = self.ic_linear(self._dropout(ic_final)).to(x.dtype)  # (B, 2 ic_dim)
        ic_mean, ic_raw = ic_params.chunk(2, dim=-1)  # (B, ic_dim) each
        ic_logvar = _floored_logvar(ic_raw, self.log_ic_var_min)  # log(exp(raw) + var_min)
        g0 = _sample(ic_mean, ic_logvar) if sample else ic_mean  # (B, ic_dim)
        if self.ic_to_g0 is not None:
            g0 = self.ic_to_g0(g0)  # (B, G)
        ci = None
        if self.co_dim > 0:
            T_obs = self.spec.n_obs_bins
            ci = self._dropout(encoded[1][0])  # (B, T_obs, 2·ci_enc_dim)
            if self.ci_lag:  # bin t reads the encoding of bin t - ci_lag, zeros before the start
                ci = F.pad(ci, (0, 0, self.ci_lag, 0))[:, :T_obs]  # (B, T_obs, 2·ci_enc_dim)
        return x, g0, ic_mean, ic_logvar, ci

    # ------------------------------------------------------------------ dynamics (analysis)
    @torch.no_grad()
    def dynamics_states(self, heldin: Tensor, session: int | str | None = None) -> Tensor:
        """Generator states `(B, T, G)` on `heldin (B, T_obs, N_in)`: posterior means of g0 and of the
        inferred inputs, no dropout (the states behind the factors `predict` returns when
        `posterior_samples` is 0; with samples, `predict` averages over draws instead)."""
        self.check_input(heldin, session)
        was_training = self.training
        self.eval()
        try:
            _, g0, _, _, ci = self._encode(heldin, sample=False, fused=False)
            states: list[Tensor] = []
            self._unroll(g0, ci, None, None, states_out=states)
        finally:
            self.train(was_training)
        return torch.stack(states, dim=1)  # (B, T, G)

    def autonomous_step(self, h: Tensor) -> Tensor:
        """The generator with zero inferred input: `g (..., G)` -> next `g (..., G)`."""
        gen = self.generator
        zero_in = gen.input_proj(h.new_zeros(*h.shape[:-1], self.co_dim))  # (..., 3G)
        return gen.step(zero_in, h)

    def states_to_latents(self, h: Tensor) -> Tensor:
        """Factors `(..., F)` of generator states `(..., G)`."""
        return self.factors(h)

    def _dropout_mask(self, shape: tuple[int, ...], like: Tensor) -> Tensor | None:
        """Inverted-dropout multipliers (0 or 1/(1-p)) of the given shape, or None when dropout is off.

        Drawn in contiguous layout as `uniform < 1 - p` (nn.Dropout draws in the input's memory order,
        so encoders returning different layouts would consume different draws; and on CPU a uniform
        draw plus a compare is ~2.5x cheaper than `bernoulli_`, which matters at millions per step).
        """
        p = self.dropout.p
        if not self.training or p == 0:
            return None
        keep = 1.0 - p
        return torch.rand(shape, dtype=like.dtype, device=like.device).lt_(keep).div_(keep)

    def _dropout(self, x: Tensor) -> Tensor:
        """Dropout with rate `self.dropout.p` in training mode (see `_dropout_mask`)."""
        mask = self._dropout_mask(tuple(x.shape), x)
        return x if mask is None else x * mask

    def _unroll(
        self, g0: Tensor, ci: Tensor | None, eps: Tensor | None, mask: Tensor | None,
        states_out: list[Tensor] | None = None,
    ) -> tuple[Tensor, Tensor | None, Tensor | None, Tensor | None]:  # fmt: skip
        """Run controller + generator over T_obs bins, then the generator alone over T_fwd bins.

        `g0 (B, G)`, `ci (B, T_obs, CI)` or None (no controller), `eps (T_obs, B, U)` standard normal
        draws of the inferred inputs (None: use the posterior mean), `mask (T + 1, B, G)` dropout
        multipliers of g0 and g_0 .. g_{T-1} (None: no dropout) -> `factors (B, T, F)` and the inferred
        inputs' posterior `mean, logvar` and the inputs used `u` (each `(B, T_obs, U)`, or None).
        A plain Python loop over time with autograd: the reference for `_unroll_fused`. `states_out`:
        a list that receives the generator state `(B, G)` of every bin (before dropout).
        """
        states_out = [] if states_out is None else states_out
        T_obs, T = self.spec.n_obs_bins, self.spec.n_bins
        B = g0.shape[0]
        gen = self.generator
        zero_in = gen.input_proj(g0.new_zeros(B, self.co_dim))  # (B, 3G): projection of a zero input
        drop = lambda h, t: h if mask is None else h * mask[t]  # noqa: E731  dropout of g_{t-1}

        if ci is None:
            g = g0
            for _ in range(T):
                g = gen.step(zero_in, g)
                states_out.append(g)
            gen_states = torch.stack(states_out, dim=1)  # (B, T, G)
            if mask is not None:
                gen_states = gen_states * mask[1:].transpose(0, 1)
            return self.factors(gen_states), None, None, None

        con = self.controller
        # Input projection of the encoder part for all bins at once; the factor feedback is added per step.
        ci_proj = F.linear(ci, con.weight_ih[:, : self.ci_dim], con.bias_ih)  # (B, T_obs, 3C)
        w_fb = con.weight_ih[:, self.ci_dim :]  # (3C, F)
        c = self.con_h0.expand(B, -1)  # (B, C)
        g = g0
        f = self.factors(drop(g0, 0))  # (B, F) f_{-1}
        means, logvars, us, facs = [], [], [], []
        for t in range(T_obs):
            c = con.step(ci_proj[:, t] + F.linear(f, w_fb), c)
            mean, raw = self.co_linear(c).chunk(2, dim=-1)  # (B, U) each
            logvar = _floored_logvar(raw, self.log_co_var_min)
            u = mean if eps is None else mean + torch.exp(0.5 * logvar) * eps[t]
            g = gen.step(gen.input_proj(u), g)
            states_out.append(g)
            f = self.factors(drop(g, t + 1))
            means.append(mean)
            logvars.append(logvar)
            us.append(u)
            facs.append(f)
        fwd_states = []
        for _ in range(T_obs, T):  # forward-prediction bins: no data, zero inferred input
            g = gen.step(zero_in, g)
            fwd_states.append(g)
            states_out.append(g)
        factors = torch.stack(facs, dim=1)  # (B, T_obs, F)
        if fwd_states:
            fwd = torch.stack(fwd_states, dim=1)  # (B, T_fwd, G)
            if mask is not None:
                fwd = fwd * mask[T_obs + 1 :].transpose(0, 1)
            factors = torch.cat([factors, self.factors(fwd)], dim=1)  # (B, T, F)
        stack = lambda xs: torch.stack(xs, dim=1)  # noqa: E731  list of (B, U) -> (B, T_obs, U)
        return factors, stack(means), stack(logvars), stack(us)

    def _unroll_fused(
        self, g0: Tensor, ci: Tensor | None, eps: Tensor | None, mask: Tensor | None
    ) -> tuple[Tensor, Tensor | None, Tensor | None, Tensor | None]:
        """Same inputs, outputs and numbers as `_unroll` (up to float rounding), through
        `neuralnets.models.lfads_unroll.lfads_unroll`: no autograd inside the loop, hand-written BPTT,
        the factor feedback folded into one (3C, G) matrix, all weight gradients as one matmul."""
        gen = self.generator
        G = self.gen_dim
        zeros = g0.new_zeros(3 * G)
        b_gh = zeros if gen.bias_hh is None else gen.bias_hh
        b_gi = zeros if gen.bias_ih is None else gen.bias_ih
        w_fac = self.factors.normalized_weight()  # (F, G)
        kwargs = {}
        if ci is not None:
            con = self.controller
            ci_proj = F.linear(ci, con.weight_ih[:, : self.ci_dim], con.bias_ih)  # (B, T_obs, 3C)
            kwargs = dict(
                ci_proj=ci_proj.transpose(0, 1),  # (T_obs, B, 3C) time-major view
                c0=self.con_h0.expand(g0.shape[0], -1),  # (B, C)
                w_fb=con.weight_ih[:, self.ci_dim :] @ w_fac,  # (3C, G): factor read-in folded in
                w_ch=con.weight_hh,
                b_ch=con.bias_hh if con.bias_hh is not None else zeros.new_zeros(3 * con.hidden_size),
                w_co=self.co_linear.weight,
                b_co=self.co_linear.bias,
                eps=None if eps is None else eps.detach(),
            )
        states, mean, logvar, u = lfads_unroll(
            g0,
            self.spec.n_bins,
            gen.weight_hh,
            b_gh,
            b_gi,
            w_gi=gen.weight_ih,
            mask=mask,
            clip=gen.clip_value,
            log_var_min=self.log_co_var_min,
            **kwargs,
        )
        if mask is not None:
            states = states * mask[1:]  # (T, B, G) dropout of the states read by the factors
        factors = F.linear(states, w_fac).transpose(0, 1).contiguous()  # (B, T, F)
        if ci is None:
            return factors, None, None, None
        bt = lambda x: x.transpose(0, 1)  # noqa: E731  (T_obs, B, U) -> (B, T_obs, U)
        return factors, bt(mean), bt(logvar), bt(u).contiguous()

    # ------------------------------------------------------------------ utilities
    def _average_samples(self, batch: dict[str, Tensor], n_samples: int) -> ModelOutput:
        """Mean rates, factors, inputs and aux losses over `n_samples` posterior draws of g0 and u
        (dropout as the current mode has it). Running sums: memory of one output, not n."""
        acc = lambda total, x: x if total is None else total + x  # noqa: E731
        rates = latents = inputs = None
        aux: dict[str, Tensor] = {}
        for _ in range(n_samples):
            out = self(batch, sample=True)
            rates, latents = acc(rates, out.rates), acc(latents, out.latents)  # (B, T, N), (B, T, F)
            inputs = None if out.inputs is None else acc(inputs, out.inputs)  # (B, T_obs, U)
            aux = {k: acc(aux.get(k), v) for k, v in out.aux_losses.items()}
        return ModelOutput(
            rates=rates / n_samples,
            latents=latents / n_samples,
            aux_losses={k: v / n_samples for k, v in aux.items()},
            inputs=None if inputs is None else inputs / n_samples,
        )

    @torch.no_grad()
    def sample_average(self, batch: dict[str, Tensor], n_samples: int = 20) -> ModelOutput:
        """Posterior-sample average (as LFADS does at inference) in eval mode (no dropout), whatever
        `posterior_samples` is: the mean over `n_samples` draws of g0 and u."""
        if n_samples <= 0:
            raise ValueError(f"sample_average: n_samples must be > 0; got {n_samples}")
        was_training = self.training
        self.eval()
        try:
            return self._average_samples(batch, n_samples)
        finally:
            self.train(was_training)


@torch.no_grad()
def _init_logvar_bias(linear: nn.Linear, dim: int, var: float) -> None:
    """Start a posterior's variance near its prior's, so the first KL values are not dominated by a
    variance mismatch (the linear layer's outputs are [mean (dim), raw log-var (dim)])."""
    linear.bias[dim:].fill_(math.log(var))


def _check_int(name: str, value: object, minimum: int, note: str) -> None:
    """Raise a ValueError naming the option unless `value` is an int >= `minimum`."""
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ValueError(f"LFADS: {name} must be an integer >= {minimum} ({note}); got {value!r}")


def _floored_logvar(raw: Tensor, log_var_min: float) -> Tensor:
    """log(exp(raw) + var_min): a log-variance whose variance never falls below var_min."""
    return torch.logaddexp(raw, torch.full_like(raw, log_var_min))


def _sample(mean: Tensor, logvar: Tensor) -> Tensor:
    """Reparameterised draw from N(mean, exp(logvar))."""
    return mean + torch.exp(0.5 * logvar) * torch.randn_like(mean)


def _half_mean_square(w: Tensor) -> Tensor:
    return 0.5 * w.pow(2).mean()
