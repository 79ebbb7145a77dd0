"""Small-data results from one command (#30): search LFADS settings on NLB MC_Maze_Small in populations,
choose on validation, ensemble, and list every member averaged with the settings that retrain it.

    nice python experiments/population_small_data.py [--quick] [--dir runs/population_small_data]

1. An Optuna study (`neuralnets-tune`, successive-halving pruning on validation co-bps every epoch) around
   the `lfads_mc_maze_small` recipe, its workers training `--population` members at a time as one batched
   population (`tune.population`), `--workers` workers, `--trials` members in all.
2. `neuralnets-ensemble` over every finished member: members ranked by validation co-bps and k chosen on
   the validation trials (the test trials are never used to choose anything).
3. The results page (`experiments/results/population_small_data.md`, or `--quick`: beside the study):
   the ensemble's test metrics and, for every member it averaged, its run directory, validation and test
   co-bps, and the `neuralnets-train` command that retrains it alone (its sampled settings and seed).
Budget: the full settings are sized for at most 60 min wall on the 2-core CPU (not yet run end to end;
the lead runs it); `--quick` is a minutes-long check of the pipeline on the same data.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
RECIPE = "experiment=lfads_mc_maze_small"


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
    args = ap.parse_args()
    if args.quick:
        args.trials, args.population, args.max_epochs = 4, 2, 3
    import torch
    from omegaconf import OmegaConf

    from neuralnets.config import compose
    from neuralnets.runs import read_run
    from neuralnets.training.ensemble import ensemble
    from neuralnets.training.tune import tune

    torch.set_num_threads(1)
    start = time.time()
    study_dir = args.dir / "study"
    overrides = [
        RECIPE,
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
    ens = ensemble(members, args.dir / "ensemble", k="auto")
    minutes = (time.time() - start) / 60
    chosen = [m for m in ens["members"] if m["chosen"]]
    by_dir = {str(r["run_dir"]): r for r in rows if r.get("run_dir")}
    lines = [
        "# LFADS on MC_Maze_Small: a search in populations, chosen on validation, ensembled",
        "",
        f"Command: `nice python experiments/population_small_data.py{' --quick' if args.quick else ''}` "
        f"({minutes:.1f} min wall). Study: {args.trials} members, populations of {args.population}, "
        f"{args.workers} workers, up to {args.max_epochs} epochs, pruning on validation co-bps. "
        "Members ranked and k chosen on the validation trials only; test trials scored after.",
        "",
        f"Ensemble of k = {ens['k']} ({ens['k_rule']}): test {_fmt(ens['metrics'])}; "
        f"validation {_fmt(ens['val_metrics'])}.",
        "",
        "Every member averaged, with the command that retrains it alone:",
        "",
        "| member | val co-bps | test co-bps | retrain |",
        "|---|---|---|---|",
    ]
    for m in chosen:
        run_dir = Path(m["run_dir"])
        run = read_run(run_dir)
        row = by_dir[str(run_dir.relative_to(study_dir))]  # the member's sampled settings
        seed = OmegaConf.load(run_dir / "config.yaml").seed
        sets = " ".join(f"{k}={row[k]}" for k in row if k.startswith(("module.", "model.")))
        # as the study trained it: its epochs (pruned members stopped early), best checkpoint on val co-bps
        command = (
            f"neuralnets-train {RECIPE} seed={seed} {sets} trainer.max_epochs={row['epochs_trained']} "
            "callbacks=val_co_bps callbacks.early_stopping_patience=0"
        )
        test = run["metrics"].get("co_bps")
        lines.append(f"| {run_dir.name} | {m['val_co_bps']:.4f} | {test:.4f} | `{command}` |")
    out = (
        (args.dir / "population_small_data.md")
        if args.quick
        else HERE / "results" / "population_small_data.md"
    )
    out.write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    print(f"written: {out}")


if __name__ == "__main__":
    main()
