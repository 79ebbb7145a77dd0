"""TensorBoard logging of harness metrics: scalars `hp/<metric>` and the hparams table (runs side by side)."""

from __future__ import annotations

import math
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

TB_PREFIX = "hp/"  # TensorBoard hparams-table metric names: hp/co_bps, hp/fp_bps, ...


def flatten_hparams(h: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """Nested dict -> {"a.b": value} with values TensorBoard accepts (bool/int/float/str)."""
    out: dict[str, Any] = {}
    for k, v in h.items():
        key = f"{prefix}{k}"
        if isinstance(v, Mapping):
            out.update(flatten_hparams(v, key + "."))
        elif isinstance(v, bool | int | float | str):
            out[key] = v
        elif isinstance(v, np.generic):
            out[key] = v.item()
        else:
            out[key] = str(v)
    return out


def tb_metric_names(metrics: Mapping[str, float]) -> dict[str, float]:
    """{"hp/co_bps": value, ...} for the finite metrics."""
    return {TB_PREFIX + k: float(v) for k, v in metrics.items() if v is not None and math.isfinite(float(v))}


def log_to_tensorboard(
    logger_or_writer: Any, hparams: Mapping[str, Any], metrics: Mapping[str, float]
) -> None:
    """Log `metrics` as scalars `hp/<name>` and register them with `hparams` in TensorBoard's hparams table.

    Accepts a Lightning `TensorBoardLogger` (uses `log_hyperparams(params, metrics)`), any other
    Lightning logger (e.g. CSV: hyperparameters and `hp/` metrics logged separately), or a
    `torch.utils.tensorboard.SummaryWriter` (writes the hparams summaries into the writer's own run
    directory, so the run shows up as one row).
    """
    params = flatten_hparams(hparams)
    tb_metrics = tb_metric_names(metrics)
    if hasattr(logger_or_writer, "log_hyperparams"):
        from pytorch_lightning.loggers import TensorBoardLogger

        if isinstance(logger_or_writer, TensorBoardLogger):
            logger_or_writer.log_hyperparams(params, tb_metrics)
        else:  # other Lightning loggers (CSV, ...): no hparams table, so hparams and metrics apart
            logger_or_writer.log_hyperparams(params)
            logger_or_writer.log_metrics(tb_metrics)
        return
    if not hasattr(logger_or_writer, "add_scalar"):
        raise TypeError(
            f"log_to_tensorboard needs a Lightning TensorBoardLogger or a SummaryWriter; got "
            f"{type(logger_or_writer).__name__}"
        )
    from torch.utils.tensorboard.summary import hparams as hparams_summary

    writer = logger_or_writer
    exp, ssi, sei = hparams_summary(params, tb_metrics)
    file_writer = writer._get_file_writer()
    for summary in (exp, ssi, sei):
        file_writer.add_summary(summary)
    for k, v in tb_metrics.items():
        writer.add_scalar(k, v, 0)
    writer.flush()


def write_tensorboard(rows: Sequence[Mapping[str, Any]], logdir: str | Path) -> list[Path]:
    """One TensorBoard run per table row under `logdir`, named model__data__split, with its hparams and
    metrics (rows as in metrics.json; see `neuralnets.eval.tables`)."""
    from torch.utils.tensorboard import SummaryWriter

    paths = []
    for r in rows:
        name = re.sub(r"[^A-Za-z0-9_.-]+", "_", f"{r['model']}__{r['data']}__{r.get('split', 'test')}")
        path = Path(logdir) / name
        hparams = {k: r.get(k) for k in ("model", "data", "split", "train_time_s", "n_parameters")}
        hparams.update({f"info.{k}": v for k, v in (r.get("info") or {}).items()})
        with SummaryWriter(log_dir=str(path)) as writer:
            log_to_tensorboard(writer, {k: v for k, v in hparams.items() if v is not None}, r["metrics"])
        paths.append(path)
    return paths
