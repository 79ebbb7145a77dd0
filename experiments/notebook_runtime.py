"""How long a notebook takes to run top to bottom (the figure a notebook's own claim should quote).

    python experiments/notebook_runtime.py notebooks/04_dynamics.ipynb          # full settings
    python experiments/notebook_runtime.py notebooks/04_dynamics.ipynb --fast   # NEURALNETS_NOTEBOOK_FAST=1

Runs the notebook in a fresh kernel (one torch/BLAS thread, as the tests do) from a temporary working
directory and prints the wall time with the CPU model and the load average before and after (the
machine may be shared: quote the load with the time).
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path


def main(argv: list[str] | None = None) -> int:
    import nbclient
    import nbformat

    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("notebook", type=Path)
    p.add_argument("--fast", action="store_true", help="set NEURALNETS_NOTEBOOK_FAST=1 (the tests' settings)")
    args = p.parse_args(argv)
    os.environ["OMP_NUM_THREADS"] = "1"
    os.environ["NEURALNETS_NOTEBOOK_FAST"] = "1" if args.fast else "0"
    try:
        cpu = next(ln.split(":", 1)[1].strip() for ln in open("/proc/cpuinfo") if ln.startswith("model name"))
    except (OSError, StopIteration):
        cpu = "unknown CPU"
    before = os.getloadavg()
    nb = nbformat.read(args.notebook, as_version=4)
    with tempfile.TemporaryDirectory() as cwd:
        start = time.time()
        nbclient.NotebookClient(
            nb, kernel_name="python3", timeout=3600, resources={"metadata": {"path": cwd}}
        ).execute()
        wall = time.time() - start
    after = os.getloadavg()
    print(
        f"{args.notebook.name} ({'fast' if args.fast else 'full'} settings): {wall:.0f} s wall; {cpu}, "
        f"{os.cpu_count()} cores; load average (1 min) {before[0]:.1f} before, {after[0]:.1f} after"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
