"""STNDT: shapes, the spatial attention's role, the contrastive loss, gradients, training through the
training path, checkpoint round-trip and input checks."""

from __future__ import annotations

import h5py
import numpy as np
import pytest
import torch
from hydra import compose, initialize_config_dir
from tiny import TINY_DATA, TINY_LORENZ, sine_batch

from neuralnets import load_pretrained
from neuralnets.config import CONFIG_DIR
from neuralnets.data import load
from neuralnets.data.spikedata import DataSpec
from neuralnets.models import STNDT, create_model
from neuralnets.models.stndt import SpatialAttention, nt_xent
from neuralnets.training.train import train

# 20 bins (4 forward) x 8 neurons (2 held out).
T, N, N_OUT, T_FWD = 20, 8, 2, 4
T_OBS, N_IN = T - T_FWD, N - N_OUT
SPEC = DataSpec(n_heldin=N_IN, n_neurons=N, n_obs_bins=T_OBS, n_fwd_bins=T_FWD, bin_size=0.02)
NO_DROPOUT = dict(dropout=0.0, dropout_embedding=0.0, dropout_attention=0.0)


def test_shapes_masks_and_aux_losses() -> None:
    torch.manual_seed(0)
    model = STNDT(SPEC)
    batch = sine_batch(SPEC, 5)
    out = model.train()(batch)
    assert out.rates.shape == (5, T, N) and out.latents.shape == (5, T, N_IN)  # forward bins, held-out
    assert torch.isfinite(out.rates).all() and (out.rates > 0).all()
    assert out.recon_mask.shape == (5, T, N) and out.recon_mask[:, :, N_IN:].all()
    assert set(out.aux_losses) == {"contrastive"} and model.aux_weights["contrastive"].scale == 1.0
    out = model.eval()(batch)
    assert out.rates.shape == (5, T, N) and out.recon_mask is None and out.aux_losses == {}
    off = STNDT(SPEC, contrastive_weight=0.0).train()
    assert off(batch).aux_losses == {} and off.aux_weights == {}


def test_spatial_attention_remixes_the_temporal_output() -> None:
    """With A_S replaced by the identity the model is exactly its temporal-only ablation (same weights);
    with the learned A_S the output differs, so the spatial stream is really used."""
    torch.manual_seed(0)
    full = STNDT(SPEC, **NO_DROPOUT).eval()
    ablated = STNDT(SPEC, spatial=False, **NO_DROPOUT).eval()
    missing, unexpected = ablated.load_state_dict(full.state_dict(), strict=False)
    assert not missing and unexpected and all(".spatial." in k for k in unexpected)
    batch = sine_batch(SPEC, 4)
    with torch.no_grad():
        rates_full, rates_ablated = full(batch).rates, ablated(batch).rates
        _, weights = full.encode(batch["heldin"])
    assert len(weights) == 2 and weights[0].shape == (4, N_IN, N_IN)
    torch.testing.assert_close(weights[0].sum(-1), torch.ones(4, N_IN))  # rows of A_S sum to 1
    assert not torch.allclose(rates_full, rates_ablated, atol=1e-4)

    identity = torch.eye(N_IN).expand(4, N_IN, N_IN)
    original = SpatialAttention.forward
    SpatialAttention.forward = lambda self, tokens: identity
    try:
        with torch.no_grad():
            rates_identity = full(batch).rates
    finally:
        SpatialAttention.forward = original
    torch.testing.assert_close(rates_identity, rates_ablated)


def test_permuting_neurons_permutes_the_spatial_attention() -> None:
    """Without position embeddings the first layer's A_S is equivariant: A(x P) = P^T A(x) P."""
    torch.manual_seed(0)
    model = STNDT(SPEC, n_layers=1, **NO_DROPOUT).eval()
    with torch.no_grad():
        model.pos.zero_()
        model.neuron_pos.zero_()
    heldin = sine_batch(SPEC, 3)["heldin"]
    perm = torch.tensor([3, 0, 5, 1, 4, 2])
    with torch.no_grad():
        a = model.encode(heldin)[1][0]  # (B, N_in, N_in)
        a_perm = model.encode(heldin[..., perm])[1][0]
    torch.testing.assert_close(a_perm, a[:, perm][:, :, perm])
    assert not torch.allclose(a, a[:, perm][:, :, perm])  # the attention is not trivially uniform


