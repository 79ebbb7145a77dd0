"""End-to-end benchmark: the whole `neuralnets-train` command, phase by phase, one fresh process per run.

    python experiments/benchmark_e2e.py [--epochs 15] [--repeats 2] [--config NAME=CODE_DIR:OVERRIDES ...]
                                        [--data FILE] [--out experiments/results/benchmark_e2e_cpu.md]

Pinned-commit regression check (run it before merging anything that touches the training path):

    git worktree add /tmp/old b12bbf5            # the first release (or any commit to compare against)
    python experiments/benchmark_e2e.py --epochs 15 --repeats 2 --config old=/tmp/old --config new=.
    git worktree remove /tmp/old

On a busy machine wall times are noise; `experiments/step_ab.py --tree old=/tmp/old --tree new=.` compares
the training step in load-robust terms (operator calls and host reads per step, CPU seconds per step at
one thread). Any checkout from b12bbf5 on works as CODE_DIR: the child runs that tree's own Hydra entry point
(`neuralnets.training.train.main`) and observes it from the outside (Lightning callback hooks and
wrappers around functions every version has), so the same phases are timed in both.

What it does, per run (a fresh subprocess with `PYTHONPATH=CODE_DIR`, so peak RSS is its own):
- data: a file (`--data`, default: the synthetic Lorenz system shaped like NLB MC_Maze at 20 ms bins, as
  `experiments/benchmark.py` makes it: 182 neurons, 137 held-in, 45 bins = 35 observed + 10 forward,
  2869 trials = 1721 train / 574 val / 574 test, written once as .npz) read by `data=file`;
- the command: `neuralnets-train data=file data.source=FILE model=lfads` with the MC_Maze sizes of
  `configs/model/lfads_mc_maze.yaml` given as overrides (so that checkouts without that file run the
  same model), `data.batch_size=256 trainer.max_epochs=EPOCHS`, the configuration's overrides, and
  everything else as configured (callbacks, checkpoints, harness every 10 epochs, final evaluation,
  baseline rows printed at the end);
- phases (wall seconds, and their share of the run's wall time; `PHASE_INFO` says what is in each):
  startup, data, setup, training, validation, harness in training, fit other, final harness, other,
  baselines. The time is booked to a stack of phases (a data load inside `trainer.fit` is data, the
  harness inside a validation epoch is the harness), so no phase is counted twice and the phases add up
  to the wall time; the table gives their means over the runs of a configuration;
- throughput: train trials / seconds of training steps per epoch (median over epochs after the first);
- memory: peak RSS of the whole run (VmHWM; Linux) and of each phase (the counter restarted at each);
- quality: the run's validation co-bps / fp-bps from its metrics.json;
- header: the CPU as detected at run time (model, cores/threads, AVX512/AMX/bf16 flags), torch version,
  training FLOPs per trial counted once with `torch.utils.flop_counter.FlopCounterMode` (forward and
  backward of one LFADS training step at batch 256, the current tree), and the fp32 matmul throughput
  measured on this machine at the step's own shapes (best of many repeats), so the table can print the
  model FLOP utilisation (MFU) of the training steps.

`--config NAME=CODE_DIR:OVERRIDES`: a label, the source tree whose `neuralnets` the child imports (e.g.
another git worktree) and Hydra overrides separated by commas (e.g. `trainer.precision=32-true`).
Repeats run interleaved (A B B A ...), so every configuration sees the same machine load; CPU
contention during the run is read from Linux PSI and printed: on a busy machine, compare only numbers
from the same report.
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
BATCH = 256
# configs/model/lfads_mc_maze.yaml, spelled out for checkouts older than that file.
MODEL = dict(gen_dim=200, fac_dim=100, ic_enc_dim=64, ci_enc_dim=64, con_dim=64, co_dim=4)
DEFAULT_CONFIGS = [f"main={REPO}"]
# Each phase's wall time is exclusive (the phases add up to the run's wall time): what is in it.
PHASE_INFO = {
    "startup": "process start, imports, Hydra composition, until `train()` is entered",
    "data": "reading the file, building the tensors (`load`, `SpikeDataModule`, its `setup` in fit)",
    "setup": "the rest of `train()` before `trainer.fit`: model, trainer, callbacks, run directory",
    "training": "training steps (batch start to batch end: forward, backward, optimiser)",
    "validation": "validation epochs (sanity check included), without the harness",
    "harness in training": "the `HarnessEvaluation` callback (every `callbacks.eval_every_n_epochs`)",
    "fit other": "the rest of `trainer.fit`: checkpoints (+ sha256), logging, epoch ends, loop overhead",
    "final harness": "`finish_run`: best checkpoint reloaded, predictions written, val + test scored",
    "other": "the rest of `train()` after `trainer.fit`, outside `finish_run` (status, locks)",
    "baselines": "after `train()`: the results table with the baseline rows (cached or computed)",
}
PHASES = tuple(PHASE_INFO)
# The matmul shapes of one LFADS step at MC_Maze sizes: (rows, inner, cols). The first is the generator's
# fused input + recurrent product (B x (G + fac... ) ) the roofline is quoted at; 2048^3 is the machine's
# large-matrix reference.
STEP_SHAPES = ((256, 264, 600), (256, 200, 600), (256, 600, 200))


# ------------------------------------------------------------------------------------------- child
def _vm_hwm_mb() -> float:  # own copy of benchmark._rss_peak_mb: this child runs inside old checkouts
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _vm_hwm_reset() -> None:
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        pass


class _Recorder:
    """Wall seconds per phase, exclusive: a stack of the phases the run is in; the time between two
    events is booked to the phase on top, so nested phases (a data load inside `trainer.fit`, the harness
    inside a validation epoch) are never counted twice and the phases add up to the wall time exactly.
    Also the peak RSS of each phase and the training steps of each epoch. `clock`: seconds (tests)."""

    def __init__(self, spawned_at: float, clock=time.time):
        self.clock = clock
        self.t = spawned_at
        self.seconds = dict.fromkeys(PHASES, 0.0)
        self.rss = dict.fromkeys(PHASES, 0.0)
        self.stack = ["startup"]
        self.epoch_steps: list[float] = []

    def _book(self) -> float:
        now = self.clock()
        self.seconds[self.stack[-1]] += now - self.t
        self.t = now
        return now

    def push(self, phase: str) -> float:
        now = self._book()
        self.stack.append(phase)
        return now

    def pop(self) -> float:
        now = self._book()
        if len(self.stack) > 1:
            self.stack.pop()
        return now

    def replace(self, phase: str) -> None:
        """The phase on top ends and `phase` starts (e.g. startup -> setup when `train()` is entered)."""
        self._book()
        self.stack[-1] = phase

    def end(self) -> float:
        """Book the time up to now; returns the wall time since the process was spawned."""
        self._book()
        return sum(self.seconds.values())

    def peak(self, phase: str) -> None:
        self.rss[phase] = max(self.rss[phase], _vm_hwm_mb())

    def timed(self, phase: str, fn, inside: tuple[str, ...] = ()):
        """`fn` wrapped so that its calls are booked to `phase`, except calls made while the run is in
        one of the phases `inside` (e.g. the dataset reloaded by the baseline rows is theirs)."""

        def wrapper(*args, **kwargs):
            if any(p in self.stack for p in inside):
                return fn(*args, **kwargs)
            self.push(phase)
            try:
                return fn(*args, **kwargs)
            finally:
                self.pop()

        return wrapper


def run_child(argv: list[str], spawned_at: float, out: Path) -> None:
    """Run `neuralnets-train argv` of the tree on PYTHONPATH and write the measurements to `out`."""
    import pytorch_lightning as pl

    import neuralnets.data.datamodule as dm_mod
    import neuralnets.data.loaders as loaders
    import neuralnets.training.callbacks as cb_mod
    import neuralnets.training.train as train_mod

    rec = _Recorder(spawned_at)

    class PhaseTimer(pl.Callback):
        # Appended to the Trainer's callbacks (Lightning moves ModelCheckpoint after it): the other
        # callbacks' *_start hooks run before its own, their *_end hooks (checkpoint saving) after.
        def __init__(self):
            self._t = 0.0

        def on_train_epoch_start(self, trainer, pl_module):
            rec.epoch_steps.append(0.0)

        def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
            self._t = rec.push("training")

        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
            rec.epoch_steps[-1] += rec.pop() - self._t

        def on_validation_start(self, trainer, pl_module):
            rec.push("validation")

        def on_validation_end(self, trainer, pl_module):
            rec.pop()

    # Observe the run from outside: a callback added to every Trainer, wrappers around functions that
    # every version has (looked up by name at call time in their modules).
    trainer_init, trainer_fit = pl.Trainer.__init__, pl.Trainer.fit

    def init_with_timer(self, *args, callbacks=None, **kwargs):
        callbacks = [*(callbacks or []), PhaseTimer()]
        trainer_init(self, *args, callbacks=callbacks, **kwargs)

    def fit(self, *args, **kwargs):
        rec.peak("setup")
        _vm_hwm_reset()
        rec.push("fit other")
        try:
            return trainer_fit(self, *args, **kwargs)
        finally:
            rec.pop()
            rec.replace("other")  # back in train(): what it does after fit, outside finish_run

    pl.Trainer.__init__, pl.Trainer.fit = init_with_timer, fit
    harness = cb_mod.HarnessEvaluation.on_validation_epoch_end
    cb_mod.HarnessEvaluation.on_validation_epoch_end = rec.timed("harness in training", harness)
    after = ("final harness", "baselines")
    dm_cls = dm_mod.SpikeDataModule
    dm_cls.__init__ = rec.timed("data", dm_cls.__init__, after)
    dm_cls.setup = rec.timed("data", dm_cls.setup, after)
    loaders.load = rec.timed("data", loaders.load, after)
    try:
        import neuralnets.training.build as build_mod  # from the run-builder refactor on

        build_mod.load = rec.timed("data", build_mod.load, after)
    except ImportError:
        pass
    # finish_run lives in training/run.py since the one-lifecycle refactor, in train.py before it.
    try:
        import neuralnets.training.run as finish_mod
    except ImportError:
        finish_mod = train_mod
    train_fn, finish_fn = train_mod.train, finish_mod.finish_run

    def train(*args, **kwargs):
        rec.peak("startup")
        _vm_hwm_reset()
        rec.replace("setup")
        try:
            return train_fn(*args, **kwargs)
        finally:
            rec.replace("baselines")  # the table with the baseline rows, printed by main()

    def finish_run(*args, **kwargs):
        rec.peak("training")
        _vm_hwm_reset()
        rec.push("final harness")
        try:
            return finish_fn(*args, **kwargs)
        finally:
            rec.pop()
            rec.peak("final harness")
            _vm_hwm_reset()

    train_mod.train, finish_mod.finish_run = train, finish_run
    sys.argv = ["neuralnets-train", *argv]
    train_mod.main()
    wall = rec.end()
    rec.peak("baselines")
    for p in ("data", "setup"):
        rec.rss[p] = rec.rss["startup"] if p == "data" else rec.rss["setup"]
    for p in ("validation", "harness in training", "fit other", "other"):
        rec.rss[p] = rec.rss["training"]  # one counter over trainer.fit
    out.write_text(
        json.dumps(dict(seconds=rec.seconds, rss_mb=rec.rss, epoch_steps=rec.epoch_steps, wall=wall))
    )


# ------------------------------------------------------------------------------------------ parent
def cpu_description() -> dict:
    """The CPU as this process sees it: model name, logical CPUs, cores, vector/matrix extensions."""
    import torch

    name, flags, cores = "unknown CPU", set(), set()
    try:
        phys = None
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            key, _, value = line.partition(":")
            key, value = key.strip(), value.strip()
            if key == "model name":
                name = value
            elif key == "flags":
                flags = set(value.split())
            elif key == "physical id":
                phys = value
            elif key == "core id":
                cores.add((phys, value))
    except OSError:
        pass
    wanted = {
        "AVX2": "avx2",
        "AVX512F": "avx512f",
        "AVX512-BF16": "avx512_bf16",
        "AVX512-FP16": "avx512_fp16",
        "AMX-TILE": "amx_tile",
        "AMX-BF16": "amx_bf16",
    }
    try:
        usable = len(os.sched_getaffinity(0))
    except AttributeError:
        usable = os.cpu_count()
    return dict(
        name=name,
        logical=os.cpu_count(),
        usable=usable,
        cores=len(cores) or None,
        flags={k: v in flags for k, v in wanted.items()},
        capability=torch.backends.cpu.get_cpu_capability(),
        torch=torch.__version__,
        threads=torch.get_num_threads(),
    )


def _cpu_pressure() -> float | None:
    try:
        return float(Path("/proc/pressure/cpu").read_text().splitlines()[0].split("total=")[1])
    except (OSError, IndexError, ValueError):
        return None


def make_data_file(path: Path, seed: int) -> Path:
    """The MC_Maze-shaped synthetic Lorenz data as an .npz `data=file` reads."""
    sys.path.insert(0, str(HERE))
    from benchmark import DATA

    from neuralnets.data.formats.npz import save_npz
    from neuralnets.data.synthetic import lorenz

    return save_npz(lorenz(n_trials=N_TRIALS, seed=seed, **DATA), path)


def step_flops_per_trial(data_file: Path) -> dict:
    """FLOPs of one training step (forward + backward, `TrainingModule._loss`) per trial, counted by
    `FlopCounterMode` at batch 256 on the data's train trials, fused (default) and plain recurrence."""
    from torch.utils.flop_counter import FlopCounterMode

    from neuralnets.data.datamodule import SpikeDataModule
    from neuralnets.data.loaders import load
    from neuralnets.training.module import TrainingModule

    data = load(str(data_file))
    dm = SpikeDataModule(data, batch_size=BATCH, seed=0)
    batch = next(iter(dm.train_dataloader()))
    B = batch["spikes"].shape[0]
    out = {}
    for recurrence in ("auto", "plain"):
        module = TrainingModule(
            model=dict(name="lfads", recurrence=recurrence, **MODEL), spec=data.spec.to_dict()
        )
        module.train()
        counter = FlopCounterMode(display=False)
        with counter:
            loss, _ = module._loss(batch, train=True)
            loss.backward()
        out[recurrence] = counter.get_total_flops() / B
    return out


