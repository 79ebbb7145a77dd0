"""LFADS model: shapes, modes, gradients, loss contract and a short training run."""

import pytest
import torch

from neuralnets.data.spikedata import DataSpec
from neuralnets.models.base import ModelOutput
from neuralnets.models.lfads import LFADS

SPEC = DataSpec(n_heldin=6, n_neurons=8, n_obs_bins=16, n_fwd_bins=4, bin_size=0.01)
SMALL = dict(gen_dim=16, fac_dim=4, ic_enc_dim=12, ci_enc_dim=8, con_dim=8)


def _batch(B=5, seed=0):
    g = torch.Generator().manual_seed(seed)
    spikes = torch.poisson(torch.full((B, SPEC.n_bins, SPEC.n_neurons), 0.8), generator=g)  # (B, T, N)
    return {"heldin": spikes[:, : SPEC.n_obs_bins, : SPEC.n_heldin], "spikes": spikes}


@pytest.mark.parametrize("co_dim", [0, 2])
def test_forward_shapes_and_aux_keys(co_dim):
    torch.manual_seed(0)
    model = LFADS(SPEC, co_dim=co_dim, **SMALL)
    out = model(_batch())
    assert isinstance(out, ModelOutput)
    assert out.rates.shape == (5, 20, 8)
    assert out.latents.shape == (5, 20, 4)
    assert torch.isfinite(out.rates).all() and (out.rates > 0).all()
    if co_dim:
        assert out.inputs.shape == (5, 16, 2)
        assert set(out.aux_losses) == {"kl_ic", "kl_co", "l2_gen", "l2_con"}
    else:
        assert out.inputs is None
        assert set(out.aux_losses) == {"kl_ic", "l2_gen"}
    assert set(model.aux_weights) == set(out.aux_losses)
    for v in out.aux_losses.values():
        assert v.ndim == 0 and torch.isfinite(v)
    # L2 is half the mean square of the generator's recurrent weights
    torch.testing.assert_close(out.aux_losses["l2_gen"], 0.5 * model.generator.weight_hh.pow(2).mean())


def test_spec_as_dict_and_bad_input():
    model = LFADS(SPEC.to_dict(), **SMALL)
    with pytest.raises(ValueError, match=r"\(B, 16, 6\)"):
        model({"heldin": torch.zeros(2, 16, 7)})
    with pytest.raises(ValueError, match="co_dim"):
        LFADS(SPEC, co_dim=-1)


def test_eval_deterministic_train_stochastic():
    torch.manual_seed(0)
    model = LFADS(SPEC, co_dim=2, **SMALL)
    batch = _batch()
    model.eval()
    a, b = model(batch), model(batch)
    torch.testing.assert_close(a.rates, b.rates)
    torch.testing.assert_close(a.inputs, b.inputs)
    torch.testing.assert_close(a.aux_losses["kl_co"], b.aux_losses["kl_co"])
    assert a.aux_losses["kl_co"] > 0  # exact KL in eval mode
    model.train()
    c, d = model(batch), model(batch)
    assert not torch.allclose(c.rates, d.rates)
    # eval mode can still be asked to sample, and sample_average returns the contract's shapes
    model.eval()
    assert not torch.allclose(model(batch, sample=True).rates, a.rates)
    avg = model.sample_average(batch, n_samples=3)
    assert avg.rates.shape == a.rates.shape and avg.inputs.shape == a.inputs.shape
    assert not model.training


def test_gradients_reach_encoders_controller_and_priors():
    torch.manual_seed(0)
    model = LFADS(SPEC, co_dim=2, **SMALL)
    batch = _batch()
    out = model(batch)
    loss = -torch.distributions.Poisson(out.rates).log_prob(batch["spikes"]).sum((1, 2)).mean()
    loss = loss + sum(out.aux_losses.values())
    loss.backward()
    for name in ("ic_encoder", "ci_encoder", "controller", "generator", "ic_prior", "co_prior", "readout"):
        grads = [p.grad for n, p in model.named_parameters() if n.startswith(name)]
        assert grads and all(g is not None and torch.isfinite(g).all() for g in grads), name
        assert sum(g.abs().sum() for g in grads) > 0, name


