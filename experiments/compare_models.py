"""Model comparison: every model family (and the harness baselines) on the built-in datasets.

    python experiments/compare_models.py                      # all models x lorenz, mc_maze_small
    python experiments/compare_models.py --models lfads ndt --data lorenz --epochs 50

Each (model, dataset) pair trains through the real `neuralnets-train` pipeline for a fixed epoch
budget into `<out>/runs/<model>_<data>/`, so the TensorBoard runs line up side by side
(`tensorboard --logdir <out>/runs`). The table (harness metrics on the test split, training time,
parameters, plus baseline rows) is written to `<out>/compare.md` and `<out>/compare.csv`. A pair whose
run already finished under `<out>` is read back rather than trained again, so an interrupted study
resumes where it stopped.
Where the data have behaviour, an RNN behaviour decoder (experiments/behavior.py) is also trained
from each model's inferred rates to velocity and scored by R² on the test trials (`rnn_dec_r2`).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
from behavior import fit_behavior_decoder  # experiments/behavior.py (this script's folder)
from hydra import compose, initialize_config_dir

from neuralnets.data import load
from neuralnets.eval.baselines import baseline_rows
from neuralnets.eval.metrics import r2_score
from neuralnets.eval.tables import to_markdown, write_table
from neuralnets.models import MODELS as REGISTRY
from neuralnets.runs import METRICS_FILE, PREDICTIONS_FILE, read_predictions, read_run
from neuralnets.training.build import model_config
from neuralnets.training.train import CONFIG_DIR, train

MODELS = ("lfads", "rnn", "rnn_vae", "ndt", "gpfa")
DATASETS = ("lorenz", "mc_maze_small")
# Per-dataset settings every model shares; the budget is a fixed number of epochs.
DATA_OVERRIDES = {
    "lorenz": ["module.coordinated_dropout=0.3"],
    "chaotic_rnn": ["module.coordinated_dropout=0.3"],
    "mc_maze_small": ["module.coordinated_dropout=0.3", "data.batch_size=16"],
}


def behavior_decoder_r2(data, rates: np.ndarray, seed: int = 0) -> float | None:
    """R² of an RNN decoder from inferred rates (observed bins) to behaviour, fit on train, scored on test."""
    if data.behavior is None:
        return None
    has = set(data.meta.get("behavior_splits", ("train", "val", "test")))
    if not {"train", "test"} <= has:
        return None
    tr, te = data.indices("train"), data.indices("test")
    t_obs = data.n_obs
    pred = fit_behavior_decoder(rates[tr, :t_obs], data.behavior[tr], rates[te, :t_obs], seed=seed)
    return float(r2_score(pred.reshape(-1, pred.shape[-1]), data.behavior[te].reshape(-1, pred.shape[-1])))


def data_overrides(model: str, dataset: str) -> list[str]:
    """`DATA_OVERRIDES` of `dataset`, less coordinated dropout for a model that takes none (GPFA)."""
    overrides = DATA_OVERRIDES.get(dataset, [])
    if not REGISTRY[model_config(model)["name"]].accepts_coordinated_dropout:
        overrides = [o for o in overrides if not o.startswith("module.coordinated_dropout=")]
    return overrides


def run_pair(model: str, dataset: str, epochs: int, run_dir: Path) -> dict:
    overrides = [
        f"model={model}",
        f"data={dataset}",
        f"trainer.max_epochs={epochs}",
        "trainer.enable_progress_bar=false",
        "callbacks.early_stopping_patience=0",
        *data_overrides(model, dataset),
    ]
    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
        cfg = compose("train", overrides=overrides)
    record = train(cfg, run_dir)
    record["config_name"] = model
    return record


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--models", nargs="+", default=list(MODELS), choices=MODELS)
    p.add_argument(
        "--data", nargs="+", default=list(DATASETS), choices=("lorenz", "chaotic_rnn", "mc_maze_small")
    )
    p.add_argument("--epochs", type=int, default=150, help="training budget per model (epochs)")
    p.add_argument("--out", type=Path, default=Path("experiments/results/compare"))
    args = p.parse_args()

    records = []
    for dataset in args.data:
        baselines = None
        for model in args.models:
            start = time.perf_counter()
            run_dir = args.out / "runs" / f"{model}_{dataset}"
            if (run_dir / METRICS_FILE).is_file():  # finished earlier: reuse, never retrain over it
                record = read_run(run_dir)
            else:
                record = run_pair(model, dataset, args.epochs, run_dir)
            data = load(dataset, **record.get("data_kwargs", {}))
            rates = read_predictions(args.out / "runs" / f"{model}_{dataset}" / PREDICTIONS_FILE)["rates"]
            dec = behavior_decoder_r2(data, rates)
            if dec is not None:
                record["metrics"]["rnn_dec_r2"] = dec
            record["model"] = f"{record['model']} ({model})"
            records.append(record)
            baselines = baselines or baseline_rows(data, "test")
            print(
                f"{model} on {dataset}: {json.dumps(record['metrics'])} ({time.perf_counter() - start:.0f} s)"
            )
        records += baselines or []

    write_table(records, args.out / "compare.csv", args.out / "compare.md")
    print(to_markdown(records))


if __name__ == "__main__":
    main()
