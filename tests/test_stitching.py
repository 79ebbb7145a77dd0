"""Multi-session stitching: the session collection and its checks, the synthetic multi-session data,
the single-session batches, the stitched model, a tiny multi-session run through the training CLI,
checkpoint round-trip, per-session evaluation and fine-tuning on a new session."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from hydra import compose, initialize_config_dir

from neuralnets.checkpoints import digest_path as checksum_path
from neuralnets.config import CONFIG_DIR
from neuralnets.data import load
from neuralnets.data.datamodule import MultiSessionDataModule
from neuralnets.data.sessions import MultiSessionData, spec_from_dict
from neuralnets.data.synthetic import lorenz, lorenz_sessions
from neuralnets.errors import ConfigError, DataError, ModelConfigError
from neuralnets.eval import evaluate, evaluate_sessions
from neuralnets.models import Stitched, create_model
from neuralnets.models.stitched import _smooth, readin_init
from neuralnets.pretrained.loading import build_from_checkpoint
from neuralnets.training.stitching import finetune, finetune_module
from neuralnets.training.train import train

TINY = dict(n_sessions=3, n_trials=30, n_neurons=(8, 14), n_bins=16, n_fwd=4, n_conditions=4)
CORE = {"gen_dim": 12, "fac_dim": 3, "ic_enc_dim": 8, "ci_enc_dim": 4, "con_dim": 4, "co_dim": 1}
CORE_CLI = "model.core_options={gen_dim:12,fac_dim:3,ic_enc_dim:8,ci_enc_dim:4,con_dim:4,co_dim:1}"
CLI_DATA = [
    "data.load_kwargs.n_sessions=3",
    "data.load_kwargs.n_trials=30",
    "data.load_kwargs.n_neurons=[8,14]",
    "data.load_kwargs.n_bins=16",
    "data.load_kwargs.n_fwd=4",
    "+data.load_kwargs.n_conditions=4",
]


@pytest.fixture(scope="module")
def sessions() -> MultiSessionData:
    return lorenz_sessions(**TINY)


def tiny_cfg(tmp_path, *overrides: str):
    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
        return compose(
            "train",
            overrides=[
                "model=stitched",
                "data=lorenz_sessions",
                *CLI_DATA,
                CORE_CLI,
                "data.batch_size=8",
                "trainer.max_epochs=2",
                "trainer.enable_progress_bar=false",
                "trainer.enable_model_summary=false",
                "callbacks.eval_every_n_epochs=1",
                "print_baselines=false",
                "threads=1",
                f"out_dir={tmp_path}",
                *overrides,
            ],
        )


@pytest.fixture(scope="module")
def trained_run(tmp_path_factory):
    """A tiny stitched LFADS trained on sessions s0 and s1 through the training CLI's `train`."""
    tmp = tmp_path_factory.mktemp("stitch")
    return train(tiny_cfg(tmp, "data.load_kwargs.keep=[0,1]"))


# ------------------------------------------------------------------------------------------ data
def test_sessions_must_share_bins_and_name_the_session(sessions):
    s0, s1 = sessions["s0"], sessions["s1"]
    with pytest.raises(DataError, match=r"session 'b' has n_fwd_bins=3, but session 'a' has n_fwd_bins=4"):
        MultiSessionData({"a": s0, "b": dataclasses.replace(s1, n_fwd=3, behavior=None)})
    with pytest.raises(DataError, match=r"session 'b' has bin_size=0.02, but session 'a' has bin_size=0.01"):
        MultiSessionData({"a": s0, "b": dataclasses.replace(s1, bin_size=0.02)})
    with pytest.raises(DataError, match=r"session 'b' is a ndarray, not a SpikeData"):
        MultiSessionData({"a": s0, "b": s1.spikes})
    with pytest.raises(DataError, match=r"session name 'a.b' must be"):
        MultiSessionData({"a.b": s0})
    with pytest.raises(DataError, match="no sessions"):
        MultiSessionData({})
    no_val = dataclasses.replace(s1, split=np.where(s1.split == "val", "train", s1.split))
    with pytest.raises(DataError, match=r"session 'b' has no 'val' trials"):
        MultiSessionData({"a": s0, "b": no_val})


def test_spec_round_trip_and_session_lookup(sessions):
    spec = sessions.spec
    assert spec_from_dict(spec.to_dict()) == spec
    assert spec.index("s1") == 1 and spec["s2"] == sessions["s2"].spec
    with pytest.raises(ValueError, match=r"unknown session 'x'; sessions: \['s0', 's1', 's2'\]"):
        spec.index("x")
    with pytest.raises(ValueError, match="already in"):
        spec.with_sessions(spec)


