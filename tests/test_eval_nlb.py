"""NLB submission files (write/read/slice from a run), NLB target files, and scoring against targets."""

from __future__ import annotations

import h5py
import numpy as np
import pytest

from neuralnets.data import SpikeData, load
from neuralnets.data.formats.nlb_targets import read_nlb_targets, targets_from_data, write_nlb_targets
from neuralnets.errors import DataError
from neuralnets.eval import evaluate
from neuralnets.eval import regression as R
from neuralnets.eval.nlb import (
    SUBMISSION_KEYS,
    read_nlb_submission,
    score_against_targets,
    score_submission_file,
    submission_from_run,
    write_nlb_submission,
    write_run_submission,
)


@pytest.fixture(scope="module")
def maze() -> SpikeData:
    return load("mc_maze_small")


def _fake_rates(data: SpikeData, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).gamma(2.0, 0.05, size=data.spikes.shape).astype(np.float32)


def test_submission_from_run_slices_train_and_eval_trials(maze):
    rates = _fake_rates(maze)
    sub = submission_from_run(rates, maze)
    shapes = {k: v.shape for k, v in sub.items()}
    assert shapes == {
        "train_rates_heldin": (75, 140, 107),
        "train_rates_heldout": (75, 140, 35),
        "eval_rates_heldin": (25, 140, 107),
        "eval_rates_heldout": (25, 140, 35),
        "eval_rates_heldin_forward": (25, 40, 107),
        "eval_rates_heldout_forward": (25, 40, 35),
    }
    # NLB train trials = SpikeData train + val = the first 75 trials (the tensor file's train order)
    np.testing.assert_array_equal(sub["train_rates_heldout"], rates[:75, :140, 107:])
    np.testing.assert_array_equal(sub["eval_rates_heldin_forward"], rates[75:, 140:, :107])
    assert all(v.dtype == np.float32 for v in sub.values())
    with pytest.raises(DataError, match=r"rates have shape \(100, 180, 141\)"):
        submission_from_run(rates[:, :, :141], maze)


def test_submission_file_round_trip_atomic_and_no_overwrite(maze, tmp_path):
    sub = submission_from_run(_fake_rates(maze), maze)
    path = write_nlb_submission(tmp_path / "sub.h5", "mc_maze_small", *(sub[k] for k in SUBMISSION_KEYS))
    with h5py.File(path, "r") as f:
        assert list(f.keys()) == ["mc_maze_small"]
        assert sorted(f["mc_maze_small"].keys()) == sorted(SUBMISSION_KEYS)
        assert all(f["mc_maze_small"][k].dtype == np.float32 for k in SUBMISSION_KEYS)
    back = read_nlb_submission(path, "mc_maze_small")
    for k in SUBMISSION_KEYS:
        np.testing.assert_array_equal(back[k], sub[k])
    assert [p.name for p in tmp_path.iterdir()] == ["sub.h5"]  # no temporary file left behind
    before = path.read_bytes()
    with pytest.raises(FileExistsError, match="refusing to overwrite"):
        write_nlb_submission(path, "mc_maze_small", *(sub[k] * 2 for k in SUBMISSION_KEYS))
    assert path.read_bytes() == before
    # the run helper names the group after the dataset and bin size
    run_path = write_run_submission(tmp_path / "run.h5", _fake_rates(maze, 1), maze)
    assert list(read_nlb_submission(run_path)) == ["mc_maze_small"]


@pytest.mark.parametrize(
    "key, change, match",
    [
        ("eval_rates_heldout", lambda a: a[:, :, :-1], r"'eval_rates_heldout' has shape \(25, 140, 34\)"),
        ("train_rates_heldin", lambda a: -a, r"'train_rates_heldin' has negative rates"),
        ("eval_rates_heldin_forward", lambda a: a * np.nan, r"'eval_rates_heldin_forward' has non-finite"),
        ("eval_rates_heldout_forward", lambda a: None, r"both forward keys"),
    ],
)
def test_bad_submissions_are_refused(maze, tmp_path, key, change, match):
    sub = submission_from_run(_fake_rates(maze), maze)
    sub[key] = change(sub[key])
    with pytest.raises(DataError, match=match):
        write_nlb_submission(tmp_path / "bad.h5", "mc_maze_small", *(sub[k] for k in SUBMISSION_KEYS))
    assert not (tmp_path / "bad.h5").exists()


