"""Training-speed benchmark: the plain and the fast path of each model, side by side in one run.

    python experiments/benchmark.py [--device cpu|cuda] [--steps N] [--models lfads rnn ndt]
                                    [--out experiments/results/benchmark_cpu.md]

What it does, per model (sizes in `configs/model/<model>_mc_maze.yaml`, all at batch 256 on
MC_Maze-shaped data):
- data: the synthetic Lorenz system (`neuralnets.data.synthetic.lorenz`) shaped like NLB MC_Maze at
  20 ms bins: 182 neurons of which 137 held-in / 45 held-out, 45 bins = 35 observed + 10 forward,
  2000 trials (1200 train / 400 val / 400 test), the whole dataset resident on the device;
- two copies of the model from the same initial weights, trained through the real training loss
  (`TrainingModule._loss`) with Adam in a manual loop, on the same sequence of batches. On CPU both
  paths also consume the same random numbers (dropout, posterior samples), so they run the same
  computation up to float rounding. KL/L2 ramps are off (full weight from step 0): a loop without a
  Lightning Trainer has no step counter, and a CUDA graph would freeze a ramp weight at capture;
- paths: 'plain' = fp32 eager PyTorch with autograd (LFADS `recurrence="plain"`: the per-step loop).
  'fast' on CPU = LFADS `recurrence="fused"` (the hand-written-BPTT controller + generator of
  `neuralnets.nn.fast`); on CUDA = that + bf16 autocast + the whole training step captured as one
  CUDA graph (`GraphedStep`). The RNN seq2seq (`torch.nn.GRU`: ATen's GRU is already a fused C++
  loop) and NDT (no recurrence) have no CPU fast path and run plain only there; on CUDA their fast
  path is bf16 + CUDA graph;
- timing: `--warmup` untimed steps per path (on the first batch), then `--repeats` blocks of
  `--steps / --repeats` steps, alternating plain and fast blocks so that both see the same machine
  load; throughput is the median over blocks (min-max in brackets). Time per epoch = train
  trials / median throughput;
- memory: peak RSS of the process during the path's blocks (Linux: VmHWM reset before each block;
  it includes the resident dataset and both models) and, on CUDA, peak allocated GPU memory;
- quality: after training, bits/spike on the 400 validation trials in eval mode (posterior means):
  co-bps (held-out neurons, observed bins) and fp-bps (all neurons, forward bins), as defined in
  `neuralnets.eval.metrics`.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import datetime
import os
import platform
import statistics
import sys
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from neuralnets.config import model_config
from neuralnets.data.datamodule import batch_tensors, make_batch
from neuralnets.data.spikedata import SpikeData
from neuralnets.data.synthetic import lorenz
from neuralnets.eval.metrics import co_bps, fp_bps
from neuralnets.eval.tables import markdown_table, save_tables
from neuralnets.training.module import TrainingModule

# Model sizes: configs/model/<name>.yaml (LFADS at the NLB MC_Maze scale; the RNN and NDT comparable).
MODELS = {"lfads": "lfads_mc_maze", "rnn": "rnn_mc_maze", "ndt": "ndt_mc_maze"}
# No KL/L2 ramps: a loop without a Lightning Trainer has no step counter, and a CUDA graph would
# freeze a ramp weight at capture.
NO_RAMPS = {"lfads": dict(kl_ramp_steps=0, l2_ramp_steps=0)}
DATA = dict(n_neurons=182, n_heldout=45, n_bins=45, n_fwd=10, bin_size=0.02)  # NLB MC_Maze at 20 ms


def describe(cfg: dict) -> str:
    """The sizes set in a model config, for the report."""
    keys = ("_dim", "n_layers", "n_heads", "cell")
    return f"{cfg['name']}: " + ", ".join(f"{k} {v}" for k, v in cfg.items() if k.endswith(keys))


# ---------------------------------------------------------------------------------------- CUDA graphs
class GraphedStep:
    """One training step (forward, backward, optimiser step) captured as a CUDA graph and replayed.

    The fast path of this benchmark on CUDA (not used by the training module).

    For static shapes (fixed batch size) this removes the per-kernel launch cost that dominates small
    recurrent models on a GPU. `loss_fn(batch) -> loss` must be capturable: no host synchronisation
    (`.item()`, data-dependent shapes), and any value that changes between steps must live in a
    device tensor (a Python float is frozen into the graph at capture). The optimiser must be built
    with `capturable=True` (e.g. `torch.optim.Adam(..., capturable=True)`).

    `step(batch)` copies the batch into the graph's static input tensors, replays, and returns the
    static loss tensor (overwritten by the next step). `warmup` eager steps on a side stream (as
    CUDA graphs require) happen at construction and are real training steps. If capture fails,
    `step` falls back to eager execution (`self.graphed` is False) with a warning.
    """

    def __init__(
        self,
        loss_fn: Callable[[dict[str, Tensor]], Tensor],
        optimizer: torch.optim.Optimizer,
        example_batch: dict[str, Tensor],
        warmup: int = 3,
    ):
        if not torch.cuda.is_available() or not all(v.is_cuda for v in example_batch.values()):
            raise ValueError("GraphedStep needs CUDA tensors; run the eager step on other devices")
        self.loss_fn, self.optimizer = loss_fn, optimizer
        self.static = {k: v.clone() for k, v in example_batch.items()}
        self.graphed = False
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):
            for _ in range(warmup):
                self._eager(self.static)
        torch.cuda.current_stream().wait_stream(side)
        try:
            self.graph = torch.cuda.CUDAGraph()
            optimizer.zero_grad(set_to_none=True)
            with torch.cuda.graph(self.graph):
                self.static_loss = loss_fn(self.static)
                self.static_loss.backward()
                optimizer.step()
            self.graphed = True
        except Exception as err:  # capture is best effort: fall back to eager, never fail training
            warnings.warn(f"CUDA graph capture failed ({err!r}); running eagerly", stacklevel=2)
            torch.cuda.synchronize()

    def _eager(self, batch: dict[str, Tensor]) -> Tensor:
        self.optimizer.zero_grad(set_to_none=True)
        loss = self.loss_fn(batch)
        loss.backward()
        self.optimizer.step()
        return loss.detach()

    def step(self, batch: dict[str, Tensor]) -> Tensor:
        if not self.graphed:
            return self._eager(batch)
        for k, v in batch.items():
            self.static[k].copy_(v, non_blocking=True)
        self.graph.replay()
        return self.static_loss


@dataclass
class Run:
    """One training path of one model: its module, optimiser, step function and measurements."""

    name: str
    module: TrainingModule
    step: object  # callable(batch) -> loss
    rng: torch.Tensor | None = None  # CPU generator state, swapped in for this path's steps
    seconds: list[float] = field(default_factory=list)
    rss_mb: float = float("nan")
    gpu_mb: float = float("nan")
    losses: list[float] = field(default_factory=list)


@dataclass
class _LazyBatch:
    """A batch made when called: trials `idx` sliced from the device-resident dataset."""

    tensors: dict
    idx: torch.Tensor
    n_obs: int
    n_heldin: int

    def __call__(self) -> dict[str, torch.Tensor]:
        return make_batch(self.tensors, self.idx, self.n_obs, self.n_heldin)


def _rss_reset() -> bool:
    """Reset the process's peak-RSS counter (Linux >= 4.0); False where unsupported."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False


