"""The one command wrapper (`neuralnets.cli`), the one config composer (`neuralnets.config`) and the
--help of every command (content only: tests never time things)."""

from __future__ import annotations

import logging
import os
import subprocess
import sys
from pathlib import Path

import pytest

from neuralnets import cli
from neuralnets.config import CONFIG_DIR, compose, config_groups, config_names
from neuralnets.errors import (
    EXIT_DIVERGED,
    EXIT_USER_ERROR,
    ConfigError,
    DataError,
    DivergenceError,
    NeuralnetsError,
)

REPO = Path(__file__).resolve().parents[1]


def _python(code: str, *args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    keep = {k: v for k, v in os.environ.items() if k not in ("HYDRA_FULL_ERROR", "NEURALNETS_DEBUG")}
    env = {**keep, "PYTHONPATH": str(REPO), **(env or {})}
    return subprocess.run(
        [sys.executable, "-c", code, *args], capture_output=True, text=True, timeout=300, env=env, cwd=REPO
    )


# ---------------------------------------------------------------------------------------------- wrapper
def _raises(err: BaseException):
    def main():
        raise err

    return main


@pytest.mark.parametrize(
    ("err", "code"),
    [
        (ConfigError("model.x=3: no such option\n  (second line)"), EXIT_USER_ERROR),
        (DataError("data.h5: field 'spikes' is negative"), EXIT_USER_ERROR),
        (FileNotFoundError("runs/x: no such run directory"), EXIT_USER_ERROR),
        (DivergenceError("70% of the steps had a non-finite loss"), EXIT_DIVERGED),
    ],
)
def test_a_users_error_is_one_line_on_stderr_and_its_exit_code(err, code, capsys, monkeypatch):
    monkeypatch.delenv("NEURALNETS_DEBUG", raising=False)
    assert cli.run_cli("neuralnets-x", _raises(err)) == code
    out, errtext = capsys.readouterr()
    assert out == "" and errtext.count("\n") == 1 and errtext.startswith("neuralnets-x: error: ")
    assert " ".join(str(err).split()) in errtext and "Traceback" not in errtext


def test_debug_mode_adds_the_traceback_and_keeps_the_exit_code(capsys, monkeypatch):
    monkeypatch.setenv("NEURALNETS_DEBUG", "1")
    assert cli.run_cli("neuralnets-x", _raises(ConfigError("bad value"))) == EXIT_USER_ERROR
    errtext = capsys.readouterr().err
    assert "Traceback" in errtext and errtext.rstrip().endswith("neuralnets-x: error: bad value")


def test_a_bug_is_not_hidden(capsys):
    with pytest.raises(KeyError):  # Python prints the traceback, exit status 1
        cli.run_cli("neuralnets-x", _raises(KeyError("x")))
    assert capsys.readouterr().err == ""


def test_return_values_and_arguments():
    assert cli.run_cli("p", lambda a, b: a + b, 2, 3) == 5  # an exit code is passed on
    assert cli.run_cli("p", lambda: 0.37) == 0  # a sweep objective is not an exit code
    assert cli.run_cli("p", lambda: None) == 0
    assert cli.exit_code(KeyError("x")) is None and cli.exit_code(NeuralnetsError("x")) == EXIT_USER_ERROR


def test_hydra_task_ends_a_users_error_before_hydra_sees_it(capsys, monkeypatch):
    monkeypatch.delenv("NEURALNETS_DEBUG", raising=False)
    task = cli.hydra_task("neuralnets-x")(_raises(DivergenceError("diverged")))
    with pytest.raises(SystemExit) as stop:
        task()
    assert stop.value.code == EXIT_DIVERGED and capsys.readouterr().err == "neuralnets-x: error: diverged\n"
    with pytest.raises(ZeroDivisionError):
        cli.hydra_task("neuralnets-x")(lambda: 1 / 0)()


def test_every_console_script_goes_through_the_wrapper():
    import tomllib

    scripts = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["scripts"]
    assert {"neuralnets-train", "neuralnets-eval", "neuralnets-compare", "neuralnets-data"} <= set(scripts)
    for name, target in scripts.items():
        module, func = target.split(":")
        source = Path(REPO, *module.split(".")).with_suffix(".py").read_text()
        body = source.split(f"def {func}(")[1].split("\ndef ")[0]
        assert "run_cli(" in body or "hydra_command(" in body, name


def test_neuralnets_train_exit_codes_in_a_fresh_process(tmp_path):
    code = "import sys; from neuralnets.cli import train; sys.argv[0] = 'neuralnets-train'; sys.exit(train())"
    out = _python(code, "model=lfadz", f"out_dir={tmp_path}")
    lines = [line for line in out.stderr.splitlines() if line.strip()]
    assert out.returncode == EXIT_USER_ERROR and len(lines) == 1, out.stderr
    assert lines[0].startswith("neuralnets-train: error: ") and "model/lfadz" in lines[0]
    debug = _python(code, "model=lfadz", f"out_dir={tmp_path}", env={"NEURALNETS_DEBUG": "1"})
    assert debug.returncode == EXIT_USER_ERROR and "Traceback" in debug.stderr
    assert list(tmp_path.iterdir()) == []


# ---------------------------------------------------------------------------------------------- compose
def test_compose_applies_overrides_and_names_the_choices():
    cfg = compose(["model=ndt", "data=chaotic_rnn", "trainer.max_epochs=3"])
    assert (cfg.model.name, cfg.data.name, cfg.trainer.max_epochs) == ("ndt", "chaotic_rnn", 3)
    assert "hydra" not in cfg and "tune" in compose(config_name="tune")
    assert compose(config_name="tune/lfads").tune.params[0].key == "module.lr"  # package: its group
    with pytest.raises(ConfigError, match=r"model configs: \['gpfa', 'lfads'"):
        compose(["model=lfadz"])
    with pytest.raises(ConfigError, match="trainer.bogus"):
        compose(["trainer.bogus=1"])


def test_compose_inside_a_running_hydra_app_leaves_it_as_it_was():
    from hydra import initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
        running = GlobalHydra.instance().hydra
        assert compose(["model=rnn"]).model.name == "rnn"
        assert GlobalHydra.instance().hydra is running


def test_the_configs_are_found_in_the_package():
    assert (CONFIG_DIR / "train.yaml").is_file() and CONFIG_DIR.name == "configs"
    groups = config_groups()
    assert {"data", "model", "trainer", "logger", "callbacks", "experiment"} <= set(groups)
    assert not any(g.startswith("hydra") for g in groups) and "lfads" in config_names("model")


# ---------------------------------------------------------------------------------------------- --help
@pytest.mark.parametrize(
    ("config", "wanted"),
    [
        ("train", ["neuralnets-train", "model: gpfa, lfads", "experiment=", "trainer.max_epochs=", "resume"]),
        ("tune", ["neuralnets-tune", "tune.n_trials=", "tune.space=", "data: "]),
        ("pbt", ["neuralnets-pbt", "pbt.num_samples=", "pbt.perturbation_interval=", "model: "]),
    ],
)
def test_hydra_help_lists_the_groups_and_the_most_used_overrides(config, wanted):
    text = cli.hydra_help(config)
    for piece in [*wanted, "Exit codes", "NEURALNETS_DEBUG=1"]:
        assert piece in text, (config, piece)
    assert "Powered by Hydra" not in text and "$APP_CONFIG_GROUPS" not in text
    assert "hydra/launcher" not in text  # Hydra's own groups are for --hydra-help


@pytest.mark.parametrize(
    ("target", "wanted"),
    [
        ("neuralnets.eval.cli:eval_main", ["--data", "--split", "--baselines", "--nlb-submission", "--csv"]),
        ("neuralnets.eval.cli:compare_main", ["RUN_DIR", "--baselines", "--csv", "--markdown"]),
        ("neuralnets.data.cli:main", ["--save", "--opt", "--bin-size"]),
        ("neuralnets.training.ensemble:main", ["--out", "--k"]),
    ],
)
def test_argparse_help_lists_the_options(target, wanted, capsys):
    import importlib

    module, func = target.split(":")
    with pytest.raises(SystemExit) as stop:
        getattr(importlib.import_module(module), func)(["--help"])
    assert stop.value.code == 0
    text = capsys.readouterr().out
    assert all(w in text for w in wanted), text


def test_help_and_import_neuralnets_do_not_load_pytorch():
    code = (
        "import sys, neuralnets, neuralnets.cli, neuralnets.config, neuralnets.errors\n"
        "assert 'torch' not in sys.modules and 'hydra' not in sys.modules, 'import neuralnets'\n"
        "from neuralnets.eval.cli import eval_main\n"
        "from neuralnets.training.ensemble import main as ensemble_main\n"
        "from neuralnets.data.cli import main as data_main\n"
        "assert 'torch' not in sys.modules, 'argparse commands'\n"
        "sys.argv = ['neuralnets-train', '--help']\n"
        "assert neuralnets.cli.train() == 0\n"
        "assert 'torch' not in sys.modules and 'pytorch_lightning' not in sys.modules, 'train --help'\n"
    )
    out = _python(code)
    assert out.returncode == 0, out.stderr
    assert "model: gpfa" in out.stdout


# ---------------------------------------------------------------------------------------------- output
def test_lightnings_advertising_tips_are_dropped(caplog):
    from pytorch_lightning.utilities.rank_zero import rank_zero_info

    import neuralnets.training.build  # noqa: F401 - installs the filter

    with caplog.at_level(logging.INFO):
        rank_zero_info("💡 Tip: For seamless cloud uploads and versioning, try installing [litmodels]")
        # another info line passes (not an accelerator line: those are dropped once a trainer was built)
        rank_zero_info("`Trainer.fit` stopped: `max_epochs=1` reached.")
    messages = [r.getMessage() for r in caplog.records]
    assert "`Trainer.fit` stopped: `max_epochs=1` reached." in messages
    assert not any("Tip" in m for m in messages)
