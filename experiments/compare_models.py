"""Model comparison over training seeds: registered models x built-in datasets, mean ± sd, baselines.

    python experiments/compare_models.py --jobs 2       # lfads rnn ndt x 5 datasets x seeds 0 1 2
    python experiments/compare_models.py --models lfads ndt --data lorenz --seeds 0 1 --epochs 50 --jobs 2

Each (model, dataset, seed) is one ordinary `neuralnets-train` run in its own process (threads=1), into
`<out>/runs/<model>_<dataset>_s<seed>`: with the recipe `configs/experiment/<model>_<dataset>.yaml` where
one exists, else the data-aware defaults (`model=<model> data=<config>`). `--epochs` sets one equal budget
(`trainer.max_epochs`) for every run; without it each recipe / default keeps its own. Early stopping stays
as the recipe or default sets it. A finished run whose config matches (recipe, seed, budget) is read back,
never retrained; an unfinished one (killed, failed) is retrained in a fresh directory (`..._1`, `..._2`).

Tables, rewritten after every finished run (so a long grid loses nothing) and at the end:
`<table>.md` (per-run rows, then mean ± sd over seeds with n, and the harness baselines of each dataset),
`<table>.csv` (aggregated: mean and sd columns) and `<table>_runs.csv` (per run). Default table stem:
experiments/results/compare. TensorBoard: `tensorboard --logdir <out>/runs`.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shlex
import subprocess
import sys
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
from omegaconf import OmegaConf

from neuralnets.config import CONFIG_DIR, compose, config_names, load_saved_config
from neuralnets.eval.tables import cell, csv_table, markdown_table, save_tables
from neuralnets.files import atomic_path
from neuralnets.runs import CONFIG_FILE, METRICS_FILE, read_run, read_status

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_MODELS = ("lfads", "rnn", "ndt")
# Comparison dataset name -> (configs/data/<config>, extra overrides).
DATASETS: dict[str, tuple[str, tuple[str, ...]]] = {
    "lorenz": ("lorenz", ()),
    "chaotic_rnn": ("chaotic_rnn", ()),
    "mc_maze_small": ("mc_maze_small", ()),
    "ca1_linear_track": ("ca1_linear_track", ()),  # laps
    "ca1_windows": ("ca1_linear_track", ("data.load_kwargs.trials=windows",)),
}
# Columns of the tables, in order: harness metrics (test split) and one validation metric.
METRIC_COLUMNS = ("co_bps", "vel_r2", "fp_bps", "psth_r2", "rate_r2", "latent_r2", "val_co_bps")


@dataclass(frozen=True)
class RunSpec:
    """One run of the grid: what to train and the settings that must match for a run to be reused."""

    model: str
    data: str  # a key of DATASETS
    seed: int
    recipe: str | None  # configs/experiment/<recipe>.yaml, or None for the defaults
    epochs: int | None  # the equal budget (trainer.max_epochs), or None: the recipe's / default's

    @property
    def name(self) -> str:
        """Run directory name: the budget is part of it, so runs of another budget are never reused."""
        budget = f"_e{self.epochs}" if self.epochs else ""
        return f"{self.model}_{self.data}{budget}_s{self.seed}"

    def overrides(self) -> list[str]:
        """`neuralnets-train` overrides for this run (its run directory is added by the caller)."""
        config, extra = DATASETS[self.data]
        head = [f"experiment={self.recipe}"] if self.recipe else [f"model={self.model}", f"data={config}"]
        budget = [f"trainer.max_epochs={self.epochs}"] if self.epochs else []
        return [
            *head,
            *extra,
            *budget,
            f"seed={self.seed}",
            "threads=1",
            "trainer.enable_progress_bar=false",
            "print_baselines=false",
        ]


def find_recipe(model: str, data: str, config_dir: Path = CONFIG_DIR) -> str | None:
    """`<model>_<data>` if configs/experiment/<model>_<data>.yaml exists, else None (the defaults)."""
    name = f"{model}_{data}"
    return name if (config_dir / "experiment" / f"{name}.yaml").is_file() else None


def grid(models: Sequence[str], datasets: Sequence[str], seeds: Sequence[int], epochs: int | None):
    """The runs, seed by seed (every pair gets seed 0 before any gets seed 1: partial grids are useful)."""
    return [RunSpec(m, d, s, find_recipe(m, d), epochs) for s in seeds for d in datasets for m in models]


# ---------------------------------------------------------------------------------------------- reuse
def run_settings(run_dir: Path) -> dict[str, Any] | None:
    """{recipe, seed, epochs, status} of a run directory from its config.yaml and status.json, or None
    when it holds no config (never started)."""
    config = run_dir / CONFIG_FILE
    if not config.is_file():
        return None
    cfg = OmegaConf.to_container(load_saved_config(config))  # never resolved: a run's config is plain data
    status = read_status(run_dir)["status"]  # "finished" for an older run with metrics but no status
    return {
        "recipe": cfg.get("recipe"),
        "seed": cfg.get("seed"),
        "epochs": (cfg.get("trainer") or {}).get("max_epochs"),
        "status": status,
    }


def _matches(spec: RunSpec, settings: Mapping[str, Any]) -> bool:
    same_budget = spec.epochs is None or settings["epochs"] == spec.epochs
    return settings["recipe"] == spec.recipe and settings["seed"] == spec.seed and same_budget


def candidate_dirs(runs_dir: Path, spec: RunSpec) -> list[Path]:
    """`<name>`, `<name>_1`, `<name>_2`, ... that exist, in that order."""
    out, i = [], 0
    while True:
        path = runs_dir / (spec.name if i == 0 else f"{spec.name}_{i}")
        if not path.exists():
            return out
        out.append(path)
        i += 1


def finished_run(runs_dir: Path, spec: RunSpec) -> Path | None:
    """A finished run directory of `spec` (same recipe, seed and budget) under `runs_dir`, or None."""
    for path in candidate_dirs(runs_dir, spec):
        settings = run_settings(path)
        if settings and settings["status"] == "finished" and _matches(spec, settings):
            if (path / METRICS_FILE).is_file():
                return path
    return None


def fresh_dir(runs_dir: Path, spec: RunSpec) -> Path:
    """The first of `<name>`, `<name>_1`, ... that does not exist: an unfinished run is never reused."""
    i = len(candidate_dirs(runs_dir, spec))
    return runs_dir / (spec.name if i == 0 else f"{spec.name}_{i}")


# ---------------------------------------------------------------------------------------------- rows
def run_row(spec: RunSpec, run_dir: Path) -> dict[str, Any]:
    """The per-run table row of a finished run (metrics.json: test `metrics`, `val_metrics`)."""
    record = read_run(run_dir)
    settings = run_settings(run_dir) or {}
    metrics = dict(record.get("metrics") or {})
    val = record.get("val_metrics") or {}
    if val.get("co_bps") is not None:
        metrics["val_co_bps"] = val["co_bps"]
    return {
        "model": spec.model,
        "data": spec.data,
        "seed": spec.seed,
        "recipe": spec.recipe or "defaults",
        "epochs": settings.get("epochs"),
        "steps": record.get("steps"),
        "metrics": {k: metrics.get(k) for k in METRIC_COLUMNS},
        "train_time_s": record.get("train_time_s"),
        "run_dir": str(run_dir),
    }


def mean_sd(values: Iterable[float | None]) -> tuple[float | None, float | None, int]:
    """(mean, sample sd (ddof 1; None for one value), n) over the finite values; (None, None, 0) if none."""
    xs = [float(v) for v in values if v is not None and math.isfinite(float(v))]
    if not xs:
        return None, None, 0
    sd = float(np.std(xs, ddof=1)) if len(xs) > 1 else None
    return float(np.mean(xs)), sd, len(xs)


def format_mean_sd(mean: float | None, sd: float | None, digits: int = 4) -> str:
    """'0.3825 ± 0.0013'; just the mean for one value; '' for none."""
    if mean is None:
        return ""
    return f"{mean:.{digits}f}" if sd is None else f"{mean:.{digits}f} ± {sd:.{digits}f}"


def aggregate(rows: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """One row per (model, data, recipe, epochs) in first-seen order: n seeds, the seeds, and
    (mean, sd) of every metric and of the training time."""
    groups: dict[tuple, list[Mapping[str, Any]]] = {}
    for r in rows:
        groups.setdefault((r["model"], r["data"], r["recipe"], r["epochs"]), []).append(r)
    out = []
    for (model, data, recipe, epochs), members in groups.items():
        stats = {k: mean_sd(m["metrics"].get(k) for m in members) for k in METRIC_COLUMNS}
        stats["train_time_s"] = mean_sd(m.get("train_time_s") for m in members)
        out.append(
            {
                "model": model,
                "data": data,
                "recipe": recipe,
                "epochs": epochs,
                "n": len(members),
                "seeds": sorted(m["seed"] for m in members),
                "stats": {k: (mean, sd) for k, (mean, sd, _) in stats.items()},
            }
        )
    return out


# ---------------------------------------------------------------------------------------------- tables
def markdown(
    rows: Sequence[Mapping[str, Any]],
    baselines: Mapping[str, Sequence[Mapping[str, Any]]],
    preamble: Sequence[str] = (),
) -> str:
    """The report: preamble lines, the mean ± sd table with each dataset's baseline rows under its
    models, then the per-run table."""
    agg = aggregate(rows)
    lines = [*preamble, "", "## Mean ± sd over seeds (test split; val_co_bps on the validation split)", ""]
    header = ["model", "data", "recipe", "epochs", "n", *METRIC_COLUMNS, "train s"]
    body = []
    for data in dict.fromkeys([a["data"] for a in agg] + list(baselines)):
        for a in (a for a in agg if a["data"] == data):
            stats = a["stats"]
            body.append(
                [a["model"], data, a["recipe"], cell(a["epochs"]), str(a["n"])]
                + [format_mean_sd(*stats[k]) for k in METRIC_COLUMNS]
                + [format_mean_sd(*stats["train_time_s"], digits=0)]
            )
        for b in baselines.get(data, ()):
            body.append(
                [b["model"], data, "", "", ""]
                + [cell(b["metrics"].get(k)) for k in METRIC_COLUMNS]
                + [cell(b.get("train_time_s"), 1)]
            )
    lines += markdown_table(header, body).splitlines()
    lines += ["", "## Per run", ""]
    header = ["model", "data", "seed", "recipe", "epochs", "steps", *METRIC_COLUMNS, "train s"]
    lines += markdown_table(
        header,
        (
            [r["model"], r["data"], str(r["seed"]), r["recipe"], cell(r["epochs"]), cell(r["steps"])]
            + [cell(r["metrics"].get(k)) for k in METRIC_COLUMNS]
            + [cell(r.get("train_time_s"), 0)]
            for r in rows
        ),
    ).splitlines()
    return "\n".join(lines) + "\n"


def write_tables(
    stem: Path,
    rows: Sequence[Mapping[str, Any]],
    baselines: Mapping[str, Sequence[Mapping[str, Any]]],
    preamble: Sequence[str] = (),
) -> None:
    """`<stem>.md`, `<stem>.csv` (aggregated + baselines, full precision) and `<stem>_runs.csv`, each
    replaced atomically (a reader never sees half a table)."""
    agg_header = ["model", "data", "recipe", "epochs", "n", "seeds"]
    agg_header += [f"{k}_{s}" for k in (*METRIC_COLUMNS, "train_time_s") for s in ("mean", "sd")]
    agg_rows = [
        [a["model"], a["data"], a["recipe"], a["epochs"], a["n"], " ".join(map(str, a["seeds"]))]
        + [v for k in (*METRIC_COLUMNS, "train_time_s") for v in a["stats"][k]]
        for a in aggregate(rows)
    ]
    for data, rows_b in baselines.items():
        for b in rows_b:
            agg_rows.append(
                [b["model"], data, "", "", "", ""]
                + [v for k in METRIC_COLUMNS for v in (b["metrics"].get(k), None)]
                + [b.get("train_time_s"), None]
            )
    run_header = ["model", "data", "seed", "recipe", "epochs", "steps", *METRIC_COLUMNS, "train_time_s"]
    run_rows = [
        [r["model"], r["data"], r["seed"], r["recipe"], r["epochs"], r["steps"]]
        + [r["metrics"].get(k) for k in METRIC_COLUMNS]
        + [r.get("train_time_s"), r["run_dir"]]
        for r in rows
    ]
    files = {
        stem.with_suffix(".md"): markdown(rows, baselines, preamble),
        stem.with_suffix(".csv"): csv_table(agg_header, agg_rows),
        stem.parent / f"{stem.name}_runs.csv": csv_table([*run_header, "run_dir"], run_rows),
    }
    save_tables(files)


# ---------------------------------------------------------------------------------------------- baselines
def dataset_baselines(data: str, cache_dir: Path) -> list[dict[str, Any]]:
    """The harness baselines of comparison dataset `data` on its test split (val co-bps too), cached
    in `<cache_dir>/<data>.json` so that rewriting the tables never refits them (refit when the
    harness's list of baselines has changed since)."""
    from neuralnets.data import load
    from neuralnets.eval import evaluate
    from neuralnets.eval.baselines import BASELINES, run_baselines
    from neuralnets.training.build import load_kwargs

    path = cache_dir / f"{data}.json"
    if path.is_file():
        cached = json.loads(path.read_text())
        if isinstance(cached, dict) and cached.get("baselines") == list(BASELINES):
            return cached["rows"]

    config, extra = DATASETS[data]
    cfg = compose([f"data={config}", *extra])  # the data the runs train on
    spikes = load(cfg.data.source, **load_kwargs(cfg))
    rows = []
    for run in run_baselines(spikes):
        metrics = evaluate(run.rates, spikes, "test", run.latents)
        metrics["val_co_bps"] = evaluate(run.rates, spikes, "val")["co_bps"]
        rows.append(
            {
                "model": f"baseline/{run.name}",
                "metrics": {k: _finite(metrics.get(k)) for k in METRIC_COLUMNS},
                "train_time_s": run.train_time_s,
            }
        )
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps({"baselines": list(BASELINES), "rows": rows}, indent=1) + "\n")
    return rows


