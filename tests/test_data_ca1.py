"""The bundled rat CA1 linear-track dataset: loading, counts checked against the raw files read
independently here, bad files, and one tiny end-to-end training run."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.io
from hydra import compose, initialize_config_dir
from tiny import TINY_LFADS

from neuralnets.data import load
from neuralnets.data.datasets.ca1_linear_track import (
    CA1_SPIKES_PATH,
    CA1_TRAJECTORY_PATH,
    load_ca1_linear_track,
)
from neuralnets.errors import DataError

HEADER_BYTES = 197  # '<Start settings>' ... '<End settings>\n' of the bundled trajectory file
RECORD = np.dtype([("time", "<u4"), ("xloc", "<u2"), ("yloc", "<u2"), ("xloc2", "<u2"), ("yloc2", "<u2")])


@pytest.fixture(scope="module")
def ca1():
    return load("ca1_linear_track")


@pytest.fixture(scope="module")
def raw_units() -> dict[tuple[int, int], np.ndarray]:
    """Spike times by (tetrode, cell), 1-based, read straight from spikes{1}{1}{tetrode}{cell}.time."""
    tetrodes = scipy.io.loadmat(CA1_SPIKES_PATH)["spikes"][0, 0][0, 0][0]
    out = {}
    for ti, tet in enumerate(tetrodes, start=1):
        for ci, cell in enumerate(tet.ravel(), start=1):
            if cell.dtype.names and cell["time"][0, 0].size:
                out[(ti, ci)] = cell["time"][0, 0].ravel()
    return out


def test_builtin_shapes_splits_and_heldout_units(ca1, raw_units):
    assert ca1.spikes.shape == (47, 130, 31)  # 47 laps x (120 observed + 10 forward) x 31 units
    assert (ca1.bin_size, ca1.n_obs, ca1.n_fwd, ca1.name) == (0.02, 120, 10, "ca1_linear_track")
    assert np.array_equal(ca1.spikes, np.round(ca1.spikes)) and ca1.spikes.min() >= 0
    assert {s: int((ca1.split == s).sum()) for s in ("train", "val", "test")} == {
        "train": 29,
        "val": 9,  # round(0.2 * 47)
        "test": 9,
    }
    # 31 units with spikes in file order; the 4th, 8th, ..., 28th are held out and come last.
    file_order = sorted(raw_units)
    assert len(file_order) == 31 and sum(t.size for t in raw_units.values()) == 28829
    heldout = file_order[3::4]
    assert ca1.n_heldout == 7 and [tuple(u) for u in ca1.meta["heldout_unit_ids"]] == heldout
    ids = [tuple(u) for u in ca1.meta["unit_ids"]]
    assert ids[ca1.n_heldin :] == heldout and sorted(ids) == file_order
    assert len(ca1.meta["empty_units"]) == 6  # unit structs with no spikes are listed, not binned


def test_counts_equal_raw_spike_times_inside_the_windows(ca1, raw_units):
    starts = np.asarray(ca1.meta["trial_start_s"])
    span = ca1.n_bins * ca1.bin_size
    # (trials, units) spikes inside [start, start + span), counted from the raw times
    expected = np.array(
        [
            [((t >= s) & (t < s + span)).sum() for t in (raw_units[tuple(u)] for u in ca1.meta["unit_ids"])]
            for s in starts
        ]
    )
    np.testing.assert_array_equal(ca1.spikes.sum(axis=1), expected)
    assert ca1.meta["n_spikes_in_trials"] == expected.sum() == 4028
    assert ca1.meta["n_spikes_total"] == 28829
    # Bin 5 of trial 0, unit 0, counted by hand from its half-open bin edges.
    t0 = raw_units[tuple(ca1.meta["unit_ids"][0])]
    lo = starts[0] + 5 * ca1.bin_size
    assert ca1.spikes[0, 5, 0] == ((t0 >= lo) & (t0 < lo + ca1.bin_size)).sum()


def test_trials_are_laps_in_the_run_epoch_with_behaviour_on_the_track(ca1):
    starts, ends = np.asarray(ca1.meta["trial_start_s"]), np.asarray(ca1.meta["lap_end_s"])
    run0, run1 = ca1.meta["run_epoch_s"]
    assert run0 == starts[0] and run1 == ends[-1] and run1 < 5382  # the rest epoch starts at 5382 s
    assert (ends - starts).min() >= ca1.n_obs * ca1.bin_size  # every observed window lies inside its lap
    assert (starts[1:] >= starts[:-1] + ca1.n_bins * ca1.bin_size).all()  # trials never overlap
    assert ca1.behavior.shape == (47, 120, 2) and ca1.meta["behavior_names"] == [
        "position_px",
        "velocity_px_per_s",
    ]
    pos, vel = ca1.behavior[..., 0], ca1.behavior[..., 1]
    assert 0 <= pos.min() and pos.max() <= ca1.meta["track_length_px"]
    # Direction: rightward laps (condition 0) move towards larger position, leftward ones back.
    right = ca1.condition == 0
    assert 0 < right.sum() < 47 and ca1.meta["condition_names"] == ["rightward", "leftward"]
    assert (pos[right, -1] > pos[right, 0]).all() and (pos[~right, -1] < pos[~right, 0]).all()
    assert vel[right].mean() > 50 and vel[~right].mean() < -50  # px/s

    # Position = raw (x, y) interpolated at the bin centre, projected on the track axis.
    rec = np.frombuffer(CA1_TRAJECTORY_PATH.read_bytes()[HEADER_BYTES:], dtype=RECORD)
    t = rec["time"] / 30000.0
    c = starts[3] + 10.5 * ca1.bin_size  # centre of bin 10 of trial 3
    xy = np.array([np.interp(c, t, rec["xloc"].astype(float)), np.interp(c, t, rec["yloc"].astype(float))])
    expected = (xy - ca1.meta["track_origin_px"]) @ np.asarray(ca1.meta["track_axis"])
    assert pos[3, 10] == pytest.approx(expected, abs=1e-3)


def test_windows_mode_tiles_the_run_epoch():
    d = load_ca1_linear_track(trials="windows", behavior="position", bin_size=0.05, window_s=2.0, n_fwd=0)
    starts = np.asarray(d.meta["trial_start_s"])
    run0, run1 = d.meta["run_epoch_s"]
    assert d.spikes.shape[1:] == (40, 31) and d.behavior.shape[2] == 1 and d.condition is None
    assert d.n_trials == int((run1 - run0) // 2.0) and starts[0] == run0
    np.testing.assert_allclose(np.diff(starts), 2.0)


def test_bad_options_raise():
    with pytest.raises(DataError, match="whole number of 0.02 s bins"):
        load("ca1_linear_track", window_s=2.41)
    with pytest.raises(DataError, match="behavior='speed'"):
        load("ca1_linear_track", behavior="speed")
    for bad in (1, -4, 2.5, "4"):
        with pytest.raises(
            DataError, match=r"spikes.mat: heldout_every must be 0 \(no held-out units\) or a whole"
        ):
            load_ca1_linear_track(heldout_every=bad)
    with pytest.raises(DataError, match=r"ca1_linear_track: option heldout_every=2.5 \(float\) does not fit"):
        load("ca1_linear_track", heldout_every=2.5)  # load() checks the types of options first


def test_no_heldout_units_warns():
    with pytest.warns(UserWarning, match=r"no held-out neurons \(heldout_every=0\).*co-bps"):
        d = load_ca1_linear_track(heldout_every=0, behavior="position")
    assert d.n_heldout == 0 and d.n_heldin == 31


def _truncated_mat(tmp_path):
    p = tmp_path / "spikes.mat"
    p.write_bytes(CA1_SPIKES_PATH.read_bytes()[:5000])
    return {"spikes_path": p}, "spikes.mat: cannot read as a MATLAB .mat file"


def _numeric_spikes(tmp_path):
    p = tmp_path / "spikes.mat"
    scipy.io.savemat(p, {"spikes": np.arange(4.0)})
    return {"spikes_path": p}, "spikes.mat: variable 'spikes' must be a cell array"


def _cell(x) -> np.ndarray:
    """A 1x1 MATLAB cell array holding x."""
    c = np.empty((1, 1), dtype=object)
    c[0, 0] = x
    return c


def _unit_without_time(tmp_path):
    p = tmp_path / "spikes.mat"
    unit = np.zeros((1, 1), dtype=[("timerange", "O")])  # a unit struct lacking its 'time' field
    unit[0, 0]["timerange"] = np.array([[0.0, 1.0]])
    scipy.io.savemat(p, {"spikes": _cell(_cell(_cell(_cell(unit))))})  # spikes{day}{epoch}{tetrode}{cell}
    return {"spikes_path": p}, r"spikes\.mat: spikes\{1\}\{1\}\{1\}\{1\} must be a struct with field 'time'"


def _truncated_trajectory(tmp_path):
    p = tmp_path / "track.videoPositionTracking"
    p.write_bytes(CA1_TRAJECTORY_PATH.read_bytes()[:-5])
    return {"trajectory_path": p}, "track.videoPositionTracking: records: .*\\(truncated file\\?\\)"


def _text_trajectory(tmp_path):
    p = tmp_path / "track.videoPositionTracking"
    p.write_text("time x y\n1 2 3\n")
    return {"trajectory_path": p}, "track.videoPositionTracking: header: .*<Start settings>"


def _time_backwards(tmp_path):
    raw = bytearray(CA1_TRAJECTORY_PATH.read_bytes())
    rec = np.frombuffer(raw, dtype=RECORD, offset=HEADER_BYTES).copy()
    rec["time"][100] = rec["time"][99] - 1
    p = tmp_path / "track.videoPositionTracking"
    p.write_bytes(bytes(raw[:HEADER_BYTES]) + rec.tobytes())
    return {"trajectory_path": p}, "track.videoPositionTracking: field 'time' goes backwards at record 100"


@pytest.mark.parametrize(
    "make",
    [
        _truncated_mat,
        _numeric_spikes,
        _unit_without_time,
        _truncated_trajectory,
        _text_trajectory,
        _time_backwards,
    ],
)
def test_bad_files_raise_data_error_naming_file_and_field(tmp_path, make):
    kwargs, message = make(tmp_path)
    with pytest.raises(DataError, match=message):
        load("ca1_linear_track", **kwargs)


def test_tiny_training_run_on_ca1_produces_metrics(tmp_path):
    from neuralnets.config import CONFIG_DIR
    from neuralnets.training.train import train

    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
        cfg = compose(
            "train",
            overrides=[
                "data=ca1_linear_track",
                *TINY_LFADS,
                "model.co_dim=0",
                "trainer.max_epochs=2",
                "trainer.log_every_n_steps=1",
                "trainer.enable_progress_bar=false",
                "trainer.enable_model_summary=false",
                "callbacks.eval_every_n_epochs=1",
            ],
        )
    record = train(cfg, tmp_path / "run")
    assert record["data"] == "ca1_linear_track"
    for key in ("co_bps", "fp_bps", "vel_r2", "psth_r2"):
        assert np.isfinite(record["metrics"][key]), key
