"""sha256 records beside the files they vouch for (`x.ckpt.sha256`, `predictions.h5.sha256`), in
`sha256sum`'s format ('<64 hex>  name' lines): computing, reading and checking them. A leaf module:
`neuralnets.checkpoints` (checkpoints) and `neuralnets.runs` (predictions) write the records."""

from __future__ import annotations

import hashlib
from pathlib import Path

from neuralnets.errors import CheckpointError

SUFFIX = ".sha256"  # the record of `x.ckpt` is `x.ckpt.sha256`


def digest_path(path: str | Path) -> Path:
    """`<path>.sha256`, where the digest of file `path` is recorded."""
    path = Path(path)
    return path.with_name(path.name + SUFFIX)


def file_sha256(path: str | Path) -> str:
    """Hex sha256 of the file `path`, read 1 MiB at a time."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _is_digest(text: str) -> bool:
    return len(text) == 64 and all(c in "0123456789abcdef" for c in text)


def record_text(path: str | Path, digests: list[str]) -> str:
    """The record of file `path` naming `digests` (one line each)."""
    return "".join(f"{d}  {Path(path).name}\n" for d in digests)


def recorded_digests(path: str | Path) -> list[str]:
    """The digests recorded for file `path` (one; two only while a new checkpoint is being moved into
    place); [] when there is no record. A malformed record is a CheckpointError naming it."""
    record = digest_path(path)
    if not record.is_file():
        return []
    lines = [line.split() for line in record.read_text(errors="replace").splitlines() if line.strip()]
    if not lines or not all(len(w) == 2 and _is_digest(w[0]) and w[1] == Path(path).name for w in lines):
        raise CheckpointError(
            f"{record}: not a sha256 record (expected '<64 hex digits>  {Path(path).name}' lines)"
        )
    return [w[0] for w in lines]