def matmul_peak(shapes=STEP_SHAPES, seconds: float = 3.0) -> dict[str, float]:
    """fp32 matmul GFLOP/s at each (m, k, n) (and 2048^3), best of blocks of repeats over ~`seconds`
    each: the best block is the least disturbed by other processes on a shared machine."""
    import torch

    out = {}
    for m, k, n in (*shapes, (2048, 2048, 2048)):
        a, b = torch.randn(m, k), torch.randn(k, n)
        c = torch.empty(m, n)
        reps = max(1, int(2e8 / (2 * m * k * n)))  # ~0.2 GFLOP per block
        for _ in range(3):
            torch.mm(a, b, out=c)
        best, t_end = 0.0, time.perf_counter() + seconds
        while time.perf_counter() < t_end:
            t = time.perf_counter()
            for _ in range(reps):
                torch.mm(a, b, out=c)
            best = max(best, 2 * m * k * n * reps / (time.perf_counter() - t) / 1e9)
        out[f"{m}x{k}x{n}"] = best
    return out


def parse_config(text: str) -> tuple[str, Path, list[str]]:
    """`NAME=CODE_DIR:OVERRIDE,OVERRIDE` -> (name, code dir, overrides)."""
    name, sep, rest = text.partition("=")
    code, _, over = rest.partition(":")
    if not sep or not name or not code:
        raise ValueError(f"--config {text!r}: expected NAME=CODE_DIR[:OVERRIDE,...]")
    code_dir = Path(code).resolve()
    if not (code_dir / "neuralnets" / "__init__.py").is_file():
        raise ValueError(f"--config {text!r}: {code_dir} has no neuralnets package")
    if not (code_dir / "configs" / "train.yaml").is_file():
        raise ValueError(f"--config {text!r}: {code_dir} has no configs/train.yaml")
    return name, code_dir, [o for o in over.split(",") if o]


