"""Population-based training through Ray Tune (optional extra): config checks always, and a tiny
local population when Ray is installed (required under CI: `.ci/run` installs the `ray` extra)."""

from __future__ import annotations

import importlib.util
import json
import os

import numpy as np
import pytest
import torch
from omegaconf import OmegaConf
from tiny import TINY_LFADS

from neuralnets.checkpoints import verify_checkpoint
from neuralnets.config import compose, load_saved_config
from neuralnets.errors import ConfigError
from neuralnets.runs import read_status
from neuralnets.training.pbt import apply_hparams, check_config, clip_to_bounds, search_bounds, tune_metric

TINY = [
    *(f"data.load_kwargs.{k}={v}" for k, v in dict(n_trials=40, n_neurons=12, n_heldout=4).items()),
    "data.load_kwargs.n_bins=16",
    "data.load_kwargs.n_fwd=4",
    "data.batch_size=16",
    *TINY_LFADS,
    "trainer.log_every_n_steps=1",
    "print_baselines=false",
]


def pbt_cfg(*overrides: str):
    return compose([*TINY, *overrides], config_name="pbt")


def test_pbt_config_holds_the_autolfads_search_space():
    cfg = pbt_cfg()
    bounds = search_bounds(cfg)
    assert set(bounds) == {
        "module.lr",
        "model.dropout",
        "module.coordinated_dropout",
        "model.kl_ic_scale",
        "model.kl_co_scale",
        "model.l2_gen_scale",
        "model.l2_con_scale",
    }
    assert bounds["module.lr"] == (1e-4, 1e-2, True) and bounds["model.dropout"] == (0.0, 0.6, False)
    assert cfg.module.lr_schedule == "none"  # PBT owns the learning rate
    check_config(OmegaConf.merge(cfg, {"trainer": {"max_epochs": 10}, "pbt": {"perturbation_interval": 5}}))


def test_perturbed_values_are_kept_inside_the_bounds():
    bounds = {"module.lr": (1e-4, 1e-2, True), "model.dropout": (0.0, 0.6, False)}
    config = {"module.lr": 0.012, "model.dropout": -0.1, "other": 7}
    assert clip_to_bounds(config, bounds) == {"module.lr": 1e-2, "model.dropout": 0.0, "other": 7}
    assert clip_to_bounds({"module.lr": 5e-3}, bounds) == {"module.lr": 5e-3}


def test_apply_hparams_sets_dotted_keys():
    base = {"module": {"lr": 1.0}, "model": {"dropout": 0.1, "gen_dim": 4}}
    cfg = apply_hparams(base, {"module.lr": 0.5, "model.dropout": 0.3})
    assert (cfg.module.lr, cfg.model.dropout, cfg.model.gen_dim) == (0.5, 0.3, 4)
    assert base["module"]["lr"] == 1.0  # the base is not modified
    assert tune_metric("val/co_bps") == "val_co_bps"


@pytest.mark.parametrize(
    "overrides,message",
    [
        (["pbt.num_samples=1"], "at least 2 members"),
        (["trainer.max_epochs=7", "pbt.perturbation_interval=5"], "multiple of pbt.perturbation_interval"),
        (
            ["pbt.search_space={model: {gen_dimm: {low: 1, high: 2}}}"],
            "'model.gen_dimm' is not a numeric key",
        ),
        (
            ["pbt.search_space={module: {likelihood: {low: 1, high: 2}}}"],
            "'module.likelihood' is not a numeric",
        ),
        (["pbt.search_space={model: {dropout: 0.5}}"], "model.dropout must be {low, high, log}"),
        (["pbt.search_space={module: {lr: {low: 0.0, high: 1, log: true}}}"], "low > 0 with log"),
        (["pbt.search_space={model: {dropout: {low: 0, high: -1}}}"], "need low < high"),
        (["pbt.search_space={model: {gen_dim: {low: 4, high: 8}}}"], "model.gen_dim is an integer setting"),
        (["pbt.gpus_per_trial=0.5"], "trainer=gpu with gpus_per_trial"),
        (["trainer=ddp_cpu"], "trainer.devices=1"),
        (["pbt.metric=train/loss"], "validation metric"),
        (["pbt.mode=best"], "'min' or 'max'"),
    ],
)
def test_bad_pbt_settings_are_clear_errors(overrides, message):
    cfg = pbt_cfg("trainer.max_epochs=10", *overrides)
    with pytest.raises(ConfigError, match=message):
        check_config(cfg)