def test_lorenz_sessions_share_one_latent_system(sessions):
    again = lorenz_sessions(**TINY)
    assert all(np.array_equal(sessions[n].spikes, again[n].spikes) for n in sessions.names)  # deterministic
    counts = [d.n_neurons for _, d in sessions]
    assert len(set(counts)) > 1 and all(8 <= n <= 14 for n in counts)
    shared = lorenz(n_trials=90, n_neurons=2, n_heldout=0, n_bins=16, n_fwd=4, n_conditions=4)
    for i, (_, d) in enumerate(sessions):
        assert np.array_equal(
            d.latents, shared.latents[i * 30 : (i + 1) * 30]
        )  # one system, same coordinates
        assert d.n_heldout >= 1 and d.n_fwd == 4 and {"train", "val", "test"} <= set(d.split)
    only = lorenz_sessions(**TINY, keep=[2])
    assert only.names == ("s2",) and np.array_equal(only["s2"].spikes, sessions["s2"].spikes)
    assert isinstance(load("lorenz_sessions", **TINY), MultiSessionData)


def test_batches_hold_one_session_and_cover_every_session(sessions):
    dm = MultiSessionDataModule(sessions, batch_size=7, seed=0)
    batches = list(dm.train_dataloader())
    seen = {name: [] for name in sessions.names}
    for b in batches:
        name = sessions.names[b["session"]]
        d = sessions[name]
        assert b["heldin"].shape[1:] == (d.n_obs, d.n_heldin) and b["spikes"].shape[2] == d.n_neurons
        seen[name] += b["index"].tolist()
    for name, d in sessions:  # every training trial of every session once per epoch
        assert sorted(seen[name]) == d.indices("train").tolist()
    order = [b["session"] for b in batches]
    assert order != sorted(order)  # sessions are mixed within the epoch
    assert [b["session"] for b in MultiSessionDataModule(sessions, 7, first_session=5).val_dataloader()][
        0
    ] == 5


# ------------------------------------------------------------------------------------------ model
def test_stitched_model_shapes_per_session(sessions):
    model = create_model({"name": "stitched", "core_options": CORE, "readin_dim": 5}, sessions.spec)
    for i, (name, d) in enumerate(sessions):
        heldin = torch.as_tensor(d.heldin_obs[:3])
        out = model({"heldin": heldin, "session": i})
        assert out.rates.shape == (3, d.n_bins, d.n_neurons) and out.latents.shape == (3, d.n_bins, 3)
        assert (out.rates > 0).all() and set(out.aux_losses) == {"kl_ic", "l2_gen", "kl_co", "l2_con"}
        assert model.predict(d.heldin_obs, session=name)["rates"].shape == d.spikes.shape
    with pytest.raises(ValueError, match=r"session 's1' expects held-in spikes of shape \(B, 12, "):
        model({"heldin": torch.as_tensor(sessions["s0"].heldin_obs), "session": 1})
    with pytest.raises(ValueError, match=r"batch\['session'\] is needed"):
        model({"heldin": torch.as_tensor(sessions["s0"].heldin_obs)})
    with pytest.raises(ModelConfigError, match="'lfads' models one session.*model=stitched"):
        create_model("lfads", sessions.spec)
    rnn = create_model({"name": "stitched", "core": "rnn", "core_options": {"enc_dim": 4}}, sessions.spec)
    assert rnn({"heldin": heldin, "session": 2}).rates.shape == (3, 16, sessions["s2"].n_neurons)
    with pytest.raises(ValueError, match="core_options do not fit core='rnn'"):
        create_model({"name": "stitched", "core": "rnn", "core_options": {"gen_dim": 4}}, sessions.spec)


def test_aligned_readin_init_maps_sessions_into_one_space():
    data = lorenz_sessions(**{**TINY, "n_trials": 80, "n_neurons": (20, 30)})
    train = [d.subset("train") for _, d in data]
    conds = [d.condition for d in train]
    weights, how = readin_init([d.heldin_obs for d in train], conds, 3)
    assert how == "aligned"
    # The sessions' smoothed condition averages, each through its own read-in, land on the same
    # trajectories in the shared space (different neurons, one latent system): the sessions start aligned.
    proj = [
        _smooth(np.stack([d.heldin_obs[c == k].mean(0) for k in range(4)]), 2.0) @ w.T + b
        for d, c, (w, b) in zip(train, conds, weights, strict=True)
    ]  # each (C, T_obs, 3)
    for j in range(2):
        assert np.corrcoef(proj[0][..., j].ravel(), proj[1][..., j].ravel())[0, 1] > 0.95
    weights, how = readin_init([d.heldin_obs for d in train], None, 3)
    assert how == "pca" and weights[0][0].shape == (3, data["s0"].n_heldin)


# ------------------------------------------------------------------------------------------ training
def test_multi_session_run_through_the_cli_scores_every_session(trained_run):
    run = trained_run["run_dir"]
    metrics = json.loads((Path(run) / "metrics.json").read_text())
    assert set(metrics["sessions"]) == {"s0", "s1"}
    for key in ("co_bps", "latent_r2", "rate_r2"):
        per = [metrics["sessions"][s][key] for s in ("s0", "s1")]
        assert metrics["metrics"][key] == pytest.approx(np.mean(per))
    assert metrics["steps"] > 0 and metrics["model"] == "Stitched"


