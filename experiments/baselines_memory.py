"""Peak RSS of computing the baseline rows (`baseline_rows(data, "test", cache=False)`), step by step.

    python experiments/baselines_memory.py DATA.npz [threads]
    MALLOC_MMAP_THRESHOLD_=131072 python experiments/baselines_memory.py DATA.npz   # RSS ~ live memory

A thread samples VmRSS every few ms; each wrapped step (smoothing, each GLM fit, each baseline's
scoring) reports the peak over the resident level before the call. Linux only. With glibc's default
allocator the numbers include the heap's holes; with the fixed mmap threshold above they follow the live
memory.
"""

from __future__ import annotations

import sys
import threading
import time
from pathlib import Path

import torch


def rss_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def main(argv: list[str]) -> None:
    torch.set_num_threads(int(argv[1]) if len(argv) > 1 else 1)
    import neuralnets.eval.baselines as B
    from neuralnets.data.loaders import load

    samples: list[tuple[float, float]] = []
    marks: list[tuple[str, float, float]] = []
    done = threading.Event()

    def sample() -> None:
        while not done.is_set():
            samples.append((time.perf_counter(), rss_mb()))
            time.sleep(0.005)

    def marked(name, fn):
        def wrapper(*args, **kwargs):
            t = time.perf_counter()
            try:
                return fn(*args, **kwargs)
            finally:
                marks.append((name, t, time.perf_counter()))

        return wrapper

    for name in (
        "fit_poisson_glm",
        "smooth_spikes",
        "fit_smoothing_glm",
        "evaluate",
        "fit_condition_average",
    ):
        setattr(B, name, marked(name, getattr(B, name)))
    data = load(argv[0])
    base = rss_mb()
    thread = threading.Thread(target=sample, daemon=True)
    thread.start()
    t, cpu = time.perf_counter(), time.process_time()
    rows = B.baseline_rows(data, "test", cache=False)
    wall, cpu = time.perf_counter() - t, time.process_time() - cpu
    done.set()
    thread.join()
    peak = max(r for _, r in samples)
    print(
        f"resident before {base:.0f} MiB; peak {peak:.0f} MiB (+{peak - base:.0f}); "
        f"wall {wall:.1f} s, CPU {cpu:.1f} s"
    )
    for name, t0, t1 in marks:
        inside = [r for s, r in samples if t0 <= s <= t1]
        if inside:
            print(f"  {name:24s} {t1 - t0:7.2f} s  peak {max(inside):6.0f} MiB (+{max(inside) - base:.0f})")
    for row in rows:
        print(row["model"], {k: round(v, 6) for k, v in row["metrics"].items()})


if __name__ == "__main__":
    main(sys.argv[1:])
