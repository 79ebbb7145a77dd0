"""NLB DANDI NWB files with NLB's MC_Maze preprocessing (`load_nlb_nwb`): small pynwb fixtures in the
DANDI 000140 layout, the real MC_Maze_Small test file, split mapping, binning, and bad input."""

from __future__ import annotations

import shutil
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


def test_real_test_file_alone_is_refused_for_the_test_phase(nwb_fixture):
    """The official DANDI 000140 test file: 100 'test' trials of 0.7 s (start = onset - 250 ms), columns
    start_time/stop_time/move_onset_time/split only (no conditions), 107 held-in units (`heldout` all
    False), no behaviour. Alone it cannot make the test phase: the held-out neurons are the train file's."""
    import pynwb

    with pynwb.NWBHDF5IO(str(nwb_fixture), "r") as io:
        nwb = io.read()
        assert list(nwb.trials.colnames) == ["start_time", "stop_time", "move_onset_time", "split"]
        assert set(nwb.trials["split"][:]) == {"test"} and not np.asarray(nwb.units["heldout"][:]).any()
        assert list(nwb.units.colnames) == ["heldout", "spike_times", "obs_intervals", "electrodes"]
    with pytest.raises(DataError) as info:
        load_nlb_nwb(nwb_fixture, phase="test", behavior=None)
    message = str(info.value)
    assert "an NLB test file" in message and "pass the train file with test_file=" in message
    assert str(nwb_fixture) in message and "\n" not in message
    with pytest.raises(DataError, match="pass phase='test'"):
        load_nlb_nwb(nwb_fixture, behavior=None)


# ----- the test phase from the files exactly as DANDI ships them (tests/nlb_dandi.py: the train file)
@pytest.fixture(scope="module")
def dandi(tmp_path_factory) -> tuple[Path, Path]:
    """(train file, test file) in one folder: the synthetic train file (DANDI layout), the real test file."""
    from nlb_dandi import dandi_pair

    return dandi_pair(tmp_path_factory.mktemp("dandi000140"))


def test_dandi_train_file_bins_to_the_nlb_tensors(dandi):
    """The train file's spikes are NLB's MC_Maze_Small tensors placed in time: binning it with NLB's
    preprocessing gives them back (trial and unit order, window, forward bins, behaviour)."""
    import h5py

    from neuralnets.data.datasets.mc_maze_small import MC_MAZE_SMALL_PATH

    train, _ = dandi
    d = load_nlb_nwb(train)  # phase 'val'
    with h5py.File(MC_MAZE_SMALL_PATH, "r") as f:
        t = {k: f[k][()] for k in f}
    nlb = np.array(d.meta["nlb_split"])
    assert (d.n_trials, d.n_heldin, d.n_heldout, d.n_obs, d.n_fwd) == (100, 107, 35, 140, 40)
    tr, va = nlb == "train", nlb == "val"
    np.testing.assert_array_equal(d.spikes[tr, :140, :107], t["train_spikes_heldin"])
    np.testing.assert_array_equal(d.spikes[tr, 140:, :107], t["train_spikes_heldin_forward"])
    np.testing.assert_array_equal(d.spikes[tr, :140, 107:], t["train_spikes_heldout"])
    np.testing.assert_array_equal(d.spikes[tr, 140:, 107:], t["train_spikes_heldout_forward"])
    np.testing.assert_array_equal(d.spikes[va, :140, :107], t["eval_spikes_heldin"])
    np.testing.assert_array_equal(d.spikes[va, :140, 107:], t["eval_spikes_heldout"])
    np.testing.assert_allclose(d.behavior[tr], t["train_behavior"], rtol=1e-6, atol=1e-5)
    # the same train/val choice over NLB's train trials as the bundled tensors (`load("mc_maze_small")`)
    np.testing.assert_array_equal(d.split[tr], load("mc_maze_small").split[:75])
    assert (d.split[va] == "test").all()


