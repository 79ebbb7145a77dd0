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
    auto_coordinated_dropout,
    auto_lr,
    auto_lr_patience,
    auto_patience,
    build_datamodule,
    build_module,
    resolve_data_defaults,
    train_mean_counts,
)
from neuralnets.training.module import TrainingModule


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


def test_auto_module_rules():
    # LFADS/RNN below 128 training trials (the batch floor binds): lr 1e-2; otherwise, and for the
    # non-recurrent models, 3e-3
    assert [auto_lr(n) for n in (29, 60, 127, 128, 240, 600)] == [1e-2, 1e-2, 1e-2, 3e-3, 3e-3, 3e-3]
    assert auto_lr(60, recurrent=False) == 3e-3
    # the plateau patience waits ~160 steps, at least 10 epochs (CA1 laps 4 steps, MC_Maze_Small 8, Lorenz 17)
    assert [auto_lr_patience(s) for s in (4, 8, 16, 17, 100)] == [40, 20, 10, 10, 10]
    assert [auto_coordinated_dropout(m) for m in ("lfads", "rnn", "ndt", "stndt", "gpfa")] == [
        0.3,
        0,
        0,
        0,
        0,
    ]
    assert auto_coordinated_dropout({"name": "lfads", "gen_dim": 8}) == 0.3
    with pytest.raises(ConfigError, match="unknown model name='nope'"):
        auto_coordinated_dropout("nope")


@pytest.mark.parametrize(
    ("model", "n_trials", "lr", "cd"),
    [("lfads", 100, 1e-2, 0.3), ("rnn", 100, 1e-2, 0.0), ("ndt", 100, 3e-3, 0.0), ("lfads", 400, 3e-3, 0.3)],
)
def test_auto_module_settings_are_resolved_from_data_and_model(model, n_trials, lr, cd):
    small = ("data.load_kwargs.n_bins=8", "data.load_kwargs.n_fwd=2", f"data.load_kwargs.n_trials={n_trials}")
    cfg = _cfg("data=lorenz", f"model={model}", *small)
    assert (cfg.module.lr, cfg.module.lr_patience, cfg.module.coordinated_dropout) == ("auto",) * 3
    dm = build_datamodule(cfg)
    steps = -(-dm.data.indices("train").size // cfg.data.batch_size)
    assert (cfg.module.lr, cfg.module.coordinated_dropout) == (lr, cd)
    assert cfg.module.lr_patience == auto_lr_patience(steps)
    hp = build_module(cfg, dm.data.spec).hparams
    assert (hp.lr, hp.lr_patience, hp.coordinated_dropout) == (lr, auto_lr_patience(steps), cd)


def test_a_number_overrides_auto_and_recipes_keep_theirs(tiny_data):
    cfg = _cfg("model=lfads", "data.source=x", "module.coordinated_dropout=0", "module.lr=1e-3")
    module = build_module(cfg, tiny_data.spec)
    assert (module.hparams.coordinated_dropout, module.hparams.lr) == (0, 1e-3)
    assert module.hparams.lr_patience == 10  # left `auto` without data: the large-data rule
    mc = _cfg("experiment=lfads_mc_maze_small").module
    assert (mc.lr, mc.lr_patience, mc.coordinated_dropout) == (1e-2, 10, 0.3)
    lorenz = _cfg("experiment=lfads_lorenz").module
    assert (lorenz.lr, lorenz.coordinated_dropout) == (5e-3, 0.3)


def test_training_module_refuses_an_unresolved_auto(tiny_data):
    for key in ("lr", "lr_patience", "coordinated_dropout"):
        with pytest.raises(ConfigError, match=f"module.{key}='auto': expected a number"):
            TrainingModule({"name": "rnn"}, tiny_data.spec.to_dict(), **{key: "auto"})


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
    from neuralnets.training import finish as finish_mod
    from neuralnets.training import train as train_mod

    tables = {}
    logged = []
    monkeypatch.setattr(finish_mod, "log_to_tensorboard", lambda logger, h, m: logged.append(h))
    for batch in (8, 16):
        cfg = tiny_cfg("trainer.max_epochs=1", "experiment=lfads_lorenz", f"data.batch_size={batch}")
        train_mod.train(cfg, tmp_path / str(batch))
        tables[batch] = flatten_hparams(logged[-1])
    differ = {k for k in tables[8] if tables[8][k] != tables[16].get(k)}
    assert differ == {"batch_size", "steps", "module.lr_patience"}  # the patience is counted in steps
    for key, value in {"seed": 0, "recipe": "lfads_lorenz", "max_epochs": 1, "epochs_trained": 1}.items():
        assert tables[8][key] == value, key
    assert tables[8]["data_kwargs.n_trials"] == 40 and tables[8]["data"] == "lorenz"