def test_targets_from_bundled_tensors_score_like_the_harness(maze, tmp_path):
    """Targets written from MC_Maze_Small's own eval tensors: scoring the smoothing baseline's submission
    gives the harness's co-bps on the 'test' split (NLB's 25 validation trials)."""
    from neuralnets.eval.baselines import smoothing_glm

    targets = targets_from_data(maze)
    assert sorted(targets) == ["eval_spikes_heldout"]  # no eval forward bins, no eval behaviour in the file
    with h5py.File(maze.source, "r") as f:
        np.testing.assert_array_equal(targets["eval_spikes_heldout"], f["eval_spikes_heldout"][()])
    tpath = write_nlb_targets(tmp_path / "eval_data_val.h5", {"mc_maze_small": targets})
    read = read_nlb_targets(tpath, "mc_maze_small")
    np.testing.assert_array_equal(read["eval_spikes_heldout"], targets["eval_spikes_heldout"])

    rates = smoothing_glm(maze, alpha=0.1)
    spath = write_run_submission(tmp_path / "submission.h5", rates, maze)
    scores = score_submission_file(spath, tpath, "mc_maze_small")
    harness = evaluate(rates, maze, "test")
    assert sorted(scores) == ["co_bps"]
    assert scores["co_bps"] == pytest.approx(harness["co_bps"], rel=1e-6, abs=1e-9)
    assert 0.0 < scores["co_bps"] < 0.5


def test_forward_and_behaviour_targets(tiny_data):
    """tiny_data: forward bins recorded for its test trial, behaviour on every trial."""
    rates = np.asarray(tiny_data.rates)  # the true rates as the prediction
    targets = targets_from_data(tiny_data)
    assert sorted(targets) == [
        "eval_behavior",
        "eval_spikes_heldin_forward",
        "eval_spikes_heldout",
        "eval_spikes_heldout_forward",
        "train_behavior",
    ]
    scores = score_against_targets(submission_from_run(rates, tiny_data), targets)
    harness = evaluate(rates, tiny_data, "test")
    assert scores["co_bps"] == pytest.approx(harness["co_bps"], rel=1e-5)
    assert scores["fp_bps"] == pytest.approx(harness["fp_bps"], rel=1e-5)
    # vel R²: fit on NLB's train trials (SpikeData train + val), scored on the test trial
    tr, ev = np.isin(tiny_data.split, ["train", "val"]), tiny_data.split == "test"
    t_obs = tiny_data.n_obs
    ref = R.vel_r2(rates[tr, :t_obs], tiny_data.behavior[tr], rates[ev, :t_obs], tiny_data.behavior[ev])
    assert scores["vel_r2"] == pytest.approx(ref, rel=1e-6)


def test_psth_r2_against_psth_targets(tiny_data):
    rates = np.asarray(tiny_data.rates, dtype=np.float64)
    sub = submission_from_run(rates, tiny_data)
    ev = np.flatnonzero(tiny_data.split == "test")
    targets = dict(targets_from_data(tiny_data))
    eval_rates = rates[ev, : tiny_data.n_obs]  # (1, T_obs, N)
    targets["psth"] = eval_rates.copy()  # one condition: its mean rate is the prediction's own PSTH
    targets["eval_cond_idx"] = [np.array([0])]
    assert score_against_targets(sub, targets)["psth_r2"] == pytest.approx(1.0, abs=1e-6)
    targets["psth"] = eval_rates + np.random.default_rng(0).normal(0, 0.5, eval_rates.shape)
    assert score_against_targets(sub, targets)["psth_r2"] < 0.9


def test_target_files_bad_input(tmp_path, maze):
    flat = tmp_path / "flat.h5"
    with h5py.File(flat, "w") as f:
        f["eval_spikes_heldout"] = np.zeros((2, 3, 4))
    with pytest.raises(
        DataError, match=r"flat.h5: keys \['eval_spikes_heldout'\] are arrays at the top level"
    ):
        read_nlb_targets(flat)
    good = write_nlb_targets(tmp_path / "t.h5", {"mc_maze_small": targets_from_data(maze)})
    with pytest.raises(DataError, match=r"no dataset group 'mc_maze'; groups: \['mc_maze_small'\]"):
        read_nlb_targets(good, "mc_maze")
    odd = tmp_path / "odd.h5"
    with h5py.File(odd, "w") as f:
        f["mc_maze_small/eval_spikes_heldout"] = np.full((2, 3, 4), 0.5)
    with pytest.raises(DataError, match=r"odd.h5:mc_maze_small: key 'eval_spikes_heldout' has fractional"):
        read_nlb_targets(odd)
    with pytest.raises(DataError, match=r"x.h5: group 'g' keys \['train_spikes'\] are not NLB target keys"):
        write_nlb_targets(tmp_path / "x.h5", {"g": {"train_spikes": np.zeros((1, 1, 1))}})
    with pytest.raises(DataError, match=r"'psth' needs 'eval_cond_idx'"):
        write_nlb_targets(tmp_path / "y.h5", {"g": {"psth": np.zeros((1, 1, 1))}})


