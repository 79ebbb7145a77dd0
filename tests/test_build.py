"""`neuralnets.training.build`: callbacks and logger from the config, only from allowed classes."""

from __future__ import annotations

import pytest
from omegaconf import OmegaConf
from pytorch_lightning.callbacks import EarlyStopping, LearningRateMonitor
from pytorch_lightning.loggers import CSVLogger

from neuralnets.config import compose
from neuralnets.data.synthetic import lorenz
from neuralnets.errors import ConfigError
from neuralnets.training.build import build_callbacks, build_logger, build_trainer
from neuralnets.training.callbacks import HarnessEvaluation, HashedModelCheckpoint


def _cfg(*overrides: str):
    return compose(list(overrides), config_name="train")


@pytest.fixture(scope="module")
def data():
    return lorenz(n_trials=20, n_neurons=6, n_heldout=2, n_bins=8, n_fwd=2, seed=0)


def _by_type(callbacks):
    return {type(c): c for c in callbacks}


def test_default_callbacks_follow_the_flat_keys(tmp_path, data):
    cfg = _cfg(
        "callbacks.monitor=val/co_bps",
        "callbacks.mode=max",
        "callbacks.eval_every_n_epochs=1",
        "callbacks.early_stopping_patience=30",
    )
    cbs = _by_type(build_callbacks(cfg, tmp_path, data))
    assert set(cbs) == {HashedModelCheckpoint, EarlyStopping, LearningRateMonitor, HarnessEvaluation}
    ckpt = cbs[HashedModelCheckpoint]
    assert (ckpt.monitor, ckpt.mode, ckpt.dirpath) == ("val/co_bps", "max", str(tmp_path / "checkpoints"))
    assert cbs[EarlyStopping].patience == 30 and cbs[EarlyStopping].monitor == "val/co_bps"
    assert cbs[HarnessEvaluation].every_n_epochs == 1 and cbs[HarnessEvaluation].data is data
    # early_stopping_patience=0 disables early stopping; an entry can also be removed
    assert EarlyStopping not in _by_type(
        build_callbacks(_cfg("callbacks.early_stopping_patience=0"), tmp_path, data)
    )
    assert LearningRateMonitor not in _by_type(build_callbacks(_cfg("~callbacks.lr_monitor"), tmp_path, data))


def test_a_saved_config_from_before_callback_files_still_builds(tmp_path, data):
    cfg = _cfg()
    flat = {k: v for k, v in OmegaConf.to_container(cfg.callbacks).items() if not isinstance(v, dict)}
    old = OmegaConf.merge(OmegaConf.to_container(cfg), {})
    old.callbacks = {**flat, "early_stopping_patience": 7}
    cbs = _by_type(build_callbacks(old, tmp_path, data))
    assert cbs[EarlyStopping].patience == 7 and HashedModelCheckpoint in cbs


@pytest.mark.parametrize(
    ("entry", "message"),
    [
        ({"_target_": "os.system", "command": "touch MARKER"}, "_target_='os.system' is not accepted"),
        ({"_target_": "builtins.exec", "source": "1"}, "is not accepted"),
        ({"_target_": "neuralnets.training.train.main"}, "non-class"),  # a function, never called
        ({"_target_": "neuralnets.training.module.TrainingModule"}, "is not a pytorch_lightning.callbacks"),
        (
            {"_target_": "pytorch_lightning.callbacks.LearningRateMonitor", "x": {"_target_": "os.system"}},
            r"callbacks.evil.x names a callable \(_target_='os.system'\)",
        ),
        ({"_target_": "pytorch_lightning.callbacks.LearningRateMonitor", "_args_": ["step"]}, "Hydra keys"),
    ],
)
def test_a_config_cannot_name_arbitrary_callables(tmp_path, data, entry, message, monkeypatch):
    monkeypatch.chdir(tmp_path)
    cfg = _cfg()
    OmegaConf.set_struct(cfg, False)
    cfg.callbacks.evil = entry
    with pytest.raises(ConfigError, match=message):
        build_callbacks(cfg, tmp_path, data)
    assert not (tmp_path / "MARKER").exists()


def test_logger_from_config_and_refused_targets(tmp_path, data):
    assert isinstance(build_logger(_cfg("logger=csv"), tmp_path), CSVLogger)
    cfg = _cfg()
    OmegaConf.set_struct(cfg, False)
    cfg.logger = {"_target_": "subprocess.run", "args": ["true"]}
    with pytest.raises(ConfigError, match=r"logger._target_='subprocess.run' is not accepted"):
        build_logger(cfg, tmp_path)
    cfg.logger = {"_target_": "pytorch_lightning.callbacks.EarlyStopping"}
    with pytest.raises(ConfigError, match="is not a .*Logger"):
        build_logger(cfg, tmp_path)


def test_trainer_settings_must_be_plain(tmp_path, data):
    cfg = _cfg()
    OmegaConf.set_struct(cfg, False)
    cfg.trainer.plugins = {"_target_": "os.system", "command": "true"}
    with pytest.raises(ConfigError, match=r"trainer.plugins names a callable"):
        build_trainer(cfg, tmp_path, data)


def test_trainer_precision_auto_is_resolved_and_logged(tmp_path, data, caplog, monkeypatch):
    from neuralnets.training import build

    assert _cfg().trainer.precision == "32-true"  # the CPU default; auto is opt-in
    assert _cfg().callbacks.harness_evaluation.fewshot is False
    for native, expected in ((True, "bf16-mixed"), (False, "32-true")):
        monkeypatch.setattr(build, "native_bf16_cpu", lambda native=native: native)
        with caplog.at_level("INFO", logger="neuralnets.training.build"):
            trainer = build_trainer(_cfg("trainer.precision=auto"), tmp_path / expected, data)
        assert trainer.precision == expected
        assert f"trainer.precision: {expected}" in caplog.text


def test_a_harness_monitor_needs_the_harness_every_epoch(tmp_path, data):
    cfg = _cfg("callbacks.monitor=val/co_bps", "callbacks.mode=max")  # harness every 10 epochs
    with pytest.raises(ConfigError, match=r"eval_every_n_epochs=10.*callbacks=val_co_bps"):
        build_callbacks(cfg, tmp_path, data)
    preset = _cfg("callbacks=val_co_bps")
    assert (preset.callbacks.monitor, preset.callbacks.mode) == ("val/co_bps", "max")
    cbs = _by_type(build_callbacks(preset, tmp_path, data))
    assert cbs[HashedModelCheckpoint].monitor == cbs[EarlyStopping].monitor == "val/co_bps"
    assert cbs[HarnessEvaluation].every_n_epochs == 1 and cbs[EarlyStopping].mode == "max"
    build_callbacks(_cfg("callbacks.monitor=val/recon"), tmp_path, data)  # logged by the module every epoch
