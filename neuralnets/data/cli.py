"""`neuralnets-data`: print a dataset's summary, optionally save it as `.npz`.

neuralnets-data lorenz
neuralnets-data chaotic_rnn --seed 3 --save rnn.npz
neuralnets-data mc_maze_small
neuralnets-data ca1_linear_track --bin-size 0.025
neuralnets-data data.nwb --bin-size 0.005 --align-event move_onset_time --window -0.25 0.45
"""

from __future__ import annotations

import argparse
import sys

from neuralnets.data.formats.npz import save_npz
from neuralnets.data.loaders import BUILTIN_DATASETS, load
from neuralnets.data.spikedata import DataError


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="neuralnets-data",
        description="Load a dataset (built-in name or file), print its summary, optionally save it as .npz.",
    )
    p.add_argument("source", help=f"built-in name {sorted(BUILTIN_DATASETS)} or a .npz/.h5/.hdf5/.nwb file")
    p.add_argument("--save", metavar="OUT.npz", help="write the dataset to this .npz file (never overwrites)")
    p.add_argument("--seed", type=int, help="random seed (synthetic data; split seed for NLB/NWB files)")
    p.add_argument("--bin-size", type=float, help="bin width in seconds (NWB, LFADS, NLB files)")
    p.add_argument("--align-event", help="NWB: trials column to align on (default start_time)")
    p.add_argument(
        "--window", type=float, nargs=2, metavar=("T0", "T1"), help="NWB: window around the event (s)"
    )
    p.add_argument("--behavior", help="NWB: name of the behaviour TimeSeries")
    p.add_argument(
        "--n-fwd", type=int, help="NWB: number of forward-prediction bins at the end of the window"
    )
    return p


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    kwargs = {
        key: value
        for key, value in (
            ("seed", args.seed),
            ("bin_size", args.bin_size),
            ("align_event", args.align_event),
            ("window", tuple(args.window) if args.window else None),
            ("behavior", args.behavior),
            ("n_fwd", args.n_fwd),
        )
        if value is not None
    }
    try:
        data = load(args.source, **kwargs)
        print(data.summary())
        if args.save:
            out = save_npz(data, args.save)
            print(f"saved to {out}")
    except (DataError, FileNotFoundError, FileExistsError) as e:
        print(f"neuralnets-data: error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
