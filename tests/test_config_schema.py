"""The config schema (`neuralnets.config_schema`): every group's keys and value types are checked
before PyTorch is imported and before a run directory is claimed; a mistake is one line, exit 2."""

from __future__ import annotations

import inspect
import os
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest

from neuralnets import cli
from neuralnets.config import compose, config_names
from neuralnets.config_schema import MODULE, TRAINER, type_ok, validate
from neuralnets.errors import EXIT_USER_ERROR, ConfigError

REPO = Path(__file__).resolve().parents[1]


def test_module_options_are_the_training_modules_signature():
    from neuralnets.training.module import TrainingModule

    options = set(inspect.signature(TrainingModule.__init__).parameters) - {"self", "model", "spec"}
    assert set(MODULE) == options


def test_trainer_keys_are_lightning_trainer_arguments():
    import pytorch_lightning as pl

    assert set(TRAINER) <= set(inspect.signature(pl.Trainer.__init__).parameters)


def test_every_shipped_config_passes():
    for root in ("tune", "pbt"):
        validate(compose([], root), compose([], root))
    root = "train"
    for group in ("model", "experiment", "data", "trainer", "callbacks", "logger"):
        for name in config_names(group):
            overrides = [f"{group}={name}", *(["data.source=x.npz"] if name == "file" else [])]
            validate(compose(overrides, root), compose(overrides, root))


@pytest.mark.parametrize(
    ("value", "kind", "ok"),
    [(3, "int", True), (True, "int", False), ("3", "int", False), (3, "float", True), (None, "int?", True),
     ("auto", "int|'auto'", True), ("car", "int|'auto'", False), ([1], "int|str|list", True)],
)  # fmt: skip
def test_type_ok(value, kind, ok):
    assert type_ok(value, kind) is ok


MISTAKES = [
    (["+trainer.bogus=1"], "unknown config key trainer.bogus"),
    (["+data.bogus=1"], "unknown config key data.bogus"),
    (["+bogus=1"], "unknown config key bogus"),
    (["trainer.max_epochs=abc"], "trainer.max_epochs='abc' has the wrong type"),
    (["module.lr=fast"], "module.lr='fast' has the wrong type"),
    (["model.gen_dim=big"], "model.gen_dim='big' has the wrong type"),
    (["callbacks.mode=up"], "callbacks.mode='up'"),
    (["model=lfadz"], "Could not find 'model/lfadz'"),
    (["data=file", "data.source=no/such.nwb"], "data.source='no/such.nwb': no such file"),
    (["data=file"], "data.source must be given"),
]


@pytest.mark.parametrize(("overrides", "message"), MISTAKES)
def test_a_config_mistake_is_one_line_and_exit_2_before_anything_is_made(
    overrides, message, tmp_path, monkeypatch, capsys
):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "argv", ["neuralnets-train", *overrides, f"out_dir={tmp_path / 'runs'}"])
    fail = SimpleNamespace(import_module=lambda name: pytest.fail(f"{name} was imported"))
    monkeypatch.setattr(cli, "importlib", fail)  # the app (torch, Lightning) is never loaded
    assert cli.train() == EXIT_USER_ERROR
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("neuralnets-train: error: ") and message in err
    assert list(tmp_path.iterdir()) == []  # no run directory claimed


def test_tune_keys_are_typed_by_their_defaults():
    with pytest.raises(ConfigError, match="tune.n_trials='many' has the wrong type"):
        validate(compose(["tune.n_trials=many"], "tune"), compose([], "tune"))
    with pytest.raises(ConfigError, match="unknown config key tune.bogus"):
        validate(compose(["+tune.bogus=1"], "tune"), compose([], "tune"))


def test_the_lifecycle_refuses_an_ill_typed_config_before_claiming_a_directory(tmp_path):
    from neuralnets.training.run import run_training

    cfg = compose([f"out_dir={tmp_path}", "trainer.max_epochs=abc"])
    with pytest.raises(ConfigError, match="trainer.max_epochs='abc'"):
        run_training(cfg)
    assert list(tmp_path.iterdir()) == []


def test_a_mistake_is_answered_without_importing_torch():
    keep = {k: v for k, v in os.environ.items() if k not in ("HYDRA_FULL_ERROR", "NEURALNETS_DEBUG")}
    code = (
        "import sys; from neuralnets.cli import train\n"
        "sys.argv = ['neuralnets-train', '+trainer.bogus=1']\n"
        "code = train(); assert 'torch' not in sys.modules, 'torch was imported'; sys.exit(code)"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
        env={**keep, "PYTHONPATH": str(REPO)}, cwd=REPO,
    )  # fmt: skip
    assert done.returncode == EXIT_USER_ERROR, done.stderr
    assert done.stderr.strip().count("\n") == 0 and "trainer.bogus" in done.stderr


def test_the_precheck_composes_with_hydras_search_path(tmp_path):
    """Configs added through hydra.searchpath (docs/models.md) are found before the app is imported."""
    (tmp_path / "model").mkdir()
    (tmp_path / "model" / "mine.yaml").write_text("name: lfads\ngen_dim: 8\n")
    search = f"hydra.searchpath=[file://{tmp_path}]"
    cli.precheck("train", [search, "model=mine", f"hydra.run.dir={tmp_path / 'run'}"])
    with pytest.raises(ConfigError, match="model.gen_dim='big' has the wrong type"):
        cli.precheck("train", [search, "model=mine", "model.gen_dim=big"])
