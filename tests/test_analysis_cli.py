"""`neuralnets-analyze`: runs on every bundled model and on a tiny run of each model family, writes
analysis.md atomically and TensorBoard figures, and refuses bad input with NeuralnetsErrors."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from hydra import compose, initialize_config_dir
from tiny import TINY_DATA, TINY_LFADS, TINY_LORENZ

from neuralnets.analysis.cli import main
from neuralnets.analysis.report import REPORT_FILE, analyze
from neuralnets.data import load
from neuralnets.errors import EXIT_OK, EXIT_USER_ERROR, AnalysisError, NeuralnetsError
from neuralnets.pretrained import list_pretrained, load_pretrained, model_card
from neuralnets.pretrained.bundle import card_data
from neuralnets.training.train import CONFIG_DIR, train

FAST = ["--n-initial", "16", "--n-iter", "60"]
COMMON = [
    "data.batch_size=16",
    "trainer.max_epochs=2",
    "trainer.enable_progress_bar=false",
    "trainer.enable_model_summary=false",
    "callbacks.figures=false",
    "print_baselines=false",
    "threads=1",
]
SESSIONS = [
    "data=lorenz_sessions",
    "data.load_kwargs.n_sessions=2",
    "data.load_kwargs.n_trials=30",
    "data.load_kwargs.n_neurons=[8,12]",
    "data.load_kwargs.n_bins=16",
    "data.load_kwargs.n_fwd=4",
    "data.batch_size=8",
]
FAMILIES = {
    "lfads": ["model=lfads", *TINY_LFADS],
    "rnn": ["model=rnn", "model.enc_dim=8", "model.latent_dim=4", "model.dec_dim=8", "model.fac_dim=3"],
    "ndt": ["model=ndt"],
    "stndt": ["model=stndt", "model.projection_dim=8"],
    "gpfa": ["model=gpfa", "model.latent_dim=3"],
    "stitched": [
        "model=stitched",
        "model.core_options={gen_dim:8,fac_dim:3,ic_enc_dim:8,ci_enc_dim:4,con_dim:4,co_dim:1}",
    ],
}


def _tiny_run(tmp: Path, family: str) -> Path:
    data = SESSIONS if family == "stitched" else TINY_DATA
    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
        cfg = compose("train", overrides=[*FAMILIES[family], *data, *COMMON])
    run = tmp / family
    train(cfg, run)
    return run


def _report(path: Path, figures: set[str]) -> str:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    text = (path / REPORT_FILE).read_text()
    assert not list(path.glob(f".{REPORT_FILE}.*")), "a temporary file was left behind"
    events = EventAccumulator(str(path), size_guidance={"images": 0, "tensors": 0}).Reload()
    assert figures <= set(events.Tags()["images"]), events.Tags()["images"]
    assert "analysis/report/text_summary" in events.Tags()["tensors"]
    return text


@pytest.mark.slow
@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_analyze_runs_on_a_tiny_run_of_each_family(family, tmp_path, capsys):
    run = _tiny_run(tmp_path, family)
    assert main([str(run), *FAST]) == EXIT_OK
    assert str(run / REPORT_FILE) in capsys.readouterr().out
    recurrent = family not in ("ndt", "stndt", "gpfa")
    figures = {"analysis/jpca"} | ({"analysis/fixed_points"} if recurrent else set())
    text = _report(run, figures)
    fixed = text.split("## Fixed and slow points")[1].split("##")[0]
    inputs = text.split("## Inferred inputs")[1]
    if family in ("ndt", "stndt", "gpfa"):
        assert "Skipped: fixed points need a model with recurrent dynamics" in fixed
    else:
        assert "fixed points" in fixed and "Skipped" not in fixed
    if family in ("lfads", "stitched"):
        assert "**Verdict:" in inputs and "set so that the null gives" in inputs
    else:
        assert "Skipped: input analysis needs a model with inferred inputs" in inputs
    assert "jPCA" in text and "unconstrained M" in text  # Lorenz data have conditions


@pytest.mark.slow
@pytest.mark.parametrize("name", list_pretrained())
def test_analyze_runs_on_every_bundled_model(name, tmp_path):
    out = tmp_path / "out"
    assert main([name, "--out", str(out), "--n-initial", "32", "--n-iter", "300"]) == EXIT_OK
    data = card_data(model_card(name))
    with_conditions = data.condition is not None
    text = _report(out, {"analysis/fixed_points"} | ({"analysis/jpca"} if with_conditions else set()))
    # synthetic data: the found points against the system's own; real recordings have no ground truth
    assert ("**Ground truth.**" in text) == ("fixed_points" in data.meta)
    assert ("skew-symmetric M" in text) == with_conditions


def test_analysis_of_a_tiny_model_gives_numbers_and_figures():
    # The bundled LFADS on a small slice of its own data: every section runs and reports numbers.
    pm = load_pretrained("lfads_lorenz")
    data = load("lorenz", seed=0, n_trials=60, n_neurons=40, n_heldout=10, n_bins=50, n_fwd=10)
    sections = analyze(pm, data, n_initial=8, n_iter=40)
    fixed, cond, inputs = sections
    assert fixed.numbers["n_fixed"] + fixed.numbers["n_slow"] >= 1
    assert len(fixed.numbers["true_fixed_point_distance_rel"]) == 3
    assert 0 <= cond.numbers["r2_skew"] <= cond.numbers["r2_full"] <= 1
    assert inputs.numbers["threshold"] > 0
    assert inputs.numbers["verdict"].startswith(("inputs found", "no reliable inputs found"))
    assert "**Verdict:" in inputs.text
    groups = fixed.numbers["groups"]  # each group once, with its modes and the DMD's opinion of them
    assert sum(g["n_points"] for g in groups) == fixed.numbers["n_fixed"] + fixed.numbers["n_slow"]
    assert all(len(g["agrees_with_dmd"]) == len(g["modes"]) for g in groups) and fixed.numbers["dmd_modes"]
    assert set(fixed.figures) == {"analysis/fixed_points"} and set(cond.figures) == {"analysis/jpca"}


def test_bad_targets_and_options_are_one_line_errors(tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    for argv, message in [
        ([str(tmp_path / "nowhere")], "neither a bundled model"),
        ([str(tmp_path / "empty")], "holds no run"),
        (["lfads_lorenz", "--n-iter", "0"], "--n-iter must be >= 1"),
        (["lfads_lorenz", "--min-tau-ms", "0"], "--min-tau-ms must be > 0"),
        ([], "give a RUN_DIR"),
    ]:
        assert main(argv) == EXIT_USER_ERROR
        err = capsys.readouterr().err.strip()
        assert err.startswith("neuralnets-analyze: error:") and message in err and "\n" not in err
    assert issubclass(AnalysisError, NeuralnetsError)


def test_tiny_lorenz_is_what_the_cli_runs_use():
    # the families above train on TINY_DATA: conditions are there for jPCA
    assert load("lorenz", **TINY_LORENZ).condition is not None
    assert np.unique(load("lorenz", **TINY_LORENZ).condition).size >= 2


@pytest.mark.slow
def test_analyze_an_exported_model_folder_writes_next_to_it(tmp_path):
    import shutil

    from neuralnets.pretrained import CHECKPOINTS_DIR

    folder = tmp_path / "exported"
    shutil.copytree(CHECKPOINTS_DIR / "rnn_lorenz", folder)
    assert main([str(folder), *FAST]) == EXIT_OK
    assert "Bundled model" in (folder / REPORT_FILE).read_text()


def test_help_is_answered_without_importing_torch():
    import os
    import subprocess
    import sys

    code = (
        "import sys; from neuralnets.analysis.cli import main\n"
        "try:\n    main(['--help'])\nexcept SystemExit as done:\n"
        "    assert 'torch' not in sys.modules, 'torch was imported'; sys.exit(done.code)"
    )
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, env=env)
    assert done.returncode == 0, done.stderr
    assert "RUN_DIR" in done.stdout


def test_compare_two_models_by_dsa_with_split_half_references(tmp_path, capsys):
    assert main(["--compare", "lfads_lorenz", "rnn_lorenz", "--out", str(tmp_path)]) == EXIT_OK
    text = (tmp_path / "compare.md").read_text()
    assert "| A vs B |" in text and "A, even vs odd trials" in text and "rnn_lorenz" in text
    assert "report:" in capsys.readouterr().out


def test_spread_over_runs_gives_median_and_range(tmp_path, capsys):
    argv = ["--spread", "rnn_lorenz", "rnn_lorenz", "--out", str(tmp_path), *FAST]
    assert main(argv) == EXIT_OK
    text = (tmp_path / "spread.md").read_text()
    assert "| DMD |" in text and "over 2 runs" in text
    import re

    for lo, hi in re.findall(r"\[([-\d.]+), ([-\d.]+)\]", text):  # one model twice: no spread at all
        assert lo == hi
