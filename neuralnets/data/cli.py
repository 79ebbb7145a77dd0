"""`neuralnets-data`: print a dataset's summary, optionally save it as `.npz`.

neuralnets-data lorenz
neuralnets-data chaotic_rnn --seed 3 --save rnn.npz
neuralnets-data mc_maze_small
neuralnets-data ca1_linear_track --opt bin_size=0.025 --opt heldout_every=3
neuralnets-data data.nwb --bin-size 0.005 --align-event move_onset_time --window -0.25 0.45
neuralnets-data data.nwb -o bin_size=0.01 -o trials_table=encoding_table -o heldout_units=[0,3] --save s.npz

A mistake (missing or damaged file, bad option) prints one line and exits with status 2; set
NEURALNETS_DEBUG=1 for the full traceback.
"""

from __future__ import annotations

import argparse
import sys

from neuralnets.cli import run_cli
from neuralnets.data.formats.npz import save_npz
from neuralnets.data.loaders import BUILTIN_DATASETS, load
from neuralnets.data.options import add_load_options_arg, parse_load_options
from neuralnets.data.sessions import MultiSessionData
from neuralnets.errors import DataError


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="neuralnets-data",
        description="Load a dataset (built-in name or file), print its summary, optionally save it as .npz.",
    )
    p.add_argument("source", help=f"built-in name {sorted(BUILTIN_DATASETS)} or a .npz/.h5/.hdf5/.nwb file")
    p.add_argument("--save", metavar="OUT.npz", help="write the dataset to this .npz file (never overwrites)")
    add_load_options_arg(p)
    shortcuts = p.add_argument_group("shortcuts for common options (the same as --opt KEY=VALUE)")
    shortcuts.add_argument("--seed", type=int, help="random seed (synthetic data; split seed for files)")
    shortcuts.add_argument("--bin-size", type=float, help="bin width in seconds (NWB, LFADS, NLB files)")
    shortcuts.add_argument("--align-event", help="NWB: trials column to align on (default start_time)")
    shortcuts.add_argument(
        "--window", type=float, nargs=2, metavar=("T0", "T1"), help="NWB: window around the event (s)"
    )
    shortcuts.add_argument("--behavior", help="NWB: name of the behaviour TimeSeries")
    shortcuts.add_argument(
        "--n-fwd", type=int, help="NWB: number of forward-prediction bins at the end of the window"
    )
    return p


def _load_kwargs(args: argparse.Namespace) -> dict:
    """--opt items plus the shortcut flags; one option given both ways is an error."""
    kwargs = parse_load_options(args.opt)
    shortcuts = {
        "seed": args.seed,
        "bin_size": args.bin_size,
        "align_event": args.align_event,
        "window": tuple(args.window) if args.window else None,
        "behavior": args.behavior,
        "n_fwd": args.n_fwd,
    }
    for key, value in shortcuts.items():
        if value is None:
            continue
        if key in kwargs:
            flag = "--" + key.replace("_", "-")
            raise DataError(f"option {key!r} is given twice: {flag} and --opt {key}=...")
        kwargs[key] = value
    return kwargs


def _main(argv: list[str] | None) -> int:
    args = _parser().parse_args(argv)
    data = load(args.source, **_load_kwargs(args))
    print(data.summary())
    if args.save and isinstance(data, MultiSessionData):
        raise DataError(f"{args.source} holds {data.n_sessions} sessions; --save writes one SpikeData")
    if args.save:
        out = save_npz(data, args.save)
        print(f"saved to {out}")
    return 0


def main(argv: list[str] | None = None) -> int:
    """Entry point of `neuralnets-data` (errors and exit codes: `neuralnets.cli.run_cli`)."""
    return run_cli("neuralnets-data", _main, argv)


if __name__ == "__main__":
    sys.exit(main())
