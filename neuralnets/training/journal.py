"""The Optuna journal file of a study (`<tune dir>/journal.log`, one JSON record a line, appended by
every worker): checked when it is opened, never appended to after a record cut short, repaired on
request (`neuralnets-tune tune.repair_journal=true`, docs/tuning.md).

A crash in the middle of an append (a killed worker, a full disk) leaves a last line without its
newline. Optuna reads past it, but the next append would glue a new record onto it and make the
whole journal unreadable; here the study stops at open with one line naming the file and the line.
"""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path
from typing import Any

from neuralnets.errors import ConfigError
from neuralnets.runs import atomic_path

log = logging.getLogger(__name__)
REPAIR_HINT = "tune.repair_journal=true keeps every complete record (a backup first; docs/tuning.md)"


def _is_record(line: bytes) -> bool:
    try:
        record = json.loads(line)
    except (json.JSONDecodeError, UnicodeDecodeError):
        return False
    return isinstance(record, dict) and "op_code" in record  # what every Optuna journal record holds


def check_journal(path: Path) -> None:
    """A ConfigError naming `path` and its first damaged line: a line that is not a record, or a last
    line cut short (no newline at its end: whatever it holds, an append would be glued onto it)."""
    if not path.is_file():
        return
    for number, line in enumerate(path.read_bytes().splitlines(keepends=True), start=1):
        if not line.endswith(b"\n"):  # only the last line can lack it
            raise ConfigError(
                f"{path}: line {number} is cut short (a crash while it was written); nothing is appended "
                f"after it: {REPAIR_HINT}"
            )
        if not _is_record(line):
            raise ConfigError(
                f"{path}: line {number} is not a JSON record; the study cannot be read: {REPAIR_HINT}"
            )


def repair_journal(path: Path) -> tuple[Path, list[int]]:
    """Copy journal `path` to `<path>.bak-<UTC time>`, then rewrite it with its complete records only
    (in order). Returns (the backup, the numbers of the lines dropped). Call with no worker running."""
    raw = path.read_bytes()
    lines = raw.splitlines(keepends=True)
    kept = [line if line.endswith(b"\n") else line + b"\n" for line in lines if _is_record(line)]
    dropped = [i for i, line in enumerate(lines, start=1) if not _is_record(line)]
    backup = path.with_name(f"{path.name}.bak-{time.strftime('%Y%m%dT%H%M%SZ', time.gmtime())}")
    with atomic_path(backup, exclusive=True) as tmp:
        tmp.write_bytes(raw)
    with atomic_path(path) as tmp:
        tmp.write_bytes(b"".join(kept))
    log.warning(
        "%s: repaired: kept %d record(s), dropped line(s) %s; the original is %s",
        path, len(kept), dropped, backup,
    )  # fmt: skip
    return backup, dropped


def open_journal(path: Path) -> Any:
    """The Optuna JournalStorage of the journal file `path`, checked first (`check_journal`); its
    appends refuse to follow a record cut short meanwhile."""
    import optuna
    from optuna.storages.journal import JournalFileBackend

    class CheckedJournalFile(JournalFileBackend):  # defined here: Optuna is an optional extra
        def append_logs(self, logs: list[dict[str, Any]]) -> None:
            with open(self._file_path, "rb") as f:
                f.seek(0, 2)
                if f.tell() and (f.seek(-1, 2), f.read(1))[1] != b"\n":
                    raise ConfigError(
                        f"{self._file_path}: its last record is cut short (a crash while it was written); "
                        f"nothing is appended after it: {REPAIR_HINT}"
                    )
            super().append_logs(logs)

    check_journal(path)
    return optuna.storages.JournalStorage(CheckedJournalFile(str(path)))
