"""Neural Latents Benchmark NWB files from DANDI (MC_Maze family) → `SpikeData`, with NLB's preprocessing.

NLB's published preprocessing for MC_Maze (Pei et al. 2021), which `load_nlb_nwb` applies through
`load_nwb`:
- trials aligned on movement onset (trials column `move_onset_time`), observed window -250 ms to +450 ms
  (140 bins at 5 ms), then a 200 ms forward-prediction window right after it (40 bins at 5 ms);
- held-out neurons: the units whose `heldout` column is True (held-in units first, each in file order);
- behaviour: the `hand_vel` TimeSeries (x, y hand velocity), at the centres of the observed bins;
- trial splits from the trials column `split`: 'train', 'val', 'test' or 'none' (never used).

Layout of the DANDI files (dandisets 000128 MC_Maze, 000138/000139/000140 Large/Medium/Small):
- `..._desc-train_behavior+ecephys.nwb`: NLB 'train' and 'val' trials (and 'none'), every unit with its
  `heldout` flag, `hand_vel` and the other behaviour series, continuous recording (forward bins exist);
- `..._desc-test_ecephys.nwb`: NLB 'test' trials only, held-in units only (`heldout` all False), no
  behaviour; each trial is a 0.7 s segment (start = movement onset - 0.25 s) and nothing is recorded
  after it, so the forward bins and the held-out neurons of 'test' trials are unobserved here.

Split mapping (NLB split → SpikeData split), `phase=`:

| NLB split | phase="val" (local scoring) | phase="test" (test-phase submission) |
|---|---|---|
| train | train / val (`val_frac` of them val, chosen with `seed`) | train / val |
| val   | test                                                  | train / val |
| test  | left out                                              | test        |
| none  | left out                                              | left out    |

The train/val choice is `default_split(n, val_frac, 0, seed)` over the NLB train-phase trials in file
order: the same rule `load_nlb_h5` applies to the NLB tensor file, so the NWB path and the bundled
tensors (`load("mc_maze_small")`) put the same trials in 'val' (NLB builds its tensors in file order).
SpikeData 'train' + 'val' trials are exactly NLB's train trials of that phase (`train_rates_*` of a
submission); SpikeData 'test' trials are NLB's evaluation trials (`eval_rates_*`).
"""

from __future__ import annotations

import dataclasses
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from neuralnets.data.formats.common import require_file
from neuralnets.data.formats.nlb_targets import nlb_group_name
from neuralnets.data.formats.nwb import load_nwb, open_nwb
from neuralnets.data.spikedata import SpikeData, default_split
from neuralnets.errors import DataError


@dataclass(frozen=True)
class NLBPreset:
    """NLB's preprocessing of one dataset: alignment, windows (seconds), behaviour and condition columns."""

    align_event: str
    window: tuple[float, float]  # observed window around the event, s
    fwd: float  # forward-prediction window right after it, s
    behavior: str
    condition_columns: tuple[str, ...]  # trials columns whose combination is a PSTH condition


_MC_MAZE = NLBPreset("move_onset_time", (-0.25, 0.45), 0.2, "hand_vel", ("trial_type", "trial_version"))
NLB_PRESETS: dict[str, NLBPreset] = {
    "mc_maze": _MC_MAZE,
    "mc_maze_large": _MC_MAZE,
    "mc_maze_medium": _MC_MAZE,
    "mc_maze_small": _MC_MAZE,
}
NLB_SPLITS = ("train", "val", "test", "none")
PHASES = {"val": (("train",), ("val",)), "test": (("train", "val"), ("test",))}  # (train trials, eval trials)
HELDOUT_COLUMN = "heldout"
SPLIT_COLUMN = "split"
_DEFAULT = "preset"


