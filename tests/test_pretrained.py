"""load_pretrained: bundled checkpoints reproduce their model cards; run dirs and .ckpt files load;
bad inputs get clear errors; nothing touches the network; export and the training script work."""

from __future__ import annotations

import importlib.util
import json
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from tiny import TINY_LFADS, TINY_LORENZ

import neuralnets
from neuralnets.checkpoints import digest_path
from neuralnets.config import compose
from neuralnets.data import load
from neuralnets.errors import CheckpointError, DataError
from neuralnets.models import MODELS
from neuralnets.pretrained import (
    CHECKPOINTS_DIR,
    PretrainedModel,
    list_pretrained,
    load_pretrained,
    model_card,
)
from neuralnets.pretrained.bundle import card_data, export_run
from neuralnets.runs import read_predictions
from neuralnets.training.train import train

REPO = Path(__file__).resolve().parents[1]
TINY_DATA = dict(TINY_LORENZ, seed=0)
TINY = [
    *(f"data.load_kwargs.{k}={v}" for k, v in TINY_DATA.items()),
    "data.batch_size=16",
    *TINY_LFADS,
    "trainer.max_epochs=2",
    "trainer.enable_progress_bar=false",
    "trainer.enable_model_summary=false",
    "callbacks.figures=false",
]
# Re-scoring a checkpoint on regenerated data must give the card's numbers up to float rounding.
CARD_ATOL = 1e-3


def tiny_cfg(*overrides: str):
    return compose([*TINY, *overrides], config_name="train")


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory) -> Path:
    """A finished tiny LFADS run directory (2 epochs on 40 Lorenz trials)."""
    run = tmp_path_factory.mktemp("pretrained") / "run"
    train(tiny_cfg(), run)
    return run


@pytest.fixture(scope="module")
def tiny_data():
    return load("lorenz", **TINY_DATA)


@pytest.fixture(scope="module")
def tiny_model(tiny_run) -> PretrainedModel:
    return load_pretrained(tiny_run)


# ---------------------------------------------------------------------------------------------- bundled
def test_bundled_registry_has_two_model_families_and_stays_small():
    names = list_pretrained()
    assert "lfads_lorenz" in names
    families = {model_card(n)["model"] for n in names}
    assert len(families) >= 2, families
    total = sum(f.stat().st_size for f in CHECKPOINTS_DIR.rglob("*") if f.is_file())
    assert total < 5e6, f"bundled checkpoints take {total / 1e6:.1f} MB"
    for name in names:
        card = model_card(name)
        assert card["name"] == name
        assert card["training"]["command"].startswith("python experiments/train_pretrained.py")
        assert card["data"]["source"] in ("lorenz", "chaotic_rnn", "mc_maze_small")  # built in: no download
        synthetic = card["data"]["source"] in ("lorenz", "chaotic_rnn")  # ground truth, recorded forward bins
        required = {"co_bps"} | ({"fp_bps", "rate_r2", "latent_r2"} if synthetic else set())
        assert required <= set(card["metrics"]), (name, sorted(card["metrics"]))
        model_cfg = card["config"]["model"]  # a registered name (current configs); a class path (older cards)
        target = str(model_cfg.get("_target_"))
        assert model_cfg.get("name") in MODELS or target.startswith("neuralnets.models."), model_cfg
        assert (CHECKPOINTS_DIR / name / "README.md").read_text().startswith(f"# {name}")


@pytest.mark.parametrize("name", list_pretrained())
def test_bundled_checkpoint_reproduces_its_model_card(name):
    model = load_pretrained(name)
    assert not model.model.training and model.device == torch.device("cpu")
    assert model.name == name and model.card["name"] == name
    assert model.metrics == model.card["metrics"]
    data = card_data(model.card)
    assert model.spec.to_dict() == data.spec.to_dict() == model.card["data"]["spec"]
    got = model.evaluate(data, "test")
    assert set(got) == set(model.card["metrics"])
    for key, value in model.card["metrics"].items():
        assert got[key] == pytest.approx(value, abs=CARD_ATOL), key


def test_unknown_bundled_name_lists_the_bundled_ones():
    with pytest.raises(ValueError, match=r"no bundled pretrained model named 'lfads_lorenzz'.*lfads_lorenz"):
        load_pretrained("lfads_lorenzz")
    with pytest.raises(FileNotFoundError, match="no such checkpoint file or run directory"):
        load_pretrained("runs/nope/2020-01-01")


def test_loading_never_touches_the_network(monkeypatch):
    def no_network(*args, **kwargs):
        raise AssertionError("load_pretrained tried to use the network")

    for attr in ("socket", "create_connection", "getaddrinfo"):
        monkeypatch.setattr(socket, attr, no_network)
    model = load_pretrained("lfads_lorenz")
    out = model.predict(np.zeros((2, model.spec.n_obs_bins, model.spec.n_heldin), np.float32))
    assert out["rates"].shape == (2, model.spec.n_bins, model.spec.n_neurons)


