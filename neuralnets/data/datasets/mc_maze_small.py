"""Built-in dataset: NLB MC_Maze_Small (monkey motor cortex, 5 ms bins), bundled in fixtures/."""

from __future__ import annotations

from pathlib import Path

from neuralnets.data.formats.nlb_h5 import load_nlb_h5
from neuralnets.data.spikedata import SpikeData

MC_MAZE_SMALL_PATH = Path(__file__).parent.parent / "fixtures" / "mc_maze_small_full.h5"


def load_mc_maze_small(
    bin_size: float = 0.005,
    val_frac: float = 0.2,
    seed: int = 0,
    name: str = "mc_maze_small",
    fold: int | None = None,
) -> SpikeData:
    """The bundled NLB MC_Maze_Small tensors read by `load_nlb_h5` (100 trials; see fixtures/README.md).

    Splits: the 75 NLB train trials become 'train'/'val' (`val_frac` of them 'val', chosen with `seed`),
    the 25 NLB eval trials 'test' (the file has no forward bins for them: those are unobserved). `fold`
    0..4: the 75 cut into five validation folds of 15 (cross-validation; fold 0 is the default split).
    """
    return load_nlb_h5(
        MC_MAZE_SMALL_PATH, bin_size=bin_size, val_frac=val_frac, seed=seed, name=name, fold=fold
    )