def test_zero_controller_output_equals_autonomous_generator():
    """With the inferred inputs forced to 0, the controller path reproduces the co_dim=0 path."""
    torch.manual_seed(0)
    with_con = LFADS(SPEC, co_dim=1, dropout=0.0, **SMALL).eval()
    no_con = LFADS(SPEC, co_dim=0, dropout=0.0, **SMALL).eval()
    state = {k: v for k, v in with_con.state_dict().items() if k in no_con.state_dict()}
    state["generator.weight_ih"] = no_con.generator.weight_ih  # (3G, 0): no input weights
    no_con.load_state_dict(state)
    with torch.no_grad():
        with_con.co_linear.weight.zero_()
        with_con.co_linear.bias[:1].zero_()  # posterior mean of u = 0
    batch = _batch()
    a, b = with_con(batch), no_con(batch)
    assert torch.equal(a.inputs, torch.zeros_like(a.inputs))
    torch.testing.assert_close(a.rates, b.rates)
    torch.testing.assert_close(a.latents, b.latents)


def test_factors_use_unit_norm_weights_and_kl_ic_vanishes_at_prior():
    torch.manual_seed(0)
    model = LFADS(SPEC, co_dim=0, **SMALL).eval()
    w = model.factors.normalized_weight()
    torch.testing.assert_close(w.norm(dim=1), torch.ones(4))
    # posterior == prior (mean 0, var 0.1 + floor) -> KL ~ 0 up to the variance floor
    with torch.no_grad():
        model.ic_linear.weight.zero_()
        model.ic_linear.bias.zero_()
        model.ic_linear.bias[16:].fill_(torch.log(torch.tensor(0.1 - 1e-4)))
    assert abs(model(_batch()).aux_losses["kl_ic"].item()) < 1e-4


def test_ramps_follow_settings():
    model = LFADS(SPEC, kl_ic_scale=2.0, kl_ramp_start=10, kl_ramp_steps=20, l2_gen_scale=5.0, **SMALL)
    assert model.aux_weights["kl_ic"](10) == 0.0
    assert model.aux_weights["kl_ic"](20) == pytest.approx(1.0)
    assert model.aux_weights["kl_co"](100) == pytest.approx(1.0)
    assert model.aux_weights["l2_gen"](10**6) == pytest.approx(5.0)


def test_short_training_run_lowers_loss():
    """60 Adam steps on 32 trials x 20 bins x 8 neurons of Poisson spikes driven by a sinusoid with a
    random phase per trial: the loss falls, and below the best constant-rate model (so the model
    infers trial-specific dynamics, not just each neuron's mean rate)."""
    torch.manual_seed(0)
    B, T, N = 32, 20, 8
    t = torch.arange(T, dtype=torch.float32)
    phase = torch.rand(B, 1, 1) * 6.28  # (B, 1, 1) per-trial phase
    pref = torch.linspace(0, 3.14, N)  # (N,) per-neuron preferred phase
    rates_true = torch.exp(torch.sin(0.4 * t[None, :, None] + phase + pref))  # (B, T, N)
    spikes = torch.poisson(rates_true)
    batch = {"heldin": spikes[:, : SPEC.n_obs_bins, : SPEC.n_heldin], "spikes": spikes}
    poisson_nll = lambda r: -torch.distributions.Poisson(r).log_prob(spikes).sum(dim=(1, 2)).mean()  # noqa: E731
    constant_rate_nll = poisson_nll(spikes.mean(dim=(0, 1)).expand_as(spikes)).item()  # ~254 nats/trial

    model = LFADS(SPEC, co_dim=1, kl_ramp_steps=30, l2_ramp_steps=30, **SMALL)
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    losses = []
    for step in range(60):
        out = model(batch)
        recon = poisson_nll(out.rates)
        loss = recon + sum(model.aux_weights[k](step) * v for k, v in out.aux_losses.items())
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(recon.item())
    first, last = sum(losses[:10]) / 10, sum(losses[-10:]) / 10
    assert last < first - 15.0, (first, last)
    assert last < constant_rate_nll - 10.0, (constant_rate_nll, last)