def command(data_file: Path, run_dir: Path, overrides: list[str], args: argparse.Namespace) -> list[str]:
    """The neuralnets-train overrides of one run."""
    cmd = ["data=file", f"data.source={data_file}", "data.name=mc_maze_like", f"data.batch_size={BATCH}"]
    cmd += ["model=lfads", *(f"model.{k}={v}" for k, v in MODEL.items())]
    cmd += [f"seed={args.seed}", f"trainer.max_epochs={args.epochs}", "trainer.enable_progress_bar=false"]
    cmd += [f"hydra.run.dir={run_dir}"]
    cmd += [] if args.eval_every is None else [f"callbacks.eval_every_n_epochs={args.eval_every}"]
    return cmd + overrides


def prebuild(code_dir: Path) -> None:
    """Build (or load) the tree's native kernels once, outside the timed runs."""
    env = {**os.environ, "PYTHONPATH": str(code_dir)}
    code = "from neuralnets.nn.native import native_ops; native_ops()"
    subprocess.run([sys.executable, "-c", code], env=env, cwd=str(code_dir), capture_output=True, check=False)


def spawn(code_dir: Path, argv: list[str], work: Path) -> dict:
    """One run of the tree's `neuralnets-train argv` in a fresh process; its measurements."""
    out = work / f"child_{time.time_ns()}.json"
    env = {**os.environ, "PYTHONPATH": str(code_dir), "PYTHONHASHSEED": "0"}
    t = time.time()
    cmd = [
        sys.executable,
        __file__,
        "--child",
        json.dumps(argv),
        "--spawned-at",
        repr(t),
        "--child-out",
        str(out),
    ]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, cwd=str(code_dir))
    if proc.returncode != 0 or not out.is_file():
        raise RuntimeError(f"run {argv} in {code_dir} failed:\n{proc.stderr[-4000:]}")
    res = json.loads(out.read_text())
    run_dir = Path(next(a.split("=", 1)[1] for a in argv if a.startswith("hydra.run.dir=")))
    record = json.loads((run_dir / "metrics.json").read_text())
    val = record.get("val_metrics", {})
    res.update(co_bps=val.get("co_bps"), fp_bps=val.get("fp_bps"), epochs=len(res["epoch_steps"]))
    res["stdout_tail"] = proc.stdout[-3000:]
    return res


