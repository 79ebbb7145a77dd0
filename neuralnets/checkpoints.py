"""Checkpoint files: where a run keeps them, which one a reader takes, and their sha256 records.

    run_dir/checkpoints/last.ckpt           the latest state (resume continues from it)
    run_dir/checkpoints/last.ckpt.sha256    its digest, as `sha256sum` prints it: '<64 hex>  last.ckpt'
    run_dir/checkpoints/best-*.ckpt (+ .sha256)   the best by the checkpoint monitor (scored, loaded)

Every checkpoint the toolkit writes goes through `commit_checkpoint` (or `save_checkpoint`): the file is
written under a temporary name, then its record and the file are moved into place so that a kill at
any moment leaves a checkpoint that matches its record (the record names the new digest *and* the old
one while the file is renamed, then only the new one). Every reader goes through `load_checkpoint`,
which refuses, by default, a file whose digest is not recorded: pass `trust_unverified=True` (the
commands' `--trust-unverified` / `trust_unverified=true`) to accept a foreign file, and the digest
accepted is logged. A recorded digest that does not match is always refused. Files are read with
`torch.load(weights_only=True)`: no code from a checkpoint ever runs.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any, Literal

from neuralnets.digests import digest_path, file_sha256, record_text, recorded_digests
from neuralnets.errors import CheckpointError, CheckpointNotFound
from neuralnets.files import fsync_dir, write_text_atomic
from neuralnets.runs import CHECKPOINT_DIR, LAST_CHECKPOINT, METRICS_FILE, read_json

log = logging.getLogger(__name__)

BEST_GLOB = "best-*.ckpt"  # the checkpoint callback's best files (configs/callbacks/model_checkpoint.yaml)
PARTIAL_SUFFIX = ".partial"  # a checkpoint being written: `.last.ckpt.partial`, never read
TRUST_HINT = (
    "pass trust_unverified=True (on the command line: trust_unverified=true or --trust-unverified) "
    "only if you trust where this file came from"
)


# ---------------------------------------------------------------------------------------------- records
def partial_path(path: str | Path) -> Path:
    """The temporary name a checkpoint is written under before `commit_checkpoint` moves it to `path`."""
    path = Path(path)
    return path.with_name(f".{path.name}{PARTIAL_SUFFIX}")


def _write_record(path: Path, digests: list[str]) -> None:
    write_text_atomic(digest_path(path), record_text(path, digests))


def write_digest(path: str | Path) -> str:
    """Record the sha256 of the existing checkpoint `path` (atomically); returns the digest. For a file
    written elsewhere that the caller vouches for; training writes through `commit_checkpoint`."""
    path = Path(path)
    digest = file_sha256(path)
    _write_record(path, [digest])
    return digest


def commit_checkpoint(written: str | Path, path: str | Path) -> str:
    """Move the complete checkpoint file `written` (in `path`'s directory) onto `path` with its record.

    Order: fsync the file; record {new, old} digests; rename the file; record {new}. A kill between any
    two steps leaves `path` matching its record (the old file or the new one). Returns the digest."""
    written, path = Path(written), Path(path)
    with open(written, "rb+") as f:
        os.fsync(f.fileno())
    digest = file_sha256(written)
    try:
        previous = recorded_digests(path)[:1] if path.is_file() else []
    except CheckpointError:
        previous = []  # a damaged record: the old file cannot be trusted anyway
    _write_record(path, [digest, *[d for d in previous if d != digest]])
    os.replace(written, path)
    fsync_dir(path.parent)
    _write_record(path, [digest])
    return digest


def save_checkpoint(path: str | Path, write: Callable[[Path], Any] | dict[str, Any]) -> str:
    """Write a checkpoint at `path` with its record, atomically: `write(tmp)` writes the file (e.g.
    `trainer.save_checkpoint`), or `write` is a dict given to `torch.save`. Returns the digest."""
    path = Path(path)
    tmp = partial_path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        if isinstance(write, dict):
            import torch

            torch.save(write, tmp)
        else:
            write(tmp)
        return commit_checkpoint(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def copy_checkpoint(src: str | Path, dst: str | Path, *, trust_unverified: bool = False) -> str:
    """Copy checkpoint `src` to `dst` with a record, after verifying `src` (`verify_checkpoint`)."""
    import shutil

    digest = verify_checkpoint(src, trust_unverified=trust_unverified)
    copied = save_checkpoint(dst, lambda tmp: shutil.copyfile(src, tmp))
    if copied != digest:  # `src` changed between the check and the copy
        remove_checkpoint(dst)
        raise CheckpointError(f"{src} changed while it was copied to {dst}; nothing was copied")
    return digest


def remove_checkpoint(path: str | Path) -> None:
    """Remove checkpoint `path` and its record (the record last: never a file without one)."""
    Path(path).unlink(missing_ok=True)
    digest_path(path).unlink(missing_ok=True)


# ---------------------------------------------------------------------------------------------- verifying
def verify_checkpoint(
    path: str | Path,
    expected_sha256: str | None = None,
    source: str = "the expected digest",
    *,
    trust_unverified: bool = False,
) -> str:
    """The sha256 of checkpoint `path` once it is verified; a CheckpointError naming the file otherwise.

    Checked against `expected_sha256` (described as `source`, e.g. a model card) when given, else
    against the record beside the file. A file with neither is refused unless `trust_unverified`, and
    then the digest accepted is logged (a warning) so that it can be recorded."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointNotFound(f"{path}: no such checkpoint file")
    if expected_sha256 is not None:
        expected = [expected_sha256]
    else:
        expected, source = recorded_digests(path), f"its record {digest_path(path).name}"
    digest = file_sha256(path)
    if not expected:
        if not trust_unverified:
            raise CheckpointError(
                f"{path}: no sha256 record ({digest_path(path).name}); refusing an unverified checkpoint "
                f"(sha256 {digest}); {TRUST_HINT}"
            )
        log.warning("trusting unverified checkpoint %s: sha256 %s", path, digest)
        return digest
    if digest not in expected:
        raise CheckpointError(
            f"{path}: sha256 {digest[:12]}... does not match {source} ({expected[0][:12]}...); the file is "
            "corrupt, truncated or was replaced after it was written"
        )
    return digest


def load_checkpoint(
    path: str | Path,
    expected_sha256: str | None = None,
    source: str = "the expected digest",
    *,
    trust_unverified: bool = False,
) -> dict[str, Any]:
    """The contents of checkpoint `path`, on CPU: verified (`verify_checkpoint`), then read with
    `torch.load(weights_only=True)` (tensors and plain containers only: no code from the file runs).
    Raises CheckpointError naming the file when it is missing, unverified, corrupt or holds other objects."""
    import torch

    path = Path(path)
    verify_checkpoint(path, expected_sha256, source, trust_unverified=trust_unverified)
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


def read_checkpoint(
    path: str | Path,
    expected_sha256: str | None = None,
    source: str = "the expected digest",
    *,
    trust_unverified: bool = False,
) -> dict[str, Any]:
    """`load_checkpoint`, then a check that the file holds a neuralnets training checkpoint
    (`state_dict` and `hyper_parameters` with the model config and data spec); CheckpointError otherwise."""
    ckpt = load_checkpoint(path, expected_sha256, source, trust_unverified=trust_unverified)
    if "state_dict" not in ckpt or "hyper_parameters" not in ckpt:
        raise CheckpointError(
            f"{path}: not a neuralnets training checkpoint (needs 'state_dict' and 'hyper_parameters'; "
            f"found {sorted(ckpt)})"
        )
    hp = ckpt["hyper_parameters"]
    missing = [k for k in ("model", "spec") if not isinstance(hp, dict) or k not in hp]
    if missing:
        raise CheckpointError(
            f"{path}: hyper_parameters lack {missing}; was it written by neuralnets.training?"
        )
    return ckpt


# ---------------------------------------------------------------------------------------------- choosing
def last_checkpoint(run_dir: str | Path) -> Path:
    """`run_dir/checkpoints/last.ckpt` (whether or not it exists): what a resume continues from."""
    return Path(run_dir) / CHECKPOINT_DIR / LAST_CHECKPOINT


def run_checkpoint(run_dir: str | Path, which: Literal["best", "last"] = "best") -> Path:
    """The checkpoint of run directory `run_dir`: the one choice every reader makes.

    "best" (scoring, loading, fine-tuning): the checkpoint metrics.json names (the one the run was
    scored with), else the newest `checkpoints/best-*.ckpt`, else `checkpoints/last.ckpt`.
    "last" (resuming): `checkpoints/last.ckpt`. A CheckpointError naming what was looked for when there
    is none, or when metrics.json names a file outside the run directory."""
    run_dir = Path(run_dir)
    last = last_checkpoint(run_dir)
    if which == "last":
        if not last.is_file():
            raise CheckpointNotFound(f"{run_dir}: no checkpoint at {last}")
        return last
    if which != "best":
        raise ValueError(f"which={which!r}: expected 'best' or 'last'")
    metrics = run_dir / METRICS_FILE
    named = read_json(metrics).get("checkpoint") if metrics.is_file() else None
    if named:
        path = (run_dir / str(named)).resolve()
        if run_dir.resolve() not in path.parents:
            raise CheckpointError(f"{metrics}: 'checkpoint' {named!r} is outside the run directory {run_dir}")
        if path.is_file():
            return run_dir / str(named)
    ckpt_dir = run_dir / CHECKPOINT_DIR
    best = sorted(ckpt_dir.glob(BEST_GLOB), key=lambda p: p.stat().st_mtime) if ckpt_dir.is_dir() else []
    if best:
        return best[-1]
    if last.is_file():
        return last
    found = sorted(p.name for p in run_dir.iterdir()) if run_dir.is_dir() else "nothing (no such directory)"
    raise CheckpointNotFound(
        f"{run_dir}: no checkpoint found (looked for the one named in {METRICS_FILE}, "
        f"{CHECKPOINT_DIR}/{BEST_GLOB} and {CHECKPOINT_DIR}/{LAST_CHECKPOINT}); the folder holds {found}"
    )


def checkpoint_of(source: str | Path, which: Literal["best", "last"] = "best") -> Path:
    """`source` itself if it is a checkpoint file, else the `run_checkpoint(source, which)` of the run
    directory `source`; a CheckpointNotFound naming it when there is none."""
    path = Path(source)
    if path.is_dir():
        return run_checkpoint(path, which)
    if not path.is_file():
        raise CheckpointNotFound(f"no checkpoint at {path}")
    return path
