"""RNNSeq2Seq (SpikeModel contract, KL term, training) and the causal RNN behaviour decoder."""

from __future__ import annotations

import inspect
import json
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from tiny import sine_batch

from neuralnets.data.spikedata import DataSpec
from neuralnets.models.base import ModelOutput, Ramp
from neuralnets.models.rnn import RNNBehaviorDecoder, RNNSeq2Seq

# Tiny synthetic problem: 32 trials x 20 bins x 8 neurons, 2 held out, 4 forward bins.
N_TRIALS, T, N, N_OUT, T_FWD = 32, 20, 8, 2, 4
SPEC = DataSpec(n_heldin=N - N_OUT, n_neurons=N, n_obs_bins=T - T_FWD, n_fwd_bins=T_FWD, bin_size=0.02)


def make_batch(seed: int = 0, n_trials: int = N_TRIALS) -> dict[str, torch.Tensor]:
    return sine_batch(SPEC, n_trials, seed)


def per_trial_nll(out: ModelOutput, spikes: torch.Tensor) -> torch.Tensor:
    """Poisson NLL summed over bins and neurons, averaged over trials (the training module's convention)."""
    return (
        F.poisson_nll_loss(out.rates, spikes, log_input=False, full=False, reduction="sum") / spikes.shape[0]
    )


@pytest.mark.parametrize("cell", ["gru", "lstm"])
@pytest.mark.parametrize("variational", [False, True])
def test_shapes_positive_finite(cell: str, variational: bool) -> None:
    torch.manual_seed(0)
    model = RNNSeq2Seq(
        SPEC, cell=cell, enc_dim=12, latent_dim=5, dec_dim=10, fac_dim=3, variational=variational
    )
    out = model(make_batch(n_trials=7))
    assert out.rates.shape == (7, T, N)
    assert out.latents.shape == (7, T, 3)
    assert torch.isfinite(out.rates).all() and (out.rates > 0).all()
    assert set(out.aux_losses) == ({"kl"} if variational else set())
    assert out.recon_mask is None


def test_unidirectional_encoder_and_bad_kwargs() -> None:
    model = RNNSeq2Seq(SPEC, enc_dim=8, bidirectional_encoder=False)
    assert model.encoder.bidirectional is False
    assert model(make_batch(n_trials=2)).rates.shape == (2, T, N)
    with pytest.raises(ValueError, match="cell='rnn'"):
        RNNSeq2Seq(SPEC, cell="rnn")
    with pytest.raises(ValueError, match="dropout"):
        RNNSeq2Seq(SPEC, dropout=1.5)
    with pytest.raises(ValueError, match="latent_dim"):
        RNNSeq2Seq(SPEC, latent_dim=0)


def test_constructor_defaults_are_json_able() -> None:
    params = inspect.signature(RNNSeq2Seq.__init__).parameters
    defaults = {k: p.default for k, p in params.items() if k not in ("self", "spec")}
    assert json.loads(json.dumps(defaults)) == defaults
    # The spec may also be given as its dict (as stored in a checkpoint).
    assert RNNSeq2Seq(SPEC.to_dict()).spec == SPEC


def test_check_input_wrong_shape() -> None:
    model = RNNSeq2Seq(SPEC, enc_dim=8)
    batch = make_batch(n_trials=3)
    with pytest.raises(ValueError, match=r"expects held-in spikes of shape \(B, 16, 6\).*got \(3, 16, 8\)"):
        model({"heldin": batch["spikes"][:, :16, :]})  # all neurons instead of held-in
    with pytest.raises(ValueError, match=r"got \(3, 20, 6\)"):
        model({"heldin": batch["spikes"][:, :, :6]})  # forward bins included
    with pytest.raises(ValueError, match="needs batch\\['heldin'\\]"):
        model({"spikes": batch["spikes"]})


