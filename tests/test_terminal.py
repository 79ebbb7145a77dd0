"""A quiet terminal (`neuralnets.training.terminal`): no lines about accelerators the machine lacks, no
all-zero FLOPs column, epochs counted from 1 out of max_epochs."""

from __future__ import annotations

import logging
import os
import re

import torch
from test_training import tiny_cfg

from neuralnets.training.terminal import (
    LIGHTNING_INFO_LOGGER,
    EpochProgressBar,
    quiet_device_lines,
    terminal_size,
)
from neuralnets.training.train import train


def test_a_cpu_run_prints_no_absent_accelerators_no_flops_and_counts_epochs_from_one(
    tmp_path, caplog, monkeypatch, capsys
):
    described = []
    real = EpochProgressBar.on_train_epoch_start

    def record(self, trainer, *args):
        real(self, trainer, *args)
        described.append(self.train_progress_bar.desc)
        assert "v_num" not in self.get_metrics(trainer, args[0])

    monkeypatch.setattr(EpochProgressBar, "on_train_epoch_start", record)
    monkeypatch.setenv("COLUMNS", "80")  # a narrow terminal: every bar fits in it (was 90 columns)
    cfg = tiny_cfg(
        "trainer.enable_progress_bar=true", "trainer.enable_model_summary=true", "print_baselines=false"
    )
    with caplog.at_level(logging.INFO):
        train(cfg, tmp_path / "run")
    text = caplog.text
    assert "Total params" in text  # the summary is there ...
    assert "FLOPs" not in text and "Total Flops" not in text  # ... without its all-zero FLOPs
    if not torch.cuda.is_available():
        assert "GPU available: False" not in text and "TPU available: False" not in text
    assert [d.split(":")[0] for d in described] == ["Epoch 1/2", "Epoch 2/2"]
    bars = [line for line in re.split(r"[\r\n]", capsys.readouterr().out) if "Epoch 2/2" in line]
    assert bars and max(len(re.sub(r"\x1b\[[0-9;]*[A-Za-z]", "", line)) for line in bars) <= 79


def test_the_bar_is_as_wide_as_the_terminal(monkeypatch):
    monkeypatch.setenv("COLUMNS", "100")
    monkeypatch.setenv("LINES", "30")
    assert terminal_size(None) == (99, 29)
    monkeypatch.delenv("COLUMNS")
    monkeypatch.delenv("LINES")
    with open(os.devnull, "w") as not_a_terminal:
        assert terminal_size(not_a_terminal) == (79, 23)  # a pipe or a log: 80 columns, never unbounded


def test_only_absent_accelerators_are_dropped(caplog):
    quiet_device_lines()
    lightning = logging.getLogger(LIGHTNING_INFO_LOGGER)
    with caplog.at_level(logging.INFO, logger=LIGHTNING_INFO_LOGGER):
        lightning.info("GPU available: False, used: False")
        lightning.info("GPU available: True (cuda), used: True")
    assert "GPU available: False" not in caplog.text and "GPU available: True" in caplog.text
