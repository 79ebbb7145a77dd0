"""Shared test fixtures: a tiny SpikeData with every optional field, and the bundled real data files."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from neuralnets.data.spikedata import SpikeData

FIXTURES = Path(__file__).parent / "fixtures"
NWB_FIXTURE = FIXTURES / "sub-Jenkins_ses-small_desc-test_ecephys.nwb"


@pytest.fixture
def tiny_data() -> SpikeData:
    """6 trials x 8 bins (2 forward) x 5 neurons (2 held-out), with behaviour, conditions, rates, latents."""
    rng = np.random.default_rng(0)
    rates = rng.uniform(0.1, 2.0, size=(6, 8, 5))  # (trials, T, N) expected counts per bin
    return SpikeData(
        spikes=rng.poisson(rates),
        bin_size=0.01,
        n_heldin=3,
        n_fwd=2,
        split=np.array(["train", "train", "train", "val", "val", "test"]),
        behavior=rng.standard_normal((6, 6, 2)),  # (trials, T_obs, 2)
        condition=np.array([0, 1, 0, 1, 0, 1]),
        rates=rates,
        latents=rng.standard_normal((6, 8, 3)),  # (trials, T, 3)
        name="tiny",
        meta={"note": "conftest"},
    )


@pytest.fixture
def nwb_fixture() -> Path:
    """The official NLB MC_Maze_Small test NWB file (100 trials x 0.7 s, 107 units)."""
    return NWB_FIXTURE


@pytest.fixture(autouse=True, scope="session")
def _one_torch_thread():
    """Tiny models run ~10x faster on one thread than on two contended ones (the CI machine has 2 cores)."""
    import torch

    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


@pytest.fixture(autouse=True)
def _private_baseline_cache(tmp_path_factory, monkeypatch):
    """Baseline rows are cached per dataset (neuralnets.eval.baselines): each test gets an empty cache of
    its own, never the user's."""
    monkeypatch.setenv("NEURALNETS_BASELINE_CACHE", str(tmp_path_factory.mktemp("baseline_cache")))