def test_contrastive_loss_prefers_true_pairs() -> None:
    torch.manual_seed(0)
    z = torch.randn(16, 8)
    same = nt_xent(z, z, temperature=0.1)
    shuffled = nt_xent(z, z[torch.roll(torch.arange(16), 1)], temperature=0.1)
    assert torch.isfinite(same) and same > 0
    assert same < shuffled
    # The model's loss on augmented views: finite and positive (at least the loss of a perfect encoder).
    model = STNDT(SPEC).train()
    loss = model.contrastive_loss(sine_batch(SPEC, 8)["heldin"])
    assert torch.isfinite(loss) and loss > 0


def test_gradients_reach_both_streams_and_the_projector() -> None:
    torch.manual_seed(0)
    model = STNDT(SPEC).train()
    batch = sine_batch(SPEC, 8)
    out = model(batch)
    nll = torch.nn.functional.poisson_nll_loss(out.rates, batch["spikes"], log_input=False, reduction="none")
    (nll[out.recon_mask].mean() + out.aux_losses["contrastive"]).backward()
    layer = model.layers[0]
    for name, p in [
        ("temporal.qkv", layer.temporal.qkv.weight),
        ("spatial.query", layer.spatial.query.weight),
        ("spatial.key", layer.spatial.key.weight),
        ("neuron_pos", model.neuron_pos),
        ("pos", model.pos),
        ("projector", model.projector[0].weight),
    ]:
        assert p.grad is not None and p.grad.abs().sum() > 0, name


def test_bad_input_and_options_fail_clearly() -> None:
    model = STNDT(SPEC)
    spikes = sine_batch(SPEC, 3)["spikes"]
    with pytest.raises(
        ValueError, match=r"STNDT expects held-in spikes of shape \(B, 16, 6\).*got \(3, 16, 8\)"
    ):
        model({"heldin": spikes[:, :T_OBS]})
    with pytest.raises(ValueError, match=r"contrastive_weight \(lambda\) must be finite and >= 0; got -0.5"):
        create_model("stndt", SPEC, contrastive_weight=-0.5)
    with pytest.raises(ValueError, match="temperature must be > 0"):
        STNDT(SPEC, temperature=0.0)
    with pytest.raises(ValueError, match=r"aug_max_shift must be in \[0, 15\]"):
        STNDT(SPEC, aug_max_shift=16)
    with pytest.raises(ValueError, match="attn_dim=5 must be a positive multiple of n_heads=2"):
        STNDT(SPEC, attn_dim=5)
    with pytest.raises(ValueError, match="mask_ratio"):
        STNDT(SPEC, mask_ratio=0.0)


def test_trains_through_the_training_path_and_loads_back_by_name(tmp_path) -> None:
    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
        cfg = compose(
            "train",
            overrides=[
                "model=stndt",
                "model.projection_dim=8",
                *TINY_DATA,
                "data.batch_size=8",
                "trainer.max_epochs=2",
                "trainer.enable_progress_bar=false",
                "trainer.enable_model_summary=false",
                "callbacks.eval_every_n_epochs=1",
            ],
        )
    run = tmp_path / "run"
    record = train(cfg, run)
    assert record["model"] == "STNDT" and record["steps"] == 2 * 3  # 24 train trials / 8
    assert record["skipped_steps"] == 0 and np.isfinite(record["metrics"]["co_bps"])

    loaded = load_pretrained(run)  # the run's checkpoint, rebuilt by registry name
    assert isinstance(loaded.model, STNDT) and not loaded.model.training
    data = load("lorenz", seed=0, **TINY_LORENZ)
    with h5py.File(run / "predictions.h5", "r") as f:
        saved = f["rates"][()]
    np.testing.assert_allclose(loaded.predict(data)["rates"], saved, rtol=1e-5, atol=1e-7)
