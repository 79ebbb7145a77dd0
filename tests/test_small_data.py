"""Small-data training options: sample validation, temporal shift / spike jitter, refit on train + val."""

from __future__ import annotations

import json

import pytest
import torch
from test_training import tiny_cfg
from tiny import TINY_LORENZ

from neuralnets.data.datamodule import SpikeDataModule, batch_tensors, make_batch
from neuralnets.data.synthetic import lorenz
from neuralnets.errors import ConfigError, DataError
from neuralnets.nn.augmentations import (
    augment_spikes,
    jitter_spikes,
    random_shifts,
    sample_validation_mask,
    shift_trials,
)
from neuralnets.runs import read_status
from neuralnets.training.module import TrainingModule
from neuralnets.training.train import train

MICRO_LFADS = {"name": "lfads", "gen_dim": 8, "fac_dim": 2, "ic_enc_dim": 4, "co_dim": 0}


@pytest.fixture(scope="module")
def data():
    return lorenz(**TINY_LORENZ, seed=0)


def _batch(data, trials):
    spec = data.spec
    return make_batch(batch_tensors(data), torch.as_tensor(trials), spec.n_obs_bins, spec.n_heldin)


# ------------------------------------------------------------------ augmentation primitives
def test_sample_validation_mask_is_fixed_per_trial_whatever_the_batch():
    a = sample_validation_mask(torch.tensor([3, 7, 11]), 50, 40, 0.1, seed=0)
    b = sample_validation_mask(torch.tensor([11, 3]), 50, 40, 0.1, seed=0)
    assert a.shape == (3, 50, 40) and a.dtype == torch.bool
    assert torch.equal(a[0], b[1]) and torch.equal(a[2], b[0])
    assert not torch.equal(a[0], a[1])  # trials differ
    assert not torch.equal(a, sample_validation_mask(torch.tensor([3, 7, 11]), 50, 40, 0.1, seed=1))
    assert 0.07 < a.float().mean().item() < 0.13
    assert not sample_validation_mask(torch.tensor([0]), 5, 4, 0.0).any()
    with pytest.raises(ValueError, match="share"):
        sample_validation_mask(torch.tensor([0]), 5, 4, 1.0)


def test_shift_trials_per_trial_and_per_neuron():
    x = torch.arange(1.0, 1 + 2 * 5 * 3).reshape(2, 5, 3)
    out = shift_trials(x, torch.tensor([[1], [-2]]), 0.0)
    torch.testing.assert_close(out[0, 1:], x[0, :-1])
    assert (out[0, 0] == 0).all()
    torch.testing.assert_close(out[1, :-2], x[1, 2:])
    assert (out[1, -2:] == 0).all()
    per_neuron = shift_trials(x, torch.tensor([[0, 1, 0], [0, 0, 0]]), -1.0)
    torch.testing.assert_close(per_neuron[:, :, 0], x[:, :, 0])
    torch.testing.assert_close(per_neuron[0, 1:, 1], x[0, :-1, 1])
    assert per_neuron[0, 0, 1] == -1.0
    with pytest.raises(ValueError, match="shape"):
        shift_trials(x, torch.zeros(2, 2, dtype=torch.long), 0.0)
    s = random_shifts(100, 1, 2)
    assert s.shape == (100, 1) and s.min() >= -2 and s.max() <= 2 and len(s.unique()) == 5


def test_augment_spikes_shift_still_shifts_whole_trials():
    torch.manual_seed(0)
    x = torch.ones(6, 10, 4)
    out = augment_spikes(x, 0.0, 0.0, 3)
    empty = (out == 0).all(dim=2)  # (B, T) bins shifted in
    assert empty.any() and ((out == 0) == empty[..., None]).all()  # whole time bins, every neuron


