"""Small-data results from one command (#30): search LFADS settings on a small recording (NLB
MC_Maze_Small by default) in populations, cross-validate the best over folds of train + val, ensemble
the bagged folds, list every member averaged with the settings that retrain it, and retrain the best
configuration with 3 seeds.

    nice python experiments/population_small_data.py [--quick] [--dir runs/population_small_data]
    nice python experiments/population_small_data.py --recipe "model=lfads data=ca1_linear_track" --name ca1

1. Search: an Optuna study (`neuralnets-tune`, successive-halving pruning on validation co-bps every
   epoch) around the `lfads_mc_maze_small` recipe, its workers training `--population` members at a
   time as one batched population (`tune.population`), `--workers` workers, `--trials` members in all.
   Rerunning the command on the same `--dir` continues (or, complete, reuses) the study.
2. Cross-validation: the `--cv-top` best members on validation, each retrained to `--max-epochs` on
   every fold of the non-test trials (`+data.load_kwargs.fold=f`: MC_Maze_Small's 75 training trials
   as five folds of 15), all as populations (one per worker). Each configuration is scored by co-bps
   of its out-of-fold predictions over all folds' trials (75, not one split's 15).
3. Ensemble: `neuralnets-ensemble` over the folds' members: configurations ranked and k chosen on the
   out-of-fold predictions; every fold's member of the k configurations averaged on the test trials
   (bagging over folds). The test trials are never used to choose anything.
4. The best configuration by cross-validation, retrained on the default split with `--seeds` seeds
   (0, 1, 2) as one population: the single configuration's test co-bps as mean ± sd over seeds.
5. The results page (`experiments/results/population_small_data[_NAME].md`, or `--quick`: beside the
   study): the ensemble's test metrics and, for every member it averaged, its fold, validation and test
   co-bps and the `neuralnets-train` command that retrains it alone; the search's own top-k ensemble
   (chosen on one split's validation trials) for comparison; the best configuration over seeds.
Budget: at most 60 min wall on the 2-core CPU with the defaults; `--quick` is a minutes-long check of
the pipeline on the same data.
"""

from __future__ import annotations

import argparse
import os
import time
from concurrent.futures import ProcessPoolExecutor
from multiprocessing import get_context
from pathlib import Path

HERE = Path(__file__).resolve().parent
RECIPE = "experiment=lfads_mc_maze_small"
SPLITS = {  # what "test" is, per dataset (README: What "test" means)
    "mc_maze_small": "NLB's 25 validation trials, scored locally after training on 60 of NLB's 75 training "
    "trials (15 are our validation trials)",
    "ca1_linear_track": "9 of the 47 laps drawn with seed 0 (29 train, 9 validation)",
}


def _train(overrides: list[list[str]], parent: Path) -> list[dict]:
    """One worker process: the members `overrides` trained as one population under `parent`."""
    import torch

    from neuralnets.config import compose
    from neuralnets.training.population import train_population

    torch.set_num_threads(1)
    return train_population([compose(o) for o in overrides], parent)


