"""README command 1 (`neuralnets-train experiment=lfads_lorenz`) per training step, by torch threads,
on a quiet machine and beside one busy process: what the `threads: auto` default is chosen on.

    python experiments/threads.py                       # auto vs torch's default, quiet vs loaded
    python experiments/threads.py --steps 8 --threads auto null 2 --out experiments/results/threads.md

Each configuration is one fresh `python -m neuralnets.training.train experiment=lfads_lorenz threads=X`
process, limited to `--steps` training batches of one epoch (`trainer.limit_train_batches`; one
validation batch). Seconds per step = the run's `train_time_s` (all of `Trainer.fit`: the sanity
check, the steps, one validation batch, the checkpoint) / its steps, from metrics.json. "loaded": one
other process spins on a core for the whole run (`while True: pass`), as another user's job would.
The header gives the CPU, its cores and the load average before the runs: on a shared machine other
jobs' load adds to both columns.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def cpu_model() -> str:
    for line in Path("/proc/cpuinfo").read_text().splitlines() if Path("/proc/cpuinfo").is_file() else []:
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return platform.processor() or "unknown CPU"


def run_once(threads: str, steps: int, out_dir: Path) -> dict:
    """One training process; returns {"s_per_step", "steps", "wall_s"}."""
    run_dir = out_dir / f"threads_{threads}_{time.monotonic_ns()}"
    cmd = [
        sys.executable, "-m", "neuralnets.training.train", "experiment=lfads_lorenz", f"threads={threads}",
        "trainer.max_epochs=1", f"+trainer.limit_train_batches={steps}", "+trainer.limit_val_batches=1",
        "trainer.enable_progress_bar=false", "callbacks.figures=false", "print_baselines=false",
        f"hydra.run.dir={run_dir}",
    ]  # fmt: skip
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    start = time.perf_counter()
    done = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=REPO, check=False)
    wall = time.perf_counter() - start
    if done.returncode != 0:
        raise SystemExit(f"threads={threads}: exit {done.returncode}\n{done.stderr[-2000:]}")
    record = json.loads((run_dir / "metrics.json").read_text())
    return {"s_per_step": record["train_time_s"] / record["steps"], "steps": record["steps"], "wall_s": wall}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--steps", type=int, default=8, help="training steps per run (first N batches)")
    p.add_argument("--threads", nargs="+", default=["auto", "null"], help="values of threads= to compare")
    p.add_argument("--out", type=Path, default=None, help="also write the table to this markdown file")
    args = p.parse_args(argv)
    header = [
        "# README command 1 per training step, by torch threads, quiet vs one busy process",
        "",
        f"- Command: `python experiments/threads.py {' '.join(argv if argv is not None else sys.argv[1:])}`",
        f"- CPU: {cpu_model()}; {os.cpu_count()} logical cores; Python {platform.python_version()}",
        f"- Load average before the runs (1, 5, 15 min): {', '.join(f'{x:.2f}' for x in os.getloadavg())}",
        f"- Date: {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}",
        f"- Each run: `experiment=lfads_lorenz`, {args.steps} training steps, one validation batch "
        "(s/step = Trainer.fit time / steps, from metrics.json)",
        "",
        "| threads | quiet: s/step | loaded (1 busy process): s/step | loaded / quiet |",
        "|---|---|---|---|",
    ]
    print("\n".join(header), flush=True)
    rows = []
    with tempfile.TemporaryDirectory(prefix="threads-") as tmp:
        for threads in args.threads:
            quiet = run_once(threads, args.steps, Path(tmp))
            spinner = subprocess.Popen([sys.executable, "-c", "while True: pass"])
            try:
                loaded = run_once(threads, args.steps, Path(tmp))
            finally:
                spinner.kill()
                spinner.wait()
            ratio = loaded["s_per_step"] / quiet["s_per_step"]
            row = f"| {threads} | {quiet['s_per_step']:.2f} | {loaded['s_per_step']:.2f} | {ratio:.1f}x |"
            print(row, flush=True)
            rows.append(row)
    if args.out is not None:
        args.out.write_text("\n".join([*header, *rows]) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
