"""End-to-end training through the Hydra config tree, at tiny sizes."""

from __future__ import annotations

import csv
import json
import re

import numpy as np
import pytest
import pytorch_lightning as pl
import torch
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf
from tiny import TINY_DATA, TINY_LFADS, TINY_LORENZ

from neuralnets.config import CONFIG_DIR
from neuralnets.data.datamodule import SpikeDataModule
from neuralnets.data.synthetic import lorenz
from neuralnets.errors import ConfigError
from neuralnets.models import MODELS
from neuralnets.runs import read_predictions
from neuralnets.training.module import TrainingModule
from neuralnets.training.train import prepare_config, train

# A module-level LFADS small enough to build and step without a Trainer.
MICRO_LFADS = {
    "name": "lfads",
    "gen_dim": 8,
    "fac_dim": 2,
    "ic_enc_dim": 4,
    "co_dim": 0,
}
TINY_RAMPS = ["model.kl_ramp_steps=10", "model.l2_ramp_steps=10"]


def tiny_cfg(*overrides: str, data: list[str] = TINY_DATA):
    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
        return compose(
            "train",
            overrides=[
                *data,
                "data.batch_size=16",
                *TINY_LFADS,
                *TINY_RAMPS,
                "trainer.max_epochs=2",
                "trainer.log_every_n_steps=1",
                "trainer.enable_progress_bar=false",
                "trainer.enable_model_summary=false",
                "callbacks.eval_every_n_epochs=1",
                *overrides,
            ],
        )


def lorenz_tiny():
    return lorenz(**TINY_LORENZ, seed=0)


@pytest.fixture(scope="module")
def lorenz_data():
    return lorenz_tiny()


def test_train_writes_a_complete_run(tmp_path):
    run = tmp_path / "run"
    record = train(tiny_cfg(), run)
    assert record["model"] == "LFADS" and record["data"] == "lorenz"
    on_disk = json.loads((run / "metrics.json").read_text())
    assert on_disk["metrics"]["co_bps"] == pytest.approx(record["metrics"]["co_bps"])
    for key in ("co_bps", "fp_bps", "rate_r2", "latent_r2", "vel_r2", "psth_r2"):
        assert np.isfinite(record["metrics"][key]), key
    pred = read_predictions(run / "predictions.h5")
    assert pred["rates"].shape == (40, 16, 12) and (pred["rates"] > 0).all()
    assert pred["inputs"].shape == (40, 12, 1)
    assert (run / "checkpoints" / "last.ckpt").is_file()
    assert (run / "config.yaml").is_file()
    assert list(run.glob("events.out.tfevents.*")), "no TensorBoard event file"


def test_csv_logger_run_finishes_with_metrics(tmp_path):
    run = tmp_path / "run"
    record = train(tiny_cfg("logger=csv", "trainer.max_epochs=1"), run)
    assert np.isfinite(record["metrics"]["co_bps"])
    logged = "".join(p.read_text() for p in run.rglob("metrics.csv"))
    assert "hp/co_bps" in logged  # the harness scores reach the CSV log too


