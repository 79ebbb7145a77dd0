"""NWB loader: binning, trial tables, alignment, held-out units, behaviour and input series, bad input."""

from __future__ import annotations

import warnings
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import pytest

from neuralnets.data import load, load_nwb
from neuralnets.errors import DataError


@pytest.mark.filterwarnings("ignore:.*no held-out neurons:UserWarning")  # the file has no heldout column
def test_nwb_real_fixture(nwb_fixture):
    import pynwb

    d = load_nwb(nwb_fixture, bin_size=0.005)
    assert (d.n_trials, d.n_bins, d.n_neurons, d.n_heldin, d.n_fwd) == (100, 140, 107, 107, 0)
    assert set(d.split) == {"test"}
    assert d.observed is None  # obs_intervals cover every trial
    assert d.meta["unit_ids"][:3] == [1011, 1022, 1031] and d.meta["window"] == pytest.approx([0, 0.7])
    with pynwb.NWBHDF5IO(str(nwb_fixture), "r") as io:
        nwb = io.read()
        starts = nwb.trials["start_time"][:]
        times = [np.asarray(nwb.units["spike_times"][u]) for u in (0, 50, 106)]
        n_spikes = len(nwb.units["spike_times"].target.data)
    assert d.spikes.sum() == n_spikes  # every spike of the file lies in a trial window
    for j, t in zip((0, 50, 106), times, strict=True):
        for i in (0, 37, 99):
            ref = np.histogram(t, bins=starts[i] + 0.005 * np.arange(141))[0]
            np.testing.assert_array_equal(d.spikes[i, :, j], ref)
    # the same windows aligned on movement onset (0.25 s after each start)
    moved = load_nwb(nwb_fixture, bin_size=0.005, align_event="move_onset_time", window=(-0.25, 0.45))
    np.testing.assert_array_equal(moved.spikes, d.spikes)
    np.testing.assert_array_equal(load(nwb_fixture, bin_size=0.005).spikes, d.spikes)


def _write_nwb(path: Path, units: list[dict], trials: list[dict], extra=None) -> Path:
    """Units: dicts with spike_times (+ columns); trials: dicts with start/stop_time (+ columns)."""
    from pynwb import NWBHDF5IO, NWBFile

    nwb = NWBFile(
        session_description="test",
        identifier=path.stem,
        session_start_time=datetime(2020, 1, 1, tzinfo=timezone.utc),
    )
    for col in units[0]:
        if col not in ("spike_times", "id", "obs_intervals"):
            nwb.add_unit_column(name=col, description=col)
    for u in units:
        nwb.add_unit(**u)
    for col in trials[0] if trials else ():
        if col not in ("start_time", "stop_time"):
            nwb.add_trial_column(name=col, description=col)
    for t in trials:
        nwb.add_trial(**t)
    if extra is not None:
        extra(nwb)
    with NWBHDF5IO(str(path), "w") as io:
        io.write(nwb)
    return path


UNITS = [
    dict(id=10, spike_times=[0.05, 0.25, 0.27, 2.15, 5.0], heldout=True),
    dict(id=11, spike_times=[0.95, 1.5, 2.55, 2.99], heldout=False),
    dict(id=12, spike_times=[0.45], heldout=False),
    dict(id=13, spike_times=[], heldout=False),
]
TRIALS = [
    dict(start_time=0.0, stop_time=1.0, go=0.5, split="train"),
    dict(start_time=2.0, stop_time=3.0, go=2.4, split="valid"),
    dict(start_time=4.0, stop_time=5.0, go=4.5, split="none"),
]


