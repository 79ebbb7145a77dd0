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

Small-data training options of the training module (all off by default; docs/training.md):
- Sample validation (Keshtkaran & Pandarinath 2019): a fixed random share of each training trial's
  held-in entries (`sample_validation_mask`, the same entries every epoch) is hidden from the input and
  from the training loss, and the reconstruction likelihood of exactly those entries is a validation
  score that, unlike the held-in likelihood, cannot be lowered by copying input spikes to rates.
- Temporal augmentation of training trials: a random shift in time of each trial or each neuron
  (`random_shifts`, `shift_trials`) and jitter of single spikes by a few bins (`jitter_spikes`).
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
        x = shift_trials(x, random_shifts(B, 1, max_shift, device=x.device), 0)
    return x


def sample_validation_mask(
    index: Tensor, n_bins: int, n_neurons: int, share: float, seed: int = 0, session: int = 0
) -> Tensor:
    """The sample-validation entries of trials `index (B,)` -> `(B, n_bins, n_neurons)` bool.

    Each entry is True with probability `share`, drawn from a generator seeded by (seed, session, trial
    index) alone: a trial gets the same entries in every batch, epoch and run with the same `seed`,
    whatever the batch order. `share` must be in [0, 1); 0 gives all False.
    """
    if not 0.0 <= share < 1.0:
        raise ValueError(f"sample_validation_mask: share must be in [0, 1); got {share!r}")
    masks = []
    for i in index.tolist():
        # hash of a tuple of ints is the same in every process (no hash randomisation for ints)
        g = torch.Generator().manual_seed(hash((int(seed), int(session), int(i))) % 2**63)
        masks.append(torch.rand((n_bins, n_neurons), generator=g) < share)  # (n_bins, n_neurons)
    if not masks:
        return torch.zeros(0, n_bins, n_neurons, dtype=torch.bool, device=index.device)
    return torch.stack(masks).to(index.device)


def random_shifts(
    n_trials: int, n_neurons: int, max_shift: int, device: torch.device | str = "cpu"
) -> Tensor:
    """Uniform integer shifts in [-max_shift, max_shift] bins -> `(n_trials, n_neurons)` long
    (`n_neurons=1`: one shift per trial, broadcast over neurons by `shift_trials`)."""
    if max_shift < 0:
        raise ValueError(f"random_shifts: max_shift must be >= 0; got {max_shift!r}")
    return torch.randint(-max_shift, max_shift + 1, (n_trials, n_neurons), device=device)


def shift_trials(x: Tensor, shift: Tensor, fill: float | bool) -> Tensor:
    """`x (B, T, N)` moved later in time by `shift (B, 1)` (whole trials) or `(B, N)` (each neuron) bins
    (negative: earlier) -> `(B, T, N)`; bins shifted in from outside the trial hold `fill`."""
    B, T, N = x.shape
    if shift.shape not in ((B, 1), (B, N)):
        raise ValueError(
            f"shift_trials: shift has shape {tuple(shift.shape)}; expected ({B}, 1) or ({B}, {N})"
        )
    src = torch.arange(T, device=x.device)[None, :, None] - shift.to(x.device)[:, None, :]  # (B, T, 1 or N)
    inside = ((src >= 0) & (src < T)).expand(B, T, N)
    moved = torch.gather(x, 1, src.clamp(0, T - 1).expand(B, T, N))  # (B, T, N)
    return torch.where(inside, moved, torch.full_like(moved, fill))


def jitter_spikes(counts: Tensor, max_jitter: int, generator: torch.Generator | None = None) -> Tensor:
    """Move each spike of `counts (B, T, N)` by its own uniform integer in [-max_jitter, max_jitter] bins
    -> `(B, T, N)`, same total per trial and neuron: a spike moved past either end of the trial is
    reflected back into it (bin -1 -> 0, T -> T - 1). Counts must be whole numbers."""
    B, T, N = counts.shape
    if not 0 <= max_jitter < T:
        raise ValueError(f"jitter_spikes: max_jitter must be in [0, {T - 1}] (T - 1); got {max_jitter!r}")
    if max_jitter == 0:
        return counts
    offsets = range(-max_jitter, max_jitter + 1)
    bins = torch.arange(T, device=counts.device)
    out = torch.zeros_like(counts)
    remaining = counts
    # Split each count over the 2k + 1 offsets (a multinomial as a chain of binomials), then move each part.
    for j, d in enumerate(offsets):
        left = len(offsets) - j
        if left == 1:
            part = remaining
        else:
            prob = torch.full_like(remaining, 1.0 / left)
            part = torch.binomial(remaining, prob, generator=generator)
        remaining = remaining - part
        target = bins + d  # (T,): where each bin's spikes go; reflected at the trial's ends
        target = torch.where(target < 0, -target - 1, target)
        target = torch.where(target >= T, 2 * T - target - 1, target)
        out.index_add_(1, target, part)
    return out