def _rss_peak_mb() -> float:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _cpu_pressure() -> float | None:
    """Cumulative microseconds some task waited for a CPU (Linux PSI), or None."""
    try:
        first = Path("/proc/pressure/cpu").read_text().splitlines()[0]
        return float(first.split("total=")[1])
    except (OSError, IndexError, ValueError):
        return None


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def make_path(
    name: str,
    base: TrainingModule,
    fast: bool,
    model_key: str,
    device: torch.device,
    lr: float,
    example,
    warmup,
) -> Run | None:
    module = copy.deepcopy(base).to(device)
    model = module.model
    if model.supports_fused_recurrence:
        model.recurrence = "fused" if fast else "plain"
    elif fast and device.type == "cpu":
        return None  # RNN (torch.nn.GRU, already fused by ATen) and NDT: no CPU fast path
    module.train()
    graphed = fast and device.type == "cuda"
    opt = torch.optim.Adam(module.parameters(), lr=lr, capturable=graphed)

    if graphed:

        def loss_fn(batch):
            # cache_enabled=False: autocast's weight cache must not outlive a CUDA graph capture.
            with torch.autocast("cuda", dtype=torch.bfloat16, cache_enabled=False):
                return module._loss(batch, train=True)[0]

        graph = GraphedStep(loss_fn, opt, example, warmup=warmup)
        if not graph.graphed:
            print(f"  [{model_key}/{name}] CUDA graph capture failed; the fast path runs eagerly", flush=True)
        return Run(name, module, graph.step)

    def step(batch):
        opt.zero_grad(set_to_none=True)
        loss = module._loss(batch, train=True)[0]
        loss.backward()
        opt.step()
        return loss.detach()

    path = Run(name, module, step)
    path.rng = torch.get_rng_state()
    _run_steps(path, [example] * warmup, device)  # the same warm-up as GraphedStep's
    return path