def _add_behavior(nwb):
    from pynwb import TimeSeries
    from pynwb.behavior import Position, SpatialSeries

    t = np.round(np.arange(0, 301) * 0.01, 10)  # 0..3 s, 100 Hz
    pos = Position(name="Position")
    hand = SpatialSeries(
        name="hand_pos", data=np.stack([2 * t + 1, -t], axis=1), reference_frame="origin", timestamps=t
    )
    pos.add_spatial_series(hand)
    nwb.create_processing_module("behavior", "behaviour").add(pos)
    # 10 Hz samples of t^2, from 0 s
    samples = (np.arange(31) * 0.1) ** 2
    nwb.add_acquisition(TimeSeries(name="tsq", data=samples, unit="a.u.", rate=10.0, starting_time=0.0))


def test_nwb_exact_counts_and_order(tmp_path):
    d = load_nwb(_write_nwb(tmp_path / "s.nwb", UNITS, TRIALS), bin_size=0.1)
    # trial 3 is split 'none': excluded; 'valid' maps to 'val'; held-in units first, order kept
    assert d.meta["unit_ids"] == [11, 12, 13, 10] and d.n_heldin == 3
    assert d.meta["trial_ids"] == [0, 1] and d.meta["excluded_trial_ids"] == [2]
    np.testing.assert_array_equal(d.split, ["train", "val"])
    expected = np.zeros((2, 10, 4))
    expected[0, 9, 0] = 1  # unit 11 at 0.95 s
    expected[1, 5, 0] = expected[1, 9, 0] = 1  # unit 11 at 2.55, 2.99 (1.5 s is between trials)
    expected[0, 4, 1] = 1  # unit 12 at 0.45
    expected[0, 0, 3] = 1  # unit 10 at 0.05
    expected[0, 2, 3] = 2  # unit 10 at 0.25 and 0.27
    expected[1, 1, 3] = 1  # unit 10 at 2.15
    np.testing.assert_array_equal(d.spikes, expected)


def test_nwb_alignment_window_and_forward_bins(tmp_path):
    path = _write_nwb(tmp_path / "s.nwb", UNITS, TRIALS)
    d = load_nwb(path, bin_size=0.1, align_event="go", window=(-0.2, 0.3), n_fwd=2)
    assert (d.n_bins, d.n_obs, d.n_fwd) == (5, 3, 2)
    expected = np.zeros((2, 5, 4))
    expected[0, 1, 1] = 1  # unit 12 at 0.45 s, go 0.5 s: bin [-0.1, 0)
    expected[1, 3, 0] = 1  # unit 11 at 2.55 s, go 2.4 s: bin [0.1, 0.2)
    np.testing.assert_array_equal(d.spikes, expected)
    assert d.meta["window"] == pytest.approx([-0.2, 0.3])


def test_nwb_bins_are_half_open(tmp_path):
    units = [dict(spike_times=[0.0, 0.25, 0.5, 0.999, 1.0])]
    path = _write_nwb(tmp_path / "edges.nwb", units, [dict(start_time=0.0, stop_time=1.0)])
    with pytest.warns(UserWarning, match=r"no held-out neurons \(the units table has no 'heldout' column\)"):
        d = load_nwb(path, bin_size=0.25)
    np.testing.assert_array_equal(d.spikes[0, :, 0], [1, 1, 1, 1])  # 1.0 s belongs to the next bin
    assert d.n_heldin == 1  # no 'heldout' column: every unit is held-in
    assert d.split.shape == (1,) and d.split[0] == "train"  # no split column: default_split


def test_nwb_behavior_resampled_to_bin_centres(tmp_path):
    path = _write_nwb(tmp_path / "b.nwb", UNITS, TRIALS[:2], extra=_add_behavior)
    d = load_nwb(path, bin_size=0.1, behavior="hand_pos", n_fwd=3)
    assert d.behavior.shape == (2, 7, 2)  # observed bins only
    centres = np.array([0.0, 2.0])[:, None] + 0.05 + 0.1 * np.arange(7)  # (trials, T_obs)
    np.testing.assert_allclose(d.behavior[..., 0], 2 * centres + 1, atol=1e-5)
    np.testing.assert_allclose(d.behavior[..., 1], -centres, atol=1e-5)
    # acquisition series given by rate: linear interpolation between 10 Hz samples of t^2
    d2 = load_nwb(path, bin_size=0.1, behavior="tsq")
    k = np.arange(10)
    np.testing.assert_allclose(d2.behavior[0, :, 0], 0.01 * (k**2 + (k + 1) ** 2) / 2, atol=1e-6)
    np.testing.assert_allclose(d2.behavior[1, :, 0], 0.01 * ((k + 20) ** 2 + (k + 21) ** 2) / 2, atol=1e-4)


