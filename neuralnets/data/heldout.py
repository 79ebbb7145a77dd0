"""Choosing held-out neurons (predicted by a model, never given to it as input).

Four ways, one at a time: a boolean column the file already has, an explicit list of unit indices,
every k-th unit, or a seeded random fraction. Each returns a `(n_units,)` bool mask over the units
in file order; the loaders then put held-in units first.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from neuralnets.errors import DataError

HOW_TO_CHOOSE = (
    "choose held-out units with heldout_column=<boolean units column>, heldout_units=[indices], "
    "heldout_every=k or heldout_fraction=f (with heldout_seed=)"
)


def from_column(values: np.ndarray, column: str, src: str) -> np.ndarray:
    """A boolean (or 0/1) units column as a `(n_units,)` mask."""
    values = np.asarray(values)
    if values.ndim != 1:
        raise DataError(
            f"{src}: units column {column!r} must hold one value per unit; got shape {values.shape}"
        )
    if values.dtype == bool:
        return values
    if values.dtype.kind not in "biuf" or not np.isin(values, (0, 1)).all():
        raise DataError(f"{src}: units column {column!r} must be boolean; got {values[:5]}...")
    return values.astype(bool)


def from_indices(n_units: int, indices: Sequence[int], src: str) -> np.ndarray:
    """Units at the given 0-based positions in file order (distinct whole numbers in 0..n_units-1)."""
    arr = np.asarray(list(indices) if not isinstance(indices, np.ndarray) else indices)
    if arr.ndim != 1 or (arr.size and arr.dtype.kind not in "iu"):
        bad = [x for x in np.ravel(arr).tolist() if not isinstance(x, int) or isinstance(x, bool)]
        raise DataError(
            f"{src}: heldout_units must be a list of unit indices (whole numbers); got {list(indices)!r} "
            f"(not whole numbers: {bad[:5]})"
        )
    out_of_range = [int(i) for i in arr if not 0 <= i < n_units]
    if out_of_range:
        raise DataError(
            f"{src}: heldout_units {out_of_range} are not unit indices; the file has {n_units} units "
            f"(indices 0..{n_units - 1}, in the units table's order)"
        )
    if len(set(arr.tolist())) != arr.size:
        dup = sorted({int(i) for i in arr if (arr == i).sum() > 1})
        raise DataError(f"{src}: heldout_units lists units {dup} more than once")
    mask = np.zeros(n_units, dtype=bool)
    mask[arr] = True
    return mask


def every_kth(n_units: int, k: int, src: str, allow_zero: bool = False) -> np.ndarray:
    """The k-th, 2k-th, ... units (1-based: indices k-1, 2k-1, ...); `k >= 2` (0 = none if allowed)."""
    ok = isinstance(k, (int, np.integer)) and not isinstance(k, bool) and (k >= 2 or (allow_zero and k == 0))
    if not ok:
        need = "0 (no held-out units) or a whole number >= 2" if allow_zero else "a whole number >= 2"
        raise DataError(f"{src}: heldout_every must be {need}; got {k!r}")
    mask = np.zeros(n_units, dtype=bool)
    if k:
        mask[k - 1 :: k] = True
    return mask


def random_fraction(n_units: int, fraction: float, seed: int, src: str) -> np.ndarray:
    """`round(fraction * n_units)` units drawn without replacement with `numpy.random.default_rng(seed)`."""
    if isinstance(fraction, bool) or not isinstance(fraction, (int, float)) or not 0 < fraction < 1:
        raise DataError(
            f"{src}: heldout_fraction must be a number between 0 and 1 (exclusive); got {fraction!r}"
        )
    n_out = int(round(fraction * n_units))
    mask = np.zeros(n_units, dtype=bool)
    mask[np.random.default_rng(seed).choice(n_units, size=n_out, replace=False)] = True
    return mask


def check_heldout(mask: np.ndarray, src: str, how: str) -> str | None:
    """All units held out is an error; none held out returns a warning for the loader to issue."""
    if mask.all():
        raise DataError(f"{src}: {how} holds out all {mask.size} units; at least one must be held in")
    if not mask.any():
        return (
            f"{src}: no held-out neurons ({how}), so co-bps (bits per spike on held-out neurons) "
            f"cannot be computed; {HOW_TO_CHOOSE}"
        )
    return None
