"""Data layer: the `SpikeData` container, file formats (npz, LFADS/NLB HDF5, NWB), built-in recordings
(MC_Maze_Small, rat CA1), synthetic systems, and `load()` that picks among them.

`SpikeDataModule` (the LightningDataModule) is imported lazily, so that `import neuralnets.data`
(and the `neuralnets-data` command) does not pay for importing PyTorch Lightning.
"""

from neuralnets.data.datasets.ca1_linear_track import load_ca1_linear_track
from neuralnets.data.datasets.mc_maze_small import load_mc_maze_small
from neuralnets.data.formats.lfads_h5 import load_lfads_h5, save_lfads_h5
from neuralnets.data.formats.nlb_h5 import load_nlb_h5
from neuralnets.data.formats.nlb_nwb import load_nlb_nwb
from neuralnets.data.formats.nlb_targets import read_nlb_targets, targets_from_data, write_nlb_targets
from neuralnets.data.formats.npz import load_npz, save_npz
from neuralnets.data.formats.nwb import load_nwb
from neuralnets.data.loaders import BUILTIN_DATASETS, load
from neuralnets.data.options import parse_load_options
from neuralnets.data.sessions import MultiSessionData, MultiSessionSpec
from neuralnets.data.spikedata import DataSpec, SpikeData, default_split
from neuralnets.data.synthetic import chaotic_rnn, lorenz, lorenz_sessions
from neuralnets.data.synthetic_linear import line_attractor, linear_pulses
from neuralnets.errors import DataError

__all__ = [
    "BUILTIN_DATASETS",
    "DataError",
    "DataSpec",
    "MultiSessionData",
    "MultiSessionSpec",
    "SpikeData",
    "SpikeDataModule",
    "MultiSessionDataModule",
    "chaotic_rnn",
    "line_attractor",
    "linear_pulses",
    "default_split",
    "load",
    "load_ca1_linear_track",
    "load_lfads_h5",
    "load_mc_maze_small",
    "load_nlb_h5",
    "load_nlb_nwb",
    "load_npz",
    "load_nwb",
    "lorenz",
    "lorenz_sessions",
    "parse_load_options",
    "read_nlb_targets",
    "save_lfads_h5",
    "save_npz",
    "targets_from_data",
    "write_nlb_targets",
]


def __getattr__(name: str):
    if name in ("SpikeDataModule", "MultiSessionDataModule"):
        from neuralnets.data import datamodule

        return getattr(datamodule, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