def _finite(x: Any) -> float | None:
    return float(x) if x is not None and math.isfinite(float(x)) else None


# ---------------------------------------------------------------------------------------------- driver
def train_command(spec: RunSpec, run_dir: Path) -> list[str]:
    return [
        sys.executable,
        "-m",
        "neuralnets.training.train",
        *spec.overrides(),
        f"hydra.run.dir={run_dir}",
    ]


def run_grid(specs: Sequence[RunSpec], out: Path, jobs: int, on_done) -> None:
    """Train every spec without a finished run, `jobs` processes at a time; `on_done(spec, run_dir,
    ok)` after each (also for the runs read back)."""
    runs_dir, logs_dir = out / "runs", out / "logs"
    runs_dir.mkdir(parents=True, exist_ok=True)
    logs_dir.mkdir(parents=True, exist_ok=True)
    todo = []
    for spec in specs:
        done = finished_run(runs_dir, spec)
        if done is not None:
            print(f"reuse {done}", flush=True)
            on_done(spec, done, True)
        else:
            todo.append(spec)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    running: list[tuple[RunSpec, Path, subprocess.Popen, Any, float]] = []
    while todo or running:
        while todo and len(running) < jobs:
            spec = todo.pop(0)
            run_dir = fresh_dir(runs_dir, spec)
            run_dir.mkdir(parents=True)  # taken now: a second start in the same slot picks the next name
            log = open(logs_dir / f"{run_dir.name}.log", "w")  # noqa: SIM115 - closed when the run ends
            cmd = train_command(spec, run_dir)
            print(f"start {run_dir.name}: {shlex.join(cmd[1:])}", flush=True)
            proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env, cwd=ROOT)
            running.append((spec, run_dir, proc, log, time.perf_counter()))
        time.sleep(2)
        for item in [r for r in running if r[2].poll() is not None]:
            spec, run_dir, proc, log, start = item
            running.remove(item)
            log.close()
            ok = proc.returncode == 0 and (run_dir / METRICS_FILE).is_file()
            state = "done" if ok else f"FAILED (exit {proc.returncode})"
            print(f"{state} {run_dir.name} ({time.perf_counter() - start:.0f} s)", flush=True)
            on_done(spec, run_dir, ok)


