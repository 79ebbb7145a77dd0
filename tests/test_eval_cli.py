"""neuralnets-eval and neuralnets-compare on temporary run directories (neuralnets.eval.cli)."""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path

import numpy as np
import pytest

from neuralnets import runs as run_dirs
from neuralnets.data import load
from neuralnets.data.formats.nlb_targets import nlb_group_name, targets_from_data, write_nlb_targets
from neuralnets.data.formats.npz import save_npz
from neuralnets.data.synthetic import lorenz
from neuralnets.eval.cli import compare_main, eval_main
from neuralnets.eval.harness import evaluate
from neuralnets.eval.nlb import read_nlb_submission, submission_from_run


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    """A small synthetic dataset saved as .npz (a path the loaders read), and the SpikeData itself."""
    data = lorenz(n_trials=40, n_bins=30, n_fwd=5, seed=1)
    path = save_npz(data, tmp_path_factory.mktemp("data") / "tiny_lorenz.npz")
    return path, data


def make_run(root, name, data_path, rates, latents=None, **extra):
    run_dir = root / name
    run_dirs.write_predictions(run_dir, {"rates": rates, "latents": latents})
    record = {"model": name, "data": "tiny_lorenz", "data_source": str(data_path), "split": "test"}
    record.update(train_time_s=12.5, n_parameters=1234, **extra)
    run_dirs.write_metrics({}, run_dir, extra=record)
    return run_dir


