"""NLB DANDI NWB files with NLB's MC_Maze preprocessing (`load_nlb_nwb`): small pynwb fixtures in the
DANDI 000140 layout, the real MC_Maze_Small test file, split mapping, binning, and bad input."""

from __future__ import annotations

from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import pytest

from neuralnets.data import default_split, load, load_nlb_nwb, load_nwb
from neuralnets.data.formats.nlb_targets import nlb_group_name
from neuralnets.errors import DataError

SPLITS = ["train", "train", "val", "test", "none", "train", "val", "train"]
HELDOUT = [False, True, False, True, False]  # units 100..104
UNIT_IDS = [100, 101, 102, 103, 104]
ONSET_JITTER = 0.0123  # onsets are not on the bin grid of the file's clock


def _write_nlb_nwb(
    path: Path,
    splits=SPLITS,
    split_column: bool = True,
    hand_vel: bool = True,
    heldout_column: bool = True,
    conditions: bool = True,
) -> Path:
    """A small file in the DANDI 000140 train-file layout: units with spike times and a `heldout` flag, a
    trials table with `move_onset_time`, `split` (and `trial_type`/`trial_version`), and `hand_vel` in
    processing/behavior. Trial k spans [2k, 2k + 1.5) s, movement onset 0.5 s (+ jitter) after its start."""
    from pynwb import NWBHDF5IO, NWBFile, TimeSeries

    rng = np.random.default_rng(7)
    n = len(splits)
    nwb = NWBFile(
        session_description="nlb-like test file",
        identifier=path.stem,
        session_start_time=datetime(2020, 1, 1, tzinfo=timezone.utc),
    )
    if heldout_column:
        nwb.add_unit_column(name="heldout", description="held-out unit (NLB)")
    for uid, ho in zip(UNIT_IDS, HELDOUT, strict=True):
        times = np.sort(rng.uniform(0.0, 2.0 * n, size=int(rng.integers(60, 200))))
        nwb.add_unit(id=uid, spike_times=times, **({"heldout": ho} if heldout_column else {}))
    nwb.add_trial_column(name="move_onset_time", description="movement onset (s)")
    if split_column:
        nwb.add_trial_column(name="split", description="NLB split")
    if conditions:
        nwb.add_trial_column(name="trial_type", description="maze")
        nwb.add_trial_column(name="trial_version", description="version")
    for k, s in enumerate(splits):
        row = dict(
            start_time=2.0 * k, stop_time=2.0 * k + 1.5, move_onset_time=2.0 * k + 0.5 + ONSET_JITTER * k
        )
        if split_column:
            row["split"] = s
        if conditions:
            row.update(trial_type=k % 3, trial_version=k % 2)
        nwb.add_trial(**row)
    if hand_vel:
        t = np.arange(0, int(2000 * n) + 1) / 1000.0  # 1 kHz over the whole session
        vel = np.stack([np.sin(t), np.cos(2 * t)], axis=1)
        module = nwb.create_processing_module("behavior", "behaviour")
        module.add(TimeSeries(name="hand_vel", data=vel, unit="m/s", timestamps=t))
    with NWBHDF5IO(str(path), "w") as io:
        io.write(nwb)
    return path


def _unit_times(path: Path) -> dict[int, np.ndarray]:
    from pynwb import NWBHDF5IO

    with NWBHDF5IO(str(path), "r") as io:
        units = io.read().units
        return {int(units.id[i]): np.asarray(units["spike_times"][i]) for i in range(len(units))}


@pytest.fixture
def nlb_file(tmp_path) -> Path:
    return _write_nlb_nwb(tmp_path / "nlb.nwb")