def test_import_is_cheap_and_loading_does_not_import_lightning():
    code = (
        "import sys, neuralnets\n"
        "assert 'torch' not in sys.modules, 'import neuralnets imported torch'\n"
        "m = neuralnets.load_pretrained('lfads_lorenz')\n"
        "assert 'pytorch_lightning' not in sys.modules and 'lightning' not in sys.modules\n"
        "print(type(m).__name__)\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "PretrainedModel"


def test_corrupted_bundled_file_is_detected(tmp_path):
    folder = tmp_path / "copy"
    folder.mkdir()
    for f in (CHECKPOINTS_DIR / "lfads_lorenz").iterdir():
        (folder / f.name).write_bytes(f.read_bytes())
    assert load_pretrained(folder).card["name"] == "lfads_lorenz"  # a bundled-style folder loads by path
    blob = bytearray((folder / "model.ckpt").read_bytes())
    blob[-100] ^= 0xFF
    (folder / "model.ckpt").write_bytes(bytes(blob))
    with pytest.raises(ValueError, match="sha256 .* does not match its model card"):
        load_pretrained(folder)


# ---------------------------------------------------------------------------------------------- run dirs
def test_load_from_run_dir_uses_the_scored_checkpoint(tiny_run, tiny_model, tiny_data):
    record = json.loads((tiny_run / "metrics.json").read_text())
    assert tiny_model.path == tiny_run / record["checkpoint"]
    assert tiny_model.metrics == record["metrics"]
    assert tiny_model.card is None and not tiny_model.model.training
    assert tiny_model.config["model"]["gen_dim"] == 16  # the run's config.yaml
    assert tiny_model.config["data"]["load_kwargs"]["n_trials"] == 40
    out = tiny_model.predict(tiny_data)
    saved = read_predictions(tiny_run / "predictions.h5")
    for key in ("rates", "latents", "inputs"):
        np.testing.assert_allclose(out[key], saved[key], rtol=1e-5, atol=1e-6)
    assert out["inputs"].shape == (40, 12, 1) and out["rates"].dtype == np.float32


def test_load_from_checkpoint_file(tiny_run, tiny_model, tiny_data):
    scored = load_pretrained(tiny_model.path)
    assert scored.metrics == tiny_model.metrics  # the checkpoint the run scored carries its metrics
    last = load_pretrained(tiny_run / "checkpoints" / "last.ckpt")
    assert last.config["model"]["gen_dim"] == 16
    if last.path.resolve() != tiny_model.path.resolve():
        assert last.metrics == {}  # metrics.json scores another checkpoint: no borrowed numbers
    # A checkpoint moved out of its run directory (with its record) loads from its hyperparameters alone.
    lone = tiny_run.parent / "lone.ckpt"
    lone.write_bytes(tiny_model.path.read_bytes())
    with pytest.raises(CheckpointError, match="no sha256 record"):  # a bare file is not trusted
        load_pretrained(str(lone))
    shutil.copy(digest_path(tiny_model.path), digest_path(lone))
    digest_path(lone).write_text(digest_path(lone).read_text().replace(tiny_model.path.name, lone.name))
    alone = load_pretrained(str(lone))
    assert alone.name == "lone" and alone.config["model"]["name"] == "lfads"
    np.testing.assert_array_equal(alone.predict(tiny_data)["rates"], tiny_model.predict(tiny_data)["rates"])


def test_predict_accepts_spikedata_full_and_heldin_arrays_in_batches(tiny_model, tiny_data):
    ref = tiny_model.predict(tiny_data)
    full = tiny_model.predict(tiny_data.spikes.astype(np.int64), bin_size=0.01)
    heldin = tiny_model.predict(torch.as_tensor(tiny_data.heldin_obs), batch_size=7)
    for out in (full, heldin):
        for key in ref:
            np.testing.assert_allclose(out[key], ref[key], rtol=1e-5, atol=1e-6)
    assert tiny_model.predict(tiny_data.subset("test"))["rates"].shape[0] == len(tiny_data.indices("test"))


@pytest.mark.parametrize(
    "shape, match",
    [
        ((3, 16, 13), r"got 16 bins and 13 neurons.*12 observed \+ 4 forward bins and 8 held-in \+ 4"),
        ((3, 14, 8), r"expects held-in spikes \(trials, 12, 8\) or full spikes \(trials, 16, 12\)"),
        ((16, 12), r"rank 3 .*pass spikes\[None\]"),
    ],
)
def test_wrong_shapes_are_clear_errors(tiny_model, shape, match):
    with pytest.raises(DataError, match=match):
        tiny_model.predict(np.zeros(shape))


def test_wrong_bin_size_and_bad_counts_are_clear_errors(tiny_model, tiny_data):
    with pytest.raises(DataError, match=r"bin_size is 0.02 s \(20 ms\).*trained on 0.01 s \(10 ms\)"):
        tiny_model.predict(tiny_data.spikes, bin_size=0.02)
    rebinned = load("lorenz", **{**TINY_DATA, "bin_size": 0.02})
    with pytest.raises(DataError, match=r"20 ms\).*10 ms"):
        tiny_model.predict(rebinned)
    other = load("lorenz", **{**TINY_DATA, "n_heldout": 2})
    with pytest.raises(DataError, match="10 held-in of 12 neurons.*trained on 8 held-in of 12"):
        tiny_model.predict(other)
    bad = tiny_data.heldin_obs.copy()
    bad[1, 2, 3] = -1
    with pytest.raises(DataError, match=r"negative counts .* index \(1, 2, 3\)"):
        tiny_model.predict(bad)


def test_bad_paths_are_clear_errors(tmp_path):
    junk = tmp_path / "junk.ckpt"
    junk.write_text("not a checkpoint")
    with pytest.raises(ValueError, match="junk.ckpt: no sha256 record"):
        load_pretrained(junk)
    with pytest.raises(ValueError, match="junk.ckpt: cannot read as a PyTorch checkpoint"):
        load_pretrained(junk, trust_unverified=True)
    torch.save({"weights": torch.zeros(2)}, tmp_path / "other.pt")
    with pytest.raises(ValueError, match="not a neuralnets training checkpoint"):
        load_pretrained(tmp_path / "other.pt", trust_unverified=True)
    (tmp_path / "empty_run").mkdir()
    with pytest.raises(FileNotFoundError, match="no checkpoint found"):
        load_pretrained(tmp_path / "empty_run")
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="CUDA is not available"):
            load_pretrained("lfads_lorenz", device="cuda")
        assert load_pretrained("lfads_lorenz", device="auto").device == torch.device("cpu")


