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

The val phase reads the train file alone. The test phase reads both (`path` = the train file and
`test_file=` the test file, or `path` = a folder holding both under NLB's `desc-train` / `desc-test`
names): the train file gives the 'train' + 'val' trials with every unit and the list of held-out units;
the test file gives the 'test' trials, whose units must be exactly the train file's held-in units (matched
by unit id, put in the train file's order); their held-out neurons and forward bins are left unobserved
(NLB withholds them). The test file alone is refused for the test phase: without the train file there
are no held-out neurons to predict and no train trials, so no NLB submission could be made. A file that
holds every split itself (not a DANDI layout) still works alone.

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
    test_file: str | Path | None = None,
    behavior: str | None = _DEFAULT,
    val_frac: float = 0.2,
    seed: int = 0,
    name: str | None = None,
    fold: int | None = None,
) -> SpikeData:
    """Bin NLB DANDI NWB files with NLB's preprocessing of `dataset` (see the module docstring).

    Args:
        path: the dandiset's train file (`..._desc-train_behavior+ecephys.nwb`), a folder holding the
            train file and, for phase='test', the test file (`..._desc-test_ecephys.nwb`), found by NLB's
            `desc-train` / `desc-test` names; or one file that holds every split it needs.
        dataset: preset name, one of `NLB_PRESETS` (the MC_Maze family).
        bin_size: seconds; the observed (0.7 s) and forward (0.2 s) windows must be whole bins.
        phase: 'val' (NLB 'train' trials → train/val, NLB 'val' → test) or 'test' (NLB 'train' + 'val'
            → train/val, NLB 'test' → test); see the table in the module docstring.
        test_file: the dandiset's test file, for phase='test' (not read for phase='val'). Its units must
            be the train file's held-in units (same ids); the held-out neurons come from the train file.
        behavior: behaviour series; default the preset's ('hand_vel'); None for none.
        val_frac, seed: the share of NLB train-phase trials put in SpikeData 'val' and its seed.
        fold: a cross-validation fold of the train-phase trials as 'val' instead (`default_split`).

    Returns:
        SpikeData `spikes (trials, T_obs + T_fwd, N_in + N_out)` (140 + 40 bins at 5 ms), held-in units
        first; NLB 'test' trials have their forward bins and held-out neurons unobserved (`observed`
        False, stored as 0) and no behaviour (`meta['behavior_splits']`). `condition` from the preset's
        condition columns when every file read has them. `meta` adds `nlb_dataset`, `nlb_phase`,
        `nlb_split` (each trial's NLB split), `nlb_group` (the dataset's group name in NLB submission /
        target files, e.g. 'mc_maze_small' at 5 ms) and `nlb_files` ({'train': path, 'test': path}).
    """
    path = Path(path)
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
    train_path, test_path = nlb_files(path, test_file, phase)
    train_splits, eval_splits = PHASES[phase]
    read = dict(preset=preset, bin_size=bin_size, n_fwd=n_fwd, name=name or f"{dataset}_{train_path.stem}")

    if test_path is None:  # one file holds every split this phase uses
        data, nlb_split, labels = _read_nlb_file(
            train_path, splits=train_splits + eval_splits, behavior=behavior, phase=phase, **read
        )
        if phase == "test" and not (nlb_split == "test").any():
            raise DataError(
                f"{train_path}: holds no NLB 'test' trials (DANDI ships them in the dandiset's test file, "
                "'..._desc-test_ecephys.nwb'); pass test_file=<that file>, or the folder holding both files"
            )
        if phase == "test" and set(nlb_split.tolist()) == {"test"}:
            raise DataError(
                f"{train_path}: an NLB test file (only 'test' trials, held-in units only); the held-out "
                "neurons and the train trials come from the dandiset's train file: pass the train file "
                f"with test_file={str(train_path)!r}, or the folder holding both files"
            )
        files = {"train": str(train_path)}
    else:
        data, nlb_split, labels = _join_train_and_test(train_path, test_path, behavior, read)
        files = {"train": str(train_path), "test": str(test_path)}

    is_train = np.isin(nlb_split, train_splits)
    split = np.full(len(nlb_split), "test", dtype="<U5")
    if is_train.any():
        split[is_train] = default_split(
            int(is_train.sum()), val_frac=val_frac, test_frac=0.0, seed=seed, fold=fold
        )
    spikes, observed = data.spikes.copy(), data.observed_mask().copy()
    hidden = nlb_split == "test"  # NLB withholds these trials' forward bins and held-out neurons
    if hidden.any():
        observed[np.ix_(hidden, np.arange(data.n_obs, data.n_bins), np.arange(data.n_neurons))] = False
        observed[np.ix_(hidden, np.arange(data.n_bins), np.arange(data.n_heldin, data.n_neurons))] = False
        spikes[~observed] = 0
    condition, meta = data.condition, dict(data.meta)
    if labels is not None:
        names, condition = np.unique(labels, return_inverse=True)
        meta["condition_names"] = [str(x) for x in names]
        meta["condition_columns"] = list(preset.condition_columns)
    meta.update(
        nlb_dataset=dataset,
        nlb_phase=phase,
        nlb_split=nlb_split.tolist(),
        nlb_group=nlb_group_name(dataset, bin_size),
        nlb_files=files,
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


def nlb_files(path: str | Path, test_file: str | Path | None, phase: str) -> tuple[Path, Path | None]:
    """(train file, test file or None) from `load_nlb_nwb`'s `path` and `test_file`. A folder is searched
    for NLB's names (`*desc-train*.nwb`, `*desc-test*.nwb`); the test file is only looked for (and needed)
    in phase 'test'."""
    path = Path(path)
    if path.is_dir():
        if test_file is not None:
            raise DataError(f"{path}: a folder is searched for both files; pass test_file= with a train file")
        train = _one_match(path, "desc-train", "the dandiset's train file")
        test = _one_match(path, "desc-test", "the dandiset's test file") if phase == "test" else None
        return train, test
    train = require_file(path)
    if test_file is None or phase != "test":
        return train, None
    test = require_file(test_file)
    if test.resolve() == train.resolve():
        raise DataError(f"{train}: given as both the train file and test_file=; they are two files")
    return train, test


def _one_match(folder: Path, tag: str, what: str) -> Path:
    found = sorted(p for p in folder.glob(f"*{tag}*.nwb") if p.is_file())
    if len(found) != 1:
        have = sorted(p.name for p in folder.glob("*.nwb"))
        problem = "no file" if not found else f"{len(found)} files"
        raise DataError(
            f"{folder}: {problem} named '*{tag}*.nwb' ({what}); NWB files in the folder: {have}; pass the "
            "files themselves (path=<train file>, test_file=<test file>)"
        )
    return found[0]


def _read_nlb_file(
    path: Path,
    *,
    preset: NLBPreset,
    bin_size: float,
    n_fwd: int,
    splits: tuple[str, ...],
    behavior: str | None,
    phase: str,
    name: str,
) -> tuple[SpikeData, np.ndarray, np.ndarray | None]:
    """One NLB file's trials of NLB `splits`, binned: (data, each trial's NLB split, condition labels or
    None). Held-in units first, held-out (units column 'heldout') after them; file order within each."""
    src = str(path)
    info = _read_nlb_tables(path, src, preset)
    used = np.isin(info["split"], splits)
    if not used.any():
        found = sorted(set(info["split"].tolist()))
        hint = " (an NLB test file: pass phase='test')" if found == ["test"] else ""
        raise DataError(
            f"{src}: no trials for phase={phase!r}, which uses NLB splits {list(splits)}; "
            f"the trials column {SPLIT_COLUMN!r} holds {found}{hint}"
        )
    exclude = tuple(s for s in NLB_SPLITS if s not in splits)
    with warnings.catch_warnings():
        if set(info["split"][used].tolist()) == {"test"}:  # NLB test files hold held-in units only
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
                name=name,
            )
        except DataError as e:
            if behavior is not None and f"no TimeSeries named {behavior!r}" in str(e):
                raise DataError(
                    f"{e}; NLB's preprocessing reads behaviour {behavior!r}: pass behavior=None for files "
                    "without it"
                ) from e
            raise
    if list(data.meta["trial_ids"]) != info["ids"][used].tolist():  # load_nwb keeps file order; check it
        raise DataError(f"{src}: trials read by load_nwb do not match the trials table's {SPLIT_COLUMN!r}")
    labels = info["conditions"][used] if info["conditions"] is not None else None
    return data, info["split"][used], labels


