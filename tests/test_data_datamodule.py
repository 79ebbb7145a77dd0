"""Batches from `SpikeDataModule` carry the optional per-trial fields, sliced with the trials."""

from __future__ import annotations

import dataclasses

import numpy as np
import torch

from neuralnets.data.datamodule import batch_tensors, make_batch


def test_batches_carry_inputs_and_behavior(tiny_data):
    inputs = np.arange(6 * 8 * 2, dtype=np.float32).reshape(6, 8, 2)  # (trials, T, U)
    d = dataclasses.replace(tiny_data, inputs=inputs)
    batch = make_batch(batch_tensors(d), torch.tensor([4, 1]), n_obs=d.n_obs, n_heldin=d.n_heldin)
    np.testing.assert_array_equal(batch["inputs"].numpy(), inputs[[4, 1]])  # (B, T, U), all bins
    np.testing.assert_array_equal(batch["behavior"].numpy(), d.behavior[[4, 1]])
    assert batch["heldin"].shape == (2, 6, 3)
    assert "inputs" not in batch_tensors(tiny_data)  # absent when the data have none