def test_eval_scores_a_run_directory(tmp_path, dataset, capsys):
    path, data = dataset
    rates = np.clip(data.rates * 1.1, 0, None)
    run = make_run(tmp_path, "scaled", path, rates, latents=data.latents)
    out = tmp_path / "m.json"
    assert eval_main([str(run), "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "scaled" in printed and "co_bps" in printed
    saved = json.loads(out.read_text())
    expected = evaluate(rates, data, "test", data.latents)
    assert saved["metrics"] == pytest.approx(expected)
    assert saved["model"] == "scaled" and saved["split"] == "test"


def test_eval_rates_file_with_baselines(tmp_path, dataset, capsys):
    path, data = dataset
    np.save(tmp_path / "rates.npy", data.rates)
    csv_path = tmp_path / "t.csv"
    code = eval_main(
        [
            str(tmp_path / "rates.npy"),
            "--data",
            str(path),
            "--split",
            "val",
            "--baselines",
            "--csv",
            str(csv_path),
        ]
    )
    assert code == 0
    rows = list(csv.DictReader(io.StringIO(csv_path.read_text())))
    assert [r["model"] for r in rows] == [
        "rates",
        "baseline/smoothing_glm",
        "baseline/mean_rates",
        "baseline/condition_average",
        "baseline/true_rates",
    ]
    assert {r["split"] for r in rows} == {"val"}
    # the rates file holds the true rates, so its row equals the true-rates baseline row
    assert float(rows[0]["co_bps"]) == pytest.approx(float(rows[4]["co_bps"]))
    assert float(rows[0]["co_bps"]) == pytest.approx(evaluate(data.rates, data, "val")["co_bps"])


def test_compare_makes_one_table_with_baseline_rows(tmp_path, dataset, capsys):
    path, data = dataset
    runs = []
    for name, scale in (("model_a", 1.0), ("model_b", 0.8)):
        rates = data.rates * scale
        run = make_run(tmp_path, name, path, rates)
        run_dirs.write_metrics(evaluate(rates, data, "test"), run)  # what training writes
        runs.append(run)
    csv_path, md_path = tmp_path / "cmp.csv", tmp_path / "cmp.md"
    tb = tmp_path / "tb"
    args = [*map(str, runs), "--csv", str(csv_path), "--markdown", str(md_path), "--tensorboard", str(tb)]
    assert compare_main(args) == 0
    rows = list(csv.DictReader(io.StringIO(csv_path.read_text())))
    models = [r["model"] for r in rows]
    assert models == [
        "model_a",
        "model_b",
        "baseline/smoothing_glm",
        "baseline/mean_rates",
        "baseline/condition_average",
        "baseline/true_rates",
    ]
    assert rows[0]["train_time_s"] == "12.5" and rows[0]["n_parameters"] == "1234"
    assert float(rows[1]["co_bps"]) == pytest.approx(
        json.loads((runs[1] / "metrics.json").read_text())["metrics"]["co_bps"]
    )
    assert float(rows[0]["co_bps"]) == pytest.approx(float(rows[5]["co_bps"]))  # model_a = true rates
    md = md_path.read_text().splitlines()
    table = [line for line in md if line.startswith("|")]
    assert md[0].startswith("| model | data | split | co_bps") and len(table) == 2 + len(rows)
    assert any(line.startswith("Note: bps_heldin of baseline/ rows") for line in md)
    assert len(list(tb.iterdir())) == len(rows)  # one TensorBoard run per row
    assert "model_b" in capsys.readouterr().out
    assert compare_main([str(runs[0]), "--no-baselines", "--csv", str(csv_path)]) == 0
    assert len(csv_path.read_text().splitlines()) == 2


@pytest.mark.parametrize("which", ["eval", "compare"])
def test_errors_are_one_line_with_exit_code_2(tmp_path, which, capsys):
    main = eval_main if which == "eval" else compare_main
    assert main([str(tmp_path / "missing_run")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "missing_run" in err and "Traceback" not in err
    (tmp_path / "empty").mkdir()
    assert compare_main([str(tmp_path / "empty")]) == 2
    assert "metrics.json not found" in capsys.readouterr().err
    # A folder that is not a run: eval says so, rather than asking for --data that would not help.
    assert eval_main([str(tmp_path / "empty")]) == 2
    err = capsys.readouterr().err
    assert "is not a run directory" in err and "--data" not in err


def test_eval_shape_mismatch_names_both_shapes(tmp_path, dataset, capsys):
    path, data = dataset
    run = make_run(tmp_path, "wrong", path, data.rates[:, :, :-1])
    assert eval_main([str(run)]) == 2
    err = capsys.readouterr().err
    assert str(tuple(data.rates[:, :, :-1].shape)) in err and str(data.spikes.shape) in err


def test_eval_needs_a_dataset(tmp_path, capsys):
    np.save(tmp_path / "r.npy", np.ones((2, 3, 4)))
    assert eval_main([str(tmp_path / "r.npy")]) == 2
    assert "--data" in capsys.readouterr().err


NWB = Path(__file__).parent / "fixtures" / "sub-Jenkins_ses-small_desc-test_ecephys.nwb"


def test_eval_takes_loader_options_and_names_the_flag(tmp_path, capsys):
    opts = ["-o", "bin_size=0.01", "-o", "heldout_fraction=0.25", "-o", "heldout_column=null"]
    data = load(NWB, bin_size=0.01, heldout_fraction=0.25, heldout_column=None)
    rates = np.broadcast_to(data.spikes.mean(axis=(0, 1)), data.spikes.shape)  # (trials, T, N) mean rates
    np.save(tmp_path / "r.npy", rates)
    out = tmp_path / "m.json"
    assert eval_main([str(tmp_path / "r.npy"), "--data", str(NWB), *opts, "--out", str(out)]) == 0
    assert json.loads(out.read_text())["metrics"] == pytest.approx(evaluate(rates, data, "test"))
    assert eval_main([str(tmp_path / "r.npy"), "--data", str(NWB)]) == 2
    assert "-o bin_size=" in capsys.readouterr().err  # the error names the command-line flag
    assert eval_main([str(tmp_path / "r.npy"), "--data", str(NWB), "-o", "bin_size"]) == 2
    assert "'bin_size' is not KEY=VALUE" in capsys.readouterr().err


def test_compare_baselines_take_loader_options(tmp_path, dataset):
    path, data = dataset
    run = make_run(tmp_path, "truth", "lorenz", data.rates)  # recorded: the built-in, default options
    csv_path = tmp_path / "c.csv"
    opts = ["-o", "n_trials=40", "-o", "n_bins=30", "-o", "n_fwd=5", "-o", "seed=1"]  # = the fixture's data
    assert compare_main([str(run), *opts, "--csv", str(csv_path)]) == 0
    rows = {r["model"]: r for r in csv.DictReader(io.StringIO(csv_path.read_text()))}
    want = evaluate(data.rates, data, "test")["co_bps"]
    assert float(rows["baseline/true_rates"]["co_bps"]) == pytest.approx(want)


def test_eval_writes_an_nlb_submission_and_scores_nlb_targets(tmp_path, dataset, capsys):
    path, data = dataset
    rates = np.clip(data.rates * 0.9, 0, None).astype(np.float32)
    run = make_run(tmp_path, "nlbrun", path, rates)
    group = nlb_group_name(data.name, data.bin_size)
    targets = write_nlb_targets(tmp_path / "eval_data.h5", {group: targets_from_data(data)})
    sub = tmp_path / "sub.h5"
    csv_path = tmp_path / "t.csv"
    args = [str(run), "--nlb-submission", str(sub), "--nlb-targets", str(targets), "--csv", str(csv_path)]
    assert eval_main(args) == 0
    assert f"NLB submission: {sub}" in capsys.readouterr().out
    written = read_nlb_submission(sub, group)
    want = submission_from_run(rates, data)
    assert written.keys() == want.keys()
    for k in want:
        np.testing.assert_array_equal(written[k], want[k])
    rows = list(csv.DictReader(io.StringIO(csv_path.read_text())))
    assert [(r["model"], r["split"]) for r in rows] == [
        ("nlbrun", "test"),
        ("nlbrun (NLB targets)", "nlb-eval"),
    ]
    assert float(rows[1]["co_bps"]) == pytest.approx(evaluate(rates, data, "test")["co_bps"], rel=1e-6)
    before = sub.read_bytes()
    assert eval_main([str(run), "--nlb-submission", str(sub)]) == 2  # never overwrites
    assert "sub.h5" in capsys.readouterr().err and sub.read_bytes() == before
    assert eval_main(["--baselines", "--data", str(path), "--nlb-submission", str(tmp_path / "x.h5")]) == 2
    assert "need rates" in capsys.readouterr().err
