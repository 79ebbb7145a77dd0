"""Population throughput (#30): aggregate member-trials/s of K LFADS members trained as one batched model
(`neuralnets.training.population`) against the same members trained as separate processes.

    nice python experiments/population_benchmark.py [--quick] [--out FILE.md] [--no-write]

Sizes: the tuned MC_Maze_Small recipe (`experiment=lfads_mc_maze_small_tuned`: hidden 64, batch 8, 140 + 40
bins, 142 neurons, co_dim 2), members differing in seed. Every measurement runs in a fresh process at one
thread, interleaved: for each K, first the baseline (two solo members as two concurrent processes, as
`tune.workers=2 threads=1` runs them: each a training loop of forward, backward, clipping and AdamW through
the same `TrainingModule` loss, without Lightning's own per-step overhead, so the baseline is if anything
optimistic), then the population of K. Reported: aggregate member-trials/s (wall) of both and their ratio,
CPU seconds per member-step, peak memory (max RSS of the process), and FLOP utilisation: the step's FLOPs
(`torch.utils.flop_counter`, matmuls) per second against the measured `baddbmm` throughput at the
population's recurrent shapes (K, 8, 64) x (K, 64, 192). The header states CPU model and load: on a busy
machine wall-clock figures are unreliable (the CPU seconds less so).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
RECIPE = "experiment=lfads_mc_maze_small_tuned"
BATCH = 8


def _cfgs(k: int):
    from neuralnets.config import compose

    return [compose([RECIPE, f"seed={i}", "threads=1"]) for i in range(k)]


def _peak_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB


def child_population(k: int, steps: int, threads: int = 1) -> dict:
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    from neuralnets.training.population import Population

    torch.set_num_threads(threads)  # >1: threads across the members' batched calls
    pop = Population(_cfgs(k))
    batches = [next(iter(m.batches)) for m in pop.members]
    pop.training_step(batches)  # warm-up
    with FlopCounterMode(display=False) as counter:
        pop.training_step(batches)
    flops = counter.get_total_flops()
    wall, cpu = time.perf_counter(), time.process_time()
    for _ in range(steps):
        pop.training_step(batches)
    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    # matmul throughput at the recurrent shapes of this K (generator step: (K, 8, 64) x (K, 64, 192))
    h, w, b = torch.randn(k, BATCH, 64), torch.randn(k, 64, 192), torch.randn(k, 1, 192)
    out = torch.empty(k, BATCH, 192)
    n = max(50, 2000 // k)
    torch.baddbmm(b, h, w, out=out)
    t = time.perf_counter()
    for _ in range(n):
        torch.baddbmm(b, h, w, out=out)
    mm_gflops = 2 * k * BATCH * 64 * 192 * n / (time.perf_counter() - t) / 1e9
    res = dict(k=k, steps=steps, wall=wall, cpu=cpu, flops=flops, mm_gflops=mm_gflops, peak_mib=_peak_mib())
    return {**res, "threads": threads}


def child_solo(steps: int, seed: int) -> dict:
    import pytorch_lightning as pl
    import torch

    from neuralnets.training.build import build_datamodule, build_module

    torch.set_num_threads(1)
    cfg = _cfgs(seed + 1)[seed]
    pl.seed_everything(cfg.seed, verbose=False)
    dm = build_datamodule(cfg)
    module = build_module(cfg, dm.data.spec, init_data=dm.data)
    dm.setup("fit")
    module.train()
    opt = torch.optim.AdamW(module.parameters(), lr=float(cfg.module.lr))
    batch = next(iter(dm.train_dataloader()))

    def step():
        loss, _ = module._loss(batch, train=True)
        opt.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(module.parameters(), 200.0)
        opt.step()

    step()
    wall, cpu = time.perf_counter(), time.process_time()
    for _ in range(steps):
        step()
    return dict(
        wall=time.perf_counter() - wall, cpu=time.process_time() - cpu, steps=steps, peak_mib=_peak_mib()
    )


def _run(args: list[str], wait: bool = True, threads: int = 1):
    env = {**os.environ, "PYTHONPATH": str(HERE.parent), "OMP_NUM_THREADS": str(threads)}
    proc = subprocess.Popen([sys.executable, __file__, *args], stdout=subprocess.PIPE, env=env, text=True)
    return _result(proc) if wait else proc


def _result(proc) -> dict:
    out, _ = proc.communicate()
    if proc.returncode:
        raise SystemExit(f"child failed ({proc.returncode}): {' '.join(map(str, proc.args))}")
    return json.loads(out.strip().splitlines()[-1])


def baseline(steps: int) -> dict:
    """Two solo members as two concurrent processes: aggregate member-trials/s over the longer wall time."""
    procs = [_run(["--child", "solo", str(steps), str(s)], wait=False) for s in (0, 1)]
    res = [_result(p) for p in procs]
    wall = max(r["wall"] for r in res)
    return dict(rate=2 * BATCH * steps / wall, cpu_step=sum(r["cpu"] for r in res) / (2 * steps),
                peak_mib=max(r["peak_mib"] for r in res))  # fmt: skip


def header() -> str:
    cpu = "unknown CPU"
    try:
        cpu = next(
            line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name")
        )
    except (OSError, StopIteration):
        cpu = platform.processor() or cpu
    load = ", ".join(f"{x:.2f}" for x in os.getloadavg())
    import torch

    return f"CPU: {cpu}; {os.cpu_count()} cores; torch {torch.__version__}; load average at start: {load}"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="K = 1, 8 and few steps (a check, not a figure)")
    ap.add_argument("--out", type=Path, default=HERE / "results" / "population_benchmark.md")
    ap.add_argument("--no-write", action="store_true")
    ap.add_argument("--child", nargs="+", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        kind, *rest = args.child
        if kind == "pop":
            res = child_population(int(rest[0]), int(rest[1]), int(rest[2]))
        else:
            res = child_solo(int(rest[0]), int(rest[1]))
        print(json.dumps(res))
        return
    # (K in all, threads per population process, population processes side by side)
    quick = [(1, 1, 1), (8, 1, 1), (8, 1, 2)]
    full = [(1, 1, 1), (8, 1, 1), (32, 1, 1), (64, 1, 1), (32, 2, 1), (16, 1, 2), (32, 1, 2), (64, 1, 2)]
    runs, steps = (quick, 3) if args.quick else (full, 8)
    lines = [
        "# Population throughput (tuned MC_Maze_Small recipe, batch 8, one thread per process)",
        "",
        header(),
        f"Command: `nice python experiments/population_benchmark.py{' --quick' if args.quick else ''}`; "
        f"{steps} timed steps after one warm-up, every measurement a fresh process, baseline and population "
        "interleaved.",
        "",
        "| K | layout | 2 workers: member-trials/s | population: member-trials/s | ratio | "
        "CPU ms per member-step (solo / population) | peak MiB per process (solo / population) | GFLOP/s | "
        "baddbmm GFLOP/s | "
        "utilisation |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    print("\n".join(lines), flush=True)
    ratios = {}
    for k, threads, procs in runs:
        base = baseline(steps)
        # `procs` populations of k / procs members side by side (tune.workers=2 tune.population=k/2)
        args_ = ["--child", "pop", str(k // procs), str(steps), str(threads)]
        res = [_result(p) for p in [_run(args_, wait=False, threads=threads) for _ in range(procs)]]
        pop = {**res[0], "wall": max(r["wall"] for r in res), "cpu": sum(r["cpu"] for r in res)}
        rate = k * BATCH * steps / pop["wall"]
        gflops = procs * pop["flops"] / (pop["wall"] / steps) / 1e9
        layout = f"{procs} x {k // procs} members, {threads} thread(s)"
        row = (
            f"| {k} | {layout} | {base['rate']:.1f} | {rate:.1f} | {rate / base['rate']:.2f}x | "
            f"{1e3 * base['cpu_step']:.0f} / {1e3 * pop['cpu'] / (steps * k):.0f} | "
            f"{base['peak_mib']:.0f} / {pop['peak_mib']:.0f} | {gflops:.2f} | {pop['mm_gflops']:.1f} | "
            f"{gflops / (procs * pop['mm_gflops']):.0%} |"
        )
        lines.append(row)
        ratios[(k, layout)] = rate / base["rate"]
        print(row, flush=True)
    lines += ["", f"Load average at the end: {', '.join(f'{x:.2f}' for x in os.getloadavg())}"]
    goal = [f"{r:.2f}x as {t}" for (k, t), r in ratios.items() if k == 32]
    if goal:
        met = "met" if max(ratios[key] for key in ratios if key[0] == 32) >= 8 else "NOT met"
        lines += ["", f"Goal of #30, K = 32 at >= 8x the two workers' aggregate: {met} ({', '.join(goal)})."]
    lines += [
        "",
        "Columns: member-trials/s = members x trials per step x steps / wall seconds (2 workers: over",
        "the longer of the two processes); ratio = population / 2 workers; CPU ms per member-step from",
        "`time.process_time` (all threads); GFLOP/s of the step = matmul FLOPs counted by",
        "`torch.utils.flop_counter` per second of the timed steps; utilisation = that / the measured",
        "`baddbmm` GFLOP/s at (K, 8, 64) x (K, 64, 192).",
    ]
    print(lines[-1])
    if not args.no_write:
        args.out.write_text("\n".join(lines) + "\n")
        print(f"written: {args.out}")


if __name__ == "__main__":
    main()
