"""Command-line tools of the harness.

neuralnets-eval RUN_DIR                              # score a run's predictions on its own dataset
neuralnets-eval rates.npz --data lorenz --split val  # score a rates file on a dataset
neuralnets-eval --baselines --data mc_maze_small     # the baseline rows alone
neuralnets-eval --baselines --data my.nwb -o bin_size=0.01 -o heldout_fraction=0.25  # loader options
neuralnets-eval runs/lfads_maze --nlb-submission sub.h5 --nlb-targets eval_data_val.h5  # NLB files
neuralnets-compare runs/a runs/b --csv out.csv --markdown out.md

Errors (missing directory or file, a dataset that cannot be loaded, rates whose shape does not match
the dataset, a run directory that is not finished) print one line and exit with status 2
(NEURALNETS_DEBUG=1: the full traceback; exit codes: `neuralnets.errors`). `neuralnets-compare`
skips run directories that are not finished runs (running, failed, diverged, or no run at all) with
a one-line warning each.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

import numpy as np

from neuralnets.cli import run_cli
from neuralnets.data.options import add_load_options_arg, parse_load_options
from neuralnets.data.sessions import MultiSessionData
from neuralnets.errors import ConfigError, NeuralnetsError, RunStatusError
from neuralnets.files import write_text_atomic
from neuralnets.runs import (
    METRICS_FILE,
    STATUS_FILE,
    holds_run,
    read_predictions,
    read_run,
    require_finished,
)


def _add_output_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--csv", metavar="OUT.csv", help="also write the table as CSV (full precision)")
    p.add_argument("--markdown", metavar="OUT.md", help="also write the table as markdown")
    p.add_argument(
        "--tensorboard",
        metavar="LOGDIR",
        help="also write one TensorBoard run per row under LOGDIR (hparams table: rows side by side)",
    )
    p.add_argument("--device", default="cpu", help="torch device for the metrics and the GLM (e.g. cuda)")
    p.add_argument("--title", help="table title")


def _eval_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="neuralnets-eval",
        description="Score predicted rates (a run directory or a rates file) on a dataset with the shared "
        "NLB-style harness and print a table.",
    )
    p.add_argument(
        "target",
        nargs="?",
        help="run directory (metrics.json + predictions.h5/.npz) or rates file (.h5/.npz with 'rates' "
        "[and 'latents'], or .npy) of shape (trials, T, N) for all trials of the dataset",
    )
    p.add_argument(
        "--data",
        help="dataset name (lorenz, chaotic_rnn, mc_maze_small, ca1_linear_track) or file; default: run's",
    )
    p.add_argument("--split", help="trials to score: train, val, test (default: the run's split, else test)")
    p.add_argument("--model", help="model name for the table (default: the run's, else the file name)")
    p.add_argument(
        "--trust-unverified",
        action="store_true",
        help="accept a run's predictions.h5 without a sha256 record (the digest is logged)",
    )
    p.add_argument(
        "--out", metavar="METRICS.json", help="write {model, data, split, metrics} to this JSON file"
    )
    p.add_argument(
        "--baselines",
        action="store_true",
        help="add the baseline rows (smoothing + GLM, mean rates, condition average with conditions, "
        "true rates for synthetic data)",
    )
    p.add_argument(
        "--nlb-submission",
        metavar="OUT.h5",
        help="also write the rates as an NLB submission (train = train+val trials, eval = test trials); "
        "never overwrites",
    )
    p.add_argument(
        "--nlb-targets",
        metavar="EVAL_DATA.h5",
        help="also score the rates against an NLB target file (adds a row)",
    )
    p.add_argument(
        "--nlb-dataset",
        metavar="GROUP",
        help="group name in NLB files (default: from the dataset, e.g. mc_maze_small)",
    )
    add_load_options_arg(p, "with a run directory and no --data: added to the options the run recorded")
    _add_output_args(p)
    return p


def _compare_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="neuralnets-compare",
        description="One table across run directories (model, data, each metric, training time, parameters), "
        "with the baseline rows of every dataset present.",
    )
    p.add_argument("run_dirs", nargs="+", metavar="RUN_DIR", help="run directories holding metrics.json")
    p.add_argument(
        "--baselines",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="add baseline rows for each dataset present (default: yes)",
    )
    add_load_options_arg(p, "for the baseline rows: added to the options each run recorded")
    _add_output_args(p)
    return p


# ---------------------------------------------------------------------------------------------- helpers
# The harness (PyTorch) is imported when a command runs, not when its parser is built: --help is fast.
def _load_data(source: str, kwargs: dict):
    from neuralnets.data.loaders import load

    return load(source, **kwargs)


def _to_device(x: np.ndarray | None, device: str):
    if x is None or device == "cpu":
        return x
    import torch

    return torch.as_tensor(x, device=device)


def _emit(rows: list[dict[str, Any]], args: argparse.Namespace) -> None:
    from neuralnets.eval.tables import print_table, write_table
    from neuralnets.eval.tblog import write_tensorboard

    print_table(rows, title=args.title)
    write_table(rows, args.csv, args.markdown)
    if args.tensorboard:
        write_tensorboard(rows, args.tensorboard)


# ---------------------------------------------------------------------------------------------- eval
def _eval(argv: list[str] | None) -> int:
    args = _eval_parser().parse_args(argv)
    from neuralnets.data.formats.nlb_targets import read_nlb_targets
    from neuralnets.eval.baselines import baseline_rows
    from neuralnets.eval.harness import evaluate
    from neuralnets.eval.nlb import (
        run_group_name,
        score_against_targets,
        submission_from_run,
        write_run_submission,
    )

    options = parse_load_options(args.opt)
    if args.target is None and not args.baselines:
        raise ConfigError("give a run directory or rates file to score, or --baselines with --data")
    if args.target is None and (args.nlb_submission or args.nlb_targets):
        raise ConfigError("--nlb-submission and --nlb-targets need rates: give a run directory or rates file")
    run: dict[str, Any] = {}
    target = Path(args.target) if args.target else None
    if target is not None:
        if not target.exists():
            raise FileNotFoundError(f"{target}: no such run directory or rates file")
        if target.is_dir() and not holds_run(target):  # --data would not help: there is nothing to score
            raise RunStatusError(
                f"{target} is not a run directory (no {STATUS_FILE}, {METRICS_FILE} or predictions file): "
                "give a finished run's directory or a rates file (.h5, .npz, .npy)"
            )
        if (target / STATUS_FILE).is_file():
            require_finished(target)  # a running, failed or diverged run has nothing final to score
        if target.is_dir() and (target / METRICS_FILE).is_file():
            run = read_run(target)
    source = args.data or run.get("data_source") or run.get("data")
    if source is None:
        raise ConfigError(f"{target}: no dataset recorded there; pass --data NAME_OR_PATH")
    data = _load_data(source, {**({} if args.data else run.get("data_kwargs") or {}), **options})
    split = args.split or run.get("split") or "test"
    label = args.data or run.get("data") or data.name
    rows: list[dict[str, Any]] = []
    if target is not None:
        pred = read_predictions(target, args.trust_unverified)  # a run's predictions.h5 verified first
        metrics = evaluate(
            _to_device(pred["rates"], args.device),
            data,
            split,
            _to_device(pred.get("latents"), args.device),
            inputs=_to_device(pred.get("inputs"), args.device),
        )
        model = args.model or run.get("model") or target.stem
        rows.append(
            {
                "model": model,
                "data": label,
                "split": split,
                "metrics": metrics,
                "train_time_s": run.get("train_time_s"),
                "n_parameters": run.get("n_parameters"),
            }
        )
        if args.nlb_submission:
            written = write_run_submission(args.nlb_submission, pred["rates"], data, args.nlb_dataset)
            print(f"NLB submission: {written}")
        if args.nlb_targets:
            targets = read_nlb_targets(args.nlb_targets, run_group_name(data, args.nlb_dataset))
            nlb = score_against_targets(submission_from_run(pred["rates"], data), targets)
            rows.append(
                {"model": f"{model} (NLB targets)", "data": label, "split": "nlb-eval", "metrics": nlb}
            )
        if args.out:
            record = {"model": model, "data": label, "split": split, "metrics": metrics}
            write_text_atomic(args.out, json.dumps(record, indent=2) + "\n")
    if args.baselines:
        rows += baseline_rows(data, split, data_label=label, device=args.device)
    _emit(rows, args)
    return 0


def eval_main(argv: list[str] | None = None) -> int:
    """Entry point of `neuralnets-eval`."""
    return run_cli("neuralnets-eval", _eval, argv)


# ---------------------------------------------------------------------------------------------- compare
def _compare(argv: list[str] | None) -> int:
    args = _compare_parser().parse_args(argv)
    from neuralnets.eval.baselines import baseline_rows

    options = parse_load_options(args.opt)
    rows, skipped = [], []
    for d in args.run_dirs:
        try:
            require_finished(d)
            rows.append(read_run(d))
        except (NeuralnetsError, OSError) as e:  # not a finished run: skipped, said below
            skipped.append(" ".join(str(e).split()))
    if not rows:
        raise ConfigError(f"no finished run to compare: {'; '.join(skipped)}")
    for reason in skipped:
        print(f"neuralnets-compare: skipping: {reason}", file=sys.stderr)
    if args.baselines:
        seen: set[tuple] = set()
        for r in list(rows):
            source = r.get("data_source") or r["data"]
            kwargs = {**(r.get("data_kwargs") or {}), **options}
            key = (str(source), json.dumps(kwargs, sort_keys=True), r["split"])
            if key in seen:
                continue
            seen.add(key)
            data = _load_data(source, kwargs)
            if isinstance(data, MultiSessionData):  # the baselines score one session's SpikeData
                print(
                    f"neuralnets-compare: no baseline rows for {r['data']} (several sessions)",
                    file=sys.stderr,
                )
                continue
            rows += baseline_rows(data, r["split"], data_label=r["data"], device=args.device)
    _emit(rows, args)
    return 0


def compare_main(argv: list[str] | None = None) -> int:
    """Entry point of `neuralnets-compare`."""
    return run_cli("neuralnets-compare", _compare, argv)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(eval_main())