def test_shapes_order_counts_and_behaviour(nlb_file):
    d = load_nlb_nwb(nlb_file)  # mc_maze_small preset, 5 ms, phase 'val'
    kept = [k for k, s in enumerate(SPLITS) if s in ("train", "val")]
    assert (d.n_trials, d.n_bins, d.n_neurons, d.n_heldin, d.n_fwd) == (len(kept), 180, 5, 3, 40)
    assert d.meta["trial_ids"] == kept
    assert d.meta["unit_ids"] == [100, 102, 104, 101, 103]  # held-in first, then held-out, file order
    assert d.meta["nlb_split"] == [SPLITS[k] for k in kept] and d.meta["nlb_group"] == "mc_maze_small"
    assert d.observed is None  # the train file is continuous: forward bins exist
    times = _unit_times(nlb_file)
    for i, k in enumerate(kept):
        onset = 2.0 * k + 0.5 + ONSET_JITTER * k
        edges = onset - 0.25 + 0.005 * np.arange(181)
        for j, uid in enumerate(d.meta["unit_ids"]):
            np.testing.assert_array_equal(d.spikes[i, :, j], np.histogram(times[uid], bins=edges)[0])
        # forward bins are the 200 ms right after +450 ms
        fwd_ref = np.histogram(times[101], bins=onset + 0.45 + 0.005 * np.arange(41))[0]
        np.testing.assert_array_equal(d.spikes[i, 140:, 3], fwd_ref)
        centres = onset - 0.25 + 0.005 * (np.arange(140) + 0.5)
        np.testing.assert_allclose(
            d.behavior[i], np.stack([np.sin(centres), np.cos(2 * centres)], 1), atol=1e-5
        )
    assert d.behavior.shape == (len(kept), 140, 2)
    # conditions: (trial_type, trial_version) combinations
    names = [f"trial_type={k % 3},trial_version={k % 2}" for k in kept]
    assert [d.meta["condition_names"][c] for c in d.condition] == names


def test_split_mapping_val_phase(nlb_file):
    d = load_nlb_nwb(nlb_file, val_frac=0.25, seed=3)
    nlb = np.array(d.meta["nlb_split"])
    assert (d.split[nlb == "val"] == "test").all()  # NLB 'val' trials are the local evaluation trials
    expected = default_split(int((nlb == "train").sum()), val_frac=0.25, test_frac=0.0, seed=3)
    np.testing.assert_array_equal(d.split[nlb == "train"], expected)
    assert set(d.split[nlb == "train"]) == {"train", "val"}  # 1 of the 4 NLB train trials is 'val'


def test_split_mapping_test_phase_hides_what_nlb_withholds(nlb_file):
    d = load_nlb_nwb(nlb_file, phase="test")
    kept = [k for k, s in enumerate(SPLITS) if s != "none"]
    assert d.meta["trial_ids"] == kept
    nlb = np.array(d.meta["nlb_split"])
    assert (d.split[nlb == "test"] == "test").all() and (d.split[nlb != "test"] != "test").all()
    obs = d.observed_mask()
    test = nlb == "test"
    assert not obs[test][:, 140:].any() and not obs[test][:, :, 3:].any()  # forward bins, held-out units
    assert obs[test][:, :140, :3].all() and obs[~test].all()
    assert d.spikes[~obs].sum() == 0
    assert d.meta["behavior_splits"] == ["train", "val"]
    # the same held-in spikes as the val-phase load, for the trials both have
    v = load_nlb_nwb(nlb_file)
    both = [d.meta["trial_ids"].index(t) for t in v.meta["trial_ids"]]
    np.testing.assert_array_equal(d.spikes[both], v.spikes)


def test_coarser_bins_sum_finer_bins(nlb_file):
    fine = load_nlb_nwb(nlb_file, bin_size=0.005)
    coarse = load_nlb_nwb(nlb_file, bin_size=0.02)
    assert (coarse.n_bins, coarse.n_fwd) == (45, 10) and coarse.meta["nlb_group"] == "mc_maze_small_20"
    summed = fine.spikes.reshape(fine.n_trials, 45, 4, fine.n_neurons).sum(2)
    np.testing.assert_array_equal(coarse.spikes, summed)


def test_load_dispatches_on_dataset_option(nlb_file):
    d = load(nlb_file, dataset="mc_maze_small", phase="test")
    np.testing.assert_array_equal(d.spikes, load_nlb_nwb(nlb_file, phase="test").spikes)
    with pytest.raises(DataError, match="unknown options"):
        load(nlb_file, dataset="mc_maze_small", window=(0, 1))