def test_nwb_condition_column(tmp_path):
    trials = [dict(start_time=float(i), stop_time=i + 0.5, target="LR"[i % 2]) for i in range(4)]
    d = load_nwb(_write_nwb(tmp_path / "c.nwb", UNITS, trials), bin_size=0.1, condition_column="target")
    np.testing.assert_array_equal(d.condition, [0, 1, 0, 1])
    assert d.meta["condition_names"] == ["L", "R"]


@pytest.mark.filterwarnings("ignore:.*no held-out neurons:UserWarning")  # the file has no heldout column
def test_nwb_obs_intervals_mark_unobserved_bins(tmp_path):
    units = [
        dict(spike_times=[0.05, 2.05], obs_intervals=[[0.0, 1.0], [2.0, 3.0]]),
        dict(spike_times=[0.15], obs_intervals=[[0.0, 1.5]]),  # not recorded during trial 2
    ]
    trials = [dict(start_time=0.0, stop_time=1.0), dict(start_time=2.0, stop_time=3.0)]
    d = load_nwb(_write_nwb(tmp_path / "o.nwb", units, trials), bin_size=0.5)
    expected = np.ones((2, 2, 2), bool)
    expected[1, :, 1] = False
    np.testing.assert_array_equal(d.observed, expected)
    # a spike where the unit was not recorded contradicts the file: error (or opt out)
    units[1]["spike_times"] = [0.15, 2.2]
    path = _write_nwb(tmp_path / "o2.nwb", units, trials)
    with pytest.raises(DataError, match=r"o2.nwb: unit 1 has spikes in trial 1 outside its 'obs_intervals'"):
        load_nwb(path, bin_size=0.5)
    assert load_nwb(path, bin_size=0.5, use_obs_intervals=False).spikes[1, 0, 1] == 1


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        (
            dict(align_event="cue"),
            r"intervals table 'trials' has no column 'cue' to align on; "
            r"numeric columns: \['start_time', 'stop_time', 'go'\]",
        ),
        (
            dict(align_event="split"),
            r"column 'split' is not one number \(seconds\) per trial.*numeric columns: \[",
        ),
        (dict(window=(0.0, 0.35)), r"window \(0, 0.35\) s is 3.5 bins"),
        (dict(window=(0.3, 0.1)), r"holds no whole bin"),
        (dict(n_fwd=10), r"n_fwd=10 forward bins do not fit the window's 10 bins"),
        (
            dict(behavior="eye"),
            r"no TimeSeries named 'eye' for behaviour; "
            r"series in the file: \['hand_pos \(SpatialSeries\)', 'tsq \(TimeSeries\)'\]",
        ),
        (dict(bin_size=0.0), r"bin_size must be a positive"),
        (dict(bin_size="0.1"), r"bin_size must be a positive number of seconds; got '0.1'"),
        (
            dict(window=(0.0, 0.1, 0.2)),
            r"window must be two numbers \(t0, t1\) in seconds; got \(0.0, 0.1, 0.2\)",
        ),
        (dict(window="0 1"), r"window must be two numbers"),
        (dict(n_fwd=1.5), r"n_fwd must be a whole number of bins; got 1.5"),
        (dict(exclude_splits=()), r"trials column 'split' has unknown split names \['none'\]"),
        (dict(condition_column="target"), r"intervals table 'trials' has no column 'target'"),
    ],
)
def test_nwb_bad_arguments_name_file_and_column(tmp_path, kwargs, message):
    path = _write_nwb(tmp_path / "bad.nwb", UNITS, TRIALS, extra=_add_behavior)
    with pytest.raises(DataError, match=message) as err:
        load_nwb(path, **{"bin_size": 0.1, **kwargs})
    assert str(path) in str(err.value)