def _run_steps(path: Run, batches: list[dict], device: torch.device) -> float:
    """Run the steps, with this path's own RNG stream on CPU; returns the wall-clock seconds."""
    if path.rng is not None:
        saved = torch.get_rng_state()
        torch.set_rng_state(path.rng)
    _sync(device)
    start = time.perf_counter()
    loss = None
    for batch in batches:
        loss = path.step(batch() if isinstance(batch, _LazyBatch) else batch)
    _sync(device)
    seconds = time.perf_counter() - start
    if loss is not None:
        path.losses.append(float(loss))
    if path.rng is not None:
        path.rng = torch.get_rng_state()
        torch.set_rng_state(saved)
    return seconds


MATMUL_OPS = ("aten::mm", "aten::addmm", "aten::addmm_", "aten::bmm", "aten::baddbmm", "aten::matmul")


def print_profile(label: str, path: Run, batches: list, device: torch.device) -> None:
    """Where a path's step time goes: torch.profiler's top ops by self time, and the matmuls' share."""
    from torch.profiler import ProfilerActivity, profile

    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    with profile(activities=activities) as prof:
        _run_steps(path, batches, device)
    events = prof.key_averages()
    attr = "self_device_time_total" if device.type == "cuda" else "self_cpu_time_total"
    total = sum(getattr(e, attr) for e in events)
    matmul = sum(getattr(e, attr) for e in events if e.key in MATMUL_OPS)
    print(f"\nprofile of {label}, {len(batches)} steps: matmuls are {matmul / total:.0%} of the self time")
    print(events.table(sort_by=attr, row_limit=15))


def validation_bps(module: TrainingModule, val: SpikeData, batch_size: int) -> tuple[float, float]:
    """co-bps and fp-bps of the model's eval-mode rates on the validation trials."""
    out = module.model.predict(val.heldin_obs, batch_size=batch_size)
    module.train()
    rates = out["rates"]  # (trials, T, N)
    co = co_bps(rates, val.spikes, val.n_heldin, val.n_fwd, val.observed)
    fp = fp_bps(rates, val.spikes, val.n_fwd, val.observed) if val.n_fwd > 0 else float("nan")
    return co, fp


