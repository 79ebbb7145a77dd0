"""LFADS model: shapes, modes, gradients, loss contract and a short training run."""

import numpy as np
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


# --------------------------------------------------------------- ic_dim, ci_lag, posterior_samples
def test_defaults_keep_the_checkpoint_layout():
    """ic_dim null: the posterior is over g0 itself, with no map (the bundled checkpoints' layout)."""
    model = LFADS(SPEC, **SMALL)
    assert model.ic_dim == 16 and model.ic_to_g0 is None
    assert not any(k.startswith("ic_to_g0") for k in model.state_dict())
    assert model.ic_linear.out_features == 2 * 16 and model.ci_lag == 0 and model.posterior_samples == 0


def test_ic_dim_maps_a_low_dimensional_posterior_to_g0():
    torch.manual_seed(0)
    model = LFADS(SPEC, ic_dim=3, **SMALL)
    assert model.ic_linear.out_features == 2 * 3  # [mean, raw log-var] of z (B, 3)
    assert (model.ic_to_g0.in_features, model.ic_to_g0.out_features) == (3, 16)
    assert model.ic_prior.mean.shape == (3,)  # prior and KL over ic_dim
    out = model(_batch())
    assert out.rates.shape == (5, 20, 8) and out.latents.shape == (5, 20, 4)
    out.aux_losses["kl_ic"].backward()  # the KL reaches the z posterior, not the map
    assert model.ic_linear.weight.grad.abs().sum() > 0 and model.ic_to_g0.weight.grad is None
    model.zero_grad()
    model(_batch()).rates.sum().backward()
    assert model.ic_to_g0.weight.grad.abs().sum() > 0
    # g0 comes only through the map: with its weights zeroed, an autonomous generator starts every
    # trial at the map's bias and predicts the same rates whatever the spikes
    auto = LFADS(SPEC, ic_dim=3, **{**SMALL, "co_dim": 0}).eval()
    with torch.no_grad():
        auto.ic_to_g0.weight.zero_()
    a, b = auto(_batch(seed=0)), auto(_batch(seed=1))
    torch.testing.assert_close(a.rates, b.rates)
    assert not torch.allclose(a.rates[0], a.rates[0, :1].expand(20, 8))  # dynamics, not a constant


def test_ci_lag_hides_the_encoding_of_the_last_lag_bins():
    """With ci_lag = L the inferred input at bin t depends on the controller-input encoding only up to
    bin t - L: changing the ci encoder leaves u over bins < L unchanged (it reads zeros there) and
    changes it after; with no lag every bin changes."""
    torch.manual_seed(0)
    L = 3
    batch = _batch()
    for lag in (0, L):
        model = LFADS(SPEC, co_dim=2, ci_lag=lag, **SMALL).eval()
        before = model(batch).inputs  # (B, T_obs, U)
        with torch.no_grad():
            for p in model.ci_encoder.parameters():
                p.add_(0.5 * torch.randn_like(p))
        after = model(batch).inputs
        differs = (after - before).abs().amax(dim=(0, 2)) > 1e-6  # (T_obs,) per bin
        assert differs[lag:].all()
        assert not differs[:lag].any()


def test_ci_lag_equals_shifting_the_encoding_by_hand():
    """The lagged model equals the unlagged one whose controller reads the encoding shifted by L bins."""
    torch.manual_seed(0)
    L = 2
    lagged = LFADS(SPEC, co_dim=2, ci_lag=L, **SMALL).eval()
    plain = LFADS(SPEC, co_dim=2, **SMALL).eval()
    plain.load_state_dict(lagged.state_dict())
    seen = []
    plain.recurrence = lagged.recurrence = "plain"
    orig = plain._unroll

    def shifted(g0, ci, eps, mask):  # ci (B, T_obs, CI) -> the encoding of bin t - L at bin t
        ci = torch.cat([torch.zeros_like(ci[:, :L]), ci[:, :-L]], dim=1)
        seen.append(ci)
        return orig(g0, ci, eps, mask)

    plain._unroll = shifted
    batch = _batch()
    a, b = lagged(batch), plain(batch)
    assert seen and torch.equal(seen[0][:, :L], torch.zeros_like(seen[0][:, :L]))
    torch.testing.assert_close(a.rates, b.rates)
    torch.testing.assert_close(a.inputs, b.inputs)


