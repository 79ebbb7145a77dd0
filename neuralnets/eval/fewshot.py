"""Few-shot co-bps (Dabholkar & Barak 2025): held-out neurons read from model latents by a Poisson GLM fit on
only k train trials."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from neuralnets.errors import ConfigError, DataError
from neuralnets.eval.glm import GLM_FLOOR, fit_poisson_glm
from neuralnets.eval.metrics import (
    FEWSHOT_ALPHA,
    FEWSHOT_K,
    FEWSHOT_RESAMPLES,
    FEWSHOT_SEED,
    ArrayLike,
    as_mask,
    bits_per_spike,
    check_values,
)
from neuralnets.eval.regression import check_regression_inputs, flatten_trials


@dataclass
class FewshotReadout:
    """The few-shot GLM read-outs of all resamples (`fit_fewshot`); `score` any eval trials with them."""

    weights: Tensor  # (R, K, J) on the standardised latents
    bias: Tensor  # (R, J)
    mu: Tensor  # (R, 1, K) the latents' mean over each resample's k trials
    sd: Tensor  # (R, 1, K) and their s.d. (1 where constant)

    def score(
        self, latents_eval: ArrayLike, heldout_eval: ArrayLike, mask_eval: ArrayLike | None = None
    ) -> float:
        """Mean over resamples of the co-bps of the read-out's rates on latents_eval (trials, T, K) against
        heldout_eval (trials, T, J) (mask_eval: same shape, recorded entries)."""
        ze, ye = check_regression_inputs(
            latents_eval, heldout_eval, "latents_eval", "heldout_eval", device=self.weights.device
        )
        if ze.shape[2] != self.weights.shape[1] or ye.shape[2] != self.weights.shape[2]:
            raise DataError(
                f"eval latents {tuple(ze.shape)} / held-out {tuple(ye.shape)} do not match the train ones "
                f"({self.weights.shape[1]} latents, {self.weights.shape[2]} held-out neurons)"
            )
        ze_flat = flatten_trials(ze)  # (trials_eval*T, K)
        scores = []
        for r in range(len(self.weights)):  # one resample's eval rates at a time: the memory of one, not of R
            xe = (ze_flat - self.mu[r]) / self.sd[r]  # (trials_eval*T, K)
            rates = torch.exp((xe @ self.weights[r] + self.bias[r]).clamp(max=30.0)).clamp(min=GLM_FLOOR)
            scores.append(bits_per_spike(rates.reshape(ye.shape), ye, mask_eval))  # (trials_eval, T, J)
        return float(np.mean(scores))


def fit_fewshot(
    latents_train: ArrayLike,
    heldout_train: ArrayLike,
    k: int = FEWSHOT_K,
    n_resamples: int = FEWSHOT_RESAMPLES,
    alpha: float = FEWSHOT_ALPHA,
    seed: int = FEWSHOT_SEED,
    mask_train: ArrayLike | None = None,
) -> FewshotReadout:
    """The train half of `fewshot_co_bps`: the k-trial GLM read-outs of every resample, fit once and
    scored on as many eval splits as needed (`FewshotReadout.score`). Arguments as `fewshot_co_bps`."""
    zt, yt = check_regression_inputs(latents_train, heldout_train, "latents_train", "heldout_train")
    if k < 1 or n_resamples < 1 or not (alpha >= 0):
        raise ConfigError(f"need k >= 1, n_resamples >= 1, alpha >= 0; got {k}, {n_resamples}, {alpha}")
    m_t = as_mask(mask_train, yt.shape, zt.device)
    check_values(yt, "heldout_train", m_t, nonneg=True)
    w_t = torch.ones_like(yt) if m_t is None else m_t.to(yt.dtype)
    y_fit = torch.where(w_t > 0, yt, torch.zeros_like(yt))
    n_train, t, n_lat = zt.shape
    n_out = yt.shape[2]
    rng = np.random.default_rng(seed)
    if n_train <= k:
        picks = np.arange(n_train)[None]  # (1, n_train): every resample would be this same fit
    else:
        picks = np.stack([rng.choice(n_train, size=k, replace=False) for _ in range(n_resamples)])
    idx = torch.as_tensor(picks, device=zt.device)  # (R, k)
    x = zt[idx].reshape(len(picks), -1, n_lat)  # (R, k*T, K)
    mu, sd = x.mean(1, keepdim=True), x.std(1, keepdim=True)
    sd = torch.where(sd > 0, sd, torch.ones_like(sd))  # a constant latent stays 0 after standardising
    weights, bias = fit_poisson_glm(
        (x - mu) / sd,
        y_fit[idx].reshape(len(picks), -1, n_out),
        w_t[idx].reshape(len(picks), -1, n_out),
        alpha,
    )  # (R, K, J), (R, J)
    return FewshotReadout(weights, bias, mu, sd)


def fewshot_co_bps(
    latents_train: ArrayLike,
    heldout_train: ArrayLike,
    latents_eval: ArrayLike,
    heldout_eval: ArrayLike,
    k: int = FEWSHOT_K,
    n_resamples: int = FEWSHOT_RESAMPLES,
    alpha: float = FEWSHOT_ALPHA,
    seed: int = FEWSHOT_SEED,
    mask_train: ArrayLike | None = None,
    mask_eval: ArrayLike | None = None,
) -> float:
    """Few-shot co-bps (Dabholkar & Barak 2025): how well k trials suffice to read held-out neurons from
    the model's latents.

    latents_*: (trials, T_obs, K) model latents at the observed bins; heldout_*: (trials, T_obs, N_out)
    held-out counts; mask_*: same shape as heldout_*, recorded entries. For each of `n_resamples`
    resamples (seeded by `seed`), `k` train trials are drawn without replacement (all of them, and a
    single fit, when there are no more than k), a Poisson GLM (log link, bias, L2 `alpha` on the weights
    of the latents standardised on those k trials: `glm.fit_poisson_glm`) is fit from the latent at each
    bin to the held-out counts of that bin, and its rates score bits/spike on the eval trials' held-out
    neurons (co-bps). Returns the mean over resamples. Latents with dynamics that do not help predict
    held-out neurons make the k-trial fit worse, which plain co-bps cannot see.
    Equal to `fit_fewshot(...).score(latents_eval, heldout_eval, mask_eval)`.
    """
    readout = fit_fewshot(latents_train, heldout_train, k, n_resamples, alpha, seed, mask_train)
    return readout.score(latents_eval, heldout_eval, mask_eval)