def benchmark_model(key: str, data: SpikeData, args, device: torch.device) -> list[dict]:
    torch.manual_seed(args.seed)
    base = TrainingModule({**model_config(MODELS[key]), **NO_RAMPS.get(key, {})}, data.spec.to_dict())
    tensors = batch_tensors(data, device)  # the whole dataset on the device
    train_idx = data.indices("train")
    B = args.batch_size
    if len(train_idx) < B:
        raise ValueError(f"{len(train_idx)} train trials are fewer than the batch size {B}")
    # One fixed sequence of full batches (static shapes), shared by both paths.
    gen = torch.Generator().manual_seed(args.seed)
    n_needed = args.warmup + args.steps
    order: list[torch.Tensor] = []
    while len(order) < n_needed:
        perm = torch.as_tensor(train_idx)[torch.randperm(len(train_idx), generator=gen)]
        order += [perm[i : i + B] for i in range(0, len(perm) - B + 1, B)]
    # Batches are sliced from the resident tensors at each step, as the training DataModule does.
    batches = [_LazyBatch(tensors, idx.to(device), data.n_obs, data.n_heldin) for idx in order[:n_needed]]
    timed = batches[args.warmup :]

    paths = []
    for name, fast in (("plain", False), ("fast", True)):
        torch.manual_seed(args.seed + 1)  # same random stream for both paths
        path = make_path(name, base, fast, key, device, args.lr, batches[0](), args.warmup)
        if path is not None:
            paths.append(path)
    per_block = max(1, args.steps // args.repeats)
    blocks = [timed[i : i + per_block] for i in range(0, len(timed), per_block)]
    rss_ok = _rss_reset()
    for i, block in enumerate(blocks):
        for path in paths if i % 2 == 0 else paths[::-1]:  # alternate who goes first
            _rss_reset()
            if device.type == "cuda":
                torch.cuda.reset_peak_memory_stats(device)
            seconds = _run_steps(path, block, device)
            path.seconds.append(len(block) * B / seconds)  # trials/s of this block
            path.rss_mb = np.nanmax([path.rss_mb, _rss_peak_mb()])
            if device.type == "cuda":
                path.gpu_mb = np.nanmax([path.gpu_mb, torch.cuda.max_memory_allocated(device) / 2**20])

    if args.profile:
        for path in paths:
            print_profile(f"{key}/{path.name}", path, timed[: args.profile], device)
    val = data.subset("val")
    rows = []
    plain_rate = statistics.median(paths[0].seconds)
    for path in paths:
        rate = statistics.median(path.seconds)
        co, fp = validation_bps(path.module, val, B)
        rows.append(
            dict(
                model=key,
                path=path.name,
                rate=rate,
                rate_min=min(path.seconds),
                rate_max=max(path.seconds),
                epoch_s=len(train_idx) / rate,
                rss_mb=path.rss_mb if rss_ok else float("nan"),
                gpu_mb=path.gpu_mb,
                co_bps=co,
                fp_bps=fp,
                loss=path.losses[-1] if path.losses else float("nan"),
                speedup=rate / plain_rate,
            )
        )
    return rows


def format_table(rows: list[dict], device: torch.device) -> str:
    gpu = device.type == "cuda"
    header = ["model", "path", "trials/s (median [min-max])", "time/epoch (s)", "peak RSS (MB)"]
    header += ["peak GPU mem (MB)"] if gpu else []
    header += ["val co-bps", "val fp-bps", "last train loss", "speed-up"]
    body = []
    for r in rows:
        row = [r["model"], r["path"], f"{r['rate']:.0f} [{r['rate_min']:.0f}-{r['rate_max']:.0f}]"]
        row += [f"{r['epoch_s']:.2f}", f"{r['rss_mb']:.0f}"] + ([f"{r['gpu_mb']:.0f}"] if gpu else [])
        row += [f"{r['co_bps']:.4f}", f"{r['fp_bps']:.4f}", f"{r['loss']:.1f}", f"{r['speedup']:.2f}x"]
        body.append(row)
    return markdown_table(header, body)


def cpu_name() -> str:
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or "unknown CPU"


def main(argv: list[str] | None = None) -> str:
    p = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawTextHelpFormatter
    )
    p.add_argument(
        "--device", choices=("cpu", "cuda"), default="cuda" if torch.cuda.is_available() else "cpu"
    )
    p.add_argument("--models", nargs="+", choices=sorted(MODELS), default=["lfads", "rnn", "ndt"])
    p.add_argument("--steps", type=int, default=40, help="timed training steps per path (default 40)")
    p.add_argument("--repeats", type=int, default=5, help="timed blocks per path, interleaved (default 5)")
    p.add_argument("--warmup", type=int, default=3, help="untimed steps per path first (default 3)")
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--lr", type=float, default=5e-3)
    p.add_argument("--trials", type=int, default=2000, help="synthetic trials (60/20/20 train/val/test)")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", type=Path, default=None, help="also write the markdown table here")
    p.add_argument(
        "--profile", type=int, default=0, metavar="N", help="after timing, profile N steps of each path"
    )
    args = p.parse_args(argv)
    if args.steps < 1 or args.repeats < 1 or args.warmup < 0:
        p.error("--steps and --repeats must be >= 1 and --warmup >= 0")
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        p.error("--device cuda: no CUDA GPU is available")
    if args.threads:
        torch.set_num_threads(args.threads)

    data = lorenz(n_trials=args.trials, seed=args.seed, **DATA)
    pressure0, wall0 = _cpu_pressure(), time.perf_counter()
    rows = []
    for key in args.models:
        print(f"benchmarking {key} ({describe(model_config(MODELS[key]))}) ...", flush=True)
        rows += benchmark_model(key, data, args, device)
    wall = time.perf_counter() - wall0
    pressure1 = _cpu_pressure()

    hw = torch.cuda.get_device_name(device) if device.type == "cuda" else cpu_name()
    cmd = " ".join(["python experiments/benchmark.py", *(sys.argv[1:] if argv is None else argv)])
    notes = [
        f"Command: `{cmd}`",
        f"Device: {device.type} ({hw}); torch {torch.__version__}; {torch.get_num_threads()} CPU threads; "
        f"{datetime.date.today().isoformat()}",
        f"Data: Lorenz, {data.n_trials} trials x {data.n_bins} bins ({data.n_obs} observed + "
        f"{data.n_fwd} forward) x {data.n_neurons} neurons ({data.n_heldin} held-in); "
        f"batch {args.batch_size}; Adam lr {args.lr}; "
        f"{args.warmup} warm-up + {args.steps} timed steps per path in {args.repeats} interleaved blocks.",
        "Sizes (configs/model/): " + "; ".join(describe(model_config(MODELS[k])) for k in args.models),
    ]
    if pressure1 is not None and pressure0 is not None:
        notes.append(
            f"CPU contention during the run (Linux PSI, share of time some task waited for a CPU): "
            f"{(pressure1 - pressure0) / 1e6 / wall:.0%} over {wall:.0f} s"
        )
    report = "\n".join(f"- {n}" for n in notes) + "\n\n" + format_table(rows, device)
    print()
    print(report)
    if args.out is not None:
        save_tables({args.out: report})
        print(f"written to {args.out}")
    return report


if __name__ == "__main__":
    os.environ.setdefault("PYTHONHASHSEED", "0")
    main()