def test_nwb_behavior_is_never_extrapolated(tmp_path):
    trials = [dict(start_time=0.0, stop_time=1.0), dict(start_time=3.5, stop_time=4.5)]
    path = _write_nwb(tmp_path / "x.nwb", UNITS, trials, extra=_add_behavior)
    with pytest.raises(DataError, match=r"'hand_pos' covers 0..3 s but trial index 1 needs a value at 3.55"):
        load_nwb(path, bin_size=0.1, behavior="hand_pos")


def test_nwb_all_units_held_out_and_unreadable_file(tmp_path):
    units = [dict(spike_times=[0.1], heldout=True)]
    path = _write_nwb(tmp_path / "h.nwb", units, [dict(start_time=0.0, stop_time=1.0)])
    with pytest.raises(DataError, match=r"h.nwb: units column 'heldout' holds out all 1 units"):
        load_nwb(path, bin_size=0.1)
    junk = tmp_path / "junk.nwb"
    junk.write_bytes(b"not hdf5")
    with pytest.raises(DataError, match=r"junk.nwb: cannot read as an NWB file"):
        load_nwb(junk, bin_size=0.1)


def test_nwb_without_trials(tmp_path):
    from pynwb import NWBHDF5IO, NWBFile

    nwb = NWBFile(
        session_description="t", identifier="t", session_start_time=datetime(2020, 1, 1, tzinfo=timezone.utc)
    )
    nwb.add_unit(spike_times=[0.1])
    with NWBHDF5IO(str(tmp_path / "nt.nwb"), "w") as io:
        io.write(nwb)
    with pytest.raises(DataError, match=r"nt.nwb: the NWB file has no trials"):
        load_nwb(tmp_path / "nt.nwb", bin_size=0.1)


# ------------------------------------------------------------------------------------ trials tables
def _add_task_tables(nwb):
    """Two TimeIntervals tables under `intervals`, as in a recognition-memory session."""
    from pynwb.epoch import TimeIntervals

    enc = TimeIntervals(name="encoding_table", description="image presentations")
    enc.add_column("stim_on", "image onset (s)")
    enc.add_column("image", "image shown")
    for i, (start, on) in enumerate([(0.0, 0.2), (2.0, 2.1), (4.0, 4.3)]):
        enc.add_row(start_time=start, stop_time=start + 1.0, stim_on=on, image=f"img{i}")
    rec = TimeIntervals(name="recognition_table", description="old/new responses")
    rec.add_row(start_time=6.0, stop_time=7.0)
    rec.add_row(start_time=8.0, stop_time=9.0)
    nwb.add_time_intervals(enc)
    nwb.add_time_intervals(rec)
    nwb.add_time_intervals(TimeIntervals(name="empty_table", description="no rows"))