# ---------------------------------------------------------------------------------------------- export
def test_export_run_slims_the_checkpoint_and_refuses_to_overwrite(tiny_run, tiny_model, tmp_path):
    from neuralnets.training.module import TrainingModule

    dest = export_run(tiny_run, tmp_path / "tiny", "tiny", description="test", training={"command": "x"})
    full_size = tiny_model.path.stat().st_size
    assert (dest / "model.ckpt").stat().st_size < 0.6 * full_size  # no optimiser state
    card = json.loads((dest / "model_card.json").read_text())
    assert card["metrics"] == tiny_model.metrics and card["training"]["command"] == "x"
    assert card["verified_max_abs_diff"] <= 1e-4
    assert card["data"]["load_kwargs"]["n_trials"] == 40
    loaded = load_pretrained(dest)
    assert loaded.card["name"] == "tiny" and loaded.metrics == tiny_model.metrics
    sd = torch.load(dest / "model.ckpt", weights_only=True)
    assert set(sd) >= {"state_dict", "hyper_parameters"} and "optimizer_states" not in sd
    # The slim file is still a Lightning checkpoint.
    module = TrainingModule.load_from_checkpoint(dest / "model.ckpt", map_location="cpu")
    x = torch.zeros(2, 12, 8)
    np.testing.assert_allclose(module.model.predict(x)["rates"], loaded.predict(x.numpy())["rates"])
    with pytest.raises(FileExistsError, match="refusing to overwrite"):
        export_run(tiny_run, dest, "tiny")
    assert export_run(tiny_run, dest, "tiny2", force=True) == dest
    assert load_pretrained(dest).card["name"] == "tiny2"


def _script():
    path = REPO / "experiments" / "train_pretrained.py"
    spec = importlib.util.spec_from_file_location("train_pretrained", path)
    mod = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = mod  # dataclasses look their module up there
    spec.loader.exec_module(mod)
    return mod


def test_training_script_trains_and_bundles_one_command(tmp_path, capsys):
    script = _script()
    assert set(list_pretrained()) <= set(script.RECIPES)  # every bundled model has its recipe
    args = ["rnn_lorenz", "--dest", str(tmp_path / "ckpts"), "--runs-dir", str(tmp_path / "runs")]
    tiny = [a for o in [*TINY[:6], "trainer.max_epochs=1", "callbacks.figures=false"] for a in ("--set", o)]
    assert script.main(args + tiny) == 0
    card = json.loads((tmp_path / "ckpts" / "rnn_lorenz" / "model_card.json").read_text())
    assert card["model"] == "RNNSeq2Seq" and card["training"]["threads"] == 1
    assert card["training"]["command"].startswith("python experiments/train_pretrained.py rnn_lorenz --set")
    assert "model=rnn" in card["training"]["neuralnets_train"]
    assert "| rnn_lorenz | RNNSeq2Seq |" in capsys.readouterr().out
    assert script.main(args) == 1  # refuses to overwrite before training anything
    assert "pass --force" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        script.parse_args(["nope"])


def test_top_level_export():
    assert neuralnets.load_pretrained is load_pretrained
    assert "load_pretrained" in dir(neuralnets)
