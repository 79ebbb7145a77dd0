"""`neuralnets-data` command line: summary, --save, one-line errors."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from neuralnets.data import load_npz, lorenz
from neuralnets.data.cli import main

REPO = Path(__file__).resolve().parent.parent


def test_prints_summary(capsys):
    assert main(["lorenz", "--seed", "1"]) == 0
    out = capsys.readouterr().out
    assert out == lorenz(seed=1).summary() + "\n"
    assert "lorenz: 1000 trials x 50 bins x 40 neurons (bin 10 ms)" in out


def test_save_writes_a_loadable_npz(tmp_path, capsys):
    out_path = tmp_path / "rnn.npz"
    assert main(["chaotic_rnn", "--seed", "2", "--save", str(out_path)]) == 0
    assert f"saved to {out_path}" in capsys.readouterr().out
    saved = load_npz(out_path)
    assert saved.name == "chaotic_rnn" and saved.meta["params"]["seed"] == 2
    # a file path is a source too, and --save never overwrites
    assert main([str(out_path)]) == 0
    assert "chaotic_rnn: 400 trials" in capsys.readouterr().out
    assert main(["chaotic_rnn", "--save", str(out_path)]) == 2
    assert "exists; refusing to overwrite" in capsys.readouterr().err
    np.testing.assert_array_equal(load_npz(out_path).spikes, saved.spikes)


def test_nwb_file_with_options(capsys):
    nwb = REPO / "tests" / "fixtures" / "sub-Jenkins_ses-small_desc-test_ecephys.nwb"
    args = [str(nwb), "--bin-size", "0.01", "--align-event", "move_onset_time", "--window", "-0.25", "0.45"]
    assert main(args) == 0
    assert "100 trials x 70 bins x 107 neurons (bin 10 ms)" in capsys.readouterr().out


def test_errors_are_one_line(tmp_path, capsys):
    assert main(["nope"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("neuralnets-data: error: 'nope' is neither a built-in dataset")
    assert err.count("\n") == 1
    assert main([str(tmp_path / "missing.npz")]) == 2
    assert "missing.npz: no such file" in capsys.readouterr().err
    assert main(["lorenz", "--window", "0", "1"]) == 2
    assert "unknown options ['window'] for lorenz" in capsys.readouterr().err


def test_module_entry_point_has_no_traceback(tmp_path):
    bad = tmp_path / "bad.npz"
    np.savez(bad, spikes=-np.ones((2, 3, 4)), bin_size=0.01)
    env = {**os.environ, "PYTHONPATH": str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    proc = subprocess.run(
        [sys.executable, "-m", "neuralnets.data.cli", str(bad)], capture_output=True, text=True, env=env
    )
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr
    assert proc.stderr.strip() == (
        f"neuralnets-data: error: {bad}: key 'spikes' has negative counts (first -1.0 at index (0, 0, 0))"
    )


def test_opt_items_reach_the_loader_and_save(tmp_path, capsys):
    from test_data_nwb import TRIALS, UNITS, _write_nwb

    nwb = _write_nwb(tmp_path / "s.nwb", UNITS, TRIALS)
    out_path = tmp_path / "s_binned.npz"
    argv = [str(nwb), "--opt", "bin_size=1e-1", "-o", "heldout_column=null", "-o", "heldout_units=[1, 2]"]
    assert main(argv + ["-o", "window=[-0.5e-1, 0.25]", "--align-event", "go", "--save", str(out_path)]) == 0
    out = capsys.readouterr().out
    assert "2 trials x 3 bins x 4 neurons (bin 100 ms)" in out and "held-in 2 / held-out 2" in out
    saved = load_npz(out_path)
    assert saved.meta["unit_ids"] == [10, 13, 11, 12] and saved.meta["window"] == pytest.approx([-0.05, 0.25])
    assert saved.meta["heldout_choice"] == "heldout_units=[1, 2]"


def test_bad_opt_items_are_one_line_errors(capsys):
    for argv, message in [
        (["lorenz", "--opt", "n_trials"], "load option 'n_trials' is not KEY=VALUE (no '=')"),
        (
            ["lorenz", "-o", "n_trials=[1,"],
            "load option 'n_trials=[1,': the value is not a YAML scalar or list",
        ),
        (["lorenz", "-o", "n_trials=1", "-o", "n_trials=2"], "load option 'n_trials' is given twice"),
        (
            ["lorenz", "-o", "seed=1", "--seed", "2"],
            "option 'seed' is given twice: --seed and --opt seed=...",
        ),
        (
            ["lorenz", "-o", "n_trials=ten"],
            "lorenz: option n_trials='ten' (str) does not fit lorenz: n_trials must be int",
        ),
        (["lorenz", "-o", "sigma_x=1"], "lorenz: unknown options ['sigma_x'] for lorenz; it accepts ["),
    ]:
        assert main(argv) == 2, argv
        err = capsys.readouterr().err
        assert err.startswith("neuralnets-data: error: " + message), err
        assert err.count("\n") == 1
