"""`neuralnets-population`: train K members of one architecture as one batched population.

    neuralnets-population experiment=lfads_mc_maze_small_tuned --seeds 8
    neuralnets-population experiment=lfads_mc_maze_small --member "module.lr=0.01 seed=0" \\
        --member "module.lr=0.003 model.dropout=0.2 seed=1"
    neuralnets-population --resume runs/population/2026-12-07_22-40-00_K8

The positional overrides (as for `neuralnets-train`) are shared; each `--member` adds its own, and
`--seeds N` makes N members seed=0..N-1 (combined with --member: every member once per seed). Each member
is an ordinary run directory under `<out_dir>/population/<time>_K<k>/member_<k>`; the command prints one
line per member (its run directory and validation co-bps). `--resume` continues a killed population.
"""

from __future__ import annotations

import argparse
import logging
import shlex

from neuralnets.cli import precheck, run_cli
from neuralnets.config import compose
from neuralnets.errors import ConfigError


def member_overrides(shared: list[str], members: list[str], seeds: int | None) -> list[list[str]]:
    """The overrides of each member: shared + its own (+ seed=s for each of `seeds`)."""
    own = [shlex.split(m) for m in members] or [[]]
    if seeds is not None:
        if seeds < 1:
            raise ConfigError(f"--seeds {seeds}: expected a number of seeds >= 1")
        own = [[*o, f"seed={s}"] for o in own for s in range(seeds)]
    return [[*shared, *o] for o in own]


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="neuralnets-population", description=__doc__.split("\n")[0])
    p.add_argument("overrides", nargs="*", help="Hydra overrides shared by all members (as neuralnets-train)")
    p.add_argument("--member", action="append", default=[], help="one member's own overrides (quoted)")
    p.add_argument("--seeds", type=int, default=None, help="N members with seed=0..N-1 (per --member)")
    p.add_argument(
        "--out", default=None, help="parent of the population directory (default <out_dir>/population)"
    )
    p.add_argument("--resume", default=None, help="a population directory to continue")
    return p


def _main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)  # --help answers here, before PyTorch is imported
    members = [] if args.resume else member_overrides(args.overrides, args.member, args.seeds)
    for overrides in members:  # a config mistake too: each member's config checked by the schema
        precheck("train", overrides)
    from neuralnets.training.population import resume_population, train_population

    logging.basicConfig(level=logging.INFO, format="[%(name)s][%(levelname)s] - %(message)s")
    if args.resume:
        records = resume_population(args.resume)
    else:
        records = train_population([compose(o) for o in members], args.out)
    for r in records:
        val, test = r["val_metrics"].get("co_bps"), r["metrics"].get("co_bps")
        print(f"{r['run_dir']}\tval co-bps {val}\ttest co-bps {test}")
    return 0


def main(argv: list[str] | None = None) -> int:
    """Entry point of `neuralnets-population` (errors and exit codes: `neuralnets.cli.run_cli`)."""
    return run_cli("neuralnets-population", _main, argv)


if __name__ == "__main__":
    raise SystemExit(main())
