"""End-to-end training benchmark: whole epochs through the real Lightning path, one fresh process each.

    python experiments/benchmark_e2e.py [--epochs 6] [--repeats 2] [--config NAME=CODE_DIR:OVERRIDES ...]
                                        [--out experiments/results/benchmark_e2e_cpu.md]

What it does, per configuration (run in a fresh subprocess, so that peak RSS is its own):
- data: the synthetic Lorenz system shaped like NLB MC_Maze at 20 ms bins, as `experiments/benchmark.py`
  makes it (182 neurons, 137 held-in, 45 bins = 35 observed + 10 forward), 2869 trials of which
  1721 train (MC_Maze's training trials) / 574 val / 574 test, resident as the DataModule keeps it;
- the objects `neuralnets-train` builds (`neuralnets.training.build`): the config composed by Hydra
  from `configs/train.yaml` with `model=lfads_mc_maze data.batch_size=256` and the configuration's
  overrides, `SpikeDataModule`, `build_module`, and `build_trainer` with the configured callbacks
  (checkpoints, early stopping, LR monitor, harness evaluation with figures) and the TensorBoard
  logger, into a temporary run directory; `--epochs` epochs of `trainer.fit`;
- timing: a callback takes the time at every `on_train_epoch_start` (and at `on_train_end`) and around
  every training step (`on_train_batch_start` .. `on_train_batch_end`). Seconds per epoch = the median
  over epochs after the first (warm-up), from one epoch start to the next: training steps,
  validation, harness evaluation (default every 10 epochs: amortised over 10 epochs, see
  `--eval-every`), checkpointing and logging. Trials/s = train trials / seconds per epoch;
  outside steps = the share of those epochs' time not inside training steps;
- memory: peak RSS of the child process (VmHWM, restarted once the synthetic data is made: the
  generator's temporaries are not training's; the resident dataset counts);
- quality: after the last epoch, co-bps and fp-bps of the final weights on the validation trials in
  eval mode (posterior means), as `experiments/benchmark.py` scores them;
- `--config NAME=CODE_DIR:OVERRIDES`: a label, the source tree whose `neuralnets` the child imports
  (PYTHONPATH; e.g. another git worktree, to compare two versions) and Hydra overrides separated by
  commas (e.g. `trainer.precision=32-true`). Repeats run interleaved (A B A B ...), so that every
  configuration sees the same machine load; CPU contention during the run is read from Linux PSI.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
N_TRIALS = 2869  # default_split: 1721 train / 574 val / 574 test
DEFAULT_CONFIGS = [f"fp32={REPO}:trainer.precision=32-true", f"auto={REPO}:trainer.precision=auto"]


# ------------------------------------------------------------------------------------------- child
def run_child(overrides: list[str], epochs: int, seed: int, eval_every: int | None) -> dict:
    """One configuration in this process: train `epochs` epochs and return the measurements."""
    import gc

    import pytorch_lightning as pl
    import torch

    sys.path.insert(0, str(HERE))
    from benchmark import DATA, _rss_peak_mb, _rss_reset, validation_bps

    from neuralnets.config import compose
    from neuralnets.data.datamodule import SpikeDataModule
    from neuralnets.data.synthetic import lorenz
    from neuralnets.training import train as _train  # noqa: F401  registers the config resolvers
    from neuralnets.training.build import build_callbacks, build_module, build_trainer

    class StepTimer(pl.Callback):
        """Epoch boundaries and the time spent inside training steps."""

        def __init__(self):
            self.epoch_starts: list[float] = []
            self.step_seconds: list[float] = []  # per epoch
            self._t = 0.0

        def on_train_epoch_start(self, trainer, pl_module):
            self.epoch_starts.append(time.perf_counter())
            self.step_seconds.append(0.0)

        def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
            self._t = time.perf_counter()

        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
            self.step_seconds[-1] += time.perf_counter() - self._t

        def on_train_end(self, trainer, pl_module):
            self.epoch_starts.append(time.perf_counter())

    base = ["model=lfads_mc_maze", "data.batch_size=256", f"seed={seed}", f"trainer.max_epochs={epochs}"]
    base += ["trainer.enable_progress_bar=false", "trainer.enable_model_summary=false"]
    base += [] if eval_every is None else [f"callbacks.eval_every_n_epochs={eval_every}"]
    cfg = compose(base + overrides)
    pl.seed_everything(seed, verbose=False)
    data = lorenz(n_trials=N_TRIALS, seed=seed, **DATA)
    # The generator's temporaries (~0.5 GiB at this size) are not training's: restart the peak from the
    # resident dataset (Linux; elsewhere the peak includes them).
    gc.collect()
    _rss_reset()
    dm = SpikeDataModule(data, batch_size=cfg.data.batch_size, seed=seed)
    module = build_module(cfg, data.spec)
    timer = StepTimer()
    with tempfile.TemporaryDirectory(prefix="benchmark_e2e_") as run_dir:
        callbacks = build_callbacks(cfg, Path(run_dir), data) + [timer]
        trainer = build_trainer(cfg, run_dir, data, callbacks=callbacks)
        trainer.fit(module, datamodule=dm)
        precision = str(trainer.precision)
    epoch_s = [b - a for a, b in zip(timer.epoch_starts, timer.epoch_starts[1:], strict=False)]
    timed = slice(1, None) if len(epoch_s) > 1 else slice(None)  # the first epoch is the warm-up
    co, fp = validation_bps(module, data.subset("val"), cfg.data.batch_size)
    return dict(
        epoch_s=epoch_s[timed],
        step_s=timer.step_seconds[timed],
        train_trials=int(len(data.indices("train"))),
        rss_mb=_rss_peak_mb(),
        co_bps=co,
        fp_bps=fp,
        precision=precision,
        threads=torch.get_num_threads(),
    )


# ------------------------------------------------------------------------------------------ parent
def cpu_description() -> str:
    """CPU model, its vector/matrix extensions (from /proc/cpuinfo flags) and torch's dispatch level."""
    import torch

    name, flags = "unknown CPU", set()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                name = line.split(":", 1)[1].strip()
            elif line.startswith("flags"):
                flags = set(line.split(":", 1)[1].split())
    except OSError:
        pass
    has = {
        "AVX2": "avx2",
        "AVX512F": "avx512f",
        "AVX512-BF16": "avx512_bf16",
        "AMX-BF16": "amx_bf16",
        "AMX-TILE": "amx_tile",
    }
    caps = ", ".join(f"{k} {'yes' if v in flags else 'no'}" for k, v in has.items())
    return f"{name}; {caps}; torch CPU capability {torch.backends.cpu.get_cpu_capability()}"


