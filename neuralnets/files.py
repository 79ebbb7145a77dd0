"""Every file write of the toolkit: atomic replace, fsync, exclusive create, and a process lock.

    from neuralnets.files import atomic_path, exclusive_text, held_lock
    with atomic_path(out) as tmp:          # a temporary file beside `out`, renamed onto it on success
        tmp.write_text(text)
    exclusive_text(run_dir / "status.json", text)   # created whole, or FileExistsError
    with held_lock(path, holder="pid 12 on host"):   # flock; BlockingIOError names nobody: callers say who

A leaf module: it imports nothing from the package, so every layer (data, eval, runs, training) can
write through it without importing the run directory's owner (`neuralnets.runs`).
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path

__all__ = [
    "atomic_path",
    "exclusive_text",
    "fsync_dir",
    "held_lock",
    "replace_symlink",
    "umask",
    "write_text_atomic",
]


@contextlib.contextmanager
def atomic_path(path: str | Path, exclusive: bool = False) -> Iterator[Path]:
    """Yield a temporary path in `path`'s directory; on success fsync it and rename it onto `path`.

    On an exception the temporary file is removed and `path` is left as it was. A symbolic link at
    `path` (dangling or not) is refused: an output never goes through, or over, a planted link.
    `exclusive`: never replace anything at `path` (hard link into place: FileExistsError if it exists).
    """
    path = Path(path)
    if path.is_symlink() or (exclusive and path.exists()):
        what = f"is a symbolic link (to {os.readlink(path)})" if path.is_symlink() else "exists"
        raise FileExistsError(f"{path} {what}; refusing to write it")
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    tmp_path = Path(tmp)
    os.chmod(tmp_path, 0o666 & ~umask())  # mkstemp makes 0600; a run file gets the usual mode
    try:
        yield tmp_path
        with open(tmp_path, "rb+") as f:
            os.fsync(f.fileno())
        if exclusive:
            os.link(tmp_path, path)  # EEXIST if anything (a file, a dangling link) appeared meanwhile
            tmp_path.unlink()
        else:
            os.replace(tmp_path, path)  # renames over a link planted meanwhile, never through it
    except BaseException:
        tmp_path.unlink(missing_ok=True)
        raise
    fsync_dir(path.parent)


def write_text_atomic(path: str | Path, text: str) -> Path:
    """Write `text` to `path` through `atomic_path` (whole or not at all); returns the path."""
    with atomic_path(path) as tmp:
        tmp.write_text(text)
    return Path(path)


def replace_symlink(link: str | Path, target: str | Path) -> Path:
    """Point the symbolic link `link` at `target`, atomically (a new link renamed over the old one:
    a reader sees the old target or the new one, never no link). Returns `link`."""
    link = Path(link)
    fd, tmp = tempfile.mkstemp(dir=link.parent, prefix=f".{link.name}.", suffix=".tmp")
    os.close(fd)
    os.unlink(tmp)  # mkstemp reserved a unique name; the link takes it
    try:
        os.symlink(target, tmp)
        os.replace(tmp, link)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    fsync_dir(link.parent)
    return link


def fsync_dir(directory: str | Path) -> None:
    """Make the renames in `directory` durable (POSIX; silently skipped where it is not possible)."""
    with contextlib.suppress(OSError):
        dir_fd = os.open(directory, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)


def umask() -> int:
    """This process's umask (reading it means setting it: it is put straight back)."""
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def exclusive_text(path: str | Path, text: str) -> Path:
    """Create `path` holding `text`, whole or not at all: written to a temporary file, fsync-ed, then
    hard-linked into place, so of two processes creating it at once exactly one wins (the other gets
    FileExistsError) and no reader ever sees it half written. Returns `path`."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o666 & ~umask())
        os.link(tmp, path)  # fails if it exists: an exclusive create with its whole content
    finally:
        os.unlink(tmp)
    return path


@contextlib.contextmanager
def held_lock(path: str | Path, holder: str) -> Iterator[Path]:
    """Hold an exclusive `fcntl.flock` on the file `path` (created if absent, never through a link)
    while the block runs, with `holder` written in it; the OS releases it when the process ends,
    however it ends. A lock another process holds raises BlockingIOError whose `args[1]` is the text
    that process wrote (who holds it)."""
    import fcntl

    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o666 & ~umask())
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError as err:
            other = os.pread(fd, 200, 0).decode(errors="replace").strip()
            raise BlockingIOError(err.errno, other) from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{holder}\n".encode(), 0)
        try:
            yield Path(path)
        finally:
            os.ftruncate(fd, 0)
    finally:
        os.close(fd)  # releases the lock
