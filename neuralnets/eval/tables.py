"""Tables: the one writer of Markdown and CSV tables (`markdown_table`, `csv_table`, `write_tables`),
and the comparison table of runs built on it: one row per (model, data, split), one column per
metric; rich, markdown and CSV.

Every table the project writes (comparison tables, tuning leaderboards, experiment reports, model
cards) goes through `markdown_table` / `csv_table`, and to disk through `save_tables` (atomic).

A row is a dict with keys `model`, `data`, `split`, `metrics` ({name: float}), `train_time_s`,
`n_parameters` (the last two may be None), as in metrics.json (`neuralnets.runs.read_run`). Metric
columns follow `metrics.METRICS` order and only metrics present in at least one row are shown; a row
without a metric shows an empty cell. `format_table` adds the baseline rows of each dataset.
"""

from __future__ import annotations

import csv
import io
import json
import math
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from neuralnets.data.spikedata import SpikeData
from neuralnets.errors import DataError
from neuralnets.eval.baselines import baseline_rows
from neuralnets.eval.metrics import METRICS
from neuralnets.files import write_text_atomic
from neuralnets.runs import load_run_data

ID_COLUMNS = ("model", "data", "split")
TAIL_COLUMNS = ("train_time_s", "n_parameters")


def cell(value: Any, digits: int = 4) -> str:
    """A Markdown cell: floats with `digits` decimals (`nan` for non-finite), None empty, else str."""
    if value is None:
        return ""
    if isinstance(value, float):
        return f"{value:.{digits}f}" if math.isfinite(value) else "nan"
    return str(value)


def markdown_table(header: Sequence[str], rows: Iterable[Sequence[Any]]) -> str:
    """A Markdown table (lines joined, ending in a newline); cells that are not text go through `cell`."""
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(v if isinstance(v, str) else cell(v) for v in row) + " |" for row in rows]
    return "\n".join(lines) + "\n"


def csv_table(header: Sequence[str], rows: Iterable[Sequence[Any]]) -> str:
    """CSV text with full-precision numbers (an empty cell: None, not computed)."""
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(header)
    writer.writerows(["" if v is None else v for v in row] for row in rows)
    return buf.getvalue()


def save_tables(files: Mapping[str | Path, str]) -> None:
    """Write each `{path: text}` (a table from `markdown_table` / `csv_table`), each replaced
    atomically: a reader never sees half a table. Parent folders are made."""
    for path, text in files.items():
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        write_text_atomic(path, text)


def metric_columns(rows: Sequence[Mapping[str, Any]]) -> list[str]:
    present = {k for r in rows for k in r.get("metrics", {})}
    known = [k for k in METRICS if k in present]
    return known + sorted(present - set(known))  # unknown metrics (from newer runs) at the end


def _fmt(value: Any, column: str) -> str:
    return cell(value, 1 if column == "train_time_s" else 4)


def table_cells(rows: Sequence[Mapping[str, Any]]) -> tuple[list[str], list[list[str]]]:
    """(header, formatted cells) for any writer."""
    metrics = metric_columns(rows)
    header = [*ID_COLUMNS, *metrics, *TAIL_COLUMNS]
    cells = []
    for r in rows:
        m = r.get("metrics", {})
        cells.append(
            [_fmt(r.get(c), c) for c in ID_COLUMNS]
            + [_fmt(m.get(c), c) for c in metrics]
            + [_fmt(r.get(c), c) for c in TAIL_COLUMNS]
        )
    return header, cells


BASELINE_PREFIX = "baseline/"  # the model name of a harness baseline row (`baselines.baseline_rows`)


def table_notes(rows: Sequence[Mapping[str, Any]]) -> list[str]:
    """Notes under a table where a column means something else for some rows than for others."""
    baselines = [r for r in rows if str(r.get("model", "")).startswith(BASELINE_PREFIX)]
    notes = []
    if baselines and any("bps_heldin" in r.get("metrics", {}) for r in baselines):
        notes.append(
            "bps_heldin of baseline/ rows is scored on the held-in spikes they smoothed or averaged "
            "(in-sample): not comparable with a model's, which predicts its own input"
        )
    if baselines and any(r.get("train_time_s") is not None for r in baselines):
        notes.append(
            "train_time_s of baseline/ rows: the seconds they took when first computed (cached since)"
        )
    return notes