def load_nlb_nwb(
    path: str | Path,
    dataset: str = "mc_maze_small",
    bin_size: float = 0.005,
    *,
    phase: str = "val",
    behavior: str | None = _DEFAULT,
    val_frac: float = 0.2,
    seed: int = 0,
    name: str | None = None,
) -> SpikeData:
    """Bin an NLB DANDI NWB file with NLB's preprocessing of `dataset` (see the module docstring).

    Args:
        path: an NLB `.nwb` file (train or test file of the dandiset).
        dataset: preset name, one of `NLB_PRESETS` (the MC_Maze family).
        bin_size: seconds; the observed (0.7 s) and forward (0.2 s) windows must be whole bins.
        phase: 'val' (NLB 'train' trials → train/val, NLB 'val' → test) or 'test' (NLB 'train' + 'val'
            → train/val, NLB 'test' → test); see the table in the module docstring.
        behavior: behaviour series; default the preset's ('hand_vel'); None for none (test files have none).
        val_frac, seed: the share of NLB train-phase trials put in SpikeData 'val' and its seed.

    Returns:
        SpikeData `spikes (trials, T_obs + T_fwd, N_in + N_out)` (140 + 40 bins at 5 ms), held-in units
        first; NLB 'test' trials have their forward bins and held-out neurons unobserved (`observed`
        False, stored as 0). `condition` from the preset's condition columns when the file has them.
        `meta` adds `nlb_dataset`, `nlb_phase`, `nlb_split` (each trial's NLB split) and `nlb_group`
        (the dataset's group name in NLB submission / target files, e.g. 'mc_maze_small' at 5 ms).
    """
    path = require_file(path)
    src = str(path)
    if dataset not in NLB_PRESETS:
        raise DataError(f"{src}: no NLB preset {dataset!r}; presets: {sorted(NLB_PRESETS)}")
    if phase not in PHASES:
        raise DataError(f"{src}: phase must be one of {sorted(PHASES)}; got {phase!r}")
    preset = NLB_PRESETS[dataset]
    if not (isinstance(bin_size, (int, float)) and not isinstance(bin_size, bool) and bin_size > 0):
        raise DataError(f"{src}: bin_size must be a positive number of seconds; got {bin_size!r}")
    n_fwd = _whole_bins(preset.fwd, bin_size, "forward-prediction window", src)
    _whole_bins(preset.window[1] - preset.window[0], bin_size, "observed window", src)
    behavior = preset.behavior if behavior == _DEFAULT else behavior

    info = _read_nlb_tables(path, src, preset)
    train_splits, eval_splits = PHASES[phase]
    used = np.isin(info["split"], train_splits + eval_splits)
    if not used.any():
        found = sorted(set(info["split"].tolist()))
        hint = " (an NLB test file: pass phase='test')" if found == ["test"] else ""
        raise DataError(
            f"{src}: no trials for phase={phase!r}, which uses NLB splits "
            f"{list(train_splits + eval_splits)}; "
            f"the trials column {SPLIT_COLUMN!r} holds {found}{hint}"
        )
    exclude = tuple(s for s in NLB_SPLITS if s not in train_splits + eval_splits)
    only_test = set(info["split"][used].tolist()) == {"test"}
    with warnings.catch_warnings():
        if only_test:  # NLB test files hold held-in units only, by design
            warnings.filterwarnings("ignore", message=".*no held-out neurons")
        try:
            data = load_nwb(
                path,
                bin_size,
                align_event=preset.align_event,
                window=(preset.window[0], preset.window[1] + preset.fwd),
                n_fwd=n_fwd,
                behavior=behavior,
                heldout_column=HELDOUT_COLUMN,
                split_column=SPLIT_COLUMN,
                exclude_splits=exclude,
                name=name or f"{dataset}_{path.stem}",
            )
        except DataError as e:
            if behavior is not None and f"no TimeSeries named {behavior!r}" in str(e):
                raise DataError(
                    f"{e}; NLB's {dataset} preprocessing reads behaviour {behavior!r}: pass behavior=None "
                    "for files without it (NLB test files hold no behaviour)"
                ) from e
            raise
    kept_ids = info["ids"][used]
    if list(data.meta["trial_ids"]) != kept_ids.tolist():  # load_nwb keeps file order; check, never assume
        raise DataError(f"{src}: trials read by load_nwb do not match the trials table's {SPLIT_COLUMN!r}")
    nlb_split = info["split"][used]
    is_train = np.isin(nlb_split, train_splits)
    split = np.full(len(nlb_split), "test", dtype="<U5")
    if is_train.any():
        split[is_train] = default_split(int(is_train.sum()), val_frac=val_frac, test_frac=0.0, seed=seed)

    spikes, observed = data.spikes.copy(), data.observed_mask().copy()
    hidden = nlb_split == "test"  # NLB withholds these trials' forward bins and held-out neurons
    if hidden.any():
        observed[np.ix_(hidden, np.arange(data.n_obs, data.n_bins), np.arange(data.n_neurons))] = False
        observed[np.ix_(hidden, np.arange(data.n_bins), np.arange(data.n_heldin, data.n_neurons))] = False
        spikes[~observed] = 0
    condition, meta = data.condition, dict(data.meta)
    if info["conditions"] is not None:
        labels = info["conditions"][used]
        names, condition = np.unique(labels, return_inverse=True)
        meta["condition_names"] = [str(x) for x in names]
        meta["condition_columns"] = list(preset.condition_columns)
    meta.update(
        nlb_dataset=dataset,
        nlb_phase=phase,
        nlb_split=nlb_split.tolist(),
        nlb_group=nlb_group_name(dataset, bin_size),
    )
    if data.behavior is not None and hidden.any():
        meta["behavior_splits"] = ["train", "val"]  # NLB test trials have no behaviour
    return dataclasses.replace(
        data,
        spikes=spikes,
        observed=None if observed.all() else observed,
        split=split,
        condition=condition,
        meta=meta,
    )


