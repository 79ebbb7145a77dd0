"""Scale-out on existing engines: Lightning DDP (2 CPU processes, gloo) and the submitit launcher's
configs (Optuna studies with several workers: tests/test_tune.py).

The DDP runs happen in subprocesses (with a timeout) so that a hang fails the test instead of the
whole suite. Run as a script, this file is the DDP worker: `python tests/test_scaleout.py OUT_DIR`.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from tiny import TINY_LFADS

from neuralnets.data.datamodule import SpikeDataModule, TrialBatches, batch_tensors, make_batch
from neuralnets.data.synthetic import lorenz
from neuralnets.training.module import TrainingModule

REPO = Path(__file__).resolve().parents[1]

# 35 trials -> 21 train, 7 val, 7 test (default 0.2/0.2 split): odd counts, so neither the training
# shards nor the validation batches (4 + 3 at batch size 4) divide evenly.
DDP_DATA = dict(n_trials=35, n_neurons=12, n_heldout=4, n_bins=16, n_fwd=4, seed=0)
DDP_MODEL = {
    "name": "lfads",
    "gen_dim": 16,
    "fac_dim": 4,
    "ic_enc_dim": 8,
    "ci_enc_dim": 8,
    "con_dim": 8,
    "co_dim": 1,
    # Constant penalty weights: the reference loss below, computed outside the trainer (step 0),
    # then uses the same weights as validation at the last step.
    "kl_ramp_steps": 0,
    "l2_ramp_steps": 0,
}
DDP_BATCH = 4
DDP_EPOCHS = 2

TINY = [
    *(f"data.load_kwargs.{k}={v}" for k, v in dict(n_trials=40, n_neurons=12, n_heldout=4).items()),
    "data.load_kwargs.n_bins=16",
    "data.load_kwargs.n_fwd=4",
    "data.batch_size=8",
    *TINY_LFADS,
    "trainer.max_epochs=2",
    "trainer.log_every_n_steps=1",
    "trainer.enable_progress_bar=false",
    "trainer.enable_model_summary=false",
    "callbacks.eval_every_n_epochs=1",
    "callbacks.figures=false",
    "print_baselines=false",
]


def _run(cmd: list[str], timeout: float, cwd: Path = REPO) -> subprocess.CompletedProcess:
    """Run `cmd` in its own process group; on timeout kill the group (DDP children included)."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen(
        cmd,
        cwd=cwd,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )
    try:
        out, _ = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        out, _ = proc.communicate()
        pytest.fail(f"{' '.join(cmd[:4])} ... timed out after {timeout} s (DDP hang?)\n{out[-4000:]}")
    assert proc.returncode == 0, f"exit {proc.returncode}:\n{out[-6000:]}"
    return subprocess.CompletedProcess(cmd, proc.returncode, out, None)


# ----------------------------------------------------------------------------- DDP worker (a script)
def _ddp_worker(out_dir: str) -> None:
    """2 CPU processes (gloo) train the tiny LFADS for DDP_EPOCHS epochs; each rank saves its final
    weights, the synced validation metrics and the trials it saw to OUT_DIR/rank<r>.pt."""
    import pytorch_lightning as pl

    torch.set_num_threads(1)

    class NaNOnce(TrainingModule):
        """Rank 0's second training batch has a NaN loss: both ranks must skip that step together."""

        calls = 0

        def _loss(self, batch, train):
            loss, parts = super()._loss(batch, train)
            if train:
                self.calls += 1
                if self.global_rank == 0 and self.calls == 2:
                    loss = loss * float("nan")
            return loss, parts

    class Record(pl.Callback):
        def __init__(self):
            self.train_idx, self.val_idx, self.initial = {}, {}, None

        def on_train_start(self, trainer, module):  # after DDP has broadcast rank 0's weights
            self.initial = {k: v.detach().clone() for k, v in module.state_dict().items()}

        def on_train_batch_start(self, trainer, module, batch, batch_idx):
            self.train_idx.setdefault(trainer.current_epoch, []).extend(batch["index"].tolist())

        def on_validation_batch_start(self, trainer, module, batch, batch_idx, dataloader_idx=0):
            self.val_idx.setdefault(trainer.current_epoch, []).extend(batch["index"].tolist())

        def on_fit_end(self, trainer, module):
            torch.save(
                {
                    "world_size": trainer.world_size,
                    "initial": self.initial,
                    "final": {k: v.detach().clone() for k, v in module.state_dict().items()},
                    "metrics": {k: float(v) for k, v in trainer.callback_metrics.items()},
                    "train_idx": self.train_idx,
                    "val_idx": self.val_idx,
                    "skipped": module.skipped_steps,
                    "global_step": trainer.global_step,
                },
                Path(out_dir) / f"rank{trainer.global_rank}.pt",
            )

    data = lorenz(**DDP_DATA)
    pl.seed_everything(0)
    module = NaNOnce(model=DDP_MODEL, spec=data.spec.to_dict(), lr_schedule="none", coordinated_dropout=0.2)
    trainer = pl.Trainer(
        accelerator="cpu",
        devices=2,
        strategy="ddp_fork",  # forked from this process: no second interpreter start-up
        max_epochs=DDP_EPOCHS,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
        use_distributed_sampler=False,
        callbacks=[Record()],
    )
    trainer.fit(module, SpikeDataModule(data, batch_size=DDP_BATCH))


