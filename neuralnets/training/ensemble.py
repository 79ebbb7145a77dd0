"""`neuralnets-ensemble`: average the predicted rates of several runs on the same data.

    neuralnets-ensemble runs/a runs/b runs/c --out runs/ensemble_abc            # k chosen on val
    neuralnets-ensemble runs/tune/lfads_mc_maze_small/members/* --out runs/ens --k 3

Only finished runs are members: a failed, diverged, interrupted or running one is skipped and named
(on stderr and in metrics.json's `skipped`); fewer than 2 finished runs is an error. Members are
ranked by validation co-bps; `--k N` averages the best N, `--k auto` (default) the best k
whose average scores highest on the validation trials (test trials are never used to choose). The
output is an ordinary run directory: `predictions.h5` (mean rates `(trials, T, N)`, no latents: the
members' latent spaces differ), `metrics.json` (test metrics, `val_metrics`, `members`, `k`, `status`)
and a TensorBoard hparams row, so `neuralnets-eval`, `neuralnets-compare` and TensorBoard read it
like a trained run.

Runs that differ only in their cross-validation fold (`data.load_kwargs.fold`) are bagged: k counts
configurations (each averaged over its folds), ranked and chosen by cross-validation
(`neuralnets.training.fold_ensemble`); metrics.json adds `cv_metrics` (out-of-fold, every fold's trials).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from neuralnets.cli import run_cli
from neuralnets.data.spikedata import SpikeData
from neuralnets.errors import ConfigError, DataError, RunStatusError
from neuralnets.runs import (
    load_run_data,
    read_predictions,
    read_run,
    read_status,
    recorded_run,
    write_metrics,
    write_predictions,
    write_status,
)
from neuralnets.training.fold_ensemble import bagged_ensemble, base_data, differ_only_in_fold

SELECT_METRIC = "co_bps"  # validation metric that ranks members and chooses k


def choose_members(
    rates: Sequence[np.ndarray], data: SpikeData, k: int | str = "auto"
) -> tuple[list[int], list[float], dict[int, float]]:
    """(chosen member indices, each member's val co-bps, {k: val co-bps of the top-k mean}) for `rates`
    (members' `(trials, T, N)` arrays): members ranked by val co-bps, then the best `k` (or, for
    "auto", the k whose mean of the top k scores highest on val)."""
    from neuralnets.eval.harness import evaluate  # here: `neuralnets-ensemble --help` needs no PyTorch

    scores = [evaluate(r, data, "val")[SELECT_METRIC] for r in rates]
    order = sorted(range(len(rates)), key=lambda i: -scores[i])
    if k == "auto":
        curve = {
            n: evaluate(_mean([rates[i] for i in order[:n]]), data, "val")[SELECT_METRIC]
            for n in range(1, len(rates) + 1)
        }
        k = max(curve, key=curve.get)
    else:
        curve = {}
        if not 1 <= int(k) <= len(rates):
            raise ConfigError(f"--k {k}: expected 'auto' or 1..{len(rates)} (the number of runs)")
    return order[: int(k)], scores, curve


def finished_runs(run_dirs: Sequence[str | Path]) -> tuple[list[Path], list[dict[str, Any]]]:
    """(the finished runs of `run_dirs`, [{"run_dir", "status", "error"} of each other one]): only
    finished runs are members (a failed, diverged, interrupted or running one is skipped, named)."""
    finished, skipped = [], []
    for run_dir in map(Path, run_dirs):
        try:
            status = read_status(run_dir)
        except ValueError as err:  # a damaged status.json
            status = {"status": "unreadable", "error": str(err)}
        if status["status"] == "finished":
            finished.append(run_dir)
        else:
            why = status["status"] if run_dir.is_dir() else "no such directory"
            skipped.append({"run_dir": str(run_dir), "status": why, "error": status.get("error")})
    return finished, skipped


def check_finite_rates(rates: np.ndarray, run_dir: str | Path) -> None:
    """A DataError naming `run_dir` and the first entry when its rates `(trials, T, N)` are not all finite."""
    bad = ~np.isfinite(rates)
    if bad.any():
        trial, t, n = np.argwhere(bad)[0]
        raise DataError(
            f"{run_dir}: predicted rates are not finite ({int(bad.sum())} entries; the first at trial "
            f"{trial}, bin {t}, neuron {n}: {rates[trial, t, n]}); an ensemble needs finite rates"
        )


def _mean(rates: Sequence[np.ndarray]) -> np.ndarray:
    return np.mean(np.stack(rates), axis=0, dtype=np.float64).astype(np.float32)  # (trials, T, N)


def ensemble(
    run_dirs: Sequence[str | Path], out: str | Path, k: int | str = "auto", trust_unverified: bool = False
) -> dict[str, Any]:
    """Average the rates of `run_dirs` (best `k` on val) into the new run directory `out`; returns
    what metrics.json holds. Each member's predictions.h5 is verified against its sha256 record (one
    without a record only with `trust_unverified`)."""
    from neuralnets.eval.harness import evaluate

    out = Path(out)
    if out.exists() and any(out.iterdir()):
        raise FileExistsError(f"{out} exists and is not empty; refusing to overwrite it")
    if len(run_dirs) < 2:
        raise ConfigError(f"an ensemble needs at least 2 runs; got {len(run_dirs)}")
    finished, skipped = finished_runs(run_dirs)
    if len(finished) < 2:
        left = f"only {finished[0]}" if finished else "none"
        named = "; ".join(f"{s['run_dir']} (status {s['status']})" for s in skipped)
        raise RunStatusError(
            f"an ensemble needs at least 2 finished runs; {left} of the {len(run_dirs)} given is finished "
            f"(skipped: {named})"
        )
    runs = [read_run(r) for r in finished]
    folds = differ_only_in_fold(runs)  # members on different folds: bagged, chosen by cross-validation
    data, data_kwargs = base_data(runs) if folds else (load_run_data(runs[0]), runs[0].get("data_kwargs"))
    rates = []
    for run in runs:
        r = read_predictions(run["run_dir"], trust_unverified)["rates"]
        check_finite_rates(r, run["run_dir"])
        if r.shape[0] != data.n_trials or (rates and r.shape != rates[0].shape):
            raise DataError(
                f"{run['run_dir']}: predicted rates of shape {r.shape}; the dataset has {data.n_trials} "
                f"trials" + (f" and {runs[0]['run_dir']} predicted {rates[0].shape}" if rates else "")
            )
        rates.append(r)
    extra: dict[str, Any] = {}
    if folds:
        bag = bagged_ensemble(rates, runs, data, k)
        mean, members, chosen_runs, curve, k_rule = (
            bag[x] for x in ("rates", "members", "chosen", "curve", "k_rule")
        )
        skipped = skipped + bag["skipped"]
        extra = {"cv_metrics": bag["cv_metrics"], "n_members": len(chosen_runs)}
    else:
        chosen_runs, scores, curve = choose_members(rates, data, k)
        mean = _mean([rates[i] for i in chosen_runs])
        members = [
            {
                "run_dir": run["run_dir"],
                "model": run["model"],
                f"val_{SELECT_METRIC}": s,
                "chosen": i in chosen_runs,
            }
            for i, (run, s) in enumerate(zip(runs, scores, strict=True))
        ]
        k_rule = f"top-k by val {SELECT_METRIC}" + (" (k chosen on val)" if k == "auto" else "")
    with recorded_run(out):
        write_predictions(out, {"rates": mean})
        val = evaluate(mean, data, "val")
        test = evaluate(mean, data, "test")
        models = sorted({runs[i]["model"] for i in chosen_runs})
        k_chosen = bag["k"] if folds else len(chosen_runs)
        record = {
            "model": f"Ensemble({'+'.join(models)}, k={k_chosen})",
            "data": runs[0]["data"],
            "data_source": runs[0].get("data_source"),
            "data_kwargs": data_kwargs or {},
            "split": "test",
            "val_metrics": val,
            "train_time_s": None,
            "n_parameters": None,
            "k": k_chosen,
            "k_rule": k_rule,
            f"val_{SELECT_METRIC}_by_k": {str(n): v for n, v in curve.items()},
            "members": members,
            "skipped": skipped,
            **extra,
        }
        write_metrics(test, out, extra=record)
        _log_hparams(out, record, test)
        write_status(out, "finished")
    return {**record, "metrics": test, "run_dir": str(out)}


def _log_hparams(out: Path, record: dict[str, Any], metrics: dict[str, float]) -> None:
    """One TensorBoard hparams row for the ensemble, naming its members."""
    from torch.utils.tensorboard import SummaryWriter

    from neuralnets.eval.tblog import log_to_tensorboard

    chosen = [m["run_dir"] for m in record["members"] if m["chosen"]]
    hparams = {
        "model": record["model"],
        "data": record["data"],
        "data_source": str(record["data_source"]),
        "data_kwargs": record["data_kwargs"],
        "ensemble_k": record["k"],
        "ensemble_members": ", ".join(chosen),
    }
    with SummaryWriter(log_dir=str(out)) as writer:
        log_to_tensorboard(writer, hparams, metrics)


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="neuralnets-ensemble", description=__doc__.split("\n")[0])
    p.add_argument("run_dirs", nargs="+", metavar="RUN", help="finished run directories on the same data")
    p.add_argument("--out", required=True, metavar="DIR", help="new run directory for the ensemble")
    p.add_argument("--k", default="auto", help="'auto' (chosen on val co-bps) or how many best members")
    p.add_argument(
        "--trust-unverified",
        action="store_true",
        help="accept members' predictions.h5 without a sha256 record (the digest is logged)",
    )
    return p


def _main(argv: list[str] | None) -> int:
    args = _parser().parse_args(argv)
    from neuralnets.eval.tables import format_table

    k = args.k if args.k == "auto" else _int_k(args.k)
    record = ensemble(args.run_dirs, args.out, k, trust_unverified=args.trust_unverified)
    for s in record["skipped"]:
        print(f"neuralnets-ensemble: skipped {s['run_dir']}: status {s['status']}", file=sys.stderr)
    print(format_table([record], baselines=False))
    print(f"run directory: {record['run_dir']}")
    return 0


def _int_k(text: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise ConfigError(f"--k {text!r}: expected 'auto' or a whole number") from None


def main(argv: list[str] | None = None) -> int:
    """Entry point of `neuralnets-ensemble` (errors and exit codes: `neuralnets.cli.run_cli`)."""
    return run_cli("neuralnets-ensemble", _main, argv)


if __name__ == "__main__":
    raise SystemExit(main())
