"""cProfile of the final harness (`finish_run`) of a short `neuralnets-train` run: CPU and wall seconds, and
the top functions by cumulative time.

    python experiments/profile_final_harness.py DATA.npz RUN_DIR OUT.prof [overrides ...]
    # e.g. on the MC_Maze-shaped file benchmark_e2e.py writes, at one thread:
    python experiments/profile_final_harness.py mc_maze_like.npz /tmp/prof_run /tmp/final.prof threads=1

The run trains LFADS at the MC_Maze sizes for 2 batches (the harness costs the same after 2 batches as
after 15 epochs: it predicts and scores every trial), without the baseline rows. On a shared machine,
compare the CPU seconds (`time.process_time`), not the wall time.
"""

from __future__ import annotations

import cProfile
import pstats
import sys
import time

import neuralnets.training.run as run_mod
import neuralnets.training.train as train_mod

MODEL = dict(gen_dim=200, fac_dim=100, ic_enc_dim=64, ci_enc_dim=64, con_dim=64, co_dim=4)


def main(argv: list[str]) -> None:
    data, run_dir, out, *extra = argv
    finish = run_mod.finish_run

    def profiled(*args, **kwargs):
        prof, wall, cpu = cProfile.Profile(), time.time(), time.process_time()
        prof.enable()
        try:
            return finish(*args, **kwargs)
        finally:
            prof.disable()
            print(
                f"finish_run: wall {time.time() - wall:.2f} s, CPU {time.process_time() - cpu:.2f} s",
                flush=True,
            )
            prof.dump_stats(out)
            pstats.Stats(prof).sort_stats("cumulative").print_stats(40)

    run_mod.finish_run = profiled
    sys.argv = [
        "neuralnets-train", "data=file", f"data.source={data}", "data.name=mc_maze_like",
        "data.batch_size=256",
        "model=lfads", *(f"model.{k}={v}" for k, v in MODEL.items()), "trainer.max_epochs=1",
        "+trainer.limit_train_batches=2", "trainer.enable_progress_bar=false", "print_baselines=false",
        f"hydra.run.dir={run_dir}", *extra,
    ]  # fmt: skip
    train_mod.main()


if __name__ == "__main__":
    main(sys.argv[1:])
