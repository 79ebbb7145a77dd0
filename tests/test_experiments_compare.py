"""`experiments/compare_models.py`: the grid (recipes by name), reuse of finished runs, fresh directories
for unfinished ones, and the mean ± sd tables, on fake run directories (no training)."""

import csv
import importlib.util
import json
import sys
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
_spec = importlib.util.spec_from_file_location("compare_models", ROOT / "experiments" / "compare_models.py")
compare = importlib.util.module_from_spec(_spec)
sys.modules["compare_models"] = compare  # dataclasses look their module up there
_spec.loader.exec_module(compare)
RunSpec = compare.RunSpec


def fake_run(runs_dir: Path, name: str, spec: RunSpec, status="finished", co_bps=0.1, epochs=None, **extra):
    """A run directory as `neuralnets-train` leaves it: config.yaml, status.json, metrics.json if finished."""
    run_dir = runs_dir / name
    run_dir.mkdir(parents=True)
    cfg = {"recipe": spec.recipe, "seed": spec.seed, "trainer": {"max_epochs": epochs or spec.epochs or 100}}
    (run_dir / "config.yaml").write_text(yaml.safe_dump(cfg))
    (run_dir / "status.json").write_text(json.dumps({"status": status}))
    if status == "finished":
        metrics = {"co_bps": co_bps, "vel_r2": 0.5, "fp_bps": None, **extra}
        record = {"model": spec.model, "data": spec.data, "metrics": metrics, "val_metrics": {"co_bps": 0.2}}
        (run_dir / "metrics.json").write_text(json.dumps({**record, "steps": 30, "train_time_s": 12.0}))
    return run_dir


def test_grid_uses_a_recipe_where_one_exists_and_orders_seed_by_seed():
    specs = compare.grid(["lfads", "rnn"], ["lorenz", "ca1_windows"], [0, 1], epochs=20)
    assert [(s.seed, s.data, s.model) for s in specs[:4]] == [
        (0, "lorenz", "lfads"),
        (0, "lorenz", "rnn"),
        (0, "ca1_windows", "lfads"),
        (0, "ca1_windows", "rnn"),
    ]
    lfads, rnn = specs[0], specs[1]
    assert lfads.recipe == "lfads_lorenz" and rnn.recipe is None
    assert lfads.overrides()[:2] == ["experiment=lfads_lorenz", "trainer.max_epochs=20"]
    assert rnn.overrides()[:3] == ["model=rnn", "data=lorenz", "trainer.max_epochs=20"]
    assert "seed=0" in rnn.overrides() and "threads=1" in rnn.overrides()
    windows = specs[3].overrides()
    assert windows[:3] == ["model=rnn", "data=ca1_linear_track", "data.load_kwargs.trials=windows"]
    assert specs[0].name == "lfads_lorenz_e20_s0"
    assert RunSpec("rnn", "lorenz", 2, None, None).name == "rnn_lorenz_s2"  # the recipe's own budget


def test_finished_runs_are_reused_and_unfinished_ones_get_a_fresh_directory(tmp_path):
    spec = RunSpec("rnn", "lorenz", 1, None, 20)
    assert compare.finished_run(tmp_path, spec) is None
    assert compare.fresh_dir(tmp_path, spec) == tmp_path / "rnn_lorenz_e20_s1"
    fake_run(tmp_path, spec.name, spec, status="running")  # killed mid-run
    fake_run(tmp_path, f"{spec.name}_1", spec, status="failed")
    assert compare.finished_run(tmp_path, spec) is None
    assert compare.fresh_dir(tmp_path, spec) == tmp_path / f"{spec.name}_2"
    done = fake_run(tmp_path, f"{spec.name}_2", spec)
    assert compare.finished_run(tmp_path, spec) == done
    # Another seed or recipe in the same directory name is never taken for this run.
    other = RunSpec("rnn", "lorenz", 2, None, 20)
    fake_run(tmp_path, other.name, RunSpec("rnn", "lorenz", 5, None, 20))
    assert compare.finished_run(tmp_path, other) is None


def test_mean_sd_and_its_formatting():
    mean, sd, n = compare.mean_sd([0.1, 0.2, None, float("nan"), 0.3])
    assert (n, mean) == (3, pytest.approx(0.2)) and sd == pytest.approx(0.1)  # sample sd (ddof 1)
    assert compare.format_mean_sd(mean, sd) == "0.2000 ± 0.1000"
    assert compare.mean_sd([0.25]) == (0.25, None, 1)
    assert compare.format_mean_sd(0.25, None) == "0.2500"
    assert compare.mean_sd([None]) == (None, None, 0) and compare.format_mean_sd(None, None) == ""