def test_nwb_trials_table_by_name(tmp_path):
    path = _write_nwb(tmp_path / "task.nwb", UNITS, [], extra=_add_task_tables)
    with pytest.raises(
        DataError,
        match=r"task.nwb: the NWB file has no trials: the intervals table 'trials' is missing; interval "
        r"tables in the file: \['empty_table \(0 rows\)', 'encoding_table \(3 rows\)', "
        r"'recognition_table \(2 rows\)'\]; pass trials_table=<name>",
    ):
        load_nwb(path, bin_size=0.1)
    d = load(path, bin_size=0.1, trials_table="encoding_table", align_event="stim_on", window=(-0.1, 0.4))
    assert d.meta["trials_table"] == "encoding_table" and d.meta["align_event"] == "stim_on"
    assert (d.n_trials, d.n_bins) == (3, 5)
    expected = np.zeros((3, 5, 4))
    expected[0, 1, 3] = 1  # unit 10 at 0.25 s, onset 0.2 s: bin [0, 0.1)
    expected[0, 0, 3] = 0  # unit 10 at 0.05 s is before the window [0.1, 0.6)
    expected[0, 3, 1] = 1  # unit 12 at 0.45 s: bin [0.2, 0.3)
    expected[0, 1, 3] = 2  # unit 10 at 0.25 and 0.27 s
    expected[1, 1, 3] = 1  # unit 10 at 2.15 s, onset 2.1 s
    np.testing.assert_array_equal(d.spikes, expected)
    assert load_nwb(path, bin_size=0.5, trials_table="recognition_table").n_trials == 2
    with pytest.raises(DataError, match=r"the intervals table 'empty_table' is empty; interval tables"):
        load_nwb(path, bin_size=0.1, trials_table="empty_table")
    with pytest.raises(
        DataError, match=r"the intervals table 'nope' is missing; interval tables in the file"
    ):
        load_nwb(path, bin_size=0.1, trials_table="nope")
    with pytest.raises(DataError, match=r"intervals table 'encoding_table' column 'image' is not one number"):
        load_nwb(path, bin_size=0.1, trials_table="encoding_table", align_event="image")


def test_nwb_aligns_on_any_numeric_column(tmp_path):
    trials = [
        dict(start_time=0.0, stop_time=1.0, go=0.5, n_go=3),
        dict(start_time=2.0, stop_time=3.0, go=2.4, n_go=2),
    ]
    path = _write_nwb(tmp_path / "a.nwb", UNITS, trials)
    by_stop = load_nwb(path, bin_size=0.1, align_event="stop_time", window=(-1.0, 0.0))
    np.testing.assert_array_equal(by_stop.spikes, load_nwb(path, bin_size=0.1).spikes)
    # integer columns are numbers too (here 3 s and 2 s): windows [2, 3) and [1, 2) s
    by_int = load_nwb(path, bin_size=0.5, align_event="n_go", window=(-1.0, 0.0))
    np.testing.assert_array_equal(by_int.spikes[0, :, 0], [0, 2])  # unit 11 at 2.55, 2.99 s
    np.testing.assert_array_equal(by_int.spikes[0, :, 3], [1, 0])  # unit 10 at 2.15 s
    np.testing.assert_array_equal(by_int.spikes[1, :, 0], [0, 1])  # unit 11 at 1.5 s
    trials[1]["go"] = float("nan")
    with pytest.raises(DataError, match=r"column 'go' has non-finite times \(trial ids \[1\]\)"):
        load_nwb(_write_nwb(tmp_path / "nan.nwb", UNITS, trials), bin_size=0.1, align_event="go")


# ---------------------------------------------------------------------------------- held-out units
def _ids(d) -> tuple[list[int], list[int]]:
    return d.meta["unit_ids"][: d.n_heldin], d.meta["unit_ids"][d.n_heldin :]


