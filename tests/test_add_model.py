"""The recipe "Adding a model" (docs/models.md), end to end: a model file (class + capabilities), a config
in a `model/` config folder, a search-space file, and one `ModelFamily` line in the registry naming them;
then it trains, is scored, checkpoints, loads back by path through `load_pretrained` with the same
predictions, is tuned and analysed, and PBT reads its space."""

from __future__ import annotations

import h5py
import numpy as np
import pytest
import torch
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf
from tiny import TINY_DATA, TINY_LORENZ
from torch import Tensor, nn

from neuralnets import load_pretrained
from neuralnets.checkpoints import digest_path as checksum_path
from neuralnets.config import CONFIG_DIR
from neuralnets.data import load
from neuralnets.data.spikedata import DataSpec
from neuralnets.models import FAMILIES, MODELS, ModelFamily
from neuralnets.models.base import ModelOutput, SpikeModel, get_heldin, positive_rates
from neuralnets.runs import read_metrics
from neuralnets.training.train import train


class LinearLatents(SpikeModel):
    """Toy model: each observed bin's held-in counts map linearly to K latents; forward bins hold the
    last observed latent; log-rates are an affine readout of the latents."""

    masks_input = False  # capabilities: the defaults of SpikeModel, spelled out

    def __init__(self, spec: DataSpec | dict, latent_dim: int = 3):
        super().__init__(spec)
        s = self.spec
        self.encode = nn.Linear(s.n_heldin, latent_dim)
        self.readout = nn.Linear(latent_dim, s.n_neurons)

    def forward(self, batch: dict[str, Tensor]) -> ModelOutput:
        heldin = get_heldin(self, batch)  # (B, T_obs, N_in)
        z = self.encode(heldin)  # (B, T_obs, K)
        z = torch.cat([z, z[:, -1:].expand(-1, self.spec.n_fwd_bins, -1)], dim=1)  # (B, T, K)
        return ModelOutput(rates=positive_rates(self.readout(z)), latents=z)


TOY_SPACE = """params:
  - {key: module.lr, low: 1.0e-3, high: 1.0e-2, log: true}
  - {key: module.weight_decay, low: 1.0e-6, high: 1.0e-3, log: true}
  - {key: model.latent_dim, low: 2, high: 3}
pbt:
  module:
    lr: {low: 1.0e-4, high: 1.0e-2, log: true}
"""


@pytest.fixture
def toy_config_dir(tmp_path, monkeypatch):
    """The recipe's files (a config folder added to Hydra's path) and its one registry line."""
    extra = tmp_path / "extra_configs"
    (extra / "model").mkdir(parents=True)
    (extra / "model" / "linear_latents.yaml").write_text("name: linear_latents\nlatent_dim: 2\n")
    (extra / "tune").mkdir()
    (extra / "tune" / "linear_latents.yaml").write_text(TOY_SPACE)
    family = ModelFamily(
        LinearLatents, config="linear_latents", search_space=extra / "tune" / "linear_latents.yaml"
    )
    monkeypatch.setitem(FAMILIES, "linear_latents", family)
    assert MODELS["linear_latents"] is LinearLatents  # MODELS is the registry's {name: class} view
    assert family.capabilities["masks_input"] is False and family.capabilities["accepts_coordinated_dropout"]
    return extra


def test_a_model_added_by_the_recipe_trains_scores_checkpoints_and_loads(tmp_path, toy_config_dir):
    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
        cfg = compose(
            "train",
            overrides=[
                f"hydra.searchpath=[file://{toy_config_dir}]",
                "model=linear_latents",
                *TINY_DATA,
                "data.batch_size=16",
                "trainer.max_epochs=2",
                "trainer.enable_progress_bar=false",
                "trainer.enable_model_summary=false",
                "callbacks.eval_every_n_epochs=1",
            ],
        )
    assert cfg.model.name == "linear_latents" and cfg.model.latent_dim == 2
    run = tmp_path / "run"
    record = train(cfg, run)
    assert record["model"] == "LinearLatents" and record["steps"] == 2 * 2  # 24 train trials / 16
    assert np.isfinite(record["metrics"]["co_bps"]) and "latent_r2" in record["metrics"]
    best = run / record["checkpoint"]
    assert best.is_file() and checksum_path(best).is_file()

    loaded = load_pretrained(run)  # the run directory: its scored checkpoint, by registry name
    assert isinstance(loaded.model, LinearLatents) and loaded.model.readout.in_features == 2
    with h5py.File(run / "predictions.h5", "r") as f:
        saved = f["rates"][()]
    assert loaded.predict(np.zeros((3, 12, 8)))["rates"].shape == (3, 16, 12)  # held-in in, all out
    data = load("lorenz", seed=0, **TINY_LORENZ)
    np.testing.assert_allclose(loaded.predict(data)["rates"], saved, rtol=1e-5, atol=1e-7)


