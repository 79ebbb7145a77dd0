"""Data layer: the `SpikeData` container, loaders (npz, LFADS/NLB HDF5, NWB, rat CA1), synthetic systems.

`SpikeDataModule` (the LightningDataModule) is imported lazily, so that `import neuralnets.data`
(and the `neuralnets-data` command) does not pay for importing PyTorch Lightning.
"""

from neuralnets.data.loaders import (
    load,
    load_ca1_linear_track,
    load_lfads_h5,
    load_nlb_h5,
    load_npz,
    load_nwb,
    save_lfads_h5,
)
from neuralnets.data.spikedata import DataError, DataSpec, SpikeData, default_split
from neuralnets.data.synthetic import chaotic_rnn, lorenz

__all__ = [
    "DataError",
    "DataSpec",
    "SpikeData",
    "SpikeDataModule",
    "chaotic_rnn",
    "default_split",
    "load",
    "load_ca1_linear_track",
    "load_lfads_h5",
    "load_nlb_h5",
    "load_npz",
    "load_nwb",
    "lorenz",
    "save_lfads_h5",
]


def __getattr__(name: str):
    if name == "SpikeDataModule":
        from neuralnets.data.datamodule import SpikeDataModule

        return SpikeDataModule
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
