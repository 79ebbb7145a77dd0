"""Loaders: npz, LFADS HDF5 (round trip), NLB HDF5 (bundled MC_Maze_Small), NWB (real file and
hand-written files with hand-computed counts), `load` dispatch, and one test per bad input."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import h5py
import numpy as np
import pytest

from neuralnets.data import load, load_lfads_h5, load_nlb_h5, load_npz, save_lfads_h5
from neuralnets.data.datasets.mc_maze_small import MC_MAZE_SMALL_PATH
from neuralnets.errors import DataError


def _write_h5(path: Path, arrays: dict, attrs: dict | None = None) -> Path:
    with h5py.File(path, "w") as f:
        for k, v in arrays.items():
            f[k] = v
        for k, v in (attrs or {}).items():
            f.attrs[k] = v
    return path


# ============================================================================================ npz
def test_plain_npz_minimal_keys(tmp_path):
    spikes = np.arange(2 * 3 * 4).reshape(2, 3, 4) % 3
    np.savez(tmp_path / "plain.npz", spikes=spikes, bin_size=0.02)
    d = load_npz(tmp_path / "plain.npz")
    np.testing.assert_array_equal(d.spikes, spikes)
    assert (d.bin_size, d.n_heldin, d.n_fwd, d.name) == (0.02, 4, 0, "plain")
    assert d.source == str(tmp_path / "plain.npz")


def test_plain_npz_optional_keys(tmp_path):
    split = np.array(["train", "val", "test"])
    np.savez(
        tmp_path / "p.npz", spikes=np.ones((3, 4, 5)), bin_size=0.01, n_heldin=3, n_fwd=1, split=split,
        behavior=np.zeros((3, 3, 2)), condition=np.array([2, 0, 2]),
    )  # fmt: skip
    d = load_npz(tmp_path / "p.npz")
    assert (d.n_heldin, d.n_fwd, d.n_obs) == (3, 1, 3)
    np.testing.assert_array_equal(d.split, split)
    np.testing.assert_array_equal(d.condition, [2, 0, 2])


@pytest.mark.parametrize(
    ("arrays", "message"),
    [
        (dict(bin_size=0.01), r"missing key 'spikes'; keys found: \['bin_size'\]"),
        (dict(spikes=np.ones((2, 3, 4))), r"missing key 'bin_size'"),
        (dict(spikes=np.ones((2, 3, 4)), bin_size=0.01, extra=1), r"unknown keys \['extra'\]; accepted"),
        (dict(spikes=-np.ones((2, 3, 4)), bin_size=0.01), r"key 'spikes' has negative counts"),
        (dict(spikes=np.full((2, 3, 4), 1.5), bin_size=0.01), r"key 'spikes' has fractional counts"),
        (dict(spikes=np.full((2, 3, 4), np.nan), bin_size=0.01), r"key 'spikes' has non-finite"),
        (dict(spikes=np.ones((2, 3)), bin_size=0.01), r"field 'spikes' must have rank 3"),
        (dict(spikes=np.ones((0, 3, 4)), bin_size=0.01), r"field 'spikes' is empty"),
        (dict(spikes=np.ones((2, 3, 4)), bin_size=[0.01, 0.02]), r"key 'bin_size' must be a scalar"),
        (dict(spikes=np.ones((2, 3, 4)), bin_size=0.01, n_fwd=1.5), r"key 'n_fwd' must be an integer"),
        (dict(spikes=np.ones((2, 3, 4)), bin_size=0.01, behavior=np.ones((3, 3, 1))), r"field 'behavior'"),
        (
            dict(spikes=np.ones((2, 3, 4)), bin_size=0.01, split=np.array(["train", "x"])),
            r"split names \['x'\]",
        ),
        (dict(spikes=np.ones((2, 3, 4)), bin_size=0.01, n_heldin=5), r"n_heldin=5 does not fit 4"),
        (dict(spikes=np.ones((2, 3, 4)), bin_size=0.01, n_fwd=3), r"n_fwd=3 forward bins do not fit 3"),
    ],
)
def test_npz_bad_input_names_file_and_key(tmp_path, arrays, message):
    path = tmp_path / "bad.npz"
    np.savez(path, **arrays)
    with pytest.raises(DataError, match=message) as err:
        load_npz(path)
    assert str(path) in str(err.value)


def test_npz_not_a_zip_and_missing_file(tmp_path):
    path = tmp_path / "junk.npz"
    path.write_text("not a zip file")
    with pytest.raises(DataError, match=r"junk.npz: cannot read as a .npz file"):
        load_npz(path)
    with pytest.raises(FileNotFoundError, match="nothere.npz"):
        load_npz(tmp_path / "nothere.npz")


# ============================================================================================ LFADS
def test_lfads_round_trip_is_exact(tiny_data, tmp_path):
    path = save_lfads_h5(tiny_data, tmp_path / "tiny_lfads.h5")
    with h5py.File(path, "r") as f:
        # the standard keys, with encod = held-in neurons over observed bins, recon = everything
        assert f["train_encod_data"].shape == (3, 6, 3)
        assert f["valid_recon_data"].shape == (2, 8, 5)
        assert f["test_encod_data"].shape == (1, 6, 3)
        np.testing.assert_array_equal(f["train_encod_data"][()], tiny_data.spikes[:3, :6, :3])
        np.testing.assert_array_equal(f["valid_inds"][()], [3, 4])
        np.testing.assert_array_equal(f["test_truth"][()], tiny_data.rates[5:])
    back = load_lfads_h5(path)
    for name in ("spikes", "split", "behavior", "condition", "rates", "latents"):
        np.testing.assert_array_equal(getattr(back, name), getattr(tiny_data, name), err_msg=name)
    assert (back.n_heldin, back.n_fwd, back.bin_size, back.name) == (3, 2, 0.01, "tiny")
    assert back.observed is None
    np.testing.assert_array_equal(load(path).spikes, tiny_data.spikes)  # dispatch by keys


def test_lfads_ext_input_round_trip(tiny_data, tmp_path):
    inputs = np.random.default_rng(2).standard_normal((6, 8, 2))  # (trials, T, U)
    d = dataclasses.replace(tiny_data, inputs=inputs)
    path = save_lfads_h5(d, tmp_path / "ext.h5")
    with h5py.File(path, "r") as f:  # LFADS's key for known external inputs, over all bins
        np.testing.assert_allclose(f["train_ext_input"][()], inputs[:3].astype(np.float32))
        assert f["valid_ext_input"].shape == (2, 8, 2)
    np.testing.assert_allclose(load_lfads_h5(path).inputs, inputs.astype(np.float32))
    assert load_lfads_h5(save_lfads_h5(tiny_data, tmp_path / "no_ext.h5")).inputs is None


def test_lfads_round_trip_keeps_observed_mask(tiny_data, tmp_path):
    observed = np.ones(tiny_data.spikes.shape, bool)
    observed[5, 6:] = False
    spikes = np.where(observed, tiny_data.spikes, 0)
    d = dataclasses.replace(tiny_data, spikes=spikes, observed=observed)
    back = load_lfads_h5(save_lfads_h5(d, tmp_path / "m.h5"))
    np.testing.assert_array_equal(back.observed, observed)
    np.testing.assert_array_equal(back.spikes, spikes)


def test_lfads_writer_refuses_to_overwrite(tiny_data, tmp_path):
    path = save_lfads_h5(tiny_data, tmp_path / "x.h5")
    with pytest.raises(FileExistsError, match="x.h5"):
        save_lfads_h5(tiny_data, path)


def _lfads_arrays(rng=None):
    """train 3 trials, valid 2: recon has 4 bins x 5 neurons, encod the first 3 bins x 3 neurons."""
    rng = rng or np.random.default_rng(1)
    train_recon = rng.poisson(1.0, (3, 4, 5)).astype(float)
    valid_recon = rng.poisson(1.0, (2, 4, 5)).astype(float)
    return {
        "train_encod_data": train_recon[:, :3, :3],
        "train_recon_data": train_recon,
        "valid_encod_data": valid_recon[:, :3, :3],
        "valid_recon_data": valid_recon,
    }


def test_lfads_hand_written_file(tmp_path):
    a = _lfads_arrays()
    test_encod = np.ones((2, 3, 3))
    path = _write_h5(tmp_path / "l.h5", {**a, "test_encod_data": test_encod})
    d = load_lfads_h5(path, bin_size=0.02)
    assert (d.n_trials, d.n_bins, d.n_neurons, d.n_heldin, d.n_fwd) == (7, 4, 5, 3, 1)
    np.testing.assert_array_equal(d.split, ["train"] * 3 + ["val"] * 2 + ["test"] * 2)
    np.testing.assert_array_equal(d.spikes[:3], a["train_recon_data"])
    np.testing.assert_array_equal(d.spikes[3:5], a["valid_recon_data"])
    # test trials have no recon data: held-out neurons and forward bins are unobserved zeros
    np.testing.assert_array_equal(d.spikes[5:, :3, :3], test_encod)
    assert d.observed[:5].all() and d.observed[5:, :3, :3].all()
    assert not d.observed[5:, 3:].any() and not d.observed[5:, :, 3:].any()
    assert d.spikes[5:, 3:].sum() == 0 and d.spikes[5:, :, 3:].sum() == 0


def test_lfads_inds_conversion_factor_and_partial_behavior(tmp_path):
    a = _lfads_arrays()
    truth = {"train_truth": np.full((3, 4, 5), 4.0), "valid_truth": np.full((2, 4, 5), 8.0)}
    inds = {"train_inds": np.array([4, 0, 2]), "valid_inds": np.array([1, 3])}
    extra = {"conversion_factor": 2.0, "train_behavior": np.ones((3, 3, 2))}
    d = load_lfads_h5(_write_h5(tmp_path / "l.h5", {**a, **truth, **inds, **extra}), bin_size=0.01)
    np.testing.assert_array_equal(d.split, ["train", "val", "train", "val", "train"])
    np.testing.assert_array_equal(d.spikes[4], a["train_recon_data"][0])
    np.testing.assert_array_equal(d.spikes[1], a["valid_recon_data"][0])
    np.testing.assert_array_equal(d.rates[[0, 2, 4]], 2.0)  # truth / conversion_factor
    np.testing.assert_array_equal(d.rates[[1, 3]], 4.0)
    np.testing.assert_array_equal(d.behavior[[0, 2, 4]], 1.0)
    np.testing.assert_array_equal(d.behavior[[1, 3]], 0.0)  # placeholders, flagged in meta:
    assert d.meta["behavior_splits"] == ["train"]


def test_lfads_train_and_valid_only_has_no_test_trials(tmp_path, tiny_data):
    a = _lfads_arrays()  # train_* and valid_* keys only
    d = load(_write_h5(tmp_path / "tv.h5", a, attrs={"bin_size": 0.01}))
    sizes = [d.indices(s).size for s in ("train", "val", "test")]
    assert (d.n_trials, sizes) == (5, [3, 2, 0])
    assert "test 0" in d.summary()
    with pytest.raises(DataError, match=r"tv.h5: split 'test' has no trials"):
        d.subset("test")
    # and a SpikeData without test trials writes a file without test_* keys that reads back the same
    no_test = tiny_data.subset(tiny_data.indices("train").tolist() + tiny_data.indices("val").tolist())
    path = save_lfads_h5(no_test, tmp_path / "no_test.h5")
    with h5py.File(path, "r") as f:
        assert not [k for k in f if k.startswith("test_")]
    back = load_lfads_h5(path)
    assert back.indices("test").size == 0
    np.testing.assert_array_equal(back.spikes, no_test.spikes)
    np.testing.assert_array_equal(back.split, no_test.split)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda a: [a.pop("train_encod_data"), a.pop("valid_encod_data")], r"'train_recon_data' has no"),
        (lambda a: a.update(valid_recon_data=a["valid_recon_data"][:1]), r"key 'valid_recon_data' has shape"),
        (lambda a: a.update(train_recon_data=-a["train_recon_data"]), r"key 'train_recon_data' has negative"),
        (
            lambda a: a.update(train_encod_data=a["train_encod_data"] + 0.5),
            r"key 'train_encod_data' has frac",
        ),
        (
            lambda a: a.update(train_encod_data=np.full((3, 3, 3), np.inf)),
            r"'train_encod_data' has non-finite",
        ),
        (lambda a: a.update(train_encod_data=np.ones((3, 3))), r"key 'train_encod_data' must have rank 3"),
        (
            lambda a: a.update(train_encod_data=np.full((3, 3, 3), 2**25)),
            r"key 'train_encod_data' has counts up to 33554432",
        ),
        (lambda a: a.update(train_encod_data=a["train_encod_data"] + 1), r"'train_recon_data' differs from"),
        (lambda a: a.update(valid_encod_data=np.ones((2, 3, 2))), r"key 'valid_encod_data' has shape"),
        (lambda a: a.update(train_inds=np.arange(3), valid_inds=np.array([3, 3])), r"permutation of 0..4"),
        (lambda a: a.update(train_inds=np.arange(3)), r"'valid_inds'\] missing"),
        (lambda a: a.update(train_truth=np.ones((2, 4, 5))), r"'train_truth' has 2 trials but"),
        (lambda a: a.update(train_truth=np.ones((3, 4, 5))), r"'train_truth' is present but"),
        (lambda a: a.update(train_ext_input=np.ones((3, 4, 1))), r"'train_ext_input' is present but"),
        (
            lambda a: a.update(train_ext_input=np.ones((3, 3, 1)), valid_ext_input=np.ones((2, 3, 1))),
            r"key 'train_ext_input' has shape \(3, 3, 1\); expected \(3, 4, \*\) \(trials, 4 bins",
        ),
        (
            lambda a: a.update(train_ext_input=np.ones((3, 4)), valid_ext_input=np.ones((2, 4))),
            r"key 'train_ext_input' must have rank 3",
        ),
        (
            lambda a: a.update(
                train_ext_input=np.full((3, 4, 1), np.nan), valid_ext_input=np.ones((2, 4, 1))
            ),
            r"key 'train_ext_input' has non-finite values",
        ),
        (
            lambda a: a.update(train_observed=np.zeros((3, 4, 5)), valid_observed=np.ones((2, 4, 5))),
            r"'train_recon_data' has spikes where 'train_observed' is False",
        ),
    ],
)
def test_lfads_bad_input_names_file_and_key(tmp_path, change, message):
    a = _lfads_arrays()
    change(a)
    path = _write_h5(tmp_path / "bad_lfads.h5", a)
    with pytest.raises(DataError, match=message) as err:
        load_lfads_h5(path, bin_size=0.01)
    assert str(path) in str(err.value)


def test_lfads_needs_bin_size_and_encod_keys(tmp_path):
    path = _write_h5(tmp_path / "l.h5", _lfads_arrays())
    with pytest.raises(DataError, match=r"l.h5: the file has no 'bin_size' attribute; pass bin_size="):
        load_lfads_h5(path)
    empty = _write_h5(tmp_path / "e.h5", {"foo": np.ones(3)})
    with pytest.raises(DataError, match=r"e.h5: missing key 'train_encod_data'.*keys found: \['foo'\]"):
        load_lfads_h5(empty, bin_size=0.01)


# ============================================================================================ NLB
@pytest.fixture(scope="module")
def maze():
    return load("mc_maze_small")


def test_nlb_fixture_layout(maze):
    assert (maze.n_trials, maze.n_bins, maze.n_neurons) == (100, 180, 142)
    assert (maze.n_heldin, maze.n_fwd, maze.bin_size, maze.name) == (107, 40, 0.005, "mc_maze_small")
    assert [int((maze.split == s).sum()) for s in ("train", "val", "test")] == [60, 15, 25]
    assert set(maze.split[:75]) == {"train", "val"} and set(maze.split[75:]) == {"test"}
    with h5py.File(MC_MAZE_SMALL_PATH, "r") as f:
        h = {k: f[k][()] for k in f}
    np.testing.assert_array_equal(maze.spikes[:75, :140, :107], h["train_spikes_heldin"])
    np.testing.assert_array_equal(maze.spikes[:75, :140, 107:], h["train_spikes_heldout"])
    np.testing.assert_array_equal(maze.spikes[:75, 140:, :107], h["train_spikes_heldin_forward"])
    np.testing.assert_array_equal(maze.spikes[:75, 140:, 107:], h["train_spikes_heldout_forward"])
    np.testing.assert_array_equal(maze.spikes[75:, :140, :107], h["eval_spikes_heldin"])
    np.testing.assert_array_equal(maze.spikes[75:, :140, 107:], h["eval_spikes_heldout"])
    np.testing.assert_array_equal(maze.behavior[:75], h["train_behavior"])
    # eval trials have no forward bins: exactly those are unobserved, stored as 0
    expected = np.ones((100, 180, 142), bool)
    expected[75:, 140:] = False
    np.testing.assert_array_equal(maze.observed, expected)
    assert maze.spikes[75:, 140:].sum() == 0
    # eval trials have no behaviour: zeros that are not data, and the meta says which splits are real
    assert maze.meta["behavior_splits"] == ["train", "val"]
    np.testing.assert_array_equal(maze.behavior[75:], 0)


def test_nlb_seed_changes_only_the_val_choice(maze):
    other = load_nlb_h5(MC_MAZE_SMALL_PATH, seed=1)
    np.testing.assert_array_equal(other.spikes, maze.spikes)
    assert not np.array_equal(other.split, maze.split)
    assert int((other.split == "val").sum()) == 15


def _nlb_arrays(n_train=4, n_eval=2, t=6, t_fwd=2, n_in=3, n_out=2):
    rng = np.random.default_rng(0)
    c = lambda *s: rng.poisson(0.5, s).astype(np.float32)  # noqa: E731
    return {
        "train_spikes_heldin": c(n_train, t, n_in),
        "train_spikes_heldout": c(n_train, t, n_out),
        "train_spikes_heldin_forward": c(n_train, t_fwd, n_in),
        "train_spikes_heldout_forward": c(n_train, t_fwd, n_out),
        "train_behavior": rng.standard_normal((n_train, t, 2)),
        "eval_spikes_heldin": c(n_eval, t, n_in),
        "eval_spikes_heldout": c(n_eval, t, n_out),
    }


def test_nlb_test_phase_file_without_eval_heldout(tmp_path):
    a = _nlb_arrays()
    del a["eval_spikes_heldout"]
    d = load_nlb_h5(_write_h5(tmp_path / "n.h5", a), val_frac=0.25)
    assert d.spikes.shape == (6, 8, 5)
    assert [int((d.split == s).sum()) for s in ("train", "val", "test")] == [3, 1, 2]
    assert d.observed[:4].all()
    assert d.observed[4:, :6, :3].all()  # eval held-in over observed bins: the only eval data
    assert not d.observed[4:, :, 3:].any() and not d.observed[4:, 6:].any()


def test_nlb_unknown_keys_warn_and_are_listed(tmp_path):
    a = {**_nlb_arrays(), "train_decode_mask": np.ones((4, 1))}
    with pytest.warns(UserWarning, match=r"ignoring keys .*train_decode_mask"):
        d = load_nlb_h5(_write_h5(tmp_path / "n.h5", a))
    assert d.meta["ignored_keys"] == ["train_decode_mask"]


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda a: a.pop("train_spikes_heldout"), r"missing key 'train_spikes_heldout'.*keys found: \["),
        (
            lambda a: a.update(train_spikes_heldout=np.ones((3, 6, 2))),
            r"key 'train_spikes_heldout' has shape",
        ),
        (lambda a: a.update(eval_spikes_heldout=np.ones((2, 6, 4))), r"key 'eval_spikes_heldout' has shape"),
        (lambda a: a.update(train_behavior=np.ones((4, 5, 2))), r"key 'train_behavior' has shape"),
        (
            lambda a: a.update(eval_spikes_heldin=-np.ones((2, 6, 3))),
            r"key 'eval_spikes_heldin' has negative",
        ),
        (
            lambda a: a.update(train_spikes_heldin=np.full((4, 6, 3), 0.5)),
            r"'train_spikes_heldin' has fractional",
        ),
        (
            lambda a: a.update(train_behavior=np.full((4, 6, 2), np.nan)),
            r"key 'train_behavior' has non-finite",
        ),
        (lambda a: a.update(train_spikes_heldin=np.ones((4, 6))), r"'train_spikes_heldin' must have rank 3"),
        (lambda a: a.update(train_spikes_heldin=np.ones((0, 6, 3))), r"key 'train_spikes_heldin' is empty"),
        (lambda a: a.pop("train_spikes_heldout_forward"), r"but 'train_spikes_heldout_forward' is missing"),
        (lambda a: a.pop("eval_spikes_heldin"), r"need 'eval_spikes_heldin', which is missing"),
    ],
)
def test_nlb_bad_input_names_file_and_key(tmp_path, change, message):
    a = _nlb_arrays()
    change(a)
    path = _write_h5(tmp_path / "bad_nlb.h5", a)
    with pytest.raises(DataError, match=message) as err:
        load_nlb_h5(path)
    assert str(path) in str(err.value)


# ============================================================================================ load
def test_load_dispatch_and_errors(tmp_path, tiny_data):
    assert load("lorenz", n_trials=10, n_bins=20, n_fwd=4).n_trials == 10
    assert load("chaotic_rnn", n_trials=10, n_bins=20, n_fwd=4).name == "chaotic_rnn"
    with pytest.raises(
        DataError,
        match=r"'lorenzz' is neither a built-in dataset \['ca1_linear_track', 'chaotic_rnn', 'line_attr",
    ):
        load("lorenzz")
    with pytest.raises(DataError, match=r"known suffix \['.npz', '.h5', '.hdf5', '.nwb'\]"):
        load(tmp_path / "data.mat")
    with pytest.raises(FileNotFoundError, match="missing.h5"):
        load(tmp_path / "missing.h5")
    with pytest.raises(DataError, match=r"unknown options \['window'\] for lorenz"):
        load("lorenz", window=(0, 1))
    with pytest.raises(DataError, match=r"pass bin_size="):
        load(Path(__file__).parent / "fixtures" / "sub-Jenkins_ses-small_desc-test_ecephys.nwb")
    other = _write_h5(tmp_path / "other.hdf5", {"x": np.ones(2)})
    with pytest.raises(DataError, match=r"other.hdf5: HDF5 keys match neither.*keys found: \['x'\]"):
        load(other)
    nlb = _write_h5(tmp_path / "n.hdf5", _nlb_arrays())
    assert load(nlb, bin_size=0.01).n_trials == 6


def test_load_checks_option_types_against_the_loader():
    from omegaconf import OmegaConf

    for kwargs, message in [
        (
            dict(n_trials="10"),
            r"lorenz: option n_trials='10' \(str\) does not fit lorenz: n_trials must be int",
        ),
        (dict(n_trials=True), r"option n_trials=True \(bool\) does not fit lorenz"),
        (dict(base_rate=[1.0, 2.0, 3.0]), r"base_rate must be tuple\[float, float\]"),
        (dict(bin_size=None), r"bin_size must be float"),
    ]:
        with pytest.raises(DataError, match=message):
            load("lorenz", **kwargs)
    # ints are fine where floats are expected, lists where tuples are, and so are Hydra's list nodes
    cfg = OmegaConf.create({"n_trials": 10, "n_bins": 20, "n_fwd": 4, "bin_size": 1, "base_rate": [5, 20]})
    assert load("lorenz", **cfg).bin_size == 1.0