def test_nwb_heldout_units_four_ways(tmp_path):
    path = _write_nwb(tmp_path / "h.nwb", UNITS, TRIALS)  # ids 10..13; column 'heldout' marks 10
    assert _ids(load_nwb(path, bin_size=0.1)) == ([11, 12, 13], [10])
    none = dict(bin_size=0.1, heldout_column=None)
    d = load_nwb(path, heldout_units=[3, 1], **none)
    assert _ids(d) == ([10, 12], [11, 13]) and d.meta["heldout_unit_ids"] == [11, 13]
    np.testing.assert_array_equal(d.spikes[0, 9, 2], 1)  # unit 11 (held out, first of them) at 0.95 s
    assert _ids(load_nwb(path, heldout_every=2, **none)) == ([10, 12], [11, 13])
    assert _ids(load_nwb(path, heldout_every=3, **none)) == ([10, 11, 13], [12])
    a = load_nwb(path, heldout_fraction=0.5, heldout_seed=0, **none)
    assert a.n_heldout == 2 and a.meta["heldout_choice"] == "heldout_fraction=0.5 of 4 units, heldout_seed=0"
    assert _ids(load_nwb(path, heldout_fraction=0.5, heldout_seed=0, **none)) == _ids(a)  # seeded
    chosen = {tuple(_ids(load_nwb(path, heldout_fraction=0.5, heldout_seed=s, **none))[1]) for s in range(8)}
    assert len(chosen) > 1  # the seed matters
    # a file without the default column: the choice needs no heldout_column=None
    no_col = _write_nwb(
        tmp_path / "nc.nwb", [{k: v for k, v in u.items() if k != "heldout"} for u in UNITS], TRIALS
    )
    assert _ids(load_nwb(no_col, bin_size=0.1, heldout_units=[0])) == ([11, 12, 13], [10])


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        (
            dict(heldout_units=[0]),
            r"heldout_units= and heldout_column='heldout' \(a column of the units table\) "
            r"both choose held-out units; pass heldout_column=None",
        ),
        (
            dict(heldout_column=None, heldout_units=[0], heldout_every=2),
            r"one way at a time; got \['heldout_every', 'heldout_units'\]",
        ),
        (
            dict(heldout_column=None, heldout_units=[4]),
            r"heldout_units \[4\] are not unit indices; the file has 4 units",
        ),
        (dict(heldout_column=None, heldout_units=[-1]), r"heldout_units \[-1\] are not unit indices"),
        (dict(heldout_column=None, heldout_units=[1, 1]), r"heldout_units lists units \[1\] more than once"),
        (dict(heldout_column=None, heldout_units=[0.5]), r"heldout_units must be a list of unit indices"),
        (
            dict(heldout_column=None, heldout_units=[0, 1, 2, 3]),
            r"heldout_units=\[0, 1, 2, 3\] holds out all 4 units",
        ),
        (dict(heldout_column=None, heldout_every=1), r"heldout_every must be a whole number >= 2; got 1"),
        (dict(heldout_column=None, heldout_every=2.0), r"heldout_every must be a whole number >= 2; got 2.0"),
        (
            dict(heldout_column=None, heldout_fraction=1.0),
            r"heldout_fraction must be a number between 0 and 1",
        ),
        (dict(heldout_column=None, heldout_fraction="0.3"), r"heldout_fraction must be a number"),
        (dict(heldout_column="is_out"), r"units table has no column 'is_out'; columns: \["),
        (
            dict(heldout_column="is_out", heldout_every=2),
            r"heldout_every= and heldout_column='is_out' \(given explicitly\) both choose",
        ),
        (dict(heldout_column="id_copy"), r"units column 'id_copy' must be boolean"),
    ],
)
def test_nwb_heldout_bad_choices(tmp_path, kwargs, message):
    units = [dict(u, id_copy=u["id"]) for u in UNITS]
    path = _write_nwb(tmp_path / "hb.nwb", units, TRIALS)
    with pytest.raises(DataError, match=message) as err:
        load_nwb(path, bin_size=0.1, **kwargs)
    assert str(path) in str(err.value)


def test_nwb_no_heldout_units_warns(tmp_path):
    path = _write_nwb(tmp_path / "w.nwb", UNITS, TRIALS)
    for kwargs, why in [
        (dict(heldout_column=None), r"heldout_column=None"),
        (dict(heldout_column=None, heldout_fraction=0.1), r"heldout_fraction=0.1 of 4 units"),
    ]:
        with pytest.warns(UserWarning, match=rf"w.nwb: no held-out neurons \({why}.*co-bps.*heldout_units="):
            d = load_nwb(path, bin_size=0.1, **kwargs)
        assert d.n_heldout == 0
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # with held-out units: no warning
        load_nwb(path, bin_size=0.1)


