"""Checkpoint files read safely: `torch.load(weights_only=True)` and a sha256 recorded beside the file.

Training writes `<checkpoint>.sha256` (hex digest and file name, as `sha256sum` prints them) after
every checkpoint it saves (`neuralnets.training.callbacks.HashedModelCheckpoint`); every reader in the
package goes through `load_checkpoint`, which verifies that digest when the file has one, refuses a
truncated or corrupt file with an error naming it, and never unpickles arbitrary objects. A file
without a recorded digest (older runs; the bundled checkpoints, whose digest is in their model card)
still loads, through weights_only.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import Any

import torch

from neuralnets.errors import CheckpointError

SUFFIX = ".sha256"


def checksum_path(path: str | Path) -> Path:
    """`<path>.sha256`, where the digest of checkpoint `path` is recorded."""
    path = Path(path)
    return path.with_name(path.name + SUFFIX)


def file_sha256(path: str | Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def write_checksum(path: str | Path) -> Path:
    """Record the sha256 of checkpoint `path` beside it (atomically: temporary file + rename)."""
    path = Path(path)
    out = checksum_path(path)
    tmp = out.with_name(f"{out.name}.{os.getpid()}.tmp")
    tmp.write_text(f"{file_sha256(path)}  {path.name}\n")
    os.replace(tmp, out)
    return out


def recorded_checksum(path: str | Path) -> str | None:
    """The digest recorded beside `path`, or None when there is none."""
    side = checksum_path(path)
    if not side.is_file():
        return None
    text = side.read_text().split()
    if not text or len(text[0]) != 64 or any(c not in "0123456789abcdef" for c in text[0]):
        raise CheckpointError(f"{side}: not a sha256 record (expected '<64 hex digits>  {Path(path).name}')")
    return text[0]


def verify_checksum(
    path: str | Path, expected: str | None = None, source: str = "the expected digest"
) -> bool:
    """Check `path` against `expected` (described as `source` in errors) or else the digest recorded
    beside it; False when there is neither. Raises CheckpointError naming the file on a mismatch."""
    if expected is None:
        expected, source = recorded_checksum(path), f"its record {checksum_path(path).name}"
    if expected is None:
        return False
    digest = file_sha256(path)
    if digest != expected:
        raise CheckpointError(
            f"{path}: sha256 {digest[:12]}... does not match {source} ({expected[:12]}...); the file is "
            "corrupt, truncated or was replaced after it was written"
        )
    return True


def load_checkpoint(
    path: str | Path, expected_sha256: str | None = None, source: str = "the expected digest"
) -> dict[str, Any]:
    """The contents of checkpoint `path`, on CPU: checksum verified where recorded, then
    `torch.load(weights_only=True)` (tensors and plain containers only: no code from the file runs).
    Raises CheckpointError naming the file when it is missing, corrupt or holds other objects."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: no such checkpoint file")
    verify_checksum(path, expected_sha256, source)
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - pickle/zip errors come in many types; name the file
        msg = str(e).strip().splitlines()[0][:300] if str(e).strip() else ""
        raise CheckpointError(
            f"{path}: cannot read as a PyTorch checkpoint with weights_only=True "
            f"({type(e).__name__}: {msg}); it is truncated, corrupt, or holds objects other than "
            "tensors and plain data"
        ) from None
    if not isinstance(ckpt, dict):
        raise CheckpointError(f"{path}: a checkpoint must hold a dict; found {type(ckpt).__name__}")
    return ckpt