def test_group_names():
    assert nlb_group_name("mc_maze_small", 0.005) == "mc_maze_small"
    assert nlb_group_name("mc_maze", 0.02) == "mc_maze_20"
    with pytest.raises(DataError, match="whole number of ms"):
        nlb_group_name("mc_maze", 0.0025)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(split_column=False), r"no 'split' column.*\['train', 'val', 'test', 'none'\]"),
        (dict(splits=["train", "holdout", "val"]), r"'split' has values \['holdout'\].*trial ids \[1\]"),
        (dict(hand_vel=False), r"no TimeSeries named 'hand_vel'.*pass behavior=None"),
        (dict(heldout_column=False), r"units table has no 'heldout' column"),
    ],
)
def test_bad_files(tmp_path, kwargs, match):
    path = _write_nlb_nwb(tmp_path / "bad.nwb", **kwargs)
    with pytest.raises(DataError, match=match) as info:
        load_nlb_nwb(path)
    assert str(path) in str(info.value)


def test_bad_arguments(nlb_file):
    with pytest.raises(DataError, match=r"no NLB preset 'mc_rtt'"):
        load_nlb_nwb(nlb_file, dataset="mc_rtt")
    with pytest.raises(DataError, match=r"phase must be one of"):
        load_nlb_nwb(nlb_file, phase="train")
    with pytest.raises(DataError, match=r"bin_size must divide"):
        load_nlb_nwb(nlb_file, bin_size=0.003)
    only_test = _write_nlb_nwb(nlb_file.parent / "test_only.nwb", splits=["test", "test"], hand_vel=False)
    with pytest.raises(DataError, match=r"holds \['test'\] \(an NLB test file: pass phase='test'\)"):
        load_nlb_nwb(only_test, behavior=None)
    without_conditions = load_nlb_nwb(_write_nlb_nwb(nlb_file.parent / "nc.nwb", conditions=False))
    assert without_conditions.condition is None


@pytest.mark.filterwarnings("ignore:.*no held-out neurons:UserWarning")  # the plain load_nwb below
def test_real_mc_maze_small_test_file(nwb_fixture):
    """The official DANDI 000140 test file: 100 'test' trials of 0.7 s (start = onset - 250 ms), columns
    start_time/stop_time/move_onset_time/split only (no conditions), 107 held-in units (`heldout` all
    False), no behaviour; so phase='test' and behavior=None, forward bins and held-out units unobserved."""
    import pynwb

    with pynwb.NWBHDF5IO(str(nwb_fixture), "r") as io:
        nwb = io.read()
        assert list(nwb.trials.colnames) == ["start_time", "stop_time", "move_onset_time", "split"]
        assert set(nwb.trials["split"][:]) == {"test"} and not np.asarray(nwb.units["heldout"][:]).any()
    d = load_nlb_nwb(nwb_fixture, phase="test", behavior=None)
    assert (d.n_trials, d.n_obs, d.n_fwd, d.n_heldin, d.n_heldout) == (100, 140, 40, 107, 0)
    assert set(d.split) == {"test"} and d.behavior is None and d.condition is None
    assert d.observed[:, :140].all() and not d.observed[:, 140:].any()
    assert d.spikes[:, 140:].sum() == 0  # the next trial's spikes never leak into the hidden forward bins
    plain = load_nwb(nwb_fixture, bin_size=0.005, align_event="move_onset_time", window=(-0.25, 0.45))
    np.testing.assert_array_equal(d.spikes[:, :140], plain.spikes)
    with pytest.raises(DataError, match="pass phase='test'"):
        load_nlb_nwb(nwb_fixture, behavior=None)


def test_command_line_options(nlb_file, capsys):
    from neuralnets.data.cli import main

    assert (
        main([str(nlb_file), "-o", "dataset=mc_maze_small", "-o", "phase=test", "-o", "bin_size=0.01"]) == 0
    )
    out = capsys.readouterr().out
    assert "7 trials x 90 bins x 5 neurons (bin 10 ms)" in out and "held-in 3 / held-out 2" in out
    assert main([str(nlb_file), "-o", "dataset=mc_maze_small", "-o", "phase=later"]) == 2
    assert "phase must be one of ['test', 'val']; got 'later'" in capsys.readouterr().err