def _median(xs):
    return statistics.median(xs) if xs else float("nan")


def summarise(runs: list[dict], train_trials: int, flops: float, peak: float) -> dict:
    steps = [statistics.median(r["epoch_steps"][1:] or r["epoch_steps"]) for r in runs]
    rate = train_trials / _median(steps)
    return dict(
        # Means, not medians: the mean phases add up to the mean wall time.
        seconds={p: statistics.fmean(r["seconds"][p] for r in runs) for p in PHASES},
        wall=statistics.fmean(r["wall"] for r in runs),
        rate=rate,
        rates=[train_trials / s for s in steps],
        mfu=rate * flops / (peak * 1e9),
        rss=max(max(r["rss_mb"].values()) for r in runs),
        rss_phase={p: max(r["rss_mb"][p] for r in runs) for p in PHASES},
        co_bps=[r["co_bps"] for r in runs],
        fp_bps=[r["fp_bps"] for r in runs],
        epochs=runs[0]["epochs"],
    )


def format_report(rows: dict[str, dict]) -> str:
    from neuralnets.eval.tables import markdown_table

    names = list(rows)
    header = [
        "phase",
        *(f"{n}: {c}" for n in names for c in ("s", "share", "peak RSS (MiB)")),
        "what is in it",
    ]
    body = [
        [p, *(v for n in names for v in (
            f"{rows[n]['seconds'][p]:.2f}", f"{rows[n]['seconds'][p] / rows[n]['wall']:.0%}",
            f"{rows[n]['rss_phase'][p]:.0f}",
        )), PHASE_INFO[p]]
        for p in PHASES
    ]  # fmt: skip
    body.append(["**whole run**", *(v for n in names for v in (f"**{rows[n]['wall']:.1f}**", "100%",
                                                               f"**{rows[n]['rss']:.0f}**")),
                 "wall time from spawning the process to its exit (the phases add up to it)"])  # fmt: skip
    summary = [
        [
            n, f"{r['rate']:.0f} [{', '.join(f'{x:.0f}' for x in r['rates'])}]", f"{r['mfu']:.0%}",
            f"{r['wall']:.1f}", f"{r['rss']:.0f}", ", ".join(f"{x:.4f}" for x in r["co_bps"]),
            ", ".join(f"{x:.4f}" for x in r["fp_bps"]),
        ]
        for n, r in rows.items()
    ]  # fmt: skip
    summary_header = [
        "configuration", "training trials/s (median [runs])", "MFU (fp32 peak at 256x264x600)",
        "whole run (s)", "peak RSS (MiB)", "val co-bps", "val fp-bps",
    ]  # fmt: skip
    return markdown_table(header, body) + "\n" + markdown_table(summary_header, summary).rstrip("\n")


