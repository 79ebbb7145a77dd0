"""The model registry: `create_model` by name, its checks, legacy `_target_` configs, capabilities,
and one home for each default (configs/model/<name>.yaml == the class defaults)."""

from __future__ import annotations

import re

import pytest
import torch
from omegaconf import OmegaConf
from tiny import sine_batch

from neuralnets.config import config_names
from neuralnets.config import model_config as _model_config
from neuralnets.data.spikedata import DataSpec
from neuralnets.errors import ModelConfigError
from neuralnets.models import (
    FAMILIES,
    LFADS,
    MODELS,
    NDT,
    RNNSeq2Seq,
    create_model,
    model_options,
    resolve_model_config,
)
from neuralnets.training.module import TrainingModule

SPEC = DataSpec(n_heldin=6, n_neurons=8, n_obs_bins=10, n_fwd_bins=2, bin_size=0.01)


def test_create_model_by_name_and_by_config():
    assert isinstance(create_model("lfads", SPEC), LFADS)
    model = create_model({"name": "rnn", "enc_dim": 5}, SPEC.to_dict(), latent_dim=3)
    assert isinstance(model, RNNSeq2Seq) and model.latent_dim == 3
    assert model.encoder.hidden_size == 5
    cfg = OmegaConf.create({"name": "ndt", "n_layers": 1})
    assert isinstance(create_model(cfg, SPEC), NDT)


def test_unknown_name_and_option_list_the_valid_ones():
    registered = re.escape(str(sorted(MODELS)))
    with pytest.raises(ModelConfigError, match=r"unknown model name='lfadz'.*" + registered):
        create_model("lfadz", SPEC)
    with pytest.raises(ModelConfigError, match=r"no option\(s\) \['gen_dimm'\].*'gen_dim'"):
        create_model({"name": "lfads", "gen_dimm": 3}, SPEC)
    with pytest.raises(ModelConfigError, match="needs `name`"):
        create_model({"gen_dim": 3}, SPEC)


def test_option_values_must_be_plain():
    with pytest.raises(ModelConfigError, match=r"lfads.gen_dim names a callable \(_target_='builtins.open'"):
        create_model({"name": "lfads", "gen_dim": {"_target_": "builtins.open", "file": "x"}}, SPEC)
    with pytest.raises(ModelConfigError, match=r"lfads.dropout.*\[0\]\.a names a callable"):
        create_model({"name": "lfads", "dropout": [{"a": {"_target_": "os.system"}}]}, SPEC)
    with pytest.raises(ModelConfigError, match="lfads.gen_dim = .* has type object"):
        create_model({"name": "lfads", "gen_dim": object()}, SPEC)


def test_legacy_target_maps_to_a_registered_name_only():
    name, opts = resolve_model_config({"_target_": "neuralnets.models.lfads.LFADS", "gen_dim": 7})
    assert (name, opts) == ("lfads", {"gen_dim": 7})
    assert isinstance(create_model({"_target_": "neuralnets.models.ndt.NDT"}, SPEC), NDT)
    for bad in ("builtins.open", "os.system", "neuralnets.models.lfads.ClippedGRUCell", "LFADS"):
        with pytest.raises(ModelConfigError, match=f"_target_='{bad}' is not a registered model class"):
            create_model({"_target_": bad}, SPEC)
    with pytest.raises(ModelConfigError, match="both name="):
        create_model({"name": "lfads", "_target_": "neuralnets.models.lfads.LFADS"}, SPEC)


def test_model_config_is_the_model_node_hydra_composes():
    """model=lfads_mc_maze merges configs/model/lfads.yaml underneath (its defaults list)."""
    maze, base = _model_config("lfads_mc_maze"), _model_config("lfads")
    assert maze["name"] == base["name"] == "lfads" and set(base) <= set(maze)
    with pytest.raises(ValueError, match=r"no model config 'lfadz'; model configs: \['gpfa', 'lfads'"):
        _model_config("lfadz")


@pytest.mark.parametrize("name", sorted(FAMILIES))
def test_model_config_lists_every_option_with_the_class_default(name):
    cfg = _model_config(FAMILIES[name].config)  # the config the family declares
    assert cfg.pop("name") == name
    assert cfg == model_options(MODELS[name])  # one value for each default, in both places


@pytest.mark.parametrize("name", config_names("model"))
def test_every_model_config_builds(name):
    model = create_model(_model_config(name), SPEC)
    assert model(sine_batch(SPEC, 2)).rates.shape == (2, SPEC.n_bins, SPEC.n_neurons)


def test_named_sizes_are_the_benchmark_sizes():
    lfads = create_model(_model_config("lfads_mc_maze"), SPEC)
    assert (lfads.gen_dim, lfads.fac_dim, lfads.co_dim, lfads.controller.hidden_size) == (200, 100, 4, 64)
    assert _model_config("rnn_vae")["variational"] is True


def test_capabilities():
    assert NDT.masks_input and not LFADS.masks_input and not RNNSeq2Seq.masks_input
    assert create_model("lfads", SPEC, co_dim=2).has_inferred_inputs
    assert not create_model("lfads", SPEC, co_dim=0).has_inferred_inputs
    assert LFADS.supports_fused_recurrence and not NDT.supports_fused_recurrence


@pytest.mark.parametrize(("name", "hidden"), [("ndt", False), ("rnn", True)])
def test_coordinated_dropout_is_not_applied_to_models_that_mask_their_input(name, hidden):
    module = TrainingModule({"name": name}, SPEC.to_dict(), coordinated_dropout=0.9)
    seen = []
    forward = module.model.forward
    module.model.forward = lambda batch: seen.append(batch["heldin"].clone()) or forward(batch)
    batch = sine_batch(SPEC, 8)
    torch.manual_seed(0)
    module._loss(batch, train=True)
    assert torch.equal(seen[0], batch["heldin"]) is not hidden