@pytest.mark.filterwarnings("ignore:.*no held-out neurons:UserWarning")  # the plain load_nwb below
@pytest.mark.parametrize("how", ["files", "folder", "load"])
def test_test_phase_from_the_dandi_train_and_test_files(dandi, how):
    train, test = dandi
    if how == "files":
        d = load_nlb_nwb(train, phase="test", test_file=test)
    elif how == "folder":
        d = load_nlb_nwb(train.parent, phase="test")
    else:  # the one entry point, as a data config or `neuralnets-data -o` passes it
        d = load(train.parent, dataset="mc_maze_small", phase="test")
    nlb = np.array(d.meta["nlb_split"])
    test_trials = nlb == "test"
    assert (d.n_trials, int(test_trials.sum()), d.n_heldin, d.n_heldout) == (200, 100, 107, 35)
    assert (d.n_obs, d.n_fwd) == (140, 40) and d.meta["nlb_group"] == "mc_maze_small"
    assert (d.split[test_trials] == "test").all() and set(d.split[~test_trials]) == {"train", "val"}
    assert int((~test_trials).sum()) == 100  # NLB's train + val trials: the submission's train_rates
    assert d.meta["nlb_files"] == {"train": str(train), "test": str(test)}
    assert str(train) in d.source and str(test) in d.source
    # held-in spikes of the test trials: the real test file's, columns matched to the train file's units
    plain = load_nwb(test, bin_size=0.005, align_event="move_onset_time", window=(-0.25, 0.45))
    order = [plain.meta["unit_ids"].index(u) for u in d.meta["unit_ids"][:107]]
    np.testing.assert_array_equal(d.spikes[test_trials, :140, :107], plain.spikes[:, :, order])
    assert d.meta["unit_ids"][107:] == d.meta["heldout_unit_ids"] and len(d.meta["heldout_unit_ids"]) == 35
    # NLB withholds the test trials' held-out neurons and forward bins: unobserved, stored as 0
    obs = d.observed_mask()
    assert obs[test_trials][:, :140, :107].all() and obs[~test_trials].all()
    assert not obs[test_trials][:, :, 107:].any() and not obs[test_trials][:, 140:].any()
    assert d.spikes[~obs].sum() == 0
    assert d.behavior.shape == (200, 140, 2) and d.meta["behavior_splits"] == ["train", "val"]
    assert d.condition is None  # the test file has no condition columns
    # the train trials are the val-phase load's, in the same order
    v = load_nlb_nwb(train)
    np.testing.assert_array_equal(d.spikes[~test_trials], v.spikes)


def test_dandi_pair_bad_inputs_name_both_files(dandi, tmp_path):
    train, test = dandi
    # a test file whose units are not the train file's held-in units (one unit id changed)
    import h5py

    other = tmp_path / "other_desc-test_ecephys.nwb"
    shutil.copyfile(test, other)
    with h5py.File(other, "r+") as f:
        first = int(f["units/id"][0])
        f["units/id"][0] = 9999
    with pytest.raises(DataError) as info:
        load_nlb_nwb(train, phase="test", test_file=other)
    message = str(info.value)
    assert str(other) in message and str(train) in message and "\n" not in message
    assert "do not match the 107 held-in units" in message
    assert f"ids only in the test file: [9999], only in the train file: [{first}]" in message
    # the two swapped: a train file given as the test file
    with pytest.raises(DataError, match=r"the two files are swapped") as info:
        load_nlb_nwb(test, phase="test", test_file=train)
    assert str(train) in str(info.value) and str(test) in str(info.value)
    # a train file with 'test' trials of its own, and a test file as well
    allsplits = _write_nlb_nwb(tmp_path / "all.nwb")
    with pytest.raises(DataError, match=r"holds NLB 'test' trials itself") as info:
        load_nlb_nwb(allsplits, phase="test", test_file=test)
    assert str(test) in str(info.value)
    with pytest.raises(
        DataError, match=r"given as test_file= but its trials have NLB splits \['none', 'test'"
    ):
        load_nlb_nwb(train, phase="test", test_file=allsplits)
    # the train file alone cannot make the test phase
    with pytest.raises(DataError, match=r"holds no NLB 'test' trials.*pass test_file="):
        load_nlb_nwb(train, phase="test")
    # a folder without the test file, or with two train files
    lonely = tmp_path / "lonely"
    lonely.mkdir()
    (lonely / train.name).symlink_to(train)
    with pytest.raises(DataError, match=r"lonely: no file named '\*desc-test\*.nwb'"):
        load_nlb_nwb(lonely, phase="test")
    assert load_nlb_nwb(lonely).n_trials == 100  # the val phase needs the train file only
    (lonely / "copy_desc-train_x.nwb").symlink_to(train)
    with pytest.raises(DataError, match=r"2 files named '\*desc-train\*.nwb'"):
        load_nlb_nwb(lonely)


def test_command_line_options(nlb_file, capsys):
    from neuralnets.data.cli import main

    assert (
        main([str(nlb_file), "-o", "dataset=mc_maze_small", "-o", "phase=test", "-o", "bin_size=0.01"]) == 0
    )
    out = capsys.readouterr().out
    assert "7 trials x 90 bins x 5 neurons (bin 10 ms)" in out and "held-in 3 / held-out 2" in out
    assert main([str(nlb_file), "-o", "dataset=mc_maze_small", "-o", "phase=later"]) == 2
    assert "phase must be one of ['test', 'val']; got 'later'" in capsys.readouterr().err
