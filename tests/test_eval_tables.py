"""Comparison tables (neuralnets.eval.tables) and TensorBoard logging (neuralnets.eval.tblog)."""

from __future__ import annotations

import pytest
from test_eval_harness import make_data

from neuralnets.eval.harness import evaluate
from neuralnets.eval.tables import format_table
from neuralnets.eval.tblog import flatten_hparams, log_to_tensorboard, tb_metric_names


def test_format_table_adds_baseline_rows_and_notes_missing_data():
    data = make_data()
    record = {"model": "m", "data": "tiny", "split": "test", "metrics": evaluate(data.rates, data, "test")}
    record.update(train_time_s=2.0, n_parameters=7)
    lines = format_table([record], baselines=True, data=data).splitlines()
    assert lines[0].startswith("| model | data | split | co_bps |")
    table = [line for line in lines if line.startswith("|")]
    assert [line.split(" | ")[0] for line in table[2:]] == [
        "| m",
        "| baseline/smoothing_glm",
        "| baseline/mean_rates",
        "| baseline/condition_average",  # the data have conditions
        "| baseline/true_rates",
    ]
    # The held-in column means something else for the baselines: the table says so under it.
    assert any(line.startswith("Note: bps_heldin of baseline/ rows") for line in lines)
    text = format_table([dict(record, data_source="/no/such/file.npz")], baselines=True)
    assert "no baseline rows for '/no/such/file.npz'" in text


# ---------------------------------------------------------------------------------------------- TensorBoard
def test_flatten_hparams_and_metric_names():
    import numpy as np

    flat = flatten_hparams({"a": {"b": 1, "c": [1, 2]}, "d": np.float32(0.5), "e": True})
    assert flat == {"a.b": 1, "a.c": "[1, 2]", "d": 0.5, "e": True}
    assert tb_metric_names({"co_bps": 0.2, "vel_r2": float("nan"), "x": None}) == {"hp/co_bps": 0.2}


def _read_events(logdir):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(logdir))
    acc.Reload()
    return acc


def test_log_to_tensorboard_with_summary_writer(tmp_path):
    from torch.utils.tensorboard import SummaryWriter

    with SummaryWriter(log_dir=str(tmp_path)) as writer:
        log_to_tensorboard(
            writer, {"model": "lfads", "cfg": {"lr": 1e-3}}, {"co_bps": 0.25, "vel_r2": float("nan")}
        )
    acc = _read_events(tmp_path)
    assert acc.Tags()["scalars"] == ["hp/co_bps"]  # NaN metrics are not logged
    assert acc.Scalars("hp/co_bps")[0].value == pytest.approx(0.25)
    # the hparams plugin's experiment/session summaries name the flattened hyperparameters and metrics
    content = b"".join(acc.PluginTagToContent("hparams").values())
    assert b"cfg.lr" in content and b"hp/co_bps" in content


def test_log_to_tensorboard_with_lightning_logger(tmp_path):
    from pytorch_lightning.loggers import TensorBoardLogger

    logger = TensorBoardLogger(str(tmp_path), name="run", version=0, default_hp_metric=False)
    log_to_tensorboard(logger, {"model": "ndt"}, {"co_bps": 0.3})
    logger.finalize("success")
    acc = _read_events(tmp_path / "run" / "version_0")
    assert acc.Scalars("hp/co_bps")[0].value == pytest.approx(0.3)


def test_log_to_tensorboard_rejects_other_objects():
    with pytest.raises(TypeError, match="SummaryWriter"):
        log_to_tensorboard(object(), {}, {"co_bps": 0.1})


def test_compare_prints_the_same_markdown_table_as_train(capsys):
    from neuralnets.eval.tables import print_table, to_markdown

    rows = [{"model": "m", "data": "d", "split": "test", "metrics": {"co_bps": 0.25}, "train_time_s": 1.0}]
    print_table(rows)
    out = capsys.readouterr().out
    assert out == to_markdown(rows) and out.startswith("| model | data | split | co_bps |")
    assert "Note" not in out  # no baseline rows: nothing to note
