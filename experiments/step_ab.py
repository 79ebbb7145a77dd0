"""Training-step comparison of two source trees that holds up on a busy machine: operator calls and host
reads per step (`torch.profiler`) and CPU seconds per step at one thread, processes interleaved.

    python experiments/step_ab.py --tree old=/tmp/old --tree new=. [--rounds 3] [--epochs 4]

Each round runs every tree once, in a fresh process with `PYTHONPATH=TREE`: LFADS at the MC_Maze sizes
(`configs/model/lfads_mc_maze.yaml`) on the MC_Maze-shaped Lorenz data of `experiments/benchmark.py`,
batch 256, through a Lightning Trainer (no checkpoints, TensorBoard logger), `--epochs` epochs; the first
epoch is a warm-up. Per tree it prints the median CPU seconds per training step (`time.process_time` from
`on_train_batch_start` to `on_train_batch_end`: forward, backward, optimiser) and per epoch (steps and
validation), and, from one profiled epoch, the operator calls per step, `aten::_local_scalar_dense`
(host reads of a tensor), `aten::copy_`, `aten::isfinite`. CPU time at one thread is far less sensitive
to other processes than wall time; operator counts do not depend on load at all. Works with any checkout
from b12bbf5 on (`SpikeModule` or `TrainingModule`).
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
MODEL = dict(gen_dim=200, fac_dim=100, ic_enc_dim=64, ci_enc_dim=64, con_dim=64, co_dim=4)
DATA = dict(n_neurons=182, n_heldout=45, n_bins=45, n_fwd=10, bin_size=0.02)  # as experiments/benchmark.py
WATCH = ("aten::_local_scalar_dense", "aten::copy_", "aten::isfinite")


def child(epochs: int) -> dict:
    """Train in this process (the tree on PYTHONPATH) and return the measurements."""
    import pytorch_lightning as pl
    import torch
    from pytorch_lightning.loggers import TensorBoardLogger

    from neuralnets.data.datamodule import SpikeDataModule
    from neuralnets.data.synthetic import lorenz

    try:
        from neuralnets.training.module import TrainingModule as Module
    except ImportError:  # before the model registry (b12bbf5)
        from neuralnets.training.module import SpikeModule as Module
    torch.set_num_threads(1)
    data = lorenz(n_trials=2869, seed=0, **DATA)
    model = dict(_target_="neuralnets.models.lfads.LFADS", kl_ramp_steps=400, l2_ramp_steps=400, **MODEL)
    pl.seed_everything(0, verbose=False)
    module = Module(model=model, spec=data.spec.to_dict(), data_name="lorenz")

    class Meter(pl.Callback):
        def __init__(self):
            self.step_cpu, self.epoch_cpu, self.ops, self.steps = [], [], collections.Counter(), 0
            self.prof = None

        def on_train_epoch_start(self, trainer, m):
            self.e0 = time.process_time()

        def on_train_epoch_end(self, trainer, m):  # after the epoch's validation
            if trainer.current_epoch >= 1:
                self.epoch_cpu.append(time.process_time() - self.e0)

        def on_train_batch_start(self, trainer, m, batch, i):
            if trainer.current_epoch == trainer.max_epochs - 1:  # the last epoch is profiled, not timed
                self.prof = torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU])
                self.prof.__enter__()
            self.t = time.process_time()

        def on_train_batch_end(self, trainer, m, outputs, batch, i):
            dt = time.process_time() - self.t
            if self.prof is not None:
                self.prof.__exit__(None, None, None)
                self.ops.update(e.name for e in self.prof.events())
                self.steps += 1
                self.prof = None
            elif trainer.current_epoch >= 1:
                self.step_cpu.append(dt)

    meter = Meter()
    with tempfile.TemporaryDirectory() as log_dir:
        trainer = pl.Trainer(
            accelerator="cpu",
            max_epochs=epochs,
            gradient_clip_val=200.0,
            log_every_n_steps=5,
            enable_progress_bar=False,
            enable_model_summary=False,
            enable_checkpointing=False,
            logger=TensorBoardLogger(log_dir),
            callbacks=[meter],
        )
        trainer.fit(module, datamodule=SpikeDataModule(data, batch_size=256, seed=0))
    per_step = {k: v / max(meter.steps, 1) for k, v in meter.ops.items()}
    return dict(
        step_cpu=statistics.median(meter.step_cpu),
        epoch_cpu=statistics.median(meter.epoch_cpu),
        ops=sum(per_step.values()),
        watch={k: per_step.get(k, 0.0) for k in WATCH},
    )


def main(argv: list[str] | None = None) -> str:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--tree", action="append", required=False, metavar="NAME=CODE_DIR")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--epochs", type=int, default=4, help="the first is a warm-up, the last is profiled")
    p.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.child:
        print(json.dumps(child(args.epochs)))
        return ""
    if args.epochs < 3:
        p.error("--epochs must be >= 3 (warm-up, timed, profiled)")
    trees = [t.split("=", 1) for t in (args.tree or [f"here={HERE.parent}"])]
    results: dict[str, list[dict]] = {name: [] for name, _ in trees}
    for r in range(args.rounds):
        for name, code in trees if r % 2 == 0 else trees[::-1]:
            env = {**os.environ, "PYTHONPATH": str(Path(code).resolve())}
            cmd = [sys.executable, __file__, "--child", "--epochs", str(args.epochs)]
            proc = subprocess.run(cmd, env=env, capture_output=True, text=True, check=False)
            if proc.returncode != 0:
                raise SystemExit(f"{name} ({code}) failed:\n{proc.stderr[-3000:]}")
            res = json.loads(proc.stdout.strip().splitlines()[-1])
            print(f"  round {r + 1} {name}: {res['step_cpu']:.3f} CPU s/step, {res['ops']:.0f} ops")
            results[name].append(res)
    lines = [
        "| tree | CPU s / step (median; runs) | CPU s / epoch incl. validation | ops / step | "
        + " | ".join(f"{w} / step" for w in WATCH)
        + " |",
        "|---|---|---|---|" + "---|" * len(WATCH),
    ]
    for name, _ in trees:
        runs = results[name]
        steps = [x["step_cpu"] for x in runs]
        lines.append(
            f"| {name} | {statistics.median(steps):.3f}; {', '.join(f'{x:.3f}' for x in steps)} | "
            f"{statistics.median(x['epoch_cpu'] for x in runs):.2f} | {runs[0]['ops']:.0f} | "
            + " | ".join(f"{runs[0]['watch'][w]:.0f}" for w in WATCH)
            + " |"
        )
    report = "\n".join(lines)
    print(report)
    return report


if __name__ == "__main__":
    main()
