"""Gaussian-process factor analysis (Yu et al. 2009, J. Neurophysiol.), with a Poisson read-out as in
the NLB GPFA baseline.

Observations are the square roots of the held-in counts over the observed bins (Yu et al. use
sqrt-transformed counts), `y_t = C x_t + d + e_t`, `e_t ~ N(0, R)` with R diagonal. Each of the q
latent dimensions has an independent GP prior over time with a squared-exponential kernel,
`k_i(t1, t2) = (1 - s2) exp(-(t1 - t2)^2 / (2 tau_i^2)) + s2 * delta(t1, t2)`, with a small fixed GP
noise variance s2 and learned timescales tau_i.

Fitting: by gradient on the exact negative log marginal likelihood of y (instead of the paper's EM),
returned as `aux_losses['gpfa_nll']` in nats per trial (the Gaussian density of the sqrt counts, summed
over a trial's T_obs x N_in entries and averaged over the batch: per trial, like the training module's
Poisson recon sum, though a density of sqrt counts, not a probability of counts). Every trial of a
batch has the same T_obs, so with A = I_T (x) C and R~ = I_T (x) R,
    Sigma^-1 = R~^-1 - R~^-1 A M^-1 A^T R~^-1,   M = K^-1 + I_T (x) C^T R^-1 C      (Woodbury)
    log|Sigma| = log|R~| + log|K| + log|M|                                         (determinant lemma)
and M (qT x qT) is the same for the whole batch: one Cholesky per step serves every trial. The step
still costs O((qT)^3) (autograd's Cholesky backward dominates): q=6 at T_obs=140 is 840 x 840.

Latents: the posterior mean E[x | y] at all T_obs + T_fwd bins; beyond the observed bins it follows
from the joint GP prior, `E[x_fwd | y] = K_fwd,obs A^T Sigma^-1 (y - d)`.

Rates: `exp(readout(latents))`, a Poisson GLM on the *detached* latents, fitted by the training
module's likelihood; GPFA's own parameters (C, d, R, tau) get gradient only from the marginal
likelihood. The model fits its input as is, so it takes no coordinated dropout
(`accepts_coordinated_dropout = False`).
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from neuralnets.data.spikedata import DataSpec
from neuralnets.models.base import READOUT_FLOOR, ModelOutput, Ramp, SpikeModel, get_heldin, positive_rates

_MIN_OBS_VAR = 1e-4  # floor of the observation noise variances R (sqrt-count units): keeps M well posed


def se_kernel(times: Tensor, tau: Tensor, gp_noise: float) -> Tensor:
    """Squared-exponential GP covariances `(q, T, T)` at `times (T,)` (bins) for timescales `tau (q,)`
    (bins): `(1 - gp_noise) exp(-(t1 - t2)^2 / (2 tau^2)) + gp_noise * delta(t1, t2)`."""
    diff2 = (times[:, None] - times[None, :]) ** 2  # (T, T)
    eye = torch.eye(len(times), dtype=times.dtype, device=times.device)
    return (1 - gp_noise) * torch.exp(-diff2 / (2 * tau[:, None, None] ** 2)) + gp_noise * eye


def _cholesky(matrix: Tensor, what: str) -> Tensor:
    """Lower Cholesky factor of (a batch of) symmetric positive-definite matrices, or a clear error."""
    chol, info = torch.linalg.cholesky_ex(matrix)
    if bool((info != 0).any()):
        raise FloatingPointError(
            f"GPFA: the Cholesky factorisation of {what} {tuple(matrix.shape)} failed (not positive "
            "definite); its parameters have diverged: try a lower module.lr or a larger gp_noise"
        )
    return chol


class GPFA(SpikeModel):
    """GPFA on sqrt held-in counts, fit by its exact marginal likelihood; Poisson read-out of its latents.

    Args:
        spec: the data spec (or its dict); fixes N_in, N, T_obs, T_fwd and the bin size.
        latent_dim: q, the number of GP latents (at most N_in).
        tau_init_ms: initial timescale of every latent, in ms (converted to bins with `spec.bin_size`).
        gp_noise: s2, the fixed GP noise variance of the kernel, in (0, 1) (Yu et al.: 1e-3).
        obs_noise_init: initial observation noise variance R (sqrt-count units), > 0.
        gpfa_scale: weight of the marginal-likelihood loss (`aux_weights['gpfa_nll']`); it has no
            parameter in common with the read-out, so it only sets its share of the logged loss.

    forward(batch) -> ModelOutput with rates (B, T_obs+T_fwd, N) and latents (B, T_obs+T_fwd, q).
    """

    accepts_coordinated_dropout = False

    def __init__(
        self,
        spec: DataSpec | dict,
        latent_dim: int = 6,
        tau_init_ms: float = 100.0,
        gp_noise: float = 1e-3,
        obs_noise_init: float = 0.1,
        gpfa_scale: float = 1.0,
    ):
        super().__init__(spec)
        s = self.spec
        if not (isinstance(latent_dim, int) and 1 <= latent_dim <= s.n_heldin):
            raise ValueError(
                f"latent_dim must be an integer in [1, n_heldin={s.n_heldin}] (GPFA has at most one latent "
                f"per held-in neuron); got {latent_dim!r}"
            )
        if not (np.isfinite(tau_init_ms) and tau_init_ms > 0):
            raise ValueError(f"tau_init_ms must be a positive timescale in ms; got {tau_init_ms!r}")
        if not 0.0 < gp_noise < 1.0:
            raise ValueError(f"gp_noise must be in (0, 1) (the GP noise variance s2); got {gp_noise!r}")
        if not (np.isfinite(obs_noise_init) and obs_noise_init > _MIN_OBS_VAR):
            raise ValueError(f"obs_noise_init must be > {_MIN_OBS_VAR}; got {obs_noise_init!r}")
        self.latent_dim, self.gp_noise = latent_dim, float(gp_noise)
        tau_bins = tau_init_ms / 1000.0 / s.bin_size
        self.loading = nn.Parameter(torch.randn(s.n_heldin, latent_dim) * 0.1)  # C (N_in, q)
        self.offset = nn.Parameter(torch.zeros(s.n_heldin))  # d (N_in,)
        raw = math.log(math.expm1(obs_noise_init - _MIN_OBS_VAR))  # softplus^-1
        self.obs_noise_raw = nn.Parameter(torch.full((s.n_heldin,), raw))  # R = softplus(raw) + floor
        self.log_tau = nn.Parameter(torch.full((latent_dim,), math.log(tau_bins)))  # tau in bins (q,)
        self.readout = nn.Linear(latent_dim, s.n_neurons)
        self.aux_weights = {"gpfa_nll": Ramp(scale=gpfa_scale)}

    @property
    def obs_noise(self) -> Tensor:
        """R, the observation noise variances (N_in,)."""
        return F.softplus(self.obs_noise_raw) + _MIN_OBS_VAR

    @property
    def timescales(self) -> Tensor:
        """tau_i in bins (q,)."""
        return self.log_tau.exp()

    @torch.no_grad()
    def init_readout_bias(self, mean_counts: Tensor | np.ndarray, floor: float = READOUT_FLOOR) -> None:
        """The read-out bias from the data (`SpikeModel.init_readout_bias`), and the offset d from the
        held-in neurons' mean counts: d = sqrt(mean), an approximation of E[sqrt y] (Jensen: slightly
        high for low counts) that training refines."""
        super().init_readout_bias(mean_counts, floor)
        mean = torch.as_tensor(mean_counts, dtype=self.offset.dtype, device=self.offset.device)
        self.offset.copy_(mean[: self.spec.n_heldin].clamp(min=0).sqrt())

    def marginal(self, sqrt_counts: Tensor) -> tuple[Tensor, Tensor]:
        """Negative log marginal likelihood `(B,)` (nats per trial) of `sqrt_counts (B, T_obs, N_in)` and
        the posterior means `(B, T_obs + T_fwd, q)`, in float64."""
        B, T, P = sqrt_counts.shape
        q, T_all = self.latent_dim, self.spec.n_bins
        f64 = dict(dtype=torch.float64, device=sqrt_counts.device)
        C = self.loading.double()  # (P, q)
        R = self.obs_noise.double()  # (P,)
        K_all = se_kernel(torch.arange(T_all, **f64), self.timescales.double(), self.gp_noise)  # (q, Ta, Ta)
        K_chol = _cholesky(K_all[:, :T, :T], "the GP prior covariance")  # (q, T, T)
        K_inv = torch.cholesky_inverse(K_chol)  # (q, T, T)
        # M = K^-1 + I_T (x) G, ordered time-major: index t*q + i; K^-1 is block diagonal over latents.
        G = C.T @ (C / R[:, None])  # (q, q) = C^T R^-1 C
        eye_q = torch.eye(q, **f64)
        M = torch.einsum("its,ij->tisj", K_inv, eye_q).reshape(T * q, T * q)  # (Tq, Tq)
        M = M + torch.kron(torch.eye(T, **f64), G)
        M_chol = _cholesky(M, "M = K^-1 + I_T (x) C^T R^-1 C")  # (Tq, Tq), one for the whole batch
        resid = sqrt_counts.double() - self.offset.double()  # (B, T, P) = y - d
        b = (resid / R) @ C  # (B, T, q) = A^T R~^-1 (y - d)
        b_flat = b.reshape(B, T * q, 1)  # (B, Tq, 1)
        half = torch.linalg.solve_triangular(M_chol, b_flat, upper=False)  # (B, Tq, 1) = L_M^-1 b
        quad = (resid**2 / R).sum(dim=(1, 2)) - (half**2).sum(dim=(1, 2))  # (B,) (y-d)^T Sigma^-1 (y-d)
        logdet = (
            T * torch.log(R).sum()
            + 2 * torch.log(torch.diagonal(K_chol, dim1=-2, dim2=-1)).sum()
            + 2 * torch.log(torch.diagonal(M_chol)).sum()
        )  # log|Sigma| = log|R~| + log|K| + log|M|
        nll = 0.5 * (quad + logdet + T * P * math.log(2 * math.pi))  # (B,)
        # Posterior mean: E[x | y] = K_all,obs A^T Sigma^-1 (y - d) = K_all,obs (b - (I (x) G) M^-1 b).
        v = torch.cholesky_solve(b_flat, M_chol).reshape(B, T, q)  # (B, T, q) = M^-1 b
        w = b - v @ G  # (B, T, q)
        mean = torch.einsum("ist,bti->bsi", K_all[:, :, :T], w)  # (B, T_all, q)
        return nll, mean

    def forward(self, batch: dict[str, Tensor]) -> ModelOutput:
        heldin = get_heldin(self, batch)  # (B, T_obs, N_in)
        observed = batch.get("observed")
        if observed is not None:
            s = self.spec
            missing = int((~observed[:, : s.n_obs_bins, : s.n_heldin]).sum())
            if missing:
                raise ValueError(
                    f"GPFA needs every held-in entry of the observed bins recorded (all trials share one "
                    f"covariance); batch['observed'] marks {missing} of them as missing"
                )
        if bool((heldin < 0).any()):
            raise ValueError("GPFA: batch['heldin'] has negative counts; counts must be >= 0")
        with torch.autocast(device_type=heldin.device.type, enabled=False):
            nll, latents = self.marginal(heldin.sqrt())  # (B,), (B, T, q)
        latents = latents.to(heldin.dtype)
        rates = positive_rates(self.readout(latents.detach()))  # (B, T, N): a GLM on the latents
        return ModelOutput(rates=rates, latents=latents, aux_losses={"gpfa_nll": nll.mean().float()})
