"""The README recipe "Adding a model", end to end: a model file (class + capabilities), a config in a
`model/` config folder, one registry line; then it trains, is scored, checkpoints, and loads back by
path through `load_pretrained` with the same predictions."""

from __future__ import annotations

import h5py
import numpy as np
import pytest
import torch
from hydra import compose, initialize_config_dir
from tiny import TINY_DATA, TINY_LORENZ
from torch import Tensor, nn

from neuralnets import load_pretrained
from neuralnets.checkpoints import digest_path as checksum_path
from neuralnets.config import CONFIG_DIR
from neuralnets.data import load
from neuralnets.data.spikedata import DataSpec
from neuralnets.models import MODELS
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


@pytest.fixture
def toy_config_dir(tmp_path, monkeypatch):
    """The registry line and the config file of the recipe (a config folder added to Hydra's path)."""
    monkeypatch.setitem(MODELS, "linear_latents", LinearLatents)
    extra = tmp_path / "extra_configs"
    (extra / "model").mkdir(parents=True)
    (extra / "model" / "linear_latents.yaml").write_text("name: linear_latents\nlatent_dim: 2\n")
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


TOY_TUNE = """params:
  - {key: module.lr, low: 1.0e-3, high: 1.0e-2, log: true}
  - {key: module.weight_decay, low: 1.0e-6, high: 1.0e-3, log: true}
"""


def test_a_model_added_by_the_recipe_is_tuned_and_analysed(tmp_path, toy_config_dir, capsys):
    """The rest of the recipe: its search space (configs/tune/<name>.yaml, here given by tune.space=)
    makes it tunable, and `neuralnets-analyze` reports on it by its capabilities."""
    from neuralnets.analysis.cli import main as analyze_main
    from neuralnets.config import compose as compose_config
    from neuralnets.training.tune import tune

    space = toy_config_dir / "tune" / "linear_latents.yaml"
    space.parent.mkdir()
    space.write_text(TOY_TUNE)
    cfg = compose_config(
        [
            f"hydra.searchpath=[file://{toy_config_dir}]", "model=linear_latents", *TINY_DATA,
            "data.batch_size=16", "threads=1", "tune.n_trials=1", "tune.max_epochs=1", "tune.min_epochs=1",
            f"tune.space={space}", f"tune.dir={tmp_path / 'study'}",
        ],
        config_name="tune",
    )  # fmt: skip
    rows = tune(cfg)
    assert len(rows) == 1 and rows[0]["status"] in {"complete", "pruned"}
    member = tmp_path / "study" / rows[0]["run_dir"]
    assert read_metrics(member).model == "LinearLatents"

    assert analyze_main([str(member)]) == 0
    report = (member / "analysis.md").read_text()
    assert "no recurrent dynamics" in report.lower() or "has_recurrent_dynamics" in report


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
    assert "configs/tune/mymodel.yaml" in recipe and "pbt.search_space" in recipe
    assert {"lfads", "ndt", "rnn"} <= {p.stem for p in (CONFIG_DIR / "tune").glob("*.yaml")}