@pytest.mark.parametrize("variational", [False, True])
def test_eval_deterministic_train_stochastic(variational: bool) -> None:
    torch.manual_seed(0)
    model = RNNSeq2Seq(SPEC, enc_dim=8, dec_dim=8, variational=variational, dropout=0.3)
    batch = make_batch(n_trials=4)
    model.eval()
    with torch.no_grad():
        a, b = model(batch).rates, model(batch).rates
    assert torch.equal(a, b)
    model.train()
    with torch.no_grad():
        c, d = model(batch).rates, model(batch).rates
    assert not torch.equal(c, d)  # dropout (and posterior sampling) act in train mode only


def test_variational_kl_matches_closed_form_and_ramp() -> None:
    model = RNNSeq2Seq(SPEC, latent_dim=3, variational=True, kl_scale=0.5, kl_start=10, kl_ramp_steps=100)
    ramp = model.aux_weights["kl"]
    assert isinstance(ramp, Ramp)
    assert (ramp.scale, ramp.start, ramp.steps) == (0.5, 10, 100)
    assert ramp(0) == 0.0 and ramp(60) == pytest.approx(0.25) and ramp(500) == pytest.approx(0.5)
    # Force the posterior to mean m, logvar lv for every trial; KL = 0.5 sum(e^lv + m^2 - 1 - lv).
    m = torch.tensor([1.0, -2.0, 0.0])
    lv = torch.tensor([0.0, math.log(4.0), -1.0])
    with torch.no_grad():
        model.to_latent.weight.zero_()
        model.to_latent.bias.copy_(torch.cat([m, lv]))
    expected = 0.5 * ((1 + 1 - 1 - 0) + (4 + 4 - 1 - math.log(4.0)) + (math.exp(-1) + 0 - 1 + 1))
    model.eval()
    out = model(make_batch(n_trials=5))
    assert out.aux_losses["kl"].shape == ()
    assert out.aux_losses["kl"].item() == pytest.approx(expected, rel=1e-5)
    # Eval mode decodes from the posterior mean: z = m exactly.
    z, mean, _ = model.encode(make_batch(n_trials=2)["heldin"])
    assert torch.allclose(z, m.expand(2, 3)) and torch.equal(z, mean)


@pytest.mark.parametrize(("cell", "variational"), [("gru", False), ("lstm", True)])
def test_tiny_model_trains(cell: str, variational: bool) -> None:
    torch.manual_seed(0)
    batch = make_batch(seed=1)
    model = RNNSeq2Seq(
        SPEC, cell=cell, enc_dim=16, latent_dim=4, dec_dim=16, fac_dim=4, variational=variational, dropout=0.0
    )
    opt = torch.optim.Adam(model.parameters(), lr=2e-2)
    losses = []
    for step in range(70):
        out = model(batch)
        loss = per_trial_nll(out, batch["spikes"])
        for k, v in out.aux_losses.items():
            loss = loss + model.aux_weights[k](step) * v
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert all(map(math.isfinite, losses))
    first, last = np.mean(losses[:10]), np.mean(losses[-10:])
    assert last < 0.8 * first, (first, last)
    # Beating each neuron's constant mean rate needs the trial-specific phase, read from held-in spikes.
    y = batch["spikes"]
    const = F.poisson_nll_loss(y.mean((0, 1), keepdim=True).expand_as(y), y, log_input=False, reduction="sum")
    assert last < 0.85 * const.item() / y.shape[0], (last, const.item() / y.shape[0])


def test_behavior_decoder_is_causal() -> None:
    torch.manual_seed(0)
    dec = RNNBehaviorDecoder(in_dim=3, out_dim=2, hidden_dim=8).eval()
    x = torch.randn(2, 12, 3)  # (B, T, C)
    x2 = x.clone()
    x2[:, 7] += 5.0
    with torch.no_grad():
        y, y2 = dec(x), dec(x2)
    assert y.shape == (2, 12, 2)
    assert torch.equal(y[:, :7], y2[:, :7])  # bins before the perturbation are untouched
    assert not torch.allclose(y[:, 7:], y2[:, 7:])
    with pytest.raises(ValueError, match=r"expects inputs \(B, T, 3\)"):
        dec(torch.randn(2, 12, 4))