def test_cond_idx_round_trip_and_range_check(tmp_path):
    spikes = np.ones((3, 4, 2))
    t = {"eval_spikes_heldout": spikes, "psth": np.zeros((2, 4, 5)), "eval_cond_idx": [[0, 2], [1]]}
    back = read_nlb_targets(write_nlb_targets(tmp_path / "c.h5", {"d": t}), "d")
    assert [r.tolist() for r in back["eval_cond_idx"]] == [[0, 2], [1]]
    t["eval_cond_idx"] = [[0, 3], [1]]
    with pytest.raises(DataError, match=r"'eval_cond_idx' has trial indices \[3\] outside 0..2"):
        write_nlb_targets(tmp_path / "c2.h5", {"d": t})


def test_scoring_checks_submission_against_targets(maze):
    sub = submission_from_run(_fake_rates(maze), maze)
    targets = targets_from_data(maze)
    targets["eval_spikes_heldout"] = targets["eval_spikes_heldout"][:20]
    with pytest.raises(DataError, match=r"'eval_spikes_heldout' has shape \(20, 140, 35\)"):
        score_against_targets(sub, targets)
    del sub["eval_rates_heldin"]
    with pytest.raises(DataError, match=r"submission lacks \['eval_rates_heldin'\]"):
        score_against_targets(sub, targets_from_data(maze))


# ----- a submission for the real MC_Maze_Small test file (DANDI's train file: tests/nlb_dandi.py)
NLB_TEST_SHAPES = {  # NLB's MC_Maze_Small test-phase submission at 5 ms: (trials, bins, neurons)
    "train_rates_heldin": (100, 140, 107),
    "train_rates_heldout": (100, 140, 35),
    "eval_rates_heldin": (100, 140, 107),
    "eval_rates_heldout": (100, 140, 35),
    "eval_rates_heldin_forward": (100, 40, 107),
    "eval_rates_heldout_forward": (100, 40, 35),
}


@pytest.fixture(scope="module")
def test_phase(tmp_path_factory) -> SpikeData:
    from nlb_dandi import dandi_pair

    from neuralnets.data import load_nlb_nwb

    train, test = dandi_pair(tmp_path_factory.mktemp("dandi000140"))
    return load_nlb_nwb(train, phase="test", test_file=test)


def test_submission_for_the_real_test_file_has_nlb_format(test_phase, tmp_path):
    from neuralnets.eval.baselines import smoothing_glm
    from neuralnets.eval.nlb import check_nlb_submission, nlb_shapes

    assert nlb_shapes("mc_maze_small", "test") == NLB_TEST_SHAPES
    rates = smoothing_glm(test_phase, alpha=0.1)  # fit on the train trials, predicts every trial's neurons
    path = write_run_submission(tmp_path / "submission.h5", rates, test_phase)
    with h5py.File(path, "r") as f:
        assert list(f.keys()) == ["mc_maze_small"]
        got = {k: (f["mc_maze_small"][k].shape, f["mc_maze_small"][k].dtype) for k in f["mc_maze_small"]}
    assert got == {k: (shape, np.float32) for k, shape in NLB_TEST_SHAPES.items()}
    assert check_nlb_submission(path, "test") == {"mc_maze_small": NLB_TEST_SHAPES}
    back = read_nlb_submission(path, "mc_maze_small")
    ev = test_phase.indices("test")
    np.testing.assert_array_equal(back["eval_rates_heldout"], np.asarray(rates, np.float32)[ev, :140, 107:])
    assert np.isfinite(back["eval_rates_heldout"]).all() and (back["eval_rates_heldout"] > 0).any()
    # NLB's format is checked: one test trial short, or the val-phase shapes, is refused
    short = {k: v[:99] if k.startswith("eval") else v for k, v in back.items()}
    short_path = tmp_path / "short.h5"  # consistent in itself, so written; NLB's format refuses it
    write_nlb_submission(short_path, "mc_maze_small", *(short[k] for k in SUBMISSION_KEYS))
    with pytest.raises(
        DataError, match=r"'eval_rates_heldin' has shape \(99, 140, 107\); NLB's mc_maze_small"
    ):
        check_nlb_submission(short_path, "test")
    with pytest.raises(DataError, match=r"val phase expects \(75, 140, 107\)"):
        check_nlb_submission(path, "val")


def test_run_submission_refuses_shapes_nlb_would_refuse(test_phase, tmp_path):
    """Data that claim NLB's test phase but lack trials (here 10 test trials dropped) are refused before
    anything is written."""
    keep = np.flatnonzero(~((test_phase.split == "test") & (np.arange(test_phase.n_trials) >= 190)))
    fewer = test_phase.subset(keep)
    assert fewer.meta["nlb_phase"] == "test"
    rates = np.full(fewer.spikes.shape, 0.1, np.float32)
    with pytest.raises(DataError, match=r"NLB's mc_maze_small test phase expects \(100, 140, 107\)"):
        write_run_submission(tmp_path / "few.h5", rates, fewer)
    assert not (tmp_path / "few.h5").exists()