def test_tensorboard_has_scalars_hparams_and_figures(tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    run = tmp_path / "run"
    train(tiny_cfg(), run)
    tags = set()
    for f in run.glob("events.out.tfevents.*"):
        acc = EventAccumulator(str(f), size_guidance={"images": 0})
        acc.Reload()
        tags |= set(acc.Tags()["scalars"]) | set(acc.Tags()["images"])
    assert {"train/loss", "val/loss", "val/co_bps", "train/kl_ic", "hp/co_bps"} <= tags
    # Few-shot co-bps (costly GLM fits) is left out of the scoring during training, kept in the final one.
    assert "hp/fewshot_co_bps" in tags and "val/fewshot_co_bps" not in tags
    assert {"figures/raster_vs_rates", "figures/latents", "figures/psth"} <= tags


def test_never_overwrites_an_existing_run(tmp_path):
    run = tmp_path / "run"
    cfg = tiny_cfg("trainer.max_epochs=1")
    train(cfg, run)
    with pytest.raises(ConfigError, match="already holds a run"):
        prepare_config(cfg, run, [])


def test_checkpoint_rebuilds_without_config_and_predicts_the_same(tmp_path, lorenz_data):
    run = tmp_path / "run"
    train(tiny_cfg("trainer.max_epochs=1"), run)
    module = TrainingModule.load_from_checkpoint(run / "checkpoints" / "last.ckpt", map_location="cpu")
    again = module.model.predict(lorenz_data.heldin_obs)
    saved = read_predictions(run / "predictions.h5")
    np.testing.assert_allclose(again["rates"], saved["rates"], rtol=1e-5, atol=1e-6)


class _Kill(pl.Callback):
    """Simulates a kill part-way through the second epoch."""

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        if trainer.current_epoch == 1 and batch_idx == 1:
            raise RuntimeError("simulated kill")


def test_resume_after_a_kill_continues_where_it_stopped(tmp_path, monkeypatch):
    run = tmp_path / "run"
    cfg = tiny_cfg("trainer.max_epochs=3")
    import neuralnets.training.build as build_mod

    real = build_mod.build_callbacks
    monkeypatch.setattr(build_mod, "build_callbacks", lambda *a: [*real(*a), _Kill()])
    with pytest.raises(RuntimeError, match="simulated kill"):
        train(cfg, run)
    monkeypatch.setattr(build_mod, "build_callbacks", real)
    last = torch.load(run / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
    assert last["epoch"] == 0  # only the first epoch finished before the kill

    resumed = prepare_config(OmegaConf.merge(cfg, {"resume": str(run)}), run, [f"resume={run}"])
    record = train(resumed, run)
    steps_per_epoch = -(-len(lorenz_tiny().indices("train")) // 16)  # batch size 16
    assert record["steps"] == 3 * steps_per_epoch
    assert (run / "metrics.json").is_file()


def test_unknown_model_option_is_a_clear_error(lorenz_data):
    spec = lorenz_data.spec.to_dict()
    with pytest.raises(ConfigError, match=r"no option\(s\) \['gen_dimm'\]"):
        TrainingModule({"name": "lfads", "gen_dimm": 3}, spec)
    registered = re.escape(str(sorted(MODELS)))
    with pytest.raises(ConfigError, match=r"unknown model name='nope'.*" + registered):
        TrainingModule({"name": "nope"}, spec)
    with pytest.raises(ConfigError, match="not a registered model class"):
        TrainingModule({"_target_": "neuralnets.models.nope.Nope"}, spec)


def test_unknown_config_group_option_names_the_choices():
    with pytest.raises(Exception, match="lfadz"):
        tiny_cfg("model=lfadz")


class _NaNLossModule(TrainingModule):
    def _loss(self, batch, train):
        loss, parts = super()._loss(batch, train)
        return loss * float("nan"), parts


def test_non_finite_loss_skips_the_step_and_keeps_weights(lorenz_data):
    model_cfg = dict(MICRO_LFADS)
    module = _NaNLossModule(model=model_cfg, spec=lorenz_data.spec.to_dict(), lr_schedule="none")
    before = [p.detach().clone() for p in module.parameters()]
    trainer = pl.Trainer(
        max_epochs=1,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        limit_val_batches=0,
    )
    trainer.fit(module, SpikeDataModule(lorenz_data, batch_size=8))
    assert module.skipped_steps == len(lorenz_data.indices("train")) // 8 + bool(
        len(lorenz_data.indices("train")) % 8
    )
    for b, p in zip(before, module.parameters(), strict=True):
        assert torch.equal(b, p)


def _one_backward(module, data):
    from neuralnets.data.datamodule import batch_tensors, make_batch

    spec = data.spec
    batch = make_batch(batch_tensors(data), torch.arange(8), spec.n_obs_bins, spec.n_heldin)
    loss = module.training_step(batch, 0)
    loss.backward()


def test_finite_step_reads_one_flag_and_a_non_finite_gradient_is_dropped(lorenz_data):
    """The divergence check costs one host read per step (not one per parameter) and still catches a
    non-finite gradient behind a finite loss."""
    module = TrainingModule(model=dict(MICRO_LFADS), spec=lorenz_data.spec.to_dict())
    module.train()
    _one_backward(module, lorenz_data)
    with torch.profiler.profile() as prof:
        module.on_before_optimizer_step(None)
    reads = [e for e in prof.events() if e.name == "aten::_local_scalar_dense"]
    assert len(reads) == 1 and module.skipped_steps == 0
    assert all(p.grad is not None for p in module.parameters() if p.requires_grad)

    _one_backward(module, lorenz_data)
    next(module.parameters()).grad[0] = float("inf")  # the loss stays finite
    module.on_before_optimizer_step(None)
    assert module.skipped_steps == 1 and all(p.grad is None for p in module.parameters())


def test_coordinated_dropout_scores_only_hidden_heldin_entries(lorenz_data):
    """recon = mean NLL over (dropped held-in entries + all held-out/forward entries) * T * N."""
    from neuralnets.data.datamodule import batch_tensors, make_batch
    from neuralnets.nn.augmentations import coordinated_dropout

    model_cfg = dict(MICRO_LFADS)
    module = TrainingModule(model=model_cfg, spec=lorenz_data.spec.to_dict(), coordinated_dropout=0.4)
    spec = lorenz_data.spec
    batch = make_batch(batch_tensors(lorenz_data), torch.arange(8), spec.n_obs_bins, spec.n_heldin)
    module.model.eval()  # deterministic rates, so only the mask differs between the two computations
    torch.manual_seed(3)
    recon = module._loss(batch, train=True)[1]["recon"]
    torch.manual_seed(3)
    _, dropped = coordinated_dropout(batch["heldin"], 0.4)
    scored = torch.ones_like(batch["spikes"], dtype=torch.bool)
    scored[:, : spec.n_obs_bins, : spec.n_heldin] = dropped
    cd_input = {**batch, "heldin": torch.where(dropped, 0.0, batch["heldin"] / 0.6)}
    rates = module.model(cd_input).rates
    nll = rates - batch["spikes"] * torch.log(rates) + torch.lgamma(batch["spikes"] + 1)
    expected = nll[scored].mean() * spec.n_bins * spec.n_neurons
    assert 0 < dropped.float().mean() < 1
    torch.testing.assert_close(recon, expected)


def test_trains_on_real_mc_maze_with_unrecorded_forward_bins(tmp_path):
    """NLB's evaluation trials have no forward bins (observed=False): training and scoring skip them."""
    cfg = tiny_cfg(
        "trainer.max_epochs=1", "model.co_dim=0", data=["data=mc_maze_small", "data.batch_size=32"]
    )
    record = train(cfg, tmp_path / "run")
    assert record["data"] == "mc_maze_small"
    assert np.isfinite(record["metrics"]["co_bps"]) and "fp_bps" not in record["metrics"]
    assert np.isfinite(record["val_metrics"]["fp_bps"]) and np.isfinite(record["val_metrics"]["vel_r2"])


def test_validation_loss_uses_full_aux_weights_while_training_ramps(lorenz_data):
    from neuralnets.data.datamodule import batch_tensors, make_batch

    model_cfg = dict(MICRO_LFADS)
    model_cfg |= {"kl_ramp_steps": 100, "l2_ramp_steps": 100, "kl_ic_scale": 2.0}
    module = TrainingModule(model=model_cfg, spec=lorenz_data.spec.to_dict())
    spec = lorenz_data.spec
    batch = make_batch(batch_tensors(lorenz_data), torch.arange(8), spec.n_obs_bins, spec.n_heldin)
    module.model.eval()
    train_loss, parts = module._loss(batch, train=True)  # global step 0: ramps at 0
    val_loss, _ = module._loss(batch, train=False)
    torch.testing.assert_close(train_loss, parts["recon"])
    full = parts["recon"] + 2.0 * parts["kl_ic"] + module.model.aux_weights["l2_gen"].scale * parts["l2_gen"]
    torch.testing.assert_close(val_loss, full)


def test_the_old_name_of_the_training_module_still_resolves():
    import neuralnets.training.module as module_mod

    with pytest.warns(DeprecationWarning, match="SpikeModule is now TrainingModule"):
        assert module_mod.SpikeModule is TrainingModule
    with pytest.raises(AttributeError, match="SpikeModel"):
        module_mod.SpikeModel  # noqa: B018 - the model base class lives in neuralnets.models.base


def test_a_config_that_cannot_build_leaves_no_run_behind(tmp_path):
    run = tmp_path / "run"
    with pytest.raises(ConfigError, match="unknown model name='lfadz'"):
        train(tiny_cfg("model.name=lfadz"), run)
    with pytest.raises(ConfigError, match="_target_='os.system' is not accepted"):
        train(tiny_cfg("+callbacks.evil={_target_: os.system, command: 'touch MARKER'}"), run)
    assert not (run / "config.yaml").exists() and not (tmp_path / "MARKER").exists()
    train(tiny_cfg("trainer.max_epochs=1"), run)  # the directory is still free for a run
    assert (run / "config.yaml").is_file()


def test_best_checkpoint_on_validation_co_bps(tmp_path):
    """callbacks=val_co_bps: the checkpoint kept is the epoch with the highest validation co-bps."""
    cfg = tiny_cfg("callbacks=val_co_bps", "trainer.max_epochs=3", "logger=csv")
    record = train(cfg, tmp_path / "run")
    logged = [
        (int(row["epoch"]), float(row["val/co_bps"]))
        for path in (tmp_path / "run").rglob("metrics.csv")
        for row in csv.DictReader(path.open())
        if row.get("val/co_bps")
    ]
    assert len(logged) == 3  # one harness score per epoch
    best_epoch, best = max(logged, key=lambda e: e[1])
    assert record["monitor"]["val/co_bps"] == pytest.approx(best, rel=1e-5)
    assert record["checkpoint"] == f"checkpoints/best-epoch={best_epoch}.ckpt"