# ---------------------------------------------------------------------------- behaviour and inputs
def _add_series(nwb):
    """hand_pos + tsq (see _add_behavior), a 20 Hz 'stim' input, and a second 'hand_pos' elsewhere."""
    from pynwb import TimeSeries

    _add_behavior(nwb)
    t = np.arange(0, 61) * 0.05  # 0..3 s
    nwb.add_stimulus(TimeSeries(name="stim", data=np.stack([t, 3 - t], 1), unit="V", timestamps=t))
    nwb.add_acquisition(TimeSeries(name="eye", data=np.ones(3), unit="deg", rate=1.0, starting_time=2.9))


def test_nwb_behavior_list_and_inputs(tmp_path):
    path = _write_nwb(tmp_path / "s.nwb", UNITS, TRIALS[:2], extra=_add_series)
    d = load_nwb(path, bin_size=0.1, n_fwd=3, behavior=["hand_pos", "tsq"], inputs="stim")
    assert d.behavior.shape == (2, 7, 3) and d.inputs.shape == (2, 10, 2)  # inputs cover forward bins
    centres = np.array([0.0, 2.0])[:, None] + 0.05 + 0.1 * np.arange(10)  # (trials, T)
    np.testing.assert_allclose(d.behavior[..., 0], 2 * centres[:, :7] + 1, atol=1e-5)
    np.testing.assert_allclose(d.inputs[..., 0], centres, atol=1e-5)
    np.testing.assert_allclose(d.inputs[..., 1], 3 - centres, atol=1e-5)
    assert d.meta["behavior_series"] == ["hand_pos", "tsq"] and d.meta["input_series"] == ["stim"]
    by_path = load_nwb(path, bin_size=0.1, behavior="Position/hand_pos")  # 'parent/name' works too
    np.testing.assert_array_equal(
        by_path.behavior, load_nwb(path, bin_size=0.1, behavior="hand_pos").behavior
    )


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        (
            dict(inputs="light"),
            r"no TimeSeries named 'light' for inputs; series in the file: \[.*'stim \(TimeSeries\)'",
        ),
        (
            dict(inputs="eye"),
            r"TimeSeries 'eye' covers 2.9..4.9 s but trial index 0 needs a value at 0.05 s \(bin 0\); "
            r"values for inputs are never extrapolated",
        ),
        (dict(inputs=["stim", "stim"]), r"inputs= names a series more than once"),
        (dict(behavior=[]), r"behavior= must be a series name or a list of names; got \[\]"),
        (dict(behavior=["hand_pos", 3]), r"behavior= must be a series name or a list"),
    ],
)
def test_nwb_series_bad_choices(tmp_path, kwargs, message):
    path = _write_nwb(tmp_path / "sb.nwb", UNITS, TRIALS[:2], extra=_add_series)
    with pytest.raises(DataError, match=message) as err:
        load_nwb(path, bin_size=0.1, **kwargs)
    assert str(path) in str(err.value)


def test_nwb_same_named_series_need_a_path(tmp_path):
    from pynwb import TimeSeries

    def extra(nwb):
        _add_behavior(nwb)
        nwb.add_acquisition(TimeSeries(name="hand_pos", data=np.zeros(301), unit="m", rate=100.0))

    path = _write_nwb(tmp_path / "dup.nwb", UNITS, TRIALS[:2], extra=extra)
    with pytest.raises(
        DataError, match=r"several TimeSeries are named 'hand_pos': \['Position/hand_pos', 'root/hand_pos'\]"
    ):
        load_nwb(path, bin_size=0.1, behavior="hand_pos")
    assert load_nwb(path, bin_size=0.1, behavior="root/hand_pos").behavior.max() == 0