def test_jitter_spikes_keeps_counts_and_moves_spikes_at_most_k_bins():
    torch.manual_seed(0)
    x = torch.zeros(200, 20, 3)
    x[:, 10, 0] = 3.0  # three spikes at bin 10 of neuron 0
    x[:, 0, 1] = 1.0  # one spike at the first bin of neuron 1: reflected, never lost
    out = jitter_spikes(x, 2)
    torch.testing.assert_close(out.sum(dim=1), x.sum(dim=1))
    assert (out[:, :8, 0] == 0).all() and (out[:, 13:, 0] == 0).all()
    assert (out[:, :, 0].mean(dim=0)[8:13] > 0.4).all()  # every offset used (expected 0.6 each)
    assert (out[:, 3:, 1] == 0).all() and (out[:, :, 2] == 0).all()
    assert torch.equal(jitter_spikes(x, 0), x)
    with pytest.raises(ValueError, match="max_jitter"):
        jitter_spikes(x, 20)


# ------------------------------------------------------------------ the training module
def test_all_options_off_leave_the_batch_and_the_random_stream_alone(data):
    module = TrainingModule(model=dict(MICRO_LFADS), spec=data.spec.to_dict())
    batch = _batch(data, range(8))
    torch.manual_seed(5)
    view, changed = module.training_view(batch)
    assert view is batch and not changed
    assert torch.equal(torch.rand(3), torch.manual_seed(5) and torch.rand(3))


def test_sample_validation_hides_fixed_entries_from_input_and_loss(data):
    spec = data.spec
    module = TrainingModule(model=dict(MICRO_LFADS), spec=spec.to_dict(), sample_validation=0.2)
    batch = _batch(data, range(8))
    view, changed = module.training_view(batch)
    again, _ = module.training_view(batch)
    hidden = module._sample_validation_hidden(batch)  # (B, T, N)
    h = hidden[:, : spec.n_obs_bins, : spec.n_heldin]
    assert changed and 0.1 < h.float().mean() < 0.3
    assert not hidden[:, spec.n_obs_bins :].any() and not hidden[:, :, spec.n_heldin :].any()
    assert torch.equal(view["heldin"], again["heldin"])  # the same entries every time
    assert (view["heldin"][h] == 0).all()
    torch.testing.assert_close(view["heldin"][~h], batch["heldin"][~h] / 0.8)
    assert torch.equal(view["observed"], ~hidden)
    # The training loss does not depend on the hidden entries' counts.
    module.model.eval()
    changed_counts = {**batch, "spikes": batch["spikes"].masked_fill(hidden, 7.0)}
    changed_counts["heldin"] = changed_counts["spikes"][:, : spec.n_obs_bins, : spec.n_heldin]
    loss = module._loss(batch, train=True)[0]
    torch.testing.assert_close(module._loss(changed_counts, train=True)[0], loss)
    # ... while the sample-validation score is exactly their NLL, the model fed the hidden input.
    total, n = module.sample_validation_nll(batch)
    rates = module.model(module._hide_input(batch, hidden)).rates
    y = batch["spikes"]
    nll = rates - y * torch.log(rates) + torch.lgamma(y + 1)
    assert n == hidden.sum()
    torch.testing.assert_close(total, nll[hidden].sum())


def test_sample_validation_with_coordinated_dropout_scores_neither_hidden_nor_kept(data):
    module = TrainingModule(
        model=dict(MICRO_LFADS), spec=data.spec.to_dict(), sample_validation=0.3, coordinated_dropout=0.5
    )
    batch = _batch(data, range(8))
    hidden = module._sample_validation_hidden(batch)
    module.model.eval()
    torch.manual_seed(1)
    base = module._loss(batch, train=True)[0]
    other = {**batch, "spikes": batch["spikes"].masked_fill(hidden, 9.0)}
    other["heldin"] = other["spikes"][:, : data.spec.n_obs_bins, : data.spec.n_heldin]
    torch.manual_seed(1)
    torch.testing.assert_close(module._loss(other, train=True)[0], base)