def test_a_model_added_by_the_recipe_is_tuned_and_analysed(tmp_path, toy_config_dir, capsys):
    """The rest of the recipe: the family's search space (declared in its ModelFamily) makes it tunable,
    its integer setting sampled as an integer, and `neuralnets-analyze` reports on it by its
    capabilities."""
    from neuralnets.analysis.cli import main as analyze_main
    from neuralnets.config import compose as compose_config
    from neuralnets.config import load_saved_config
    from neuralnets.training.tune import tune

    cfg = compose_config(
        [
            f"hydra.searchpath=[file://{toy_config_dir}]", "model=linear_latents", *TINY_DATA,
            "data.batch_size=16", "threads=1", "tune.n_trials=1", "tune.max_epochs=1", "tune.min_epochs=1",
            f"tune.dir={tmp_path / 'study'}",
        ],
        config_name="tune",
    )  # fmt: skip
    rows = tune(cfg)
    assert len(rows) == 1 and rows[0]["status"] in {"complete", "pruned"}, rows
    member = tmp_path / "study" / rows[0]["run_dir"]
    assert read_metrics(member).model == "LinearLatents"
    latent_dim = load_saved_config(member / "config.yaml").model.latent_dim
    assert type(latent_dim) is int and latent_dim in (2, 3)  # was 2.47...: a TypeError in nn.Linear

    assert analyze_main([str(member)]) == 0
    report = (member / "analysis.md").read_text()
    assert "no recurrent dynamics" in report.lower() or "has_recurrent_dynamics" in report


def test_pbt_reads_the_added_familys_space_and_trains_a_member(tmp_path, toy_config_dir):
    """neuralnets-pbt's space for the family is its `pbt:` section, and a member's config (the space's
    values set, as `pbt_trial` builds it) trains through the one lifecycle. (A Ray population is not run
    here: its workers are other processes, where this test's registry line does not exist; test_pbt.py
    runs one of LFADS, whose space comes the same way.)"""
    from neuralnets.config import compose as compose_config
    from neuralnets.training.pbt import check_config, member_config, search_bounds
    from neuralnets.training.run import run_training

    cfg = compose_config(
        [f"hydra.searchpath=[file://{toy_config_dir}]", "model=linear_latents", *TINY_DATA,
         "data.batch_size=16", "threads=1", "trainer.max_epochs=1", "pbt.perturbation_interval=1"],
        config_name="pbt",
    )  # fmt: skip
    bounds = search_bounds(cfg)
    assert bounds == {"module.lr": (1e-4, 1e-2, True)}
    check_config(cfg)
    base = OmegaConf.to_container(cfg, resolve=True)
    member = member_config(base, {"module.lr": 3e-3}, interval=1)
    result = run_training(member, tmp_path / "member", score=False)
    assert result.finished and result.steps == 2  # 24 train trials, batch 16


def test_the_recipe_names_every_capability_and_every_file_a_model_provides():
    """docs/models.md's recipe lists each capability flag (the ones SpikeModel declares, no more) and the
    tune search space; each registered family that is tuned has its search space file."""
    from pathlib import Path

    recipe = (Path(__file__).resolve().parents[1] / "docs" / "models.md").read_text()
    recipe = recipe.split("## Adding a model")[1].split("\n## ")[0]
    declared = {
        k for k, v in vars(SpikeModel).items() if isinstance(v, bool | float) and not k.startswith("_")
    }
    assert declared == set(SpikeModel.CAPABILITIES)
    assert all(f"`{flag}`" in recipe for flag in SpikeModel.CAPABILITIES)
    assert "configs/tune/mymodel.yaml" in recipe and "ModelFamily(" in recipe and "pbt:" in recipe
    from neuralnets.config import config_names

    for name, family in FAMILIES.items():  # each declared file exists and names its family
        assert family.config in config_names("model"), name
        assert family.search_space is None or family.search_space in config_names("tune"), name
    assert {"lfads", "ndt", "rnn"} <= {p.stem for p in (CONFIG_DIR / "tune").glob("*.yaml")}
