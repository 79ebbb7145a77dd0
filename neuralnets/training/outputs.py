"""Model outputs for every trial, written to HDF5 in chunks so large datasets never sit in memory twice."""

from __future__ import annotations

from pathlib import Path

import h5py
import numpy as np

from neuralnets.data.spikedata import SpikeData
from neuralnets.models.base import SpikeModel


def write_predictions(model: SpikeModel, data: SpikeData, path: str | Path, batch_size: int = 512) -> Path:
    """Run `model` over all trials of `data` and write `rates (trials, T, N)`, `latents (trials, T', K)`
    and, when present, `inputs (trials, T_obs, U)` to `path` (HDF5), batch by batch."""
    path = Path(path)
    if path.exists():
        raise FileExistsError(f"{path} exists; refusing to overwrite predictions")
    was_training = model.training
    with h5py.File(path, "w") as f:
        for start, out in model.predict_batches(data.heldin_obs, batch_size):
            for key in ("rates", "latents", "inputs"):
                value = getattr(out, key)
                if value is None:
                    continue
                chunk = value.float().cpu().numpy()
                if key not in f:
                    f.create_dataset(
                        key,
                        shape=(data.n_trials, *chunk.shape[1:]),
                        dtype=np.float32,
                        chunks=(min(batch_size, data.n_trials), *chunk.shape[1:]),
                    )
                f[key][start : start + len(chunk)] = chunk
        f.attrs["n_trials"] = data.n_trials
    model.train(was_training)
    return path


def read_predictions(path: str | Path) -> dict[str, np.ndarray]:
    """Load what `write_predictions` wrote, as numpy arrays."""
    with h5py.File(path, "r") as f:
        return {key: f[key][()] for key in f.keys()}
