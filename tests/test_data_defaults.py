"""Data-aware defaults: read-out bias from the training split, `auto` batch size and patience, recipes."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from neuralnets.config import compose
from neuralnets.data.spikedata import SpikeData
from neuralnets.errors import ConfigError
from neuralnets.models import MODELS
from neuralnets.models.base import READOUT_FLOOR
from neuralnets.training.build import (
    auto_batch_size,
    auto_patience,
    build_datamodule,
    build_module,
    resolve_data_defaults,
    train_mean_counts,
)


def _cfg(*overrides: str):
    return compose(list(overrides), config_name="train")


def test_train_mean_counts_use_observed_training_entries_only(tiny_data):
    observed = np.ones(tiny_data.spikes.shape, dtype=bool)
    observed[:, :, 4] = False  # neuron 4 never observed
    observed[0, :, 1] = False  # neuron 1 unobserved on training trial 0
    spikes = tiny_data.spikes.astype(np.float32)
    spikes[3:] = 1000.0  # val/test trials must not count
    data = SpikeData(
        spikes=spikes, bin_size=0.01, n_heldin=3, n_fwd=2, split=tiny_data.split, observed=observed
    )
    mean = train_mean_counts(data)
    train = spikes[:3]
    assert mean.shape == (5,)
    np.testing.assert_allclose(mean[0], train[:, :, 0].mean(), rtol=1e-6)
    np.testing.assert_allclose(mean[1], train[1:, :, 1].mean(), rtol=1e-6)
    assert mean[4] == 0.0


@pytest.mark.parametrize("name", ["lfads", "rnn", "ndt"])
def test_every_model_starts_its_readout_at_the_training_mean(name, tiny_data):
    cfg = _cfg(f"model={name}", "data.source=unused")
    mean = train_mean_counts(tiny_data)
    mean[0] = 0.0  # a silent neuron gets the floor
    module = build_module(cfg, tiny_data.spec)
    before = module.model.readout.bias.detach().clone()
    module.model.init_readout_bias(mean)
    bias = module.model.readout.bias.detach()
    expected = torch.log(torch.as_tensor(mean).clamp(min=READOUT_FLOOR))
    torch.testing.assert_close(bias, expected)
    assert not torch.allclose(before, bias)
    # build_module does it when given the data of a fresh run, and not otherwise
    fresh = build_module(cfg, tiny_data.spec, init_data=tiny_data).model.readout.bias.detach()
    floored = torch.as_tensor(train_mean_counts(tiny_data)).clamp(min=1e-3)
    torch.testing.assert_close(fresh, torch.log(floored))
    assert MODELS[name] is type(module.model)


def test_init_readout_bias_refuses_wrong_shapes_and_values(tiny_data):
    model = build_module(_cfg("model=rnn", "data.source=x"), tiny_data.spec).model
    with pytest.raises(ValueError, match=r"expected \(5,\)"):
        model.init_readout_bias(np.ones(4))
    with pytest.raises(ValueError, match="finite and >= 0"):
        model.init_readout_bias(np.array([1.0, -1.0, 1.0, 1.0, 1.0]))


def test_auto_batch_size_and_patience_rules():
    assert [auto_batch_size(n) for n in (10, 60, 240, 600, 5000)] == [8, 8, 15, 37, 64]
    assert auto_patience(8) == 63 and auto_patience(16) == 32 and auto_patience(100) == 30


def test_auto_settings_are_resolved_into_the_config(tiny_data):
    small = ("data.load_kwargs.n_trials=100", "data.load_kwargs.n_bins=8", "data.load_kwargs.n_fwd=2")
    cfg = _cfg("data=lorenz", *small)
    assert cfg.data.batch_size == "auto" and cfg.callbacks.early_stopping_patience == "auto"
    dm = build_datamodule(cfg)
    n_train = dm.data.indices("train").size
    assert dm.batch_size == cfg.data.batch_size == auto_batch_size(n_train)
    steps = -(-n_train // cfg.data.batch_size)
    assert cfg.callbacks.early_stopping_patience == auto_patience(steps)
    for bad in ("data.batch_size=0", "data.batch_size=big", "callbacks.early_stopping_patience=-1"):
        with pytest.raises(ConfigError, match=bad.split("=")[0]):
            resolve_data_defaults(_cfg(bad), tiny_data)


def test_a_recipe_owns_its_batch_size():
    assert _cfg("experiment=lfads_lorenz").data.batch_size == 32
    cfg = _cfg("experiment=lfads_lorenz", "data=file", "data.source=x.npz")
    assert cfg.data.name == "file" and cfg.data.batch_size == 32
    assert _cfg("data=file", "data.source=x.npz").data.batch_size == "auto"


def test_runs_differing_only_in_batch_size_differ_in_the_hparams_table(tmp_path, monkeypatch):
    from test_training import tiny_cfg

    from neuralnets.eval.tblog import flatten_hparams
    from neuralnets.training import run as run_mod
    from neuralnets.training import train as train_mod

    tables = {}
    logged = []
    monkeypatch.setattr(run_mod, "log_to_tensorboard", lambda logger, h, m: logged.append(h))
    for batch in (8, 16):
        cfg = tiny_cfg("trainer.max_epochs=1", "experiment=lfads_lorenz", f"data.batch_size={batch}")
        train_mod.train(cfg, tmp_path / str(batch))
        tables[batch] = flatten_hparams(logged[-1])
    differ = {k for k in tables[8] if tables[8][k] != tables[16].get(k)}
    assert differ == {"batch_size", "steps"}
    for key, value in {"seed": 0, "recipe": "lfads_lorenz", "max_epochs": 1, "epochs_trained": 1}.items():
        assert tables[8][key] == value, key
    assert tables[8]["data_kwargs.n_trials"] == 40 and tables[8]["data"] == "lorenz"
