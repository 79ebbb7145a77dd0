"""`neuralnets-analyze RUN_DIR`: the command (its options, errors and exit codes); the analyses and
the report are `neuralnets.analysis.report`, imported (with PyTorch) only once the options are read,
so `--help` and a bad option are answered at once."""

from __future__ import annotations

import argparse

from neuralnets.analysis.manifolds import MIN_TAU_BINS  # numpy only
from neuralnets.cli import run_cli
from neuralnets.errors import AnalysisError

DESCRIPTION = "What a trained model found, as a report and TensorBoard figures."


def _parser() -> argparse.ArgumentParser:
    """Every command-line option of `neuralnets-analyze` (kept here, in one place)."""
    p = argparse.ArgumentParser(prog="neuralnets-analyze", description=DESCRIPTION)
    p.add_argument(
        "target", metavar="RUN_DIR", nargs="?", help="a finished run directory or a bundled model name"
    )
    p.add_argument("--compare", nargs=2, metavar=("A", "B"), default=None,
                   help="compare two models' dynamics (DSA) instead; runs or bundled names")  # fmt: skip
    p.add_argument("--spread", nargs="+", metavar="RUN", default=None,
                   help="the modes' spread over runs of one configuration (seeds)")  # fmt: skip
    p.add_argument("--out", default=None, help="output directory (default: the run directory)")
    p.add_argument("--session", default=None, help="the session to analyse (multi-session data)")
    p.add_argument("--n-initial", type=int, default=256, help="initial states of the fixed-point search")
    p.add_argument("--n-iter", type=int, default=1000, help="gradient steps of the fixed-point search")
    p.add_argument("--tolerance-bins", type=int, default=2, help="±bins for input-event precision/recall")
    p.add_argument("--min-tau-ms", type=float, default=None,
                   help=f"list every mode slower than this (default: {MIN_TAU_BINS} bins)")  # fmt: skip
    p.add_argument("--seed", type=int, default=0)
    return p


def _analyze(argv: list[str] | None) -> int:
    """Analyse one run or bundled model (or compare two, or spread over several); print where the report
    went. Raises NeuralnetsErrors."""
    args = _parser().parse_args(argv)
    for name in ("n_initial", "n_iter"):
        if getattr(args, name) < 1:
            raise AnalysisError(f"--{name.replace('_', '-')} must be >= 1; got {getattr(args, name)}")
    if args.tolerance_bins < 0:
        raise AnalysisError(f"--tolerance-bins must be >= 0; got {args.tolerance_bins}")
    if args.min_tau_ms is not None and not args.min_tau_ms > 0:
        raise AnalysisError(f"--min-tau-ms must be > 0; got {args.min_tau_ms}")
    if not (args.target or args.compare or args.spread):
        raise AnalysisError(
            "give a RUN_DIR (or a bundled model name) to analyse, --compare A B or --spread RUN..."
        )
    from neuralnets.analysis.report import _load, analyze, render, write_report  # torch: only now

    min_tau = None if args.min_tau_ms is None else args.min_tau_ms / 1e3
    if args.compare:
        from neuralnets.analysis.compare import run_compare

        return run_compare(args.compare, args.out, args.session, args.seed, _load)
    if args.spread:
        from neuralnets.analysis.spread import run_spread

        return run_spread(
            args.spread, args.out, args.session, args.seed, args.n_initial, args.n_iter, min_tau, _load
        )
    pm, data, predictions, session, out_dir, about = _load(args.target, args.out, args.session)
    sections = analyze(
        pm, data, predictions, session, n_initial=args.n_initial, n_iter=args.n_iter,
        tolerance_bins=args.tolerance_bins, seed=args.seed, min_tau=min_tau,
    )  # fmt: skip
    caps = (
        f"Model: {type(pm.model).__name__}; recurrent dynamics: "
        f"{'yes' if getattr(pm.model, 'has_recurrent_dynamics', False) else 'no'}; inferred inputs: "
        f"{'yes' if getattr(pm.model, 'has_inferred_inputs', False) else 'no'}. Data: {data.n_trials} trials "
        f"of {data.n_bins} bins of {data.bin_size * 1e3:g} ms."
    )
    text = render(sections, "What the model found", [about, "", caps])
    path = write_report(sections, out_dir, text)
    print(f"report: {path}\nTensorBoard: tensorboard --logdir {out_dir}")
    return 0


def main(argv: list[str] | None = None) -> int:
    """Entry point of `neuralnets-analyze` (errors and exit codes: `neuralnets.cli.run_cli`)."""
    return run_cli("neuralnets-analyze", _analyze, argv)


if __name__ == "__main__":
    raise SystemExit(main())
