"""Training-time augmentations and loss masks (applied by the training module; the spike
augmentations at the end are drawn by models with a contrastive objective, e.g. STNDT).

Coordinated dropout (Keshtkaran & Pandarinath 2019): each held-in input element is dropped with
probability `rate` (kept elements scaled by 1/(1 − rate)), and the reconstruction loss on held-in
neurons over observed bins is computed ONLY on the dropped elements. A model therefore cannot lower
its loss by passing an input spike straight through to its own rate (the identity overfitting that
makes validation likelihood useless for hyperparameter search). Held-out neurons and forward bins
are never model input, so they always stay in the loss (`expand_heldin_mask`).

Selective backpropagation through time (SBTT; Zhu et al. 2021): with missing entries (`observed`
False) the loss is computed only on observed entries and normalised by their number
(`masked_mean`). Missing input entries are zeros in the data.

Loss units: the LFADS KL terms are per-trial nats, so the training module turns a masked per-entry
mean into per-trial units with `masked_trial_sum` (= masked mean × T × N): an unbiased estimate of
the full per-trial summed NLL whatever fraction of entries the masks leave in.

Spike augmentations (`augment_spikes`, for contrastive views of a trial as in STNDT, Le & Shlizerman
2022): random dropping of spikes (binomial thinning), random adding of single spikes, and a small random
shift of each trial in time (bins shifted in from outside the trial are empty).
"""

from __future__ import annotations

import torch
from torch import Tensor


def coordinated_dropout(
    heldin: Tensor, rate: float, generator: torch.Generator | None = None
) -> tuple[Tensor, Tensor]:
    """Coordinated dropout of `heldin (B, T_obs, N_in)`.

    Returns `(input_masked (B, T_obs, N_in), loss_mask (B, T_obs, N_in) bool)`: dropped elements are
    0 in the input and True in the loss mask; kept elements are scaled by 1/(1 − rate) and False in
    the loss mask (the two are complementary). `rate == 0` means CD is off: the input is returned
    unchanged and the loss mask is all True. `rate` must be in [0, 1).
    """
    if not 0.0 <= rate < 1.0:
        raise ValueError(f"coordinated_dropout: rate must be in [0, 1); got {rate}")
    if rate == 0.0:
        return heldin, torch.ones_like(heldin, dtype=torch.bool)
    # Draw on the generator's device (a CPU generator cannot fill a CUDA tensor), then move.
    device = generator.device if generator is not None else heldin.device
    u = torch.rand(heldin.shape, generator=generator, device=device).to(heldin.device)  # (B, T_obs, N_in)
    dropped = u < rate
    masked = torch.where(dropped, torch.zeros_like(heldin), heldin / (1.0 - rate))
    return masked, dropped


def expand_heldin_mask(heldin_mask: Tensor, n_bins: int, n_neurons: int) -> Tensor:
    """Place a `(B, T_obs, N_in)` bool mask in the top-left of a `(B, n_bins, n_neurons)` mask that is
    True elsewhere (held-out neurons and forward bins are always scored)."""
    B, T_obs, N_in = heldin_mask.shape
    if T_obs > n_bins or N_in > n_neurons:
        raise ValueError(
            f"expand_heldin_mask: mask {tuple(heldin_mask.shape)} does not fit ({n_bins}, {n_neurons})"
        )
    full = torch.ones(B, n_bins, n_neurons, dtype=torch.bool, device=heldin_mask.device)  # (B, T, N)
    full[:, :T_obs, :N_in] = heldin_mask
    return full


def sbtt_mask(observed: Tensor | None, like: Tensor) -> Tensor:
    """SBTT loss mask `(B, T, N)` bool: `observed` itself, or all True when `observed` is None.

    `like (B, T, N)` (e.g. the target spikes) gives the shape and device.
    """
    if observed is None:
        return torch.ones_like(like, dtype=torch.bool)
    if observed.shape != like.shape:
        raise ValueError(
            f"sbtt_mask: observed has shape {tuple(observed.shape)}; expected {tuple(like.shape)}"
        )
    return observed.to(device=like.device, dtype=torch.bool)


def masked_mean(values: Tensor, mask: Tensor | None) -> Tensor:
    """Mean of `values` over entries where `mask` is True -> scalar (`mask` None: every entry).

    Exact (sum over selected / number selected); an empty mask gives 0 with zero gradients, and
    non-finite values at unselected entries do not leak in.
    """
    if mask is None:
        return values.mean()
    if values.shape != mask.shape:
        raise ValueError(
            f"masked_mean: values {tuple(values.shape)} and mask {tuple(mask.shape)} differ in shape"
        )
    mask = mask.to(torch.bool)
    total = torch.where(mask, values, torch.zeros_like(values)).sum()
    count = mask.sum().clamp(min=1)
    return total / count


def masked_trial_sum(values: Tensor, mask: Tensor | None) -> Tensor:
    """Masked mean scaled to per-trial units: `masked_mean(values, mask) · T · N` for `(B, T, N)` inputs.

    With a full mask this is exactly `values.sum(dim=(1, 2)).mean()` (per-trial sum, mean over trials).
    """
    return masked_mean(values, mask) * (values.shape[-1] * values.shape[-2])


def augment_spikes(heldin: Tensor, drop_rate: float, add_rate: float, max_shift: int) -> Tensor:
    """A randomly augmented view of the counts `heldin (B, T_obs, N_in)` -> `(B, T_obs, N_in)`.

    Each spike is dropped with probability `drop_rate`; each entry gains one spike with probability
    `add_rate`; each trial is shifted in time by a uniform integer in [-max_shift, max_shift] bins (zeros
    fill the bins shifted in). All zero: the input is returned unchanged.
    """
    if not 0.0 <= drop_rate < 1.0:
        raise ValueError(f"augment_spikes: drop_rate must be in [0, 1); got {drop_rate!r}")
    if not 0.0 <= add_rate < 1.0:
        raise ValueError(f"augment_spikes: add_rate must be in [0, 1); got {add_rate!r}")
    B, T_obs, _ = heldin.shape
    if not 0 <= max_shift < T_obs:
        raise ValueError(
            f"augment_spikes: max_shift must be in [0, {T_obs - 1}] (T_obs - 1); got {max_shift!r}"
        )
    x = heldin
    if drop_rate > 0:
        x = torch.binomial(x, torch.full_like(x, 1.0 - drop_rate))  # thinning keeps whole counts
    if add_rate > 0:
        x = x + (torch.rand_like(x) < add_rate).to(x.dtype)
    if max_shift > 0:
        shift = torch.randint(-max_shift, max_shift + 1, (B, 1), device=x.device)  # (B, 1)
        src = torch.arange(T_obs, device=x.device)[None, :] - shift  # (B, T_obs): source bin of each bin
        inside = (src >= 0) & (src < T_obs)  # (B, T_obs)
        x = torch.gather(x, 1, src.clamp(0, T_obs - 1)[..., None].expand_as(x))  # (B, T_obs, N_in)
        x = torch.where(inside[..., None], x, torch.zeros_like(x))
    return x