def _cpu_pressure() -> float | None:
    try:
        return float(Path("/proc/pressure/cpu").read_text().splitlines()[0].split("total=")[1])
    except (OSError, IndexError, ValueError):
        return None


def parse_config(text: str) -> tuple[str, Path, list[str]]:
    """`NAME=CODE_DIR:OVERRIDE,OVERRIDE` -> (name, code dir, overrides)."""
    name, sep, rest = text.partition("=")
    code, _, over = rest.partition(":")
    if not sep or not name or not code:
        raise ValueError(f"--config {text!r}: expected NAME=CODE_DIR[:OVERRIDE,...]")
    code_dir = Path(code).resolve()
    if not (code_dir / "neuralnets" / "__init__.py").is_file():
        raise ValueError(f"--config {text!r}: {code_dir} has no neuralnets package")
    return name, code_dir, [o for o in over.split(",") if o]


def spawn(code_dir: Path, overrides: list[str], args: argparse.Namespace) -> dict:
    """Run one configuration in a fresh Python process importing `neuralnets` from `code_dir`."""
    env = {**os.environ, "PYTHONPATH": str(code_dir), "PYTHONHASHSEED": "0"}
    cmd = [sys.executable, __file__, "--child", json.dumps(overrides), "--epochs", str(args.epochs)]
    cmd += ["--seed", str(args.seed)]
    cmd += [] if args.eval_every is None else ["--eval-every", str(args.eval_every)]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, cwd=str(code_dir))
    if proc.returncode != 0:
        raise RuntimeError(f"configuration {overrides} in {code_dir} failed:\n{proc.stderr[-4000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def format_table(rows: list[dict]) -> str:
    from neuralnets.eval.tables import markdown_table

    header = ["configuration", "precision", "trials/s (median [min-max])", "s/epoch", "outside steps"]
    header += ["peak RSS (MiB)", "val co-bps", "val fp-bps"]
    body = [
        [r["name"], r["precision"], f"{r['rate']:.0f} [{r['rate_min']:.0f}-{r['rate_max']:.0f}]"]
        + [f"{r['epoch_s']:.2f}", f"{r['outside']:.0%}", f"{r['rss_mb']:.0f}"]
        + [f"{r['co_bps']:.4f}", f"{r['fp_bps']:.4f}"]
        for r in rows
    ]
    return markdown_table(header, body)


def main(argv: list[str] | None = None) -> str:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--config", action="append", default=None, metavar="NAME=CODE_DIR:OVERRIDES")
    p.add_argument("--epochs", type=int, default=11, help="epochs per run; the first is not timed")
    p.add_argument("--repeats", type=int, default=2, help="runs per configuration, interleaved")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument(
        "--eval-every", type=int, default=None, help="callbacks.eval_every_n_epochs (default: the config's)"
    )
    p.add_argument("--out", type=Path, default=None, help="also write the markdown report here")
    p.add_argument("--child", default=None, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.child is not None:
        print(json.dumps(run_child(json.loads(args.child), args.epochs, args.seed, args.eval_every)))
        return ""
    if args.epochs < 2 or args.repeats < 1:
        p.error("--epochs must be >= 2 (the first is a warm-up) and --repeats >= 1")
    try:
        configs = [parse_config(c) for c in (args.config or DEFAULT_CONFIGS)]
    except ValueError as err:
        p.error(str(err))
    results: dict[str, list[dict]] = {name: [] for name, _, _ in configs}
    pressure0, wall0 = _cpu_pressure(), time.perf_counter()
    for rep in range(args.repeats):
        for name, code_dir, overrides in configs if rep % 2 == 0 else configs[::-1]:
            res = spawn(code_dir, overrides, args)
            rate = res["train_trials"] / statistics.median(res["epoch_s"])
            print(
                f"  [{rep + 1}/{args.repeats}] {name} ({res['precision']}): {rate:.0f} trials/s, "
                f"epochs {[round(s, 1) for s in res['epoch_s']]} s, {res['rss_mb']:.0f} MiB, "
                f"co-bps {res['co_bps']:.4f}, fp-bps {res['fp_bps']:.4f}",
                flush=True,
            )
            results[name].append(res)
    wall, pressure1 = time.perf_counter() - wall0, _cpu_pressure()

    rows = []
    for name, _, _ in configs:
        runs = results[name]
        rates = [r["train_trials"] / statistics.median(r["epoch_s"]) for r in runs]
        best = runs[rates.index(statistics.median_high(rates))]
        epoch_s = statistics.median([s for r in runs for s in r["epoch_s"]])
        step_total = sum(sum(r["step_s"]) for r in runs)
        epoch_total = sum(sum(r["epoch_s"]) for r in runs)
        rows.append(
            dict(
                name=name,
                precision=best["precision"],
                rate=runs[0]["train_trials"] / epoch_s,
                rate_min=min(rates),
                rate_max=max(rates),
                epoch_s=epoch_s,
                outside=1 - step_total / epoch_total,
                rss_mb=max(r["rss_mb"] for r in runs),
                co_bps=best["co_bps"],
                fp_bps=best["fp_bps"],
            )
        )
    import torch

    cmd = " ".join(["python experiments/benchmark_e2e.py", *(sys.argv[1:] if argv is None else argv)])
    notes = [
        f"Command: `{cmd}`",
        f"CPU: {cpu_description()}; {os.cpu_count()} cores; torch {torch.__version__}; "
        f"{datetime.date.today().isoformat()}",
        f"Data: Lorenz shaped like MC_Maze, {N_TRIALS} trials (1721 train / 574 val) x 45 bins x 182 "
        "neurons; "
        f"LFADS configs/model/lfads_mc_maze.yaml, batch 256; {args.epochs} epochs per run (first untimed), "
        f"{args.repeats} runs per configuration, interleaved, each in a fresh process; harness evaluation "
        f"every {args.eval_every or 'configured (10)'} epochs.",
        "Configurations: "
        + "; ".join(f"{n} = {c.name} {' '.join(o) or '(defaults)'}" for n, c, o in configs),
    ]
    if pressure0 is not None and pressure1 is not None:
        notes.append(
            f"CPU contention (Linux PSI, share of time some task waited for a CPU): "
            f"{(pressure1 - pressure0) / 1e6 / wall:.0%} over {wall:.0f} s"
        )
    report = "\n".join(f"- {n}" for n in notes) + "\n\n" + format_table(rows)
    print()
    print(report)
    if args.out is not None:
        from neuralnets.eval.tables import save_tables

        save_tables({args.out: report})
    return report


if __name__ == "__main__":
    main()