def test_the_pbt_space_is_the_model_familys_unless_given():
    """pbt.search_space null: the family's `pbt:` space (ModelFamily.search_space); a family without one
    is refused in one line naming the remedy."""
    ndt = search_bounds(compose(["model=ndt"], config_name="pbt"))
    assert set(ndt) == {"module.lr", "module.weight_decay", "model.dropout", "model.mask_ratio"}
    with pytest.raises(ConfigError, match="model 'gpfa' declares no search space.*tune.space=FILE"):
        search_bounds(compose(["model=gpfa"], config_name="pbt"))


def _need_ray() -> None:
    """Skip without Ray, except in CI (CI=true), where a missing Ray is a failure: the test must run."""
    if importlib.util.find_spec("ray") is None:
        if os.environ.get("CI", "").lower() in ("1", "true", "yes"):
            pytest.fail("CI=true but Ray is not installed: pip install -e '.[dev,ray]'")
        pytest.skip("Ray is not installed (pip install 'neuralnets[ray]')")


def test_settling_waits_for_a_member_and_records_one_that_vanished(tmp_path):
    """Tune ends members without waiting for them: the study waits for each segment's lock, keeps what a
    member recorded itself, and records a segment left "running" by a vanished worker as interrupted."""
    import threading
    import time

    from neuralnets.runs import create_run_dir, run_lock, write_status
    from neuralnets.training.pbt import SEGMENT, settle_segments

    late, vanished = (create_run_dir(tmp_path / f"pbt_trial_{i}", SEGMENT) for i in (0, 1))  # "running"
    locked = threading.Event()

    def member_still_ending():
        with run_lock(late):
            locked.set()
            time.sleep(0.5)
            write_status(late, "interrupted", error="stopped by its host (SystemExit(0)) at step 2")

    thread = threading.Thread(target=member_still_ending)
    thread.start()
    locked.wait()
    settle_segments(tmp_path)
    thread.join()
    assert read_status(late)["error"].startswith("stopped by its host")  # waited for, kept as written
    assert read_status(vanished)["status"] == "interrupted" and "Ray Tune" in read_status(vanished)["error"]


