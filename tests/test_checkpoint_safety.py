"""Checkpoints load safely (issue 12): no code from a checkpoint file runs (weights_only), only
registered models with plain options are built from one, every checkpoint training writes carries a
sha256 that resume and `load_pretrained` verify, and non-finite predictions are errors."""

from __future__ import annotations

import pickle
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from omegaconf import OmegaConf
from tiny import TINY_DATA, TINY_LFADS

from neuralnets import load_pretrained
from neuralnets.checkpoints import digest_path as checksum_path
from neuralnets.checkpoints import file_sha256
from neuralnets.checkpoints import write_digest as write_checksum
from neuralnets.config import compose, load_saved_config
from neuralnets.errors import CheckpointError, ConfigError
from neuralnets.training.module import TrainingModule
from neuralnets.training.train import prepare_config, train

TINY = [
    *TINY_DATA,
    "data.batch_size=16",
    *TINY_LFADS,
    "trainer.max_epochs=1",
    "trainer.enable_progress_bar=false",
    "trainer.enable_model_summary=false",
    "callbacks.figures=false",
]


def _cfg(*overrides: str):
    return compose([*TINY, *overrides], config_name="train")


class _Payload:
    """Unpickling this calls `open(marker, "w")`: the marker file appears if the pickle is trusted."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (open, (str(self.marker), "w"))


@pytest.fixture(scope="module")
def run_template(tmp_path_factory) -> Path:
    run = tmp_path_factory.mktemp("safety") / "run"
    train(_cfg(), run)
    return run


@pytest.fixture
def run(run_template, tmp_path) -> Path:
    """A fresh copy of a finished 1-epoch run (tests tamper with it)."""
    copy = tmp_path / "run"
    shutil.copytree(run_template, copy)
    return copy


def _resume(run: Path, max_epochs: int = 2, trust: bool = False):
    cfg = OmegaConf.merge(_cfg(), {"resume": str(run)})
    extra = ["trust_unverified=true"] if trust else []
    resumed = prepare_config(cfg, run, [f"resume={run}", f"trainer.max_epochs={max_epochs}", *extra])
    return train(resumed, run)


def test_every_checkpoint_written_has_its_sha256(run):
    ckpts = sorted((run / "checkpoints").glob("*.ckpt"))
    assert {p.name for p in ckpts} >= {"last.ckpt"} and len(ckpts) == 2
    for p in ckpts:
        digest, name = checksum_path(p).read_text().split()
        assert name == p.name and len(digest) == 64
    assert sorted(p.name for p in (run / "checkpoints").glob("*.sha256")) == sorted(
        f"{p.name}.sha256" for p in ckpts
    )


# ------------------------------------------------------------------------------------------- pickles
@pytest.mark.parametrize("record", [True, False], ids=["sha256-rewritten-too", "no-sha256"])
def test_a_checkpoint_that_would_run_code_is_refused_by_resume(run, tmp_path, record):
    marker = tmp_path / "MARKER"
    last = run / "checkpoints" / "last.ckpt"
    good = torch.load(last, weights_only=True)
    torch.save({**good, "evil": _Payload(marker)}, last)
    if record:
        write_checksum(last)  # an attacker who can write the file can write its record too
    else:
        checksum_path(last).unlink()
        with pytest.raises(ConfigError, match=rf"{last}: no sha256 record"):
            _resume(run)
    with pytest.raises(ConfigError, match=rf"{last}: cannot read .* weights_only=True"):
        _resume(run, trust=True)  # trusting the file's origin still never runs its code
    assert not marker.exists()


def test_a_checkpoint_that_would_run_code_is_refused_by_load_pretrained(run, tmp_path):
    marker = tmp_path / "MARKER"
    evil = tmp_path / "evil.ckpt"
    good = torch.load(run / "checkpoints" / "last.ckpt", weights_only=True)
    torch.save({**good, "hyper_parameters": {**good["hyper_parameters"], "x": _Payload(marker)}}, evil)
    with pytest.raises(CheckpointError, match=rf"{evil}: no sha256 record"):
        load_pretrained(evil)
    with pytest.raises(ValueError, match=rf"{evil}: cannot read as a PyTorch checkpoint"):
        load_pretrained(evil, trust_unverified=True)
    # Lightning's own loader, as training uses it after the checks, is held to weights_only too.
    with pytest.raises(pickle.UnpicklingError, match="Weights only load failed"):
        TrainingModule.load_from_checkpoint(evil, map_location="cpu", weights_only=True)
    assert not marker.exists()


# --------------------------------------------------------------------------------- model configs
@pytest.mark.parametrize(
    ("model_cfg", "message"),
    [
        ({"name": "lfads", "gen_dim": {"_target_": "builtins.open"}}, r"lfads.gen_dim names a callable"),
        ({"_target_": "builtins.open"}, r"_target_='builtins.open' is not a registered model class"),
        ({"name": "os.system"}, r"unknown model name='os.system'"),
    ],
)
def test_a_checkpoint_cannot_name_a_callable(run, tmp_path, model_cfg, message):
    marker = tmp_path / "MARKER"
    if "_target_" in model_cfg and "name" not in model_cfg:
        model_cfg = {**model_cfg, "file": str(marker), "mode": "w"}
    else:
        model_cfg = {
            k: ({**v, "file": str(marker), "mode": "w"} if isinstance(v, dict) else v)
            for k, v in model_cfg.items()
        }
    path = tmp_path / "crafted.ckpt"
    good = torch.load(run / "checkpoints" / "last.ckpt", weights_only=True)
    torch.save({**good, "hyper_parameters": {**good["hyper_parameters"], "model": model_cfg}}, path)
    with pytest.raises(ValueError, match=rf"{path}: saved model config refused: .*{message}"):
        load_pretrained(path, trust_unverified=True)
    with pytest.raises(ConfigError, match=message):
        TrainingModule.load_from_checkpoint(path, map_location="cpu", weights_only=True)
    assert not marker.exists()


# ------------------------------------------------------------------------------------------ sha256
def _flip_one_byte(path: Path, offset: int) -> None:
    data = bytearray(path.read_bytes())
    data[offset] ^= 0x01
    path.write_bytes(bytes(data))


def test_a_bit_flip_is_caught_by_load_pretrained_and_resume(run):
    best = next((run / "checkpoints").glob("best-*.ckpt"))
    _flip_one_byte(best, len(best.read_bytes()) // 2)  # inside the weights: would load silently
    with pytest.raises(ValueError, match=rf"{best}: sha256 \w+\.\.\. does not match its record"):
        load_pretrained(best)
    with pytest.raises(ValueError, match="does not match its record"):
        load_pretrained(run)  # the run directory's scored checkpoint
    last = run / "checkpoints" / "last.ckpt"
    _flip_one_byte(last, len(last.read_bytes()) // 2)
    with pytest.raises(ConfigError, match=rf"{last}: sha256 .* does not match"):
        _resume(run)


@pytest.mark.parametrize("record", [True, False])
def test_a_truncated_checkpoint_is_a_clear_error(run, record):
    last = run / "checkpoints" / "last.ckpt"
    last.write_bytes(last.read_bytes()[:1000])
    if not record:
        checksum_path(last).unlink()
    expected = "does not match its record" if record else "no sha256 record"
    with pytest.raises(ValueError, match=rf"{last}: .*{expected}"):
        load_pretrained(last)
    with pytest.raises(ConfigError, match=rf"{last}: .*{expected}"):
        _resume(run)
    if not record:
        with pytest.raises(ValueError, match=rf"{last}: cannot read as a PyTorch checkpoint"):
            load_pretrained(last, trust_unverified=True)


def test_a_checkpoint_without_a_record_is_refused_unless_trusted(run, caplog):
    """Issue 22: a missing record is not trust. An explicit opt-in loads and resumes it, logs the digest
    it accepted, and is not saved in the run's config (a later resume must opt in again)."""
    for record in (run / "checkpoints").glob("*.sha256"):
        record.unlink()
    with pytest.raises(CheckpointError, match="no sha256 record .* trust_unverified=True"):
        load_pretrained(run)
    with pytest.raises(ConfigError, match="no sha256 record"):
        _resume(run)
    best = next((run / "checkpoints").glob("best-*.ckpt"))
    with caplog.at_level("WARNING", logger="neuralnets.checkpoints"):
        model = load_pretrained(run, trust_unverified=True)
    assert f"trusting unverified checkpoint {best}: sha256 {file_sha256(best)}" in caplog.text
    assert np.isfinite(model.predict(np.ones((2, 12, 8)))["rates"]).all()
    before = {p: p.stat().st_mtime_ns for p in (run / "checkpoints").glob("*.ckpt")}
    assert _resume(run, max_epochs=2, trust=True)["steps"] == 2 * 2  # 24 train trials, batch 16
    written = [p for p in (run / "checkpoints").glob("*.ckpt") if before.get(p) != p.stat().st_mtime_ns]
    assert written and all(checksum_path(p).is_file() for p in written)  # new saves are recorded
    assert load_saved_config(run / "config.yaml").trust_unverified is False


# ------------------------------------------------------------------------------ non-finite output
def test_non_finite_predictions_are_an_error_naming_the_model(run):
    model = load_pretrained(run)
    with torch.no_grad():
        model.model.readout.bias.fill_(float("nan"))
    with pytest.raises(
        FloatingPointError, match=rf"'run' \({model.path}\): LFADS predicted non-finite rates"
    ):
        model.predict(np.ones((2, 12, 8)))
    with pytest.raises(FloatingPointError, match="LFADS predicted non-finite rates for 2 of 2 trials"):
        model.model.predict(np.ones((2, 12, 8)))