def test_shift_moves_input_and_target_together_and_marks_shifted_in_bins_unobserved(data):
    spec = data.spec
    module = TrainingModule(model=dict(MICRO_LFADS), spec=spec.to_dict(), augment_shift=3)
    batch = _batch(data, range(16))
    torch.manual_seed(0)
    view, changed = module.training_view(batch)
    assert changed
    torch.testing.assert_close(view["heldin"], view["spikes"][:, : spec.n_obs_bins, : spec.n_heldin])
    unobserved = ~view["observed"]
    assert unobserved.any() and (view["spikes"][unobserved] == 0).all()
    assert (unobserved.all(dim=2) == unobserved.any(dim=2)).all()  # whole bins: one shift per trial
    per_neuron = TrainingModule(
        model=dict(MICRO_LFADS), spec=spec.to_dict(), augment_shift=3, augment_shift_per="neuron"
    )
    view, _ = per_neuron.training_view(batch)
    assert ((~view["observed"]).any(dim=2) & (view["observed"]).any(dim=2)).any()


def test_bad_small_data_options_are_clear_errors(data):
    spec = data.spec.to_dict()
    for bad, match in [
        ({"sample_validation": 1.0}, "sample_validation"),
        ({"augment_shift": -1}, "augment_shift"),
        ({"augment_jitter": 1.5}, "augment_jitter"),
        ({"augment_shift_per": "bin"}, "augment_shift_per"),
        ({"augment_shift": 99}, "trial length"),
    ]:
        with pytest.raises(ConfigError, match=match):
            TrainingModule(model=dict(MICRO_LFADS), spec=spec, **bad)
    with pytest.raises(ConfigError, match="whole input"):
        TrainingModule(model={"name": "gpfa", "latent_dim": 2}, spec=spec, sample_validation=0.1)


# ------------------------------------------------------------------ data module and end-to-end runs
def test_datamodule_refit_trains_on_train_and_val(data):
    dm = SpikeDataModule(data, batch_size=8, train_splits=("train", "val"))
    trained = torch.cat([b["index"] for b in dm.train_dataloader()]).sort().values
    expected = sorted([*data.indices("train"), *data.indices("val")])
    assert trained.tolist() == expected
    plain = SpikeDataModule(data, batch_size=8)
    in_order = torch.cat([b["index"] for b in plain.eval_batches("train")])
    assert in_order.tolist() == sorted(data.indices("train"))
    with pytest.raises(DataError, match="train_splits"):
        SpikeDataModule(data, train_splits=("train", "test"))


def test_sample_validation_run_checkpoints_on_sv_recon(tmp_path):
    run = tmp_path / "run"
    record = train(
        tiny_cfg(
            "module.sample_validation=0.1",
            "module.coordinated_dropout=0.3",
            "module.augment_shift=1",
            "module.augment_jitter=1",
            "callbacks.monitor=val/sv_recon",
        ),
        run,
    )
    sv = record["monitor"]["val/sv_recon"]
    assert sv is not None and 0 < sv < 10  # Poisson NLL per hidden entry, nats
    assert record["val_metrics"]  # validation trials untouched and scored


def test_refit_trains_on_train_and_val_and_scores_the_last_epoch(tmp_path):
    run = tmp_path / "run"
    record = train(tiny_cfg("refit=true", "trainer.max_epochs=3", "callbacks.early_stopping_patience=1"), run)
    assert record["checkpoint"] == "checkpoints/last.ckpt"
    assert record["val_metrics"] == {} and record["refit"]["epochs"] == 3
    assert json.loads((run / "metrics.json").read_text())["refit"]["train_splits"] == ["train", "val"]
    assert "train+val" in read_status(run)["refit"]
    assert read_status(run)["epochs"] == 3  # early stopping is off in a refit
    with pytest.raises(ConfigError, match="max_epochs"):
        train(tiny_cfg("refit=true", "trainer.max_epochs=-1"), tmp_path / "other")


@pytest.mark.parametrize("name", ["rnn", "ndt"])
def test_sample_validation_and_shift_work_for_other_models_that_read_heldin(data, name):
    module = TrainingModule(
        model={"name": name}, spec=data.spec.to_dict(), sample_validation=0.1, augment_shift=1
    )
    batch = _batch(data, range(8))
    loss, _ = module._loss(batch, train=True)
    loss.backward()
    assert torch.isfinite(loss)
    module.eval()
    total, n = module.sample_validation_nll(batch)
    assert n > 0 and torch.isfinite(total) and total > 0