def n_folds_of(data_cfg) -> int:
    """How many validation folds the recipe's data offers (its non-test trials / its validation trials)."""
    from neuralnets.data.loaders import load
    from neuralnets.data.spikedata import n_folds

    data = load(data_cfg.source, **data_cfg.load_kwargs)
    n_val, n_test = int((data.split == "val").sum()), int((data.split == "test").sum())
    return n_folds(data.n_trials, n_val / data.n_trials, n_test / data.n_trials)


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
    ap.add_argument("--cv-top", type=int, default=10, help="best search members cross-validated over folds")
    args = ap.parse_args()
    if args.quick:
        args.trials, args.population, args.max_epochs, args.seeds, args.cv_top = 4, 2, 3, 2, 2
    recipe = args.recipe.split()
    import numpy as np
    import torch

    from neuralnets.config import compose
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
    search_minutes = (time.time() - start) / 60
    members = sorted((study_dir / "members").iterdir())
    stamp = time.strftime("%Y-%m-%d_%H-%M-%S")
    search_ens = ensemble(members, args.dir / f"search_ensemble_{stamp}", k="auto")

    # Cross-validation: the best members' settings on every fold, trained to the full budget.
    ranked = sorted((r for r in rows if r.get("val/co_bps") is not None), key=lambda r: -r["val/co_bps"])
    configs = {
        r["member"]: [*recipe, *(f"{k}={r[k]}" for k in r if k.startswith(("module.", "model.")))]
        for r in ranked[: args.cv_top]
    }
    data_cfg = compose(recipe).data
    n = n_folds_of(data_cfg)
    shared = [
        f"trainer.max_epochs={args.max_epochs}",
        "callbacks=val_co_bps",
        "callbacks.early_stopping_patience=0",
    ]
    cv_members = [(name, f, [*sets, *shared, "seed=0", f"+data.load_kwargs.fold={f}"])
                  for name, sets in configs.items() for f in range(n)]  # fmt: skip
    run = ["threads=1", "callbacks.figures=false"]
    shards = [cv_members[w :: args.workers] for w in range(args.workers)]
    with ProcessPoolExecutor(len(shards), mp_context=get_context("spawn")) as pool:
        jobs = [pool.submit(_train, [[*o, *run] for _, _, o in shard], args.dir / "cv" / f"worker{w}")
                for w, shard in enumerate(shards)]  # fmt: skip
        records = [rec for job in jobs for rec in job.result()]
    cv_dirs = [Path(r["run_dir"]) for r in records]
    ens = ensemble(cv_dirs, args.dir / f"cv_ensemble_{stamp}", k="auto")
    origin = {str(Path(r["run_dir"])): (name, f, o) for (name, f, o), r in zip(
        [m for shard in shards for m in shard], records, strict=True)}  # fmt: skip
    table = []
    for m in sorted((m for m in ens["members"] if m["chosen"]), key=lambda m: (-m["cv_co_bps"], m["fold"])):
        name, f, o = origin[str(Path(m["run_dir"]))]
        test = read_run(m["run_dir"])["metrics"].get("co_bps")
        table.append(f"| {name} | {f} | {m['val_co_bps']:.4f} | {m['cv_co_bps']:.4f} | {test:.4f} | "
                     f"`neuralnets-train {' '.join(o)}` |")  # fmt: skip
    # The best configuration by cross-validation, retrained on the default split with seeds 0..S-1.
    best_name = origin[str(Path(max(ens["members"], key=lambda m: m["cv_co_bps"] or -1e9)["run_dir"]))][0]
    best_overrides = [*configs[best_name], *shared, *run]
    seeds = train_population(
        [compose([*best_overrides, f"seed={s}"]) for s in range(args.seeds)], args.dir / "best_seeds"
    )
    test = np.array([r["metrics"]["co_bps"] for r in seeds])
    val = np.array([r["val_metrics"]["co_bps"] for r in seeds])
    minutes = (time.time() - start) / 60
    data_name = data_cfg.name
    cv = ens["cv_metrics"]
    lines = [
        f"# LFADS on {data_name}: a search in populations, cross-validated over folds, bagged",
        "",
        f"Command: `nice python experiments/population_small_data.py{' --quick' if args.quick else ''}"
        f"{'' if args.recipe == RECIPE else f' --recipe {chr(34)}{args.recipe}{chr(34)}'}"
        f"{f' --name {args.name}' if args.name else ''}` ({minutes:.1f} min wall, of which the search "
        f"{search_minutes:.1f}; {os.cpu_count()} cores, load average at the end "
        f"{', '.join(f'{x:.1f}' for x in os.getloadavg())}). Search: {args.trials} members, populations of "
        f"{args.population}, {args.workers} workers, up to {args.max_epochs} epochs, pruning on validation "
        f"co-bps. Cross-validation: the {len(configs)} best on validation x {n} folds of the non-test "
        f"trials, {args.max_epochs} epochs each ({len(cv_members)} members). Nothing is chosen on test "
        "trials.",
        "",
        f"Test split: {SPLITS.get(data_name, 'the dataset test split')}.",
        "",
        f"**Ensemble** of k = {ens['k']} configurations x {n} folds = {ens['n_members']} members "
        f"({ens['k_rule']}): test {_fmt(ens['metrics'])}; cross-validated (out-of-fold) co-bps "
        f"{cv['co_bps']:.4f}.",
        "",
        f"For comparison, the search's own ensemble (k = {search_ens['k']}, {search_ens['k_rule']} on one "
        f"split's validation trials): test co-bps {search_ens['metrics']['co_bps']:.4f}.",
        "",
        f"**Best single configuration** (search member {best_name}, the best by cross-validation), "
        f"retrained on the default split with seeds 0..{args.seeds - 1}: test co-bps {test.mean():.4f} ± "
        f"{test.std(ddof=1):.4f} ({', '.join(f'{x:.4f}' for x in test)}), validation {val.mean():.4f} ± "
        f"{val.std(ddof=1):.4f}; `neuralnets-population {' '.join(best_overrides)} --seeds {args.seeds}`.",
        "",
        "Every member averaged (its own fold's validation co-bps, its configuration's cross-validated "
        "co-bps, its test co-bps), with the command that retrains it alone:",
        "",
        "| search member | fold | val co-bps | cv co-bps | test co-bps | retrain |",
        "|---|---|---|---|---|---|",
        *table,
    ]
    page = f"population_small_data{'_' + args.name if args.name else ''}.md"
    out = args.dir / page if args.quick else HERE / "results" / page
    out.write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    print(f"written: {out}")


if __name__ == "__main__":
    main()