def main(argv: Sequence[str] | None = None) -> None:
    from neuralnets.models import MODELS

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument(
        "--models", nargs="+", default=list(DEFAULT_MODELS), help="registered names or model configs"
    )
    p.add_argument("--data", nargs="+", default=list(DATASETS), choices=list(DATASETS))
    p.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    p.add_argument("--epochs", type=int, default=None, help="equal budget: trainer.max_epochs of every run")
    p.add_argument("--jobs", type=int, default=1, help="runs at once, each a process with one thread")
    p.add_argument("--out", type=Path, default=Path("runs/compare"), help="run directories and logs")
    p.add_argument("--table", type=Path, default=ROOT / "experiments/results/compare", help="table stem")
    args = p.parse_args(argv)
    known = set(MODELS) | set(config_names("model"))  # rnn_vae, ...
    unknown = [m for m in args.models if m not in known]
    if unknown:
        p.error(
            f"--models: {unknown} are neither registered models nor model configs; known: {sorted(known)}"
        )
    if args.epochs is not None and args.epochs < 1:
        p.error(f"--epochs must be >= 1; got {args.epochs}")
    if args.jobs < 1:
        p.error(f"--jobs must be >= 1; got {args.jobs}")

    import torch

    torch.set_num_threads(1)
    specs = grid(args.models, args.data, args.seeds, args.epochs)
    command = "python experiments/compare_models.py " + shlex.join(argv if argv is not None else sys.argv[1:])
    baselines = {d: dataset_baselines(d, args.out / "baselines") for d in args.data}
    finished: dict[RunSpec, dict[str, Any]] = {}
    failed: list[str] = []

    def on_done(spec: RunSpec, run_dir: Path, ok: bool) -> None:
        if ok:
            finished[spec] = run_row(spec, run_dir)
        else:
            failed.append(f"{run_dir.name} (log: {args.out / 'logs' / run_dir.name}.log)")
        write_report()

    def write_report() -> None:
        rows = [finished[s] for s in specs if s in finished]  # in grid order
        budget = f"{args.epochs} epochs for every run" if args.epochs else "each recipe's / default's own"
        preamble = [
            "# Model comparison over training seeds",
            "",
            f"Command: `{command}` (updated {datetime.now(timezone.utc):%Y-%m-%d %H:%M} UTC).",
            f"Budget (trainer.max_epochs): {budget}; early stopping as each recipe / default sets it.",
            f"Runs finished: {len(rows)} of {len(specs)}"
            + (f"; failed: {', '.join(failed)}" if failed else ""),
            "Recipe: configs/experiment/<recipe>.yaml, or `defaults` (model=<model> data=<data>).",
            "sd: sample sd over seeds (ddof 1); a value without ± is one run. Baselines are deterministic.",
        ]
        write_tables(args.table, rows, baselines, preamble)

    write_report()  # baselines first: the tables exist from the start
    run_grid(specs, args.out, args.jobs, on_done)
    print(f"tables: {args.table}.md, {args.table}.csv, {args.table}_runs.csv", flush=True)


if __name__ == "__main__":
    main()