def test_checkpoint_rebuilds_without_data_and_scores_per_session(trained_run):
    run = Path(trained_run["run_dir"])
    model = build_from_checkpoint(run / json.loads((run / "metrics.json").read_text())["checkpoint"])
    assert isinstance(model, Stitched) and model.spec.names == ("s0", "s1")
    data = lorenz_sessions(**TINY, keep=[0, 1])
    preds = model.predict_sessions(data)
    scores = evaluate_sessions(preds, data, "test")
    direct = evaluate(preds["s1"]["rates"], data["s1"], "test", latents=preds["s1"]["latents"])
    assert scores["sessions"]["s1"] == direct
    saved = json.loads((run / "metrics.json").read_text())
    assert scores["mean"]["co_bps"] == pytest.approx(saved["metrics"]["co_bps"], abs=1e-6)
    with pytest.raises(ValueError, match=r"no predictions for session\(s\) \['s1'\]"):
        evaluate_sessions({"s0": preds["s0"]}, data, "test")


def test_finetune_trains_only_the_new_session(trained_run):
    run = Path(trained_run["run_dir"])
    before = build_from_checkpoint(run / json.loads((run / "metrics.json").read_text())["checkpoint"])
    new = lorenz_sessions(**TINY, keep=[2])
    module, first = finetune_module(run, new)
    assert first == 2 and module.model.spec.names == ("s0", "s1", "s2")
    readin0 = module.model.readins[2].weight.detach().clone()
    tuned = finetune(run, new, max_epochs=2, batch_size=8)
    old = before.state_dict()
    for key, value in tuned.state_dict().items():
        if key.startswith(("readins.2.", "readouts.2.")):
            continue
        assert torch.equal(value, old[key]), key  # core and trained sessions bit-identical
    assert not torch.equal(tuned.readins[2].weight, readin0)  # the new read-in trained
    assert tuned.predict(new["s2"].heldin_obs, session="s2")["rates"].shape == new["s2"].spikes.shape
    with pytest.raises(ConfigError, match=r"session name\(s\) \['s0'\] already in"):
        finetune_module(run, lorenz_sessions(**TINY, keep=[0]))


def test_finetune_from_the_cli_and_a_tampered_checkpoint_is_refused(trained_run, tmp_path):
    run = Path(trained_run["run_dir"])
    record = train(tiny_cfg(tmp_path, "data.load_kwargs.keep=[2]", f"finetune_from={run}"))
    assert set(record["sessions"]) == {"s2"} and record["finetune_from"] == str(run)
    ckpt = run / json.loads((run / "metrics.json").read_text())["checkpoint"]
    bad = tmp_path / "bad.ckpt"
    bad.write_bytes(ckpt.read_bytes() + b"x")
    checksum_path(bad).write_text(checksum_path(ckpt).read_text())
    with pytest.raises(ConfigError, match="refusing to fine-tune from"):
        finetune_module(bad, lorenz_sessions(**TINY, keep=[2]))


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_stitched_training_on_cuda_matches_the_batch_contract(sessions):
    import pytorch_lightning as pl

    from neuralnets.training.build import init_sessions_from_data
    from neuralnets.training.module import TrainingModule

    module = TrainingModule({"name": "stitched", "core_options": CORE}, sessions.spec.to_dict(), lr=1e-2)
    init_sessions_from_data(module.model, sessions)
    dm = MultiSessionDataModule(sessions, batch_size=8)
    trainer = pl.Trainer(max_epochs=2, accelerator="gpu", devices=1, logger=False, enable_checkpointing=False)
    trainer.fit(module, datamodule=dm)
    assert module.global_step == len(dm.train_dataloader()) * 2
    assert dm.tensors[0]["spikes"].is_cuda  # the data stayed on the device
    preds = module.model.cuda().predict_sessions(sessions)
    assert all(np.isfinite(p["rates"]).all() for p in preds.values())


def test_load_pretrained_takes_a_stitched_run_and_a_session(trained_run):
    import neuralnets

    model = neuralnets.load_pretrained(trained_run["run_dir"])
    data = lorenz_sessions(**TINY, keep=[0, 1])
    assert "sessions: s0 (" in repr(model)
    out = model.predict(data["s1"], session="s1")
    assert out["rates"].shape == data["s1"].spikes.shape
    scores = model.evaluate(data)
    assert scores["mean"]["co_bps"] == pytest.approx(trained_run["metrics"]["co_bps"], abs=1e-6)
    with pytest.raises(DataError, match=r"has sessions \['s0', 's1'\]: pass session="):
        model.predict(data["s1"])
    with pytest.raises(DataError, match="data have .* held-in of .* but model"):
        model.predict(data["s1"], session="s0")
