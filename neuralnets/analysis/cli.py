"""`neuralnets-analyze RUN_DIR`: the command (its options, errors and exit codes); the analyses and
the report are `neuralnets.analysis.report`, imported (with PyTorch) only once the options are read,
so `--help` and a bad option are answered at once."""

from __future__ import annotations

import argparse

from neuralnets.cli import run_cli
from neuralnets.errors import AnalysisError

DESCRIPTION = "What a trained model found, as a report and TensorBoard figures."


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="neuralnets-analyze", description=DESCRIPTION)
    p.add_argument("target", metavar="RUN_DIR", help="a finished run directory or a bundled model name")
    p.add_argument("--out", default=None, help="output directory (default: the run directory)")
    p.add_argument("--session", default=None, help="the session to analyse (multi-session data)")
    p.add_argument("--n-initial", type=int, default=256, help="initial states of the fixed-point search")
    p.add_argument("--n-iter", type=int, default=1000, help="gradient steps of the fixed-point search")
    p.add_argument("--tolerance-bins", type=int, default=2, help="±bins for input-event precision/recall")
    p.add_argument("--seed", type=int, default=0)
    return p


def _analyze(argv: list[str] | None) -> int:
    """Analyse one run or bundled model; print where the report went. Raises NeuralnetsErrors."""
    args = _parser().parse_args(argv)
    for name in ("n_initial", "n_iter"):
        if getattr(args, name) < 1:
            raise AnalysisError(f"--{name.replace('_', '-')} must be >= 1; got {getattr(args, name)}")
    if args.tolerance_bins < 0:
        raise AnalysisError(f"--tolerance-bins must be >= 0; got {args.tolerance_bins}")
    from neuralnets.analysis.report import _load, analyze, render, write_report  # torch: only now

    pm, data, predictions, session, out_dir, about = _load(args.target, args.out, args.session)
    sections = analyze(
        pm, data, predictions, session, n_initial=args.n_initial, n_iter=args.n_iter,
        tolerance_bins=args.tolerance_bins, seed=args.seed,
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