def main(argv: list[str] | None = None) -> str:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--config", action="append", default=None, metavar="NAME=CODE_DIR:OVERRIDES")
    p.add_argument("--epochs", type=int, default=15, help="epochs per run (the first is not in trials/s)")
    p.add_argument("--repeats", type=int, default=2, help="runs per configuration, interleaved")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--data", type=Path, default=None, help="data file (default: MC_Maze-shaped Lorenz)")
    p.add_argument("--eval-every", type=int, default=None, help="callbacks.eval_every_n_epochs")
    p.add_argument("--out", type=Path, default=None, help="also write the markdown report here")
    p.add_argument("--peak-seconds", type=float, default=3.0, help="seconds per matmul shape for the peak")
    p.add_argument("--child", default=None, help=argparse.SUPPRESS)
    p.add_argument("--spawned-at", type=float, default=None, help=argparse.SUPPRESS)
    p.add_argument("--child-out", type=Path, default=None, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.child is not None:
        run_child(json.loads(args.child), args.spawned_at, args.child_out)
        return ""
    if args.epochs < 2 or args.repeats < 1:
        p.error("--epochs must be >= 2 (the first is a warm-up) and --repeats >= 1")
    try:
        configs = [parse_config(c) for c in (args.config or DEFAULT_CONFIGS)]
    except ValueError as err:
        p.error(str(err))

    from neuralnets.data.loaders import load

    with tempfile.TemporaryDirectory(prefix="benchmark_e2e_") as tmp:
        work = Path(tmp)
        data_file = args.data.resolve() if args.data else make_data_file(work / "mc_maze_like.npz", args.seed)
        train_trials = int(len(load(str(data_file)).indices("train")))
        cpu = cpu_description()
        flops = step_flops_per_trial(data_file)
        peaks = matmul_peak(seconds=args.peak_seconds)
        peak = peaks["256x264x600"]
        print(f"CPU {cpu}; FLOPs/trial {flops}; fp32 matmul GFLOP/s {peaks}", flush=True)
        for _, code_dir, _ in configs:
            prebuild(code_dir)
        results: dict[str, list[dict]] = {name: [] for name, _, _ in configs}
        pressure0, wall0 = _cpu_pressure(), time.perf_counter()
        for rep in range(args.repeats):
            for name, code_dir, overrides in configs if rep % 2 == 0 else configs[::-1]:
                run_dir = work / f"run_{name}_{rep}"
                res = spawn(code_dir, command(data_file, run_dir, overrides, args), work)
                print(
                    f"  [{rep + 1}/{args.repeats}] {name}: wall {res['wall']:.1f} s, "
                    + ", ".join(f"{k} {v:.1f}" for k, v in res["seconds"].items())
                    + f"; peak RSS {max(res['rss_mb'].values()):.0f} MiB; co-bps {res['co_bps']:.4f}",
                    flush=True,
                )
                results[name].append(res)
        wall, pressure1 = time.perf_counter() - wall0, _cpu_pressure()
    # MFU counts the model's FLOPs (the plain per-step recurrence, as the papers define the model), not the
    # fewer the fused recurrence happens to execute.
    rows = {name: summarise(results[name], train_trials, flops["plain"], peak) for name, _, _ in configs}

    flags = ", ".join(f"{k} {'yes' if v else 'no'}" for k, v in cpu["flags"].items())
    cmd = " ".join(["python experiments/benchmark_e2e.py", *(sys.argv[1:] if argv is None else argv)])
    notes = [
        f"Command: `{cmd}` ({datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M} UTC)",
        f"CPU: {cpu['name']}; {cpu['cores'] or '?'} cores / {cpu['logical']} logical CPUs "
        f"({cpu['usable']} usable); "
        f"{flags}; torch {cpu['torch']} (CPU capability {cpu['capability']}), {cpu['threads']} threads",
        f"Training FLOPs per trial (FlopCounterMode, forward + backward, batch {BATCH}): "
        f"{flops['plain'] / 1e6:.1f} MFLOP (plain recurrence, used for MFU; the fused recurrence executes "
        f"{flops['auto'] / 1e6:.1f} MFLOP of counted matmuls)",
        "fp32 matmul, best of repeats, GFLOP/s: "
        + ", ".join(f"{k} {v:.0f}" for k, v in peaks.items())
        + f"; MFU = trials/s x FLOPs/trial / {peak:.0f} GFLOP/s (at 256x264x600)",
        f"Data: {data_file if args.data else 'MC_Maze-shaped Lorenz, 2869 trials x 45 bins x 182 neurons'}"
        f" ({train_trials} train trials); LFADS at the MC_Maze sizes {MODEL}, batch {BATCH}, "
        f"{args.epochs} epochs, {args.repeats} run(s) per configuration, interleaved, each a fresh process",
        "Configurations: " + "; ".join(f"{n} = {c} {' '.join(o) or '(defaults)'}" for n, c, o in configs),
    ]
    if pressure0 is not None and pressure1 is not None:
        notes.append(
            f"CPU contention (Linux PSI, share of time some task waited for a CPU): "
            f"{(pressure1 - pressure0) / 1e6 / wall:.0%} over {wall:.0f} s"
        )
    report = "\n".join(f"- {n}" for n in notes) + "\n\n" + format_report(rows) + "\n"
    print()
    print(report)
    if args.out is not None:
        from neuralnets.eval.tables import save_tables

        save_tables({args.out: report})
    return report


if __name__ == "__main__":
    main()
