"""`SpikeData`: one container for binned spiking trials and their NLB-style split.

Conventions (see DESIGN.md):
- `spikes (trials, T, N)` float32 counts with `T = T_obs + T_fwd` bins and `N = N_in + N_out` neurons.
  Neurons are ordered held-in first, then held-out; bins are ordered observed first, then forward.
  A model reads `spikes[:, :T_obs, :N_in]` and predicts rates for all `(T, N)`.
- `observed (trials, T, N)` bool, optional: False where nothing was recorded (e.g. NLB evaluation
  trials have no forward-prediction bins). Spikes there are stored as 0 and are never scored or
  trained on. `None` means everything was recorded.
- `behavior (trials, T_obs, D)` (e.g. hand velocity), `condition (trials,)` ints, ground truth
  `rates (trials, T, N)` (counts per bin) and `latents (trials, T, K)` for synthetic data.
- `inputs (trials, T, U)` float, optional: known external inputs to the system (e.g. a stimulus),
  over all bins (observed and forward), as LFADS's `ext_input`.
- `split (trials,)` one of `train`, `val`, `test` per trial.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

import numpy as np

from neuralnets.errors import DataError

SPLITS = ("train", "val", "test")


@dataclass(frozen=True)
class DataSpec:
    """The shapes a model must agree with; saved inside checkpoints so a model rebuilds without data."""

    n_heldin: int
    n_neurons: int
    n_obs_bins: int
    n_fwd_bins: int
    bin_size: float
    behavior_dim: int = 0

    @property
    def n_heldout(self) -> int:
        return self.n_neurons - self.n_heldin

    @property
    def n_bins(self) -> int:
        return self.n_obs_bins + self.n_fwd_bins

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


@dataclass
class SpikeData:
    spikes: np.ndarray
    bin_size: float
    n_heldin: int | None = None
    n_fwd: int = 0
    split: np.ndarray | None = None
    observed: np.ndarray | None = None
    behavior: np.ndarray | None = None
    condition: np.ndarray | None = None
    rates: np.ndarray | None = None
    latents: np.ndarray | None = None
    inputs: np.ndarray | None = None
    name: str = "data"
    source: str = "<memory>"  # file or generator the data came from; used in error messages
    meta: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.spikes = _as_float32(self.spikes, f"{self.source}: field 'spikes'", max_exact=MAX_EXACT_COUNT)
        if self.n_heldin is None and self.spikes.ndim == 3:
            self.n_heldin = self.spikes.shape[2]
        if self.split is None and self.spikes.ndim == 3 and self.spikes.shape[0] > 0:
            self.split = default_split(self.spikes.shape[0])
        if self.split is not None:
            self.split = np.asarray(self.split).astype(str)
        if self.observed is not None:
            self.observed = np.asarray(self.observed, dtype=bool)
        for name in ("behavior", "inputs", "rates", "latents"):
            value = getattr(self, name)
            if value is not None:
                setattr(self, name, _as_float32(value, f"{self.source}: field {name!r}"))
        if self.condition is not None:
            self.condition = np.asarray(self.condition)
        self.validate()

    # ------------------------------------------------------------------ shapes
    @property
    def n_trials(self) -> int:
        return self.spikes.shape[0]

    @property
    def n_bins(self) -> int:
        return self.spikes.shape[1]

    @property
    def n_obs(self) -> int:
        return self.n_bins - self.n_fwd

    @property
    def n_neurons(self) -> int:
        return self.spikes.shape[2]

    @property
    def n_heldout(self) -> int:
        return self.n_neurons - self.n_heldin

    @property
    def spec(self) -> DataSpec:
        return DataSpec(
            n_heldin=self.n_heldin,
            n_neurons=self.n_neurons,
            n_obs_bins=self.n_obs,
            n_fwd_bins=self.n_fwd,
            bin_size=float(self.bin_size),
            behavior_dim=0 if self.behavior is None else self.behavior.shape[2],
        )

    @property
    def heldin_obs(self) -> np.ndarray:
        """Model input: (trials, T_obs, N_in)."""
        return self.spikes[:, : self.n_obs, : self.n_heldin]

    def observed_mask(self) -> np.ndarray:
        """(trials, T, N) bool; all True when `observed` is None."""
        if self.observed is None:
            return np.ones(self.spikes.shape, dtype=bool)
        return self.observed

    def mean_counts(self, trials: np.ndarray, bins: slice = slice(None)) -> np.ndarray:
        """(N,) float64: each neuron's mean count per bin over the recorded entries of `trials` x `bins`;
        NaN for a neuron with no recorded entry there."""
        y = self.spikes[trials][:, bins]  # (trials, T', N)
        m = self.observed_mask()[trials][:, bins]
        n = m.sum(axis=(0, 1))
        total = np.where(m, y, 0.0).sum(axis=(0, 1), dtype=np.float64)
        return np.divide(total, n, out=np.full(n.shape, np.nan), where=n > 0)

    # ------------------------------------------------------------------ splits
    def indices(self, split: str) -> np.ndarray:
        """Trial indices of a split (`train`, `val`, `test`) or `all`."""
        if split == "all":
            return np.arange(self.n_trials)
        if split not in SPLITS:
            raise DataError(f"{self.source}: unknown split {split!r}; expected one of {SPLITS + ('all',)}")
        return np.flatnonzero(self.split == split)

    def subset(self, split_or_indices: str | np.ndarray) -> SpikeData:
        """A new SpikeData with only the given trials (a split name or an index array)."""
        if isinstance(split_or_indices, str):
            idx = self.indices(split_or_indices)
            if idx.size == 0:
                raise DataError(f"{self.source}: split {split_or_indices!r} has no trials")
        else:
            idx = np.asarray(split_or_indices)
        per_trial = {
            f.name: getattr(self, f.name)[idx]
            for f in dataclasses.fields(self)
            if f.name in PER_TRIAL_FIELDS and getattr(self, f.name) is not None
        }
        return dataclasses.replace(self, **per_trial)

    # ------------------------------------------------------------------ checks
    def validate(self) -> None:
        """Raise DataError naming the field and problem if anything is malformed."""
        src = self.source
        x = self.spikes
        if x.ndim != 3:
            raise DataError(
                f"{src}: field 'spikes' must have rank 3 (trials, time, neurons); got shape {x.shape}"
            )
        if 0 in x.shape:
            raise DataError(f"{src}: field 'spikes' is empty (shape {x.shape})")
        check_counts(x, f"{src}: field 'spikes'")
        if not (np.isfinite(self.bin_size) and self.bin_size > 0):
            raise DataError(f"{src}: bin_size must be a positive number of seconds; got {self.bin_size!r}")
        if not 0 < self.n_heldin <= self.n_neurons:
            raise DataError(
                f"{src}: n_heldin={self.n_heldin} does not fit {self.n_neurons} neurons "
                f"(need 1..{self.n_neurons})"
            )
        if not 0 <= self.n_fwd < self.n_bins:
            raise DataError(
                f"{src}: n_fwd={self.n_fwd} forward bins do not fit {self.n_bins} bins "
                f"(need 0..{self.n_bins - 1} so that at least one bin is observed)"
            )
        if self.split.shape != (self.n_trials,):
            raise DataError(f"{src}: field 'split' has shape {self.split.shape}; expected ({self.n_trials},)")
        bad = sorted(set(map(str, np.unique(self.split))) - set(SPLITS))
        if bad:
            raise DataError(f"{src}: field 'split' has unknown split names {bad}; expected {SPLITS}")
        if self.observed is not None and self.observed.shape != x.shape:
            raise DataError(f"{src}: field 'observed' has shape {self.observed.shape}; expected {x.shape}")
        self._check_field("behavior", (self.n_trials, self.n_obs), allow_negative=True)
        self._check_field("inputs", (self.n_trials, self.n_bins), allow_negative=True)
        self._check_field("rates", (self.n_trials, self.n_bins, self.n_neurons), allow_negative=False)
        self._check_field("latents", (self.n_trials, self.n_bins), allow_negative=True)
        if self.condition is not None and self.condition.shape != (self.n_trials,):
            raise DataError(
                f"{src}: field 'condition' has shape {self.condition.shape}; expected ({self.n_trials},) "
                "to match the number of trials in 'spikes'"
            )

    def _check_field(self, name: str, leading: tuple[int, ...], allow_negative: bool) -> None:
        value = getattr(self, name)
        if value is None:
            return
        if value.ndim != 3 or value.shape[: len(leading)] != leading:
            want = "(" + ", ".join(map(str, leading)) + (", D)" if len(leading) < 3 else ")")
            raise DataError(
                f"{self.source}: field {name!r} has shape {value.shape}; expected {want} "
                f"to match 'spikes' {self.spikes.shape} with {self.n_fwd} forward bins"
            )
        if not np.isfinite(value).all():
            raise DataError(f"{self.source}: field {name!r} has non-finite values")
        if not allow_negative and (value < 0).any():
            raise DataError(f"{self.source}: field {name!r} has negative values (min {value.min()})")

    def summary(self) -> str:
        counts = {s: int((self.split == s).sum()) for s in SPLITS}
        lines = [
            f"{self.name}: {self.n_trials} trials x {self.n_bins} bins x {self.n_neurons} neurons "
            f"(bin {self.bin_size * 1e3:g} ms)",
            f"  held-in {self.n_heldin} / held-out {self.n_heldout} neurons; "
            f"observed {self.n_obs} / forward {self.n_fwd} bins",
            "  splits: " + ", ".join(f"{k} {v}" for k, v in counts.items()),
            f"  mean rate {self.spikes[self.observed_mask()].mean() / self.bin_size:.2f} Hz",
        ]
        extras = [
            n
            for n in ("behavior", "inputs", "condition", "rates", "latents", "observed")
            if getattr(self, n) is not None
        ]
        if extras:
            lines.append("  also: " + ", ".join(extras))
        return "\n".join(lines)


# Fields indexed by trial first (subset() takes them; .npz files store them).
PER_TRIAL_FIELDS = ("spikes", "split", "observed", "behavior", "inputs", "condition", "rates", "latents")


def default_split(
    n_trials: int, val_frac: float = 0.2, test_frac: float = 0.2, seed: int = 0, fold: int | None = None
) -> np.ndarray:
    """Random train/val/test labels (trials,) with at least one train trial.

    `fold` (cross-validation): the trials that are not test are cut, in the seeded random order, into
    `n_folds(n_trials, val_frac, test_frac)` blocks of round(val_frac * n_trials) trials; fold f makes
    block f 'val' and the rest 'train'. The test trials are the same for every fold, and fold 0 is the
    split without `fold`, so folds of one seed share the test set and fold 0 reproduces the default.
    """
    if not (0 <= val_frac and 0 <= test_frac and val_frac + test_frac < 1):
        raise DataError(f"split fractions val={val_frac}, test={test_frac} must be >= 0 and sum to < 1")
    rng = np.random.default_rng(seed)
    order = rng.permutation(n_trials)
    n_val, n_test = int(round(val_frac * n_trials)), int(round(test_frac * n_trials))
    if n_trials - n_val - n_test < 1:
        raise DataError(
            f"{n_trials} trials are too few for val={val_frac}, test={test_frac} with a train trial"
        )
    labels = np.full(n_trials, "train", dtype="<U5")
    labels[order[n_val : n_val + n_test]] = "test"
    if fold is None:
        labels[order[:n_val]] = "val"
        return labels
    folds = n_folds(n_trials, val_frac, test_frac)
    if isinstance(fold, bool) or not isinstance(fold, (int, np.integer)) or not 0 <= fold < folds:
        raise DataError(
            f"fold={fold!r}: expected 0..{folds - 1} ({n_trials - n_test} non-test trials make {folds} "
            f"folds of {n_val} validation trials at val_frac={val_frac})"
        )
    rest = np.concatenate([order[:n_val], order[n_val + n_test :]])  # the non-test trials, in order
    labels[rest[fold * n_val : (fold + 1) * n_val]] = "val"
    return labels


def n_folds(n_trials: int, val_frac: float = 0.2, test_frac: float = 0.2) -> int:
    """How many disjoint validation folds `default_split(..., fold=f)` offers (0 when val_frac is 0)."""
    n_val, n_test = int(round(val_frac * n_trials)), int(round(test_frac * n_trials))
    return (n_trials - n_test) // n_val if n_val else 0


# float32 holds every whole number up to 2**24 exactly; larger counts would be rounded by the cast.
MAX_EXACT_COUNT = 2**24


def _as_float32(x, where: str = "", max_exact: float | None = None) -> np.ndarray:
    """`x` as a float32 array; with `max_exact`, values above it are a DataError (checked before the cast)."""
    try:
        arr = np.asarray(x)
    except ValueError as e:  # ragged nested lists
        raise DataError(f"{where} is not a regular numeric array ({e})") from e
    if arr.dtype.kind not in "biuf":
        raise DataError(f"{where} must be a numeric array; got dtype {arr.dtype} (ragged or mixed input?)")
    if max_exact is not None:
        _check_exact(arr, where, max_exact)
    return arr.astype(np.float32, copy=False)


def _check_exact(x: np.ndarray, where: str, max_exact: float = MAX_EXACT_COUNT) -> None:
    """Counts above `max_exact` (2**24) do not survive the float32 cast exactly: refuse them."""
    too_big = (x > max_exact) & np.isfinite(x)  # non-finite values: left to check_counts
    if too_big.any():
        bad = tuple(int(i) for i in np.argwhere(too_big)[0])
        raise DataError(
            f"{where} has counts up to {x[too_big].max()} (first {x[bad]} at index {bad}), above "
            f"2**24 = {MAX_EXACT_COUNT}, the largest count float32 holds exactly; spike counts per bin "
            "that large are not supported (rebin, or check that the field holds counts)"
        )


def check_counts(x: np.ndarray, where: str) -> None:
    """Counts must be finite, non-negative whole numbers, at most 2**24 (exact in float32)."""
    if not np.isfinite(x).all():
        bad = np.argwhere(~np.isfinite(x))[0]
        raise DataError(f"{where} has non-finite values (first at index {tuple(int(i) for i in bad)})")
    if (x < 0).any():
        bad = np.argwhere(x < 0)[0]
        raise DataError(
            f"{where} has negative counts (first {x[tuple(bad)]} at index {tuple(int(i) for i in bad)})"
        )
    frac = x != np.round(x)
    if frac.any():
        bad = np.argwhere(frac)[0]
        raise DataError(
            f"{where} has fractional counts (first {x[tuple(bad)]} at index {tuple(int(i) for i in bad)}); "
            "spike counts must be whole numbers"
        )
    _check_exact(x, where)