@pytest.fixture(scope="module")
def ddp_ranks(tmp_path_factory) -> list[dict]:
    out = tmp_path_factory.mktemp("ddp")
    _run([sys.executable, __file__, str(out)], timeout=240)
    ranks = [torch.load(out / f"rank{r}.pt", weights_only=False) for r in range(2)]
    assert all(r["world_size"] == 2 for r in ranks)
    return ranks


def test_ddp_ranks_agree_on_the_weights(ddp_ranks):
    r0, r1 = ddp_ranks
    assert r0["final"].keys() == r1["final"].keys()
    for name in r0["final"]:
        assert torch.equal(r0["final"][name], r1["final"][name]), name
        assert torch.isfinite(r0["final"][name]).all(), name
    changed = [n for n in r0["final"] if not torch.equal(r0["final"][n], r0["initial"][n])]
    assert changed, "the weights did not change: nothing was trained"


def test_ddp_non_finite_loss_on_one_rank_skips_the_step_on_both(ddp_ranks):
    # Rank 0 alone produced the NaN; rank 1 must skip the same step, or the weights would differ
    # (checked above) or the ranks would hang in the all-reduce.
    assert [r["skipped"] for r in ddp_ranks] == [1, 1]


def test_ddp_shards_training_trials_without_dropping_any(ddp_ranks):
    data = lorenz(**DDP_DATA)
    train = sorted(data.indices("train").tolist())
    assert len(train) == 21
    per_rank = 11  # ceil(21 / 2): one trial is repeated to keep the ranks in step
    steps_per_epoch = -(-per_rank // DDP_BATCH)
    for epoch in range(DDP_EPOCHS):
        seen = [r["train_idx"][epoch] for r in ddp_ranks]
        assert [len(s) for s in seen] == [per_rank, per_rank]
        assert sorted(set(seen[0]) | set(seen[1])) == train, "a training trial was left out"
        assert len(set(seen[0]) & set(seen[1])) == 2 * per_rank - len(train)  # only the padding
    assert all(r["global_step"] == DDP_EPOCHS * steps_per_epoch for r in ddp_ranks)


def test_ddp_validation_metrics_equal_the_single_process_values(ddp_ranks):
    """val/* synced over ranks must equal one process scoring all validation trials: no trial
    dropped by sharding, none counted twice."""
    data = lorenz(**DDP_DATA)
    val = sorted(data.indices("val").tolist())
    assert len(val) == 7
    for r in ddp_ranks:
        for epoch in range(DDP_EPOCHS):
            assert sorted(r["val_idx"][epoch]) == val  # every rank scores every validation trial

    module = TrainingModule(model=DDP_MODEL, spec=data.spec.to_dict(), lr_schedule="none")
    module.load_state_dict(ddp_ranks[0]["final"])
    module.eval()
    tensors = batch_tensors(data)
    batch = make_batch(tensors, torch.as_tensor(val), data.n_obs, data.n_heldin)
    with torch.no_grad():
        loss, parts = module._loss(batch, train=False)  # all 7 trials in one batch
    for r in ddp_ranks:
        assert r["metrics"]["val/loss"] == pytest.approx(float(loss), rel=1e-5)
        assert r["metrics"]["val/recon"] == pytest.approx(float(parts["recon"]), rel=1e-5)
        assert r["metrics"]["val/kl_ic"] == pytest.approx(float(parts["kl_ic"]), rel=1e-5)


# ----------------------------------------------------------------------------- sharding (in process)
def _tiny_tensors(n_trials: int = 10) -> dict[str, torch.Tensor]:
    spikes = torch.zeros(n_trials, 4, 3)  # (trials, T, N)
    return {"spikes": spikes, "index": torch.arange(n_trials)}


@pytest.mark.parametrize("n_trials,world", [(10, 3), (10, 2), (2, 4), (7, 1)])
def test_training_shards_cover_every_trial_with_equal_lengths(n_trials, world):
    tensors = _tiny_tensors(n_trials)
    trials = np.arange(n_trials)
    shards = []
    for rank in range(world):
        batches = TrialBatches(tensors, trials, 3, 4, 2, shuffle=True, seed=5, rank=rank, world_size=world)
        idx = [i for b in batches for i in b["index"].tolist()]
        assert len(list(batches)) == len(batches)  # __len__ matches what is yielded
        shards.append(idx)
    per_rank = -(-n_trials // world)
    assert [len(s) for s in shards] == [per_rank] * world
    assert sorted(set().union(*shards)) == list(range(n_trials))  # nothing dropped
    assert sum(len(s) for s in shards) - n_trials == per_rank * world - n_trials  # only padding repeats


def test_validation_and_test_batches_are_not_sharded(tiny_data):
    class FakeTrainer:
        global_rank, world_size = 1, 2
        strategy = type("S", (), {"root_device": torch.device("cpu")})()

    dm = SpikeDataModule(tiny_data, batch_size=2)
    dm.trainer = FakeTrainer()
    dm.setup()
    for split, loader in (("val", dm.val_dataloader()), ("test", dm.test_dataloader())):
        seen = sorted(i for b in loader for i in b["index"].tolist())
        assert seen == sorted(tiny_data.indices(split).tolist()), split
    train = [i for b in dm.train_dataloader() for i in b["index"].tolist()]
    assert len(train) == 2  # ceil(3 train trials / 2 ranks): rank 1's shard only


# ----------------------------------------------------------------------------- the documented commands
@pytest.mark.slow
def test_ddp_from_the_command_line(tmp_path):
    """`neuralnets-train trainer=ddp_cpu`: Lightning re-runs the command for rank 1, which must share
    rank 0's run directory (not refuse it as used, not make another)."""
    cmd = [sys.executable, "-m", "neuralnets.training.train", "trainer=ddp_cpu"]
    _run([*cmd, *TINY, f"out_dir={tmp_path}"], timeout=300)
    runs = sorted(p.parent for p in tmp_path.rglob("metrics.json"))
    assert len(runs) == 1 and len(list((tmp_path / "lfads_lorenz").iterdir())) == 1
    record = json.loads((runs[0] / "metrics.json").read_text())
    # 24 train trials, 2 ranks of 12, batch 8: 2 steps an epoch (one process would take 3).
    assert record["steps"] == 2 * 2
    assert np.isfinite(record["metrics"]["co_bps"]) and np.isfinite(record["monitor"]["val/loss"])
    assert (runs[0] / "checkpoints" / "last.ckpt").is_file() and (runs[0] / "config.yaml").is_file()


def test_slurm_launcher_configs_compose():
    pytest.importorskip("hydra_plugins.hydra_submitit_launcher")
    from hydra import compose, initialize_config_dir

    from neuralnets.config import CONFIG_DIR

    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
        slurm = compose("train", overrides=["hydra/launcher=slurm"], return_hydra_config=True)
        local = compose("tune", overrides=["hydra/launcher=slurm_local"], return_hydra_config=True)
    assert slurm.hydra.launcher._target_.endswith("SlurmLauncher") and slurm.hydra.launcher.gpus_per_node == 1
    assert local.hydra.launcher._target_.endswith("LocalLauncher") and local.hydra.launcher.gpus_per_node == 0


def test_trainer_configs_compose():
    from hydra import compose, initialize_config_dir

    from neuralnets.config import CONFIG_DIR

    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
        gpu = compose("train", overrides=["trainer=ddp"]).trainer
        cpu = compose("train", overrides=["trainer=ddp_cpu"]).trainer
        nodes = compose("train", overrides=["trainer=ddp_multinode"]).trainer
    assert (gpu.strategy, gpu.accelerator, gpu.devices) == ("ddp", "gpu", -1)
    assert gpu.use_distributed_sampler is False
    assert (cpu.strategy, cpu.accelerator, cpu.devices) == ("ddp", "cpu", 2)
    assert (nodes.strategy, nodes.num_nodes, nodes.devices, nodes.precision) == ("ddp", 2, 4, "bf16-mixed")


def test_sweep_value_reads_harness_metrics_or_the_monitor():
    from neuralnets.errors import ConfigError
    from neuralnets.training.train import sweep_value

    record = {"val_metrics": {"co_bps": 0.25, "fp_bps": 0.1}, "monitor": {"val/recon": 180.5}}
    assert sweep_value(record, "co_bps") == 0.25
    assert sweep_value(record, "val/recon") == 180.5
    with pytest.raises(ConfigError, match=r"sweep_metric='val/loss'.*callbacks.monitor=val/loss"):
        sweep_value(record, "val/loss")


def test_multirun_refuses_ddp_that_would_rerun_the_sweep(monkeypatch):
    from omegaconf import OmegaConf

    from neuralnets.training.train import _relaunches_command

    for key in ("WORLD_SIZE", "SLURM_NTASKS"):
        monkeypatch.delenv(key, raising=False)
    t = lambda **kw: OmegaConf.create({"accelerator": "cpu", "num_nodes": 1, **kw})  # noqa: E731
    assert _relaunches_command(t(strategy="ddp", devices=2))
    assert not _relaunches_command(t(strategy="ddp_spawn", devices=2))
    assert not _relaunches_command(t(strategy="ddp", devices=1))
    assert not _relaunches_command(t(devices=1))
    monkeypatch.setenv("SLURM_NTASKS", "8")  # SLURM started one process per GPU: nothing re-runs
    assert not _relaunches_command(t(strategy="ddp", devices=4, num_nodes=2))


def test_only_rank_zero_writes_or_refuses_the_run_directory(tmp_path, monkeypatch):
    from omegaconf import OmegaConf

    from neuralnets.errors import ConfigError
    from neuralnets.training.run import is_launch_rank_zero
    from neuralnets.training.train import prepare_config

    for key in ("RANK", "LOCAL_RANK", "NODE_RANK", "SLURM_PROCID"):
        monkeypatch.delenv(key, raising=False)
    (tmp_path / "config.yaml").write_text("seed: 0\n")
    cfg = OmegaConf.create({"resume": None})
    assert is_launch_rank_zero()
    with pytest.raises(ConfigError, match="already holds a run"):
        prepare_config(cfg, tmp_path, [])
    monkeypatch.setenv("LOCAL_RANK", "1")  # Lightning's re-run of the command for rank 1
    assert not is_launch_rank_zero()
    assert prepare_config(cfg, tmp_path, []) is cfg


def test_after_ddp_spawn_the_step_and_best_score_come_from_the_checkpoints(tmp_path):
    """ddp_spawn hands the launching process the weights and the best path only."""
    from types import SimpleNamespace

    from neuralnets.checkpoints import save_checkpoint
    from neuralnets.training.run import recover_spawned_state

    key = "ModelCheckpoint{'monitor': 'val/recon', 'mode': 'min', 'every_n_epochs': 1}"
    save_checkpoint(tmp_path / "last.ckpt", {"global_step": 12})
    save_checkpoint(
        tmp_path / "b.ckpt", {"global_step": 8, "callbacks": {key: {"best_model_score": torch.tensor(3.5)}}}
    )
    checkpoint = SimpleNamespace(best_model_path=str(tmp_path / "b.ckpt"), best_model_score=None)
    assert recover_spawned_state(checkpoint, tmp_path) == 12  # the final step, not the best one's
    assert float(checkpoint.best_model_score) == 3.5


if __name__ == "__main__":
    _ddp_worker(sys.argv[1])