def to_markdown(rows: Sequence[Mapping[str, Any]]) -> str:
    """The comparison table in Markdown, with its notes (`table_notes`) under it."""
    notes = "".join(f"\nNote: {n}\n" for n in table_notes(rows))
    return markdown_table(*table_cells(rows)) + notes


def to_csv(rows: Sequence[Mapping[str, Any]]) -> str:
    """CSV with full-precision numbers (empty cell = not computed)."""
    metrics = metric_columns(rows)
    header = [*ID_COLUMNS, *metrics, *TAIL_COLUMNS]
    values = (
        [r.get(c) for c in ID_COLUMNS]
        + [r.get("metrics", {}).get(c) for c in metrics]
        + [r.get(c) for c in TAIL_COLUMNS]
        for r in rows
    )
    return csv_table(header, values)


def to_rich(rows: Sequence[Mapping[str, Any]], title: str | None = None):
    """A `rich.table.Table` (print it with `rich.console.Console().print`); cells are never cut."""
    from rich.table import Table

    header, cells = table_cells(rows)
    table = Table(title=title)
    for h in header:
        table.add_column(h, justify="left" if h in ID_COLUMNS else "right", no_wrap=True)
    for row in cells:
        table.add_row(*row)
    return table


def print_table(rows: Sequence[Mapping[str, Any]], title: str | None = None) -> None:
    """Print the table to stdout in Markdown, the one table style of every command (`neuralnets-train`
    prints its results the same way, `format_table`)."""
    print((f"{title}\n\n" if title else "") + to_markdown(rows), end="")


def write_table(
    rows: Sequence[Mapping[str, Any]], csv_path: str | Path | None, md_path: str | Path | None
) -> None:
    """The comparison table of `rows` as CSV and/or Markdown files (atomic)."""
    files = {path: text(rows) for path, text in ((csv_path, to_csv), (md_path, to_markdown)) if path}
    save_tables(files)


def write_rows(rows: Sequence[Mapping[str, Any]], csv_path: str | Path, md_path: str | Path) -> None:
    """A table of flat rows (columns: the first row's keys), e.g. `neuralnets-tune`'s leaderboard, as
    CSV (full precision) and Markdown (4 significant digits), each written atomically."""
    if not rows:
        return
    header = list(rows[0])
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(header)
    writer.writerows([["" if r.get(c) is None else r.get(c) for c in header] for r in rows])

    def cell(v: Any) -> str:
        return "" if v is None else f"{v:.4g}" if isinstance(v, float) else str(v)

    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(cell(r.get(c)) for c in header) + " |" for r in rows]
    for path, text in ((csv_path, buf.getvalue()), (md_path, "\n".join(lines) + "\n")):
        write_text_atomic(path, text)


def format_table(
    rows: list[Mapping[str, Any]],
    baselines: bool = False,
    data: SpikeData | None = None,
    split: str | None = None,
) -> str:
    """Markdown table of run records (dicts as in metrics.json), optionally with baseline rows.

    With `baselines`, the baseline rows (`neuralnets.eval.baselines.baseline_rows`) are computed on
    `data` when given, else on each dataset named by the rows (see `neuralnets.runs.load_run_data`),
    for the rows' split (or `split`). A dataset that cannot be loaded gets a note under the table.
    """
    rows = [dict(r) for r in rows]
    notes = []
    if baselines:
        done: set[tuple] = set()
        for r in list(rows):
            sp = split or r.get("split", "test")
            key = (
                r.get("data_source") or r.get("data"),
                json.dumps(r.get("data_kwargs") or {}, sort_keys=True),
                sp,
            )
            if key in done:
                continue
            done.add(key)
            try:
                d = data if data is not None else load_run_data(r)
                rows += baseline_rows(d, sp, data_label=r.get("data"), load_options=r.get("data_kwargs"))
            except (DataError, FileNotFoundError, ValueError) as e:
                notes.append(f"(no baseline rows for {key[0]!r}: {e})")
    return to_markdown(rows) + "".join(n + "\n" for n in notes)
