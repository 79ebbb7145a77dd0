"""Small-data results from one command (#30): search LFADS settings on a small recording (NLB
MC_Maze_Small by default) in populations, choose on validation, ensemble, list every member averaged
with the settings that retrain it, and retrain the best configuration with 3 seeds.

    nice python experiments/population_small_data.py [--quick] [--dir runs/population_small_data]
    nice python experiments/population_small_data.py --recipe "model=lfads data=ca1_linear_track" --name ca1

1. An Optuna study (`neuralnets-tune`, successive-halving pruning on validation co-bps every epoch) around
   the `lfads_mc_maze_small` recipe, its workers training `--population` members at a time as one batched
   population (`tune.population`), `--workers` workers, `--trials` members in all.
2. `neuralnets-ensemble` over every finished member: members ranked by validation co-bps and k chosen on
   the validation trials (the test trials are never used to choose anything).
3. The best member on validation, retrained as one population with `--seeds` seeds (0, 1, 2): the single
   configuration's test co-bps as mean ± sd over seeds.
4. The results page (`experiments/results/population_small_data[_NAME].md`, or `--quick`: beside the
   study): the ensemble's test metrics and, for every member it averaged, its run directory, validation
   and test co-bps, and the `neuralnets-train` command that retrains it alone (its sampled settings and
   seed); the best configuration over seeds.
Budget: the full settings are sized for at most 60 min wall on the 2-core CPU (not yet run end to end;
the lead runs it); `--quick` is a minutes-long check of the pipeline on the same data.
"""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
RECIPE = "experiment=lfads_mc_maze_small"
SPLITS = {  # what "test" is, per dataset (README: What "test" means)
    "mc_maze_small": "NLB's 25 validation trials, scored locally after training on 60 of NLB's 75 training "
    "trials (15 are our validation trials)",
    "ca1_linear_track": "9 of the 47 laps drawn with seed 0 (29 train, 9 validation)",
}


def _fmt(metrics: dict) -> str:
    return ", ".join(f"{k} {v:.4f}" for k, v in metrics.items() if isinstance(v, float))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="a pipeline check: few members, few epochs")
    ap.add_argument("--dir", type=Path, default=Path("runs/population_small_data"))
    ap.add_argument("--trials", type=int, default=48)
    ap.add_argument("--population", type=int, default=12)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--max-epochs", type=int, default=200)
    ap.add_argument("--recipe", default=RECIPE, help="the shared overrides (a recipe or model= data=)")
    ap.add_argument("--name", default=None, help="results page population_small_data_NAME.md")
    ap.add_argument("--seeds", type=int, default=3, help="seeds the best configuration is retrained with")
    args = ap.parse_args()
    if args.quick:
        args.trials, args.population, args.max_epochs, args.seeds = 4, 2, 3, 2
    recipe = args.recipe.split()
    import numpy as np
    import torch

    from neuralnets.config import compose, load_saved_config
    from neuralnets.runs import read_run
    from neuralnets.training.ensemble import ensemble
    from neuralnets.training.population import train_population
    from neuralnets.training.tune import tune

    torch.set_num_threads(1)
    start = time.time()
    study_dir = args.dir / "study"
    overrides = [
        *recipe,
        "threads=1",
        "callbacks.figures=false",
        f"tune.dir={study_dir}",
        f"out_dir={args.dir}",
        f"tune.n_trials={args.trials}",
        f"tune.population={args.population}",
        f"tune.workers={args.workers}",
        f"tune.max_epochs={args.max_epochs}",
        f"tune.min_epochs={max(1, args.max_epochs // 5)}",
        "tune.reduction_factor=3",
        "tune.metric=val/co_bps",
    ]
    rows = tune(compose(overrides, config_name="tune"))
    members = sorted((study_dir / "members").iterdir())
    ens = ensemble(members, args.dir / f"ensemble_{time.strftime('%Y-%m-%d_%H-%M-%S')}", k="auto")
    chosen = [m for m in ens["members"] if m["chosen"]]
    by_dir = {str(r["run_dir"]): r for r in rows if r.get("run_dir")}
    retrain, table = {}, []
    for m in chosen:
        run_dir = Path(m["run_dir"])
        run = read_run(run_dir)
        row = by_dir[str(run_dir.relative_to(study_dir))]  # the member's sampled settings
        seed = load_saved_config(run_dir / "config.yaml").seed
        sets = [f"{k}={row[k]}" for k in row if k.startswith(("module.", "model."))]
        # as the study trained it: its epochs (pruned members stopped early), best checkpoint on val co-bps
        retrain[run_dir.name] = [
            *recipe, *sets, f"trainer.max_epochs={row['epochs_trained']}", "callbacks=val_co_bps",
            "callbacks.early_stopping_patience=0",
        ]  # fmt: skip
        command = f"neuralnets-train {' '.join(retrain[run_dir.name])} seed={seed}"
        table.append(
            f"| {run_dir.name} | {m['val_co_bps']:.4f} | {run['metrics'].get('co_bps'):.4f} | `{command}` |"
        )
    # The single best configuration on validation, retrained with seeds 0..S-1 as one population.
    best = max(chosen, key=lambda m: m["val_co_bps"])
    best_overrides = [*retrain[Path(best["run_dir"]).name], "threads=1", "callbacks.figures=false"]
    seeds = train_population(
        [compose([*best_overrides, f"seed={s}"]) for s in range(args.seeds)], args.dir / "best_seeds"
    )
    test = np.array([r["metrics"]["co_bps"] for r in seeds])
    val = np.array([r["val_metrics"]["co_bps"] for r in seeds])
    minutes = (time.time() - start) / 60
    data_name = compose(recipe).data.name
    lines = [
        f"# LFADS on {data_name}: a search in populations, chosen on validation, ensembled",
        "",
        f"Command: `nice python experiments/population_small_data.py{' --quick' if args.quick else ''}"
        f"{'' if args.recipe == RECIPE else f' --recipe {chr(34)}{args.recipe}{chr(34)}'}"
        f"{f' --name {args.name}' if args.name else ''}` ({minutes:.1f} min wall, "
        f"{os.cpu_count()} cores, load average at the end {', '.join(f'{x:.1f}' for x in os.getloadavg())}). "
        f"Study: {args.trials} members, populations of {args.population}, {args.workers} workers, up to "
        f"{args.max_epochs} epochs, pruning on validation co-bps. Members ranked and k chosen on the "
        "validation trials only; test trials scored after.",
        "",
        f"Test split: {SPLITS.get(data_name, 'the dataset test split')}.",
        "",
        f"**Ensemble** of k = {ens['k']} ({ens['k_rule']}): test {_fmt(ens['metrics'])}; "
        f"validation {_fmt(ens['val_metrics'])}.",
        "",
        f"**Best single configuration** (member {Path(best['run_dir']).name}, the best on validation), "
        f"retrained with seeds 0..{args.seeds - 1}: test co-bps {test.mean():.4f} ± {test.std(ddof=1):.4f} "
        f"({', '.join(f'{x:.4f}' for x in test)}), validation {val.mean():.4f} ± {val.std(ddof=1):.4f}; "
        f"`neuralnets-population {' '.join(best_overrides)} --seeds {args.seeds}`.",
        "",
        "Every member averaged, with the command that retrains it alone:",
        "",
        "| member | val co-bps | test co-bps | retrain |",
        "|---|---|---|---|",
        *table,
    ]
    page = f"population_small_data{'_' + args.name if args.name else ''}.md"
    out = args.dir / page if args.quick else HERE / "results" / page
    out.write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    print(f"written: {out}")


if __name__ == "__main__":
    main()