def test_tables_aggregate_over_seeds_with_baselines(tmp_path):
    rows = []
    for seed, co in ((0, 0.30), (1, 0.34), (2, 0.32)):
        spec = RunSpec("lfads", "lorenz", seed, "lfads_lorenz", 20)
        rows.append(compare.run_row(spec, fake_run(tmp_path, spec.name, spec, co_bps=co)))
    spec = RunSpec("ndt", "lorenz", 0, None, 20)
    rows.append(compare.run_row(spec, fake_run(tmp_path, spec.name, spec, co_bps=0.2)))
    baselines = {
        "lorenz": [{"model": "baseline/smoothing_glm", "metrics": {"co_bps": 0.31}, "train_time_s": 1.5}]
    }
    stem = tmp_path / "out" / "compare"
    compare.write_tables(stem, rows, baselines, ["# title"])

    md = stem.with_suffix(".md").read_text().splitlines()
    assert md[0] == "# title"
    lfads = next(line for line in md if line.startswith("| lfads | lorenz | lfads_lorenz | 20 | 3 |"))
    assert "0.3200 ± 0.0200" in lfads and "0.5000 ± 0.0000" in lfads  # co_bps, vel_r2
    assert any(line.startswith("| ndt | lorenz | defaults | 20 | 1 | 0.2000 |") for line in md)
    assert any(line.startswith("| baseline/smoothing_glm | lorenz |") and "0.3100" in line for line in md)
    assert sum(line.startswith("| lfads | lorenz | 1 | lfads_lorenz | 20 | 30 | 0.3400") for line in md) == 1

    agg = list(csv.DictReader(stem.with_suffix(".csv").open()))
    assert [(r["model"], r["n"], r["seeds"]) for r in agg] == [
        ("lfads", "3", "0 1 2"),
        ("ndt", "1", "0"),
        ("baseline/smoothing_glm", "", ""),
    ]
    assert float(agg[0]["co_bps_mean"]) == pytest.approx(0.32) and float(
        agg[0]["co_bps_sd"]
    ) == pytest.approx(0.02)
    assert agg[0]["fp_bps_mean"] == "" and float(agg[0]["val_co_bps_mean"]) == pytest.approx(0.2)
    runs = list(csv.DictReader((stem.parent / "compare_runs.csv").open()))
    assert len(runs) == 4 and runs[1]["seed"] == "1" and runs[1]["run_dir"].endswith("lfads_lorenz_e20_s1")


def test_unknown_model_is_refused_naming_the_registered_ones(capsys):
    with pytest.raises(SystemExit):
        compare.main(["--models", "lfads", "nosuchmodel"])
    err = capsys.readouterr().err
    assert "nosuchmodel" in err and "lfads" in err


def test_baseline_cache_is_reused_and_refit_when_the_baseline_list_changes(tmp_path, monkeypatch):
    import neuralnets.data
    import neuralnets.eval
    import neuralnets.eval.baselines as baselines
    from neuralnets.eval.baselines import BaselineRun

    fits = []

    def fake_run_baselines(data):
        fits.append(data)
        return [BaselineRun("smoothing_glm", rates=None, latents=None, train_time_s=1.0, n_parameters=0)]

    monkeypatch.setattr(neuralnets.data, "load", lambda source, **kwargs: "data")
    monkeypatch.setattr(neuralnets.eval, "evaluate", lambda *args, **kwargs: {"co_bps": 0.25})
    monkeypatch.setattr(baselines, "run_baselines", fake_run_baselines)
    cache = tmp_path / "baselines"
    cache.mkdir()
    (cache / "lorenz.json").write_text(json.dumps([{"model": "baseline/stale", "metrics": {}}]))  # old format
    rows = compare.dataset_baselines("lorenz", cache)
    assert [r["model"] for r in rows] == ["baseline/smoothing_glm"] and len(fits) == 1
    assert rows[0]["metrics"]["co_bps"] == 0.25 and rows[0]["metrics"]["val_co_bps"] == 0.25
    assert compare.dataset_baselines("lorenz", cache) == rows and len(fits) == 1  # cached: not refit
    monkeypatch.setattr(baselines, "BASELINES", ("smoothing_glm", "a_new_baseline"))
    compare.dataset_baselines("lorenz", cache)
    assert len(fits) == 2  # the harness's baselines changed: refit