def _join_train_and_test(
    train_path: Path, test_path: Path, behavior: str | None, read: dict
) -> tuple[SpikeData, np.ndarray, np.ndarray | None]:
    """The test phase from DANDI's two files: the train file's 'train' + 'val' trials with every unit, then
    the test file's 'test' trials, whose held-in units are matched to the train file's by unit id and whose
    held-out neurons (train file units) are left unobserved. (data, NLB split, condition labels or None)."""
    both = f"{train_path} + {test_path}"
    splits, test_splits = _splits_in(train_path), _splits_in(test_path)
    if splits == {"test"} and "test" not in test_splits:
        raise DataError(
            f"{train_path} holds NLB 'test' trials only and test_file={str(test_path)!r} none: the two files "
            "are swapped; pass the train file first and the test file as test_file="
        )
    if "test" in splits:
        raise DataError(
            f"{train_path}: holds NLB 'test' trials itself, and test_file={str(test_path)!r} was given too; "
            "pass the test file only with DANDI's train file (splits 'train', 'val', 'none')"
        )
    if test_splits != {"test"}:
        raise DataError(
            f"{test_path}: given as test_file= but its trials have NLB splits {sorted(test_splits)}; "
            f"DANDI's test file holds 'test' trials only (train file: {train_path})"
        )
    train, train_split, train_labels = _read_nlb_file(
        train_path, splits=("train", "val"), behavior=behavior, phase="test", **read
    )
    test, test_split, test_labels = _read_nlb_file(
        test_path, splits=("test",), behavior=None, phase="test", **read
    )
    if train.n_heldout == 0:
        raise DataError(
            f"{train_path}: no held-out units (units column {HELDOUT_COLUMN!r}), so it is not the NLB train "
            f"file that goes with the test file {test_path}"
        )
    if test.n_heldout:
        raise DataError(
            f"{test_path}: {test.n_heldout} units are flagged held out; DANDI's test file holds held-in "
            f"units only (the held-out ones are the train file's, {train_path})"
        )
    heldin_ids = train.meta["unit_ids"][: train.n_heldin]
    test_ids = test.meta["unit_ids"]
    if sorted(test_ids) != sorted(heldin_ids):
        only_test = sorted(set(test_ids) - set(heldin_ids))
        only_train = sorted(set(heldin_ids) - set(test_ids))
        raise DataError(
            f"{test_path}: its {len(test_ids)} units do not match the {len(heldin_ids)} held-in units of the "
            f"train file {train_path} (ids only in the test file: {only_test[:5]}, only in the train file: "
            f"{only_train[:5]}); the two files must come from the same NLB dandiset"
        )
    if (test.n_bins, test.n_fwd) != (train.n_bins, train.n_fwd):  # same preset: a guard, never expected
        raise DataError(f"{both}: the two files binned to different windows")
    column = [test_ids.index(u) for u in heldin_ids]  # test file column of each train held-in unit
    e, n_in = test.n_trials, train.n_heldin
    spikes = np.zeros((e, train.n_bins, train.n_neurons), dtype=np.float32)  # (E, T, N_in + N_out)
    observed = np.zeros(spikes.shape, dtype=bool)
    spikes[:, :, :n_in] = test.spikes[:, :, column]
    observed[:, :, :n_in] = test.observed_mask()[:, :, column]
    beh = None
    if train.behavior is not None:  # (R + E, T_obs, D); none recorded for the test trials
        beh = np.concatenate([train.behavior, np.zeros((e,) + train.behavior.shape[1:], np.float32)])
    labels = None
    if train_labels is not None and test_labels is not None:
        labels = np.concatenate([train_labels, test_labels])
    meta = dict(train.meta)
    meta.update(
        trial_ids=list(train.meta["trial_ids"]) + list(test.meta["trial_ids"]),  # ids of each file's table
        excluded_trial_ids=list(train.meta["excluded_trial_ids"]),
        test_trial_ids=list(test.meta["trial_ids"]),
    )
    data = SpikeData(
        spikes=np.concatenate([train.spikes, spikes]),
        bin_size=train.bin_size,
        n_heldin=n_in,
        n_fwd=train.n_fwd,
        split=np.concatenate([train.split, np.full(e, "test")]),
        observed=np.concatenate([train.observed_mask(), observed]),
        behavior=beh,
        name=train.name,
        source=both,
        meta=meta,
    )
    return data, np.concatenate([train_split, test_split]), labels


def _splits_in(path: Path) -> set[str]:
    """The NLB split labels of a file's trials (the `split` column), read without binning anything."""
    io, nwb = open_nwb(path, str(path))
    try:
        trials = nwb.trials
        if trials is None or SPLIT_COLUMN not in trials.colnames:
            return set()
        return set(np.asarray(trials[SPLIT_COLUMN].data[:]).astype(str).tolist())
    finally:
        io.close()


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
