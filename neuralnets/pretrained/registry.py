"""The bundled checkpoints: one folder per model under `neuralnets/pretrained/checkpoints/<name>/`.

Each folder holds
- `model.ckpt`: a slimmed Lightning checkpoint (model weights, hyperparameters, no optimiser state),
  readable with `torch.load(weights_only=True)` and with `TrainingModule.load_from_checkpoint`;
- `model_card.json`: data (name + load kwargs + spec), full training config, training command and
  time, harness metrics on the test split, date, neuralnets version, checkpoint sha256;
- `README.md`: the same card for people.

The registry is the folder listing: nothing here touches the network. The checkpoints are trained
and written by `experiments/train_pretrained.py`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from neuralnets.errors import CheckpointError, ConfigError
from neuralnets.runs import read_json

CHECKPOINTS_DIR = Path(__file__).resolve().parent / "checkpoints"
CHECKPOINT_FILE = "model.ckpt"
CARD_FILE = "model_card.json"
CARD_README = "README.md"
CARD_FORMAT = 1  # bump when the card layout changes incompatibly
# The sha256 of each bundled model.ckpt, shipped in the package: `load_pretrained` checks the bundled
# files against these, not against their cards (a card is a file beside the checkpoint: editing it
# must not disable the check). `experiments/train_pretrained.py` prints the line to put here.
BUNDLED_SHA256 = {
    "lfads_lorenz": "781b30942ace73ee2cdaa8cc9ab9228aa5e81ff76d464889f29237536990dd2a",
    "rnn_lorenz": "dde5b317f12f81f4ad95ed1ed3ad132f4604d1202fdcf51e88eabac5f10188b3",
    "lfads_mc_maze_small": "5e39e867aef9d096df831ac8a1744fdd29db3729944b76ad8ede014a4a9877be",
}


def list_pretrained() -> list[str]:
    """Names of the bundled checkpoints (folders with a model card and a checkpoint), sorted."""
    if not CHECKPOINTS_DIR.is_dir():
        return []
    return sorted(
        p.name
        for p in CHECKPOINTS_DIR.iterdir()
        if p.is_dir() and (p / CARD_FILE).is_file() and (p / CHECKPOINT_FILE).is_file()
    )


def bundled_dir(name: str) -> Path:
    """The folder of bundled model `name`; ValueError listing the bundled names if there is none."""
    names = list_pretrained()
    if name not in names:
        raise ConfigError(
            f"no bundled pretrained model named {name!r}; bundled models: {names or 'none'}. "
            "Pass a bundled name, a checkpoint file (.ckpt) or a training run directory."
        )
    return CHECKPOINTS_DIR / name


def bundled_digest(folder: str | Path) -> str | None:
    """The packaged sha256 of the checkpoint in `folder` if it is a bundled model's folder, else None."""
    folder = Path(folder).resolve()
    return BUNDLED_SHA256.get(folder.name) if folder.parent == CHECKPOINTS_DIR else None


def read_card(folder: str | Path) -> dict[str, Any]:
    """The parsed `model_card.json` in `folder`, with a clear error if it is missing or malformed."""
    path = Path(folder) / CARD_FILE
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no model card")
    card = read_json(path)
    missing = [k for k in ("name", "data", "config", "metrics", "checkpoint") if k not in card]
    if missing:
        raise CheckpointError(f"{path} lacks the key(s) {missing}")
    return card


def model_card(name: str) -> dict[str, Any]:
    """The model card of bundled model `name` (see `list_pretrained`)."""
    return read_card(bundled_dir(name))