def test_tiny_population_exploits_and_writes_the_best_run(tmp_path):
    _need_ray()
    from neuralnets.training.pbt import run_pbt

    cfg = pbt_cfg(
        "trainer.max_epochs=3",
        "pbt.num_cpus=2",
        "pbt.quantile_fraction=0.5",  # of 2 members, the worse copies the better at each generation
        "pbt.synch=true",  # so that it does: every generation waits for both members
        "callbacks.figures=false",
    )
    record = run_pbt(cfg, tmp_path, num_samples=2, perturbation_interval=1)

    best = tmp_path / "best"
    on_disk = json.loads((best / "metrics.json").read_text())
    assert np.isfinite(on_disk["metrics"]["co_bps"]) and on_disk["pbt"] == record["pbt"]
    saved = load_saved_config(best / "config.yaml")
    for key, (low, high, _) in search_bounds(cfg).items():
        value = OmegaConf.select(saved, key)
        assert value == pytest.approx(record["pbt"]["hparams"][key]) and low <= value <= high, key
    assert read_status(best)["status"] == "finished" and verify_checkpoint(best / "checkpoints" / "last.ckpt")
    ckpt = torch.load(best / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
    # 24 train trials at batch 16: 2 steps an epoch; exploited members resume the donor's counters.
    assert ckpt["global_step"] == 3 * 2 and ckpt["epoch"] == 2
    assert ckpt["hyper_parameters"]["lr"] == pytest.approx(saved.module.lr)

    tune_dir = tmp_path / "tune"
    members = [p for p in tune_dir.iterdir() if p.is_dir() and p.name.startswith("pbt_trial")]
    assert len(members) == 2
    assert all(list(m.glob("segment*/events.out.tfevents.*")) for m in members)  # a TensorBoard run each
    # Each start of a member is a run directory; Tune ends a member by stopping it (interrupted).
    segments = [s for m in members for s in m.glob("segment*")]
    assert {read_status(s)["status"] for s in segments} <= {"finished", "interrupted"}, segments
    # Lines: [member, copied member, member's epoch, copied member's epoch, old config, new config].
    exploits = [json.loads(line) for line in (tune_dir / "pbt_global.txt").read_text().splitlines()]
    assert exploits, "no member ever copied another"
    reports = {}
    for member in members:
        results = [json.loads(line) for line in (member / "result.json").read_text().splitlines()]
        reports[member.name] = results
        for r in results:
            assert r["step"] == 2 * r["epoch"]
            for key, (low, high, _) in search_bounds(cfg).items():
                assert low <= r["config"][key] <= high, key
    checked = 0
    for target, _, _, clone_epoch, _, new_config in exploits:
        # member tags start with the trial index: "1_model_dropout=...", dirs "pbt_trial_<id>_00001_1_..."
        (name,) = [n for n in reports if n.split("_")[4] == target.split("_")[0]]
        after = [r["epoch"] for r in reports[name] if r["config"]["module.lr"] == new_config["module.lr"]]
        # The copied checkpoint was restored, epoch counter included: a member restarted from
        # scratch with the new hyperparameters would report epoch 1 again.
        assert all(e > clone_epoch for e in after), (after, clone_epoch)
        checked += bool(after)
    assert checked, "no report after an exploit"


class _FakeTune:
    """The few `ray.tune` calls a member makes, without Ray: one member, reports collected."""

    def __init__(self, trial_dir, checkpoint_dir=None):
        from types import SimpleNamespace

        self.reports, self.trial_dir, self.checkpoint_dir = [], trial_dir, checkpoint_dir
        resources = SimpleNamespace(required_resources={"CPU": 1})
        self.context = SimpleNamespace(
            get_trial_resources=lambda: resources,
            get_trial_dir=lambda: str(trial_dir),
            get_trial_id=lambda: "pbt_trial_00001",
        )

    def get_context(self):
        return self.context

    def get_checkpoint(self):
        import contextlib

        if self.checkpoint_dir is None:
            return None
        src = self.checkpoint_dir
        return type("C", (), {"as_directory": lambda self: contextlib.nullcontext(str(src))})()

    def report(self, metrics, checkpoint):
        self.reports.append((metrics, checkpoint))

    class Checkpoint:
        @staticmethod
        def from_directory(path):
            import shutil
            import tempfile

            keep = tempfile.mkdtemp()
            shutil.copytree(path, keep, dirs_exist_ok=True)
            return keep


def test_a_member_trains_through_the_shared_builders_and_restores(tmp_path, monkeypatch):
    """`pbt_trial` (one population member) without Ray: it builds data, module and trainer with
    `neuralnets.training.build`, reports every interval with a checkpoint, and a member handed that
    checkpoint resumes from it (weights_only)."""
    import sys
    import types

    from neuralnets.training.pbt import pbt_trial

    base = OmegaConf.to_container(pbt_cfg("trainer.max_epochs=2", "callbacks.figures=false"), resolve=True)
    base.pop("hydra", None)
    hparams = {"module.lr": 2e-3, "model.dropout": 0.2}
    fake = _FakeTune(tmp_path / "first")
    monkeypatch.setitem(sys.modules, "ray", types.SimpleNamespace(tune=fake))
    monkeypatch.setitem(sys.modules, "ray.tune", fake)
    pbt_trial(hparams, base=base, interval=1, tune_dir=str(tmp_path))
    assert [m["epoch"] for m, _ in fake.reports] == [1, 2]
    assert all(np.isfinite(m["val_co_bps"]) for m, _ in fake.reports)
    # Each start of a member is an ordinary run directory (status, config, TensorBoard run, checkpoints).
    segment = tmp_path / "first" / "segment"
    assert read_status(segment)["status"] == "finished" and (segment / "config.yaml").is_file()
    assert list(segment.glob("events.out.tfevents.*"))  # the member's TensorBoard run
    donor = fake.reports[0][1]  # the epoch-1 checkpoint directory, its sha256 record beside it
    assert torch.load(f"{donor}/model.ckpt", weights_only=True)["hyper_parameters"]["lr"] == 2e-3
    assert verify_checkpoint(f"{donor}/model.ckpt")

    second = _FakeTune(tmp_path / "second", checkpoint_dir=donor)
    monkeypatch.setitem(sys.modules, "ray", types.SimpleNamespace(tune=second))
    monkeypatch.setitem(sys.modules, "ray.tune", second)
    pbt_trial({**hparams, "module.lr": 1e-3}, base=base, interval=1, tune_dir=str(tmp_path))
    assert [m["epoch"] for m, _ in second.reports] == [2]  # restored at epoch 1, trained one more
    assert read_status(tmp_path / "second" / "segment")["status"] == "finished"
