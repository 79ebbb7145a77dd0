"""Train the bundled pretrained models and write them into the package, with their model cards.

    python experiments/train_pretrained.py                  # every recipe below; refuses to overwrite
    python experiments/train_pretrained.py lfads_lorenz --force
    python experiments/train_pretrained.py --list
    python experiments/train_pretrained.py rnn_lorenz --set trainer.max_epochs=5 --dest /tmp/try

Each recipe is a list of Hydra overrides of `configs/train.yaml`, trained through the real entry point
(`neuralnets.training.train.train`, the same function `neuralnets-train` runs) into
`runs/pretrained/<name>/<time>/`; the scored checkpoint is then slimmed (weights + hyperparameters) and
copied with a model card into `neuralnets/pretrained/checkpoints/<name>/`, and the exported folder is
loaded back and re-scored to check that it reproduces the run's metrics. Recipes use the current
defaults of `configs/`, so re-running this after tuning a model's defaults refreshes its checkpoint.
"""

from __future__ import annotations

import argparse
import logging
import shlex
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from neuralnets.pretrained.registry import CHECKPOINTS_DIR

log = logging.getLogger("train_pretrained")


@dataclass(frozen=True)
class Recipe:
    description: str
    overrides: tuple[str, ...]  # Hydra overrides of configs/train.yaml; the data must be built in


RECIPES: dict[str, Recipe] = {
    "lfads_lorenz": Recipe(
        "LFADS (controller with 2 inferred inputs, 8 factors) on the built-in synthetic Lorenz data "
        "(configs/experiment/lfads_lorenz.yaml, current model defaults).",
        ("experiment=lfads_lorenz",),
    ),
    "rnn_lorenz": Recipe(
        "GRU sequence-to-sequence encoder/decoder (deterministic, 16-d latent state, 8 factors) on the "
        "built-in synthetic Lorenz data (configs/model/rnn.yaml defaults, 100 epochs).",
        ("data=lorenz", "model=rnn", "trainer.max_epochs=100"),
    ),
    "lfads_mc_maze_small": Recipe(
        "LFADS (16 factors, 2 inferred inputs) on NLB MC_Maze_Small (real monkey motor cortex, bundled), "
        "with the settings a 48-member Optuna study chose on validation co-bps "
        "(configs/experiment/lfads_mc_maze_small_tuned.yaml, experiments/results/mc_maze_small_study.md).",
        ("experiment=lfads_mc_maze_small_tuned",),
    ),
}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("names", nargs="*", help=f"recipes to train (default: all of {sorted(RECIPES)})")
    p.add_argument("--force", action="store_true", help="replace existing bundled checkpoints")
    p.add_argument(
        "--threads",
        type=int,
        default=1,
        help="torch CPU threads (default 1: these small models train ~10x faster on one thread than on "
        "two contended cores; 0 keeps torch's default)",
    )
    p.add_argument("--runs-dir", type=Path, default=Path("runs/pretrained"), help="where the runs go")
    p.add_argument(
        "--dest", type=Path, default=CHECKPOINTS_DIR, help=f"where checkpoints go (default {CHECKPOINTS_DIR})"
    )
    p.add_argument(
        "--set", dest="extra", action="append", default=[], metavar="KEY=VALUE",
        help="extra Hydra override for every recipe (e.g. trainer.accelerator=gpu); recorded in the card",
    )  # fmt: skip
    p.add_argument("--list", action="store_true", help="list the recipes and what is bundled, then exit")
    args = p.parse_args(argv)
    unknown = sorted(set(args.names) - set(RECIPES))
    if unknown:
        p.error(f"unknown recipe(s) {unknown}; recipes: {sorted(RECIPES)}")
    args.names = args.names or list(RECIPES)
    return args


def compose_config(overrides: list[str]):
    from neuralnets.config import compose

    return compose(overrides)


def train_one(name: str, args: argparse.Namespace) -> dict:
    from neuralnets.pretrained.bundle import export_run
    from neuralnets.training.train import train

    recipe = RECIPES[name]
    dest = args.dest / name
    if dest.exists() and not args.force:  # refuse before minutes of training, not after
        raise FileExistsError(f"{dest} exists; pass --force to retrain and replace it")
    overrides = [*recipe.overrides, *args.extra, "trainer.enable_progress_bar=false"]
    cfg = compose_config(overrides)
    # absolute: train() takes the checkpoint path relative to it, and Lightning makes that absolute
    run_dir = (args.runs_dir / name / time.strftime("%Y-%m-%d_%H-%M-%S")).resolve()
    log.info("%s: training into %s with overrides %s", name, run_dir, overrides)
    start = time.perf_counter()
    record = train(cfg, run_dir)
    wall = time.perf_counter() - start
    command = shlex.join(
        ["python", "experiments/train_pretrained.py", name]
        + (["--threads", str(args.threads)] if args.threads != 1 else [])
        + [a for x in args.extra for a in ("--set", x)]
    )
    training = {
        "command": command,
        "neuralnets_train": shlex.join(["neuralnets-train", *recipe.overrides, *args.extra]),
        "overrides": list(recipe.overrides) + list(args.extra),
        "threads": torch.get_num_threads(),
        "wall_time_s": round(wall, 1),
    }
    export_run(run_dir, dest, name, description=recipe.description, training=training, force=args.force)
    size = sum(f.stat().st_size for f in dest.iterdir())
    from neuralnets.checkpoints import file_sha256
    from neuralnets.pretrained.registry import CHECKPOINT_FILE

    # The package checks bundled files against its own copy of the digest: update it with the file.
    digest = file_sha256(dest / CHECKPOINT_FILE)
    print(f'update BUNDLED_SHA256 in neuralnets/pretrained/registry.py: "{name}": "{digest}",')
    log.info(
        "%s: wrote %s (%.0f kB) after %.0f s; test metrics %s",
        name,
        dest,
        size / 1e3,
        wall,
        record["metrics"],
    )
    return {"name": name, "wall_time_s": wall, "size_bytes": size, **record}


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    if args.list:
        from neuralnets.pretrained import list_pretrained

        bundled = set(list_pretrained()) if args.dest == CHECKPOINTS_DIR else set()
        for name, r in RECIPES.items():
            print(f"{name:16s} {'bundled' if name in bundled else 'missing':8s} {' '.join(r.overrides)}")
        return 0
    if args.threads > 0:
        torch.set_num_threads(args.threads)
    done = []
    for name in args.names:
        try:
            done.append(train_one(name, args))
        except FileExistsError as e:
            print(f"error: {e}", file=sys.stderr)
            return 1
    print("\n| name | model | wall time (s) | size (kB) | co_bps | fp_bps | rate_r2 | latent_r2 |")
    print("|---|---|---|---|---|---|---|---|")
    for r in done:
        m = r["metrics"]
        print(
            f"| {r['name']} | {r['model']} | {r['wall_time_s']:.0f} | {r['size_bytes'] / 1e3:.0f} | "
            + " | ".join(
                f"{m.get(k, float('nan')):.4f}" for k in ("co_bps", "fp_bps", "rate_r2", "latent_r2")
            )
            + " |"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
