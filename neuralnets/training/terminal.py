"""A quiet terminal during training: what Lightning prints, less the noise.

- `QuietModelSummary`: the model summary without a FLOPs column and total when nothing was counted
  (the models have no example input, so Lightning's column is all zeros);
- `EpochProgressBar`: epochs counted as people count them, "Epoch 1/100" for the first of 100 (Lightning
  says "Epoch 0" and counts to max_epochs - 1), without Lightning's empty `v_num`, and as wide as the
  terminal (`terminal_size`: $COLUMNS where set), so a narrow one never wraps it;
- `quiet_device_lines()`: Lightning's "GPU available: False" / "TPU available: False" lines dropped on a
  machine without such accelerators (lines that say True, i.e. one that exists, still print).
`build.build_trainer` installs all three.
"""

from __future__ import annotations

import logging
import os
import re
from typing import IO, Any

import pytorch_lightning as pl
from pytorch_lightning.callbacks import ModelSummary, TQDMProgressBar

log = logging.getLogger(__name__)

LIGHTNING_INFO_LOGGER = "pytorch_lightning.utilities.rank_zero"  # where rank_zero_info writes
_ABSENT_ACCELERATOR = re.compile(r"^(GPU|TPU|HPU|IPU) available: False\b")


class QuietModelSummary(ModelSummary):
    """Lightning's model summary, its FLOPs column and total left out when no FLOPs were counted."""

    @staticmethod
    def summarize(
        summary_data: list[tuple[str, list[str]]],
        total_parameters: int,
        trainable_parameters: int,
        model_size: float,
        total_training_modes: dict[str, int],
        total_flops: int = 0,
        **summarize_kwargs: Any,
    ) -> None:
        from pytorch_lightning.utilities.model_summary.model_summary import _format_summary_table

        columns = [c for c in summary_data if not (c[0] == "FLOPs" and not total_flops)]
        table = _format_summary_table(
            total_parameters, trainable_parameters, model_size, total_training_modes, total_flops, *columns
        )
        if not total_flops:
            table = table.rsplit("\n", 1)[0]  # the "0  Total Flops" line
        log.info("\n%s", table)


def terminal_size(stream: IO | None = None) -> tuple[int, int]:
    """(columns, lines) a progress bar may use on `stream`: $COLUMNS / $LINES where set, else the size of
    the terminal `stream` writes to, else 80 x 24; one column and one line kept spare (a line that fills
    the last column wraps on some terminals), as tqdm keeps them."""
    try:
        size = os.get_terminal_size(stream.fileno())  # type: ignore[union-attr]
        columns, lines = size.columns, size.lines
    except (AttributeError, OSError, ValueError):  # not a terminal (a pipe, a log file, a notebook)
        columns, lines = 80, 24
    env = {k: os.environ.get(k, "") for k in ("COLUMNS", "LINES")}
    columns = int(env["COLUMNS"]) if env["COLUMNS"].isdigit() and int(env["COLUMNS"]) > 1 else columns
    lines = int(env["LINES"]) if env["LINES"].isdigit() and int(env["LINES"]) > 1 else lines
    return columns - 1, lines - 1


class EpochProgressBar(TQDMProgressBar):
    """Lightning's progress bar, the epoch counted from 1 and shown out of `max_epochs`, each bar as wide
    as the terminal (tqdm trims the line to it; Lightning's own bars measure only a real terminal and
    never trim a piped one, nor honour $COLUMNS)."""

    def init_sanity_tqdm(self) -> Any:
        return _fit(super().init_sanity_tqdm())

    def init_train_tqdm(self) -> Any:
        return _fit(super().init_train_tqdm())

    def init_validation_tqdm(self) -> Any:
        return _fit(super().init_validation_tqdm())

    def init_test_tqdm(self) -> Any:
        return _fit(super().init_test_tqdm())

    def init_predict_tqdm(self) -> Any:
        return _fit(super().init_predict_tqdm())

    def on_train_epoch_start(self, trainer: pl.Trainer, *args: Any) -> None:
        super().on_train_epoch_start(trainer, *args)
        total = trainer.max_epochs if trainer.max_epochs and trainer.max_epochs > 0 else None
        epoch = trainer.current_epoch + 1
        self.train_progress_bar.set_description(f"Epoch {epoch}/{total}" if total else f"Epoch {epoch}")

    def get_metrics(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> dict[str, Any]:
        """The bar's numbers without Lightning's `v_num` (a run directory has no logger versions)."""
        items = super().get_metrics(trainer, pl_module)
        items.pop("v_num", None)
        return items


def _fit(bar: Any) -> Any:
    """`bar` (a tqdm bar) re-measured on each refresh by `terminal_size`."""
    bar.dynamic_ncols = terminal_size
    bar.ncols, bar.nrows = terminal_size(bar.fp)
    return bar


class _AbsentAccelerators(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return not _ABSENT_ACCELERATOR.match(record.getMessage())


_FILTER = _AbsentAccelerators()


def quiet_device_lines() -> None:
    """Drop Lightning's lines about accelerators this machine does not have (once per process)."""
    target = logging.getLogger(LIGHTNING_INFO_LOGGER)
    if _FILTER not in target.filters:
        target.addFilter(_FILTER)
