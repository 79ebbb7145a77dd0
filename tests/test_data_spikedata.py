"""SpikeData container: views, splits, npz round trip, validation messages."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from neuralnets.data import SpikeData, default_split, load, load_npz, save_npz
from neuralnets.errors import DataError


def test_shapes_views_and_spec(tiny_data):
    d = tiny_data
    assert (d.n_trials, d.n_bins, d.n_neurons) == (6, 8, 5)
    assert (d.n_obs, d.n_heldin, d.n_heldout) == (6, 3, 2)
    assert d.heldin_obs.shape == (6, 6, 3)
    np.testing.assert_array_equal(d.heldin_obs, d.spikes[:, :6, :3])
    spec = d.spec
    assert (spec.n_heldin, spec.n_neurons, spec.n_obs_bins, spec.n_fwd_bins) == (3, 5, 6, 2)
    assert (spec.n_heldout, spec.n_bins, spec.behavior_dim, spec.bin_size) == (2, 8, 2, 0.01)
    assert d.observed_mask().all() and d.observed_mask().shape == (6, 8, 5)


def test_indices_and_subset(tiny_data):
    np.testing.assert_array_equal(tiny_data.indices("val"), [3, 4])
    np.testing.assert_array_equal(tiny_data.indices("all"), np.arange(6))
    val = tiny_data.subset("val")
    assert val.n_trials == 2 and set(val.split) == {"val"}
    for name in ("spikes", "behavior", "condition", "rates", "latents"):
        np.testing.assert_array_equal(getattr(val, name), getattr(tiny_data, name)[[3, 4]])
    picked = tiny_data.subset(np.array([5, 0]))
    np.testing.assert_array_equal(picked.split, ["test", "train"])


def test_unknown_and_empty_split_errors(tiny_data):
    with pytest.raises(DataError, match="unknown split 'valid'"):
        tiny_data.indices("valid")
    only_train = tiny_data.subset("train")
    with pytest.raises(DataError, match="split 'test' has no trials"):
        only_train.subset("test")


def test_default_split_counts_and_determinism():
    a = default_split(10, val_frac=0.2, test_frac=0.3, seed=1)
    assert [int((a == s).sum()) for s in ("train", "val", "test")] == [5, 2, 3]
    np.testing.assert_array_equal(a, default_split(10, val_frac=0.2, test_frac=0.3, seed=1))
    assert not np.array_equal(default_split(50, seed=1), default_split(50, seed=2))
    with pytest.raises(DataError, match="too few"):
        default_split(2, val_frac=0.5, test_frac=0.4)


def test_npz_round_trip_is_exact(tiny_data, tmp_path):
    observed = np.ones(tiny_data.spikes.shape, dtype=bool)
    observed[5, 6:, :] = False  # the test trial's forward bins were not recorded
    spikes = tiny_data.spikes.copy()
    spikes[5, 6:, :] = 0
    d = dataclasses.replace(tiny_data, spikes=spikes, observed=observed)
    path = save_npz(d, tmp_path / "tiny")  # the suffix is added
    assert path.name == "tiny.npz"
    back = load_npz(path)
    for name in ("spikes", "split", "observed", "behavior", "condition", "rates", "latents"):
        np.testing.assert_array_equal(getattr(back, name), getattr(d, name), err_msg=name)
    assert (back.n_heldin, back.n_fwd, back.bin_size, back.name) == (3, 2, 0.01, "tiny")
    assert back.meta == {"note": "conftest"}
    assert back.source == str(path)
    np.testing.assert_array_equal(load(path).rates, d.rates)


def test_save_refuses_to_overwrite(tiny_data, tmp_path):
    path = save_npz(tiny_data, tmp_path / "a.npz")
    with pytest.raises(FileExistsError, match="a.npz"):
        save_npz(tiny_data, path)


def _good(**overrides):
    kw = dict(spikes=np.ones((4, 5, 3)), bin_size=0.01, source="my_file.xyz")
    kw.update(overrides)
    return kw


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (dict(spikes=-np.ones((4, 5, 3))), r"field 'spikes' has negative counts"),
        (dict(spikes=np.full((4, 5, 3), 0.5)), r"field 'spikes' has fractional counts"),
        (dict(spikes=np.full((4, 5, 3), np.nan)), r"field 'spikes' has non-finite values"),
        (dict(spikes=np.full((4, 5, 3), np.inf)), r"field 'spikes' has non-finite values"),
        (dict(spikes=np.ones((4, 5))), r"field 'spikes' must have rank 3"),
        (dict(spikes=np.ones((0, 5, 3))), r"field 'spikes' is empty"),
        (dict(spikes=np.ones((4, 0, 3))), r"field 'spikes' is empty"),
        (dict(spikes=[[[1, 2]], [[1]]]), r"field 'spikes'"),
        (dict(spikes=np.array([[["a"]]])), r"field 'spikes' must be a numeric array"),
        (dict(behavior=np.zeros((3, 5, 2))), r"field 'behavior' has shape \(3, 5, 2\)"),
        (dict(behavior=np.full((4, 5, 2), np.nan)), r"field 'behavior' has non-finite"),
        (dict(rates=-np.ones((4, 5, 3))), r"field 'rates' has negative values"),
        (dict(latents=np.zeros((4, 4, 2))), r"field 'latents' has shape"),
        (
            dict(n_fwd=2, inputs=np.zeros((4, 3, 1))),
            r"field 'inputs' has shape \(4, 3, 1\); expected \(4, 5, D\)",
        ),
        (dict(inputs=np.full((4, 5, 1), np.inf)), r"field 'inputs' has non-finite values"),
        (dict(inputs=np.array([[["on"]]])), r"field 'inputs' must be a numeric array"),
        (dict(condition=np.zeros(5)), r"field 'condition' has shape \(5,\)"),
        (dict(split=np.array(["train"] * 3)), r"field 'split' has shape"),
        (dict(split=np.array(["train", "val", "foo", "test"])), r"unknown split names \['foo'\]"),
        (dict(observed=np.ones((4, 5, 2), bool)), r"field 'observed' has shape"),
        (dict(n_heldin=0), r"n_heldin=0 does not fit 3 neurons"),
        (dict(n_heldin=4), r"n_heldin=4 does not fit 3 neurons"),
        (dict(n_fwd=5), r"n_fwd=5 forward bins do not fit 5 bins"),
        (dict(n_fwd=-1), r"n_fwd=-1"),
        (dict(bin_size=0.0), r"bin_size must be a positive"),
    ],
)
def test_validation_names_source_and_field(overrides, message):
    with pytest.raises(DataError, match=message) as err:
        SpikeData(**_good(**overrides))
    assert "my_file.xyz" in str(err.value)


def test_behavior_must_cover_observed_bins_only():
    # behaviour is (trials, T_obs, D): with 2 forward bins out of 5, it must have 3 bins
    SpikeData(**_good(n_fwd=2, behavior=np.zeros((4, 3, 2))))
    with pytest.raises(DataError, match=r"'behavior' has shape \(4, 5, 2\).*2 forward bins"):
        SpikeData(**_good(n_fwd=2, behavior=np.zeros((4, 5, 2))))


def test_summary_mentions_shapes_and_rate(tiny_data):
    text = tiny_data.summary()
    assert "tiny: 6 trials x 8 bins x 5 neurons (bin 10 ms)" in text
    assert "held-in 3 / held-out 2" in text and "train 3, val 2, test 1" in text
    rate = tiny_data.spikes.mean() / 0.01
    assert f"mean rate {rate:.2f} Hz" in text


def test_counts_that_float32_would_round_are_refused(tmp_path):
    big = np.ones((2, 3, 4), dtype=np.int64)
    big[1, 2, 3] = 2**24  # the largest count float32 holds exactly: fine
    assert SpikeData(**_good(spikes=big)).spikes[1, 2, 3] == 2**24
    big[1, 2, 3] = 2**24 + 1  # float32(16777217) == 16777216: would be rounded silently
    with pytest.raises(
        DataError, match=r"my_file.xyz: field 'spikes' has counts up to 16777217 .*index \(1, 2, 3\)"
    ):
        SpikeData(**_good(spikes=big))
    np.savez(tmp_path / "big.npz", spikes=big, bin_size=0.01)
    with pytest.raises(
        DataError, match=r"big.npz: key 'spikes' has counts up to 16777217.*2\*\*24 = 16777216"
    ):
        load_npz(tmp_path / "big.npz")


def test_inputs_cover_all_bins_and_travel_with_the_trials(tiny_data, tmp_path):
    inputs = np.arange(6 * 8 * 2, dtype=float).reshape(6, 8, 2) - 40  # (trials, T, U), negative allowed
    d = dataclasses.replace(tiny_data, inputs=inputs)
    assert d.inputs.dtype == np.float32 and "inputs" in d.summary()
    np.testing.assert_array_equal(d.subset("val").inputs, inputs[[3, 4]])
    np.testing.assert_array_equal(d.subset(np.array([5, 0])).inputs, inputs[[5, 0]])
    back = load_npz(save_npz(d, tmp_path / "with_inputs.npz"))
    np.testing.assert_array_equal(back.inputs, inputs)
    assert load_npz(save_npz(tiny_data, tmp_path / "without.npz")).inputs is None


def test_mean_counts_average_recorded_entries_only_and_nan_where_none():
    spikes = np.zeros((3, 4, 2), dtype=np.float32)
    spikes[:, :, 0] = [[1, 2, 3, 4], [5, 6, 7, 8], [0, 0, 0, 0]]
    spikes[:, :, 1] = 9.0  # never recorded below
    observed = np.ones(spikes.shape, dtype=bool)
    observed[2] = False  # trial 2 unrecorded: its zeros are not data
    observed[:, :, 1] = False
    spikes[~observed] = 0.0
    data = SpikeData(spikes, bin_size=0.01, observed=observed)
    mean = data.mean_counts(np.array([0, 1, 2]))
    assert mean[0] == pytest.approx(4.5) and np.isnan(mean[1])
    assert data.mean_counts(np.array([0, 1]), slice(2, None))[0] == pytest.approx((3 + 4 + 7 + 8) / 4)