def test_posterior_samples_average_sampled_outputs_in_eval_mode():
    torch.manual_seed(0)
    model = LFADS(SPEC, co_dim=2, posterior_samples=4, **SMALL).eval()
    batch = _batch()
    torch.manual_seed(1)
    averaged = model(batch)
    torch.manual_seed(1)
    draws = [model(batch, sample=True) for _ in range(4)]
    torch.testing.assert_close(averaged.rates, torch.stack([d.rates for d in draws]).mean(0))
    torch.testing.assert_close(averaged.latents, torch.stack([d.latents for d in draws]).mean(0))
    torch.testing.assert_close(averaged.inputs, torch.stack([d.inputs for d in draws]).mean(0))
    kl = torch.stack([d.aux_losses["kl_co"] for d in draws]).mean()
    torch.testing.assert_close(averaged.aux_losses["kl_co"], kl)
    torch.manual_seed(1)
    torch.testing.assert_close(model.sample_average(batch, n_samples=4).rates, averaged.rates)
    # predict (eval mode, numpy) uses it too; posterior means differ
    torch.manual_seed(1)
    pred = model.predict(batch["heldin"])
    np.testing.assert_allclose(pred["rates"], averaged.rates.detach().numpy(), rtol=1e-6)
    model.posterior_samples = 0
    assert not torch.allclose(model(batch).rates, averaged.rates)
    # training mode ignores it: one draw per step, as with posterior_samples=0
    model.train()
    model.posterior_samples = 4
    torch.manual_seed(2)
    a = model(batch).rates
    model.posterior_samples = 0
    torch.manual_seed(2)
    torch.testing.assert_close(model(batch).rates, a)


@pytest.mark.parametrize(
    "options, message",
    [
        (dict(ic_dim=0), r"ic_dim must be an integer >= 1 .*got 0"),
        (dict(ic_dim=2.5), r"ic_dim must be an integer >= 1 .*got 2.5"),
        (dict(ci_lag=-1), r"ci_lag must be an integer >= 0 .*got -1"),
        (dict(ci_lag=16), r"ci_lag=16 must be < the data's observed bins T_obs=16"),
        (dict(ci_lag=2, co_dim=0), r"ci_lag=2 needs a controller \(co_dim > 0\)"),
        (dict(posterior_samples=-1), r"posterior_samples must be an integer >= 0 .*got -1"),
        (dict(posterior_samples=True), r"posterior_samples must be an integer"),
    ],
)
def test_bad_option_values_name_the_option(options, message):
    with pytest.raises(ValueError, match=message):
        LFADS(SPEC, **{**SMALL, **options})


def test_tiny_training_run_with_the_options_round_trips_through_load_pretrained(tmp_path):
    """Train 1 epoch with ic_dim, ci_lag and posterior_samples set (validation then averages samples);
    the run directory loads with the same options and weights, and predict averages samples."""
    from hydra import compose, initialize_config_dir
    from tiny import TINY_LFADS

    from neuralnets.config import CONFIG_DIR
    from neuralnets.data import load
    from neuralnets.pretrained import load_pretrained
    from neuralnets.training.train import train

    data_kw = dict(n_trials=24, n_neurons=12, n_heldout=4, n_bins=16, n_fwd=4, seed=0)
    overrides = [
        *(f"data.load_kwargs.{k}={v}" for k, v in data_kw.items()),
        "data.batch_size=12",
        *TINY_LFADS,
        "model.ic_dim=3",
        "model.ci_lag=2",
        "model.posterior_samples=3",
        "trainer.max_epochs=1",
        "trainer.log_every_n_steps=1",
        "trainer.enable_progress_bar=false",
        "trainer.enable_model_summary=false",
        "callbacks.figures=false",
    ]
    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
        cfg = compose("train", overrides=overrides)
    record = train(cfg, tmp_path / "run")
    assert np.isfinite(record["metrics"]["co_bps"])
    loaded = load_pretrained(tmp_path / "run")
    model = loaded.model
    assert (model.ic_dim, model.ci_lag, model.posterior_samples) == (3, 2, 3)
    ckpt = torch.load(tmp_path / "run" / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
    state = {k.removeprefix("model."): v for k, v in ckpt["state_dict"].items()}
    assert state.keys() == model.state_dict().keys() and "ic_to_g0.weight" in state
    for k, v in model.state_dict().items():
        torch.testing.assert_close(v, state[k], msg=k)
    spikes = load("lorenz", **data_kw).spikes
    torch.manual_seed(0)
    a = loaded.predict(spikes)
    torch.manual_seed(0)
    b = loaded.predict(spikes)
    np.testing.assert_array_equal(a["rates"], b["rates"])  # reproducible under a seed
    model.posterior_samples = 0
    means = loaded.predict(spikes)
    assert a["rates"].shape == means["rates"].shape == (24, 16, 12)
    assert not np.allclose(a["rates"], means["rates"])