def _whole_bins(length: float, bin_size: float, what: str, src: str) -> int:
    n = length / bin_size
    if abs(n - round(n)) > 1e-6:
        raise DataError(
            f"{src}: NLB's {what} of {length * 1e3:g} ms is {n:g} bins of {bin_size * 1e3:g} ms; "
            "bin_size must divide it (NLB uses 5, 10 or 20 ms)"
        )
    return int(round(n))


def _read_nlb_tables(path: Path, src: str, preset: NLBPreset) -> dict:
    """The trials' ids, NLB split labels and condition labels; checks the columns NLB files must have."""
    io, nwb = open_nwb(path, src)
    try:
        trials, units = nwb.trials, nwb.units
        if trials is None or len(trials) == 0:
            raise DataError(f"{src}: the NWB file has no trials table (NLB files have one)")
        cols = list(trials.colnames)
        if SPLIT_COLUMN not in cols:
            raise DataError(
                f"{src}: trials table has no {SPLIT_COLUMN!r} column, which NLB files use to mark each "
                f"trial {list(NLB_SPLITS)}; columns: {cols}"
            )
        if units is None or HELDOUT_COLUMN not in units.colnames:
            have = [] if units is None else list(units.colnames)
            raise DataError(
                f"{src}: units table has no {HELDOUT_COLUMN!r} column, which NLB files use to flag "
                f"held-out units; columns: {have}"
            )
        ids = np.asarray(trials.id.data[:])
        split = np.asarray(trials[SPLIT_COLUMN].data[:]).astype(str)
        conditions = None
        if all(c in cols for c in preset.condition_columns):
            values = [np.asarray(trials[c].data[:]) for c in preset.condition_columns]
            conditions = np.array(
                [
                    ",".join(f"{c}={v[i]}" for c, v in zip(preset.condition_columns, values, strict=True))
                    for i in range(len(ids))
                ]
            )
    finally:
        io.close()
    unknown = sorted(set(split.tolist()) - set(NLB_SPLITS))
    if unknown:
        bad_ids = ids[~np.isin(split, NLB_SPLITS)][:5].tolist()
        raise DataError(
            f"{src}: trials column {SPLIT_COLUMN!r} has values {unknown} (trial ids {bad_ids}...); NLB "
            f"splits are {list(NLB_SPLITS)}"
        )
    return {"ids": ids, "split": split, "conditions": conditions}
