"""NDT: SpikeModel contract, BERT-style bin masking and recon_mask, context-limited attention, training."""

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
from neuralnets.models.ndt import NDT, context_mask
from neuralnets.training.module import TrainingModule

# Tiny synthetic problem: 32 trials x 20 bins x 8 neurons, 2 held out, 4 forward bins.
N_TRIALS, T, N, N_OUT, T_FWD = 32, 20, 8, 2, 4
T_OBS, N_IN = T - T_FWD, N - N_OUT
SPEC = DataSpec(n_heldin=N_IN, n_neurons=N, n_obs_bins=T_OBS, n_fwd_bins=T_FWD, bin_size=0.02)


def make_batch(seed: int = 0, n_trials: int = N_TRIALS) -> dict[str, torch.Tensor]:
    return sine_batch(SPEC, n_trials, seed)


def test_shapes_positive_finite_and_default_width() -> None:
    torch.manual_seed(0)
    model = NDT(SPEC)
    assert model.d_model == N_IN  # paper: d_model = number of input neurons (6, divisible by 2 heads)
    assert NDT(SPEC, n_heads=4).d_model == 8  # rounded up to a multiple of n_heads
    assert NDT(SPEC, d_model=16, ff_dim=20).transformer.layers[0].linear1.out_features == 20
    for mode in (model.train, model.eval):
        mode()
        out = model(make_batch(n_trials=5))
        assert out.rates.shape == (5, T, N)
        assert out.latents.shape == (5, T, N_IN)
        assert torch.isfinite(out.rates).all() and (out.rates > 0).all()
        assert out.aux_losses == {}


def test_bad_kwargs_and_json_defaults() -> None:
    with pytest.raises(ValueError, match="multiple of n_heads"):
        NDT(SPEC, d_model=10, n_heads=4)
    with pytest.raises(ValueError, match="mask_ratio"):
        NDT(SPEC, mask_ratio=0.0)
    with pytest.raises(ValueError, match="context_forward"):
        NDT(SPEC, context_forward=-1)
    with pytest.raises(ValueError, match="dropout_attention"):
        NDT(SPEC, dropout_attention=1.0)
    params = inspect.signature(NDT.__init__).parameters
    defaults = {k: p.default for k, p in params.items() if k not in ("self", "spec")}
    assert json.loads(json.dumps(defaults)) == defaults
    assert NDT(SPEC.to_dict()).spec == SPEC


def test_check_input_wrong_shape() -> None:
    model = NDT(SPEC)
    spikes = make_batch(n_trials=3)["spikes"]
    with pytest.raises(ValueError, match=r"expects held-in spikes of shape \(B, 16, 6\).*got \(3, 16, 8\)"):
        model({"heldin": spikes[:, :T_OBS]})
    with pytest.raises(ValueError, match=r"got \(16, 6\)"):
        model({"heldin": spikes[0, :T_OBS, :N_IN]})
    with pytest.raises(ValueError, match="needs batch\\['heldin'\\]"):
        model({"spikes": spikes})


def test_eval_is_deterministic_and_unmasked() -> None:
    torch.manual_seed(0)
    model = NDT(SPEC, dropout=0.3).eval()
    batch = make_batch(n_trials=4)
    with torch.no_grad():
        a, b = model(batch), model(batch)
    assert torch.equal(a.rates, b.rates)
    assert a.recon_mask is None
    model.train()
    with torch.no_grad():
        c, d = model(batch), model(batch)
    assert not torch.equal(c.rates, d.rates)  # masking and dropout act in train mode only


def test_recon_mask_semantics() -> None:
    torch.manual_seed(0)
    model = NDT(SPEC, mask_ratio=0.25, mask_token_ratio=1.0).train()
    batch = make_batch(n_trials=6)
    x, selected = model.mask_bins(batch["heldin"])
    assert selected.shape == (6, T_OBS) and selected.dtype == torch.bool
    assert (selected.sum(1) == round(0.25 * T_OBS)).all()  # exactly 4 whole bins per trial
    # mask_token_ratio=1: every selected bin is zeroed for all held-in neurons, the rest is untouched.
    assert (x[selected] == 0).all()
    assert torch.equal(x[~selected], batch["heldin"][~selected])

    out = model(batch)
    mask = out.recon_mask
    assert mask.shape == (6, T, N) and mask.dtype == torch.bool
    assert mask[:, :, N_IN:].all()  # held-out neurons: always scored
    assert mask[:, T_OBS:, :].all()  # forward bins: always scored
    heldin_obs = mask[:, :T_OBS, :N_IN]  # (B, T_obs, N_in): scored only at the masked bins
    assert (heldin_obs == heldin_obs[:, :, :1]).all()  # whole bins
    assert (heldin_obs[:, :, 0].sum(1) == 4).all()
    assert mask.sum().item() == 6 * (4 * N_IN + T_OBS * N_OUT + T_FWD * N)

    # The masked forward pass must not see the inputs at the masked bins: with the same RNG, changing
    # the original counts at those bins leaves the output unchanged.
    model = NDT(SPEC, mask_token_ratio=1.0, dropout=0.0, dropout_embedding=0.0, dropout_attention=0.0).train()
    torch.manual_seed(1)
    out1 = model(batch)
    sel = out1.recon_mask[:, :T_OBS, 0]  # (B, T_obs)
    changed = batch["heldin"].clone()
    changed[sel] += 3.0
    torch.manual_seed(1)
    out2 = model({"heldin": changed})
    assert torch.equal(out1.recon_mask, out2.recon_mask)
    assert torch.allclose(out1.rates, out2.rates)


def test_heldout_masked_only_scores_heldout_at_selected_bins() -> None:
    torch.manual_seed(0)
    model = NDT(SPEC, mask_ratio=0.25, heldout_masked_only=True).train()
    mask = model(make_batch(n_trials=6)).recon_mask  # (B, T, N)
    selected = mask[:, :T_OBS, 0]  # (B, T_obs): the masked bins
    assert (selected.sum(1) == 4).all()
    # Held-out neurons at observed bins follow the masked bins exactly; forward bins stay all scored.
    assert torch.equal(mask[:, :T_OBS, N_IN:], selected[..., None].expand(-1, -1, N_OUT))
    assert mask[:, T_OBS:, :].all()
    assert mask.sum().item() == 6 * (4 * N + T_FWD * N)


def test_mask_token_replaces_only_the_zeroed_bins() -> None:
    batch = make_batch(n_trials=6)
    kw = dict(mask_token_ratio=1.0, dropout=0.0, dropout_embedding=0.0, dropout_attention=0.0)
    torch.manual_seed(0)
    model = NDT(SPEC, mask_token=True, **kw).train()
    assert model.mask_embedding is not None and model.mask_embedding.shape == (model.d_model,)
    # Vectors that differ in more than a constant (layer norm removes a constant shift).
    v1, v2 = torch.randn(2, model.d_model, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        model.mask_embedding.copy_(v1)
    torch.manual_seed(1)
    out1 = model(batch)
    # A different [MASK] vector changes the training output (it is used at the zeroed bins) ...
    with torch.no_grad():
        model.mask_embedding.copy_(v2)
    torch.manual_seed(1)
    assert not torch.allclose(out1.rates, model(batch).rates)
    # ... and is never used in eval mode, where nothing is masked.
    model.eval()
    with torch.no_grad():
        r1 = model(batch).rates
        model.mask_embedding.copy_(v1)
        assert torch.equal(r1, model(batch).rates)
    assert NDT(SPEC).mask_embedding is None  # default: zeroed bins embed as zero counts


def test_mask_replacement_fractions() -> None:
    heldin = make_batch(n_trials=32)["heldin"]
    # No zeroing, no randomising: selected bins keep their counts.
    model = NDT(SPEC, mask_ratio=0.5, mask_token_ratio=0.0, mask_random_ratio=0.0)
    x, selected = model.mask_bins(heldin)
    assert torch.equal(x, heldin) and selected.any()
    # No zeroing, all randomised: selected bins get whole counts in 0..max, different from the data.
    model = NDT(SPEC, mask_ratio=0.5, mask_token_ratio=0.0, mask_random_ratio=1.0)
    torch.manual_seed(0)
    x, selected = model.mask_bins(heldin)
    assert torch.equal(x[~selected], heldin[~selected])
    rand = x[selected]
    assert torch.equal(rand, rand.round()) and rand.min() >= 0 and rand.max() <= heldin.max()
    assert not torch.equal(rand, heldin[selected])
    # Defaults 0.8 / 0.5: of the selected bins ~80% zeroed, ~10% randomised, ~10% kept.
    model = NDT(SPEC, mask_ratio=1.0)
    torch.manual_seed(0)
    big = torch.ones(4000, T_OBS, N_IN) * 7.0
    x, selected = model.mask_bins(big)
    assert selected.all()
    frac_zero = (x == 0).all(-1).float().mean().item()
    frac_kept = (x == 7.0).all(-1).float().mean().item()
    assert abs(frac_zero - 0.8) < 0.01 and abs(frac_kept - 0.1) < 0.01, (frac_zero, frac_kept)


def test_context_mask_matrix() -> None:
    expected = torch.tensor(
        [
            [0, 0, 1, 1],  # t=0 sees s in [0, 1]
            [0, 0, 0, 1],  # t=1 sees s in [0, 2]
            [1, 0, 0, 0],  # t=2 sees s in [1, 3]
            [1, 1, 0, 0],  # t=3 sees s in [2, 3]
        ],
        dtype=torch.bool,
    )
    assert torch.equal(context_mask(4, context_forward=1, context_backward=1), expected)
    assert torch.equal(context_mask(3, 0, None), torch.ones(3, 3, dtype=torch.bool).triu(1))  # causal
    assert not context_mask(3, None, None).any()
    assert NDT(SPEC).attn_mask is None


@pytest.mark.parametrize(("n_layers", "fwd", "bwd"), [(1, 2, None), (2, 1, 3), (2, 0, None)])
def test_context_limits_receptive_field(n_layers: int, fwd: int, bwd: int | None) -> None:
    """d rates[t] / d input[s] is nonzero exactly for t - L*bwd <= s <= t + L*fwd (L layers)."""
    torch.manual_seed(0)
    model = NDT(SPEC, d_model=8, n_layers=n_layers, context_forward=fwd, context_backward=bwd).eval()
    heldin = make_batch(n_trials=1)["heldin"].clone().requires_grad_(True)  # (1, T_obs, N_in)
    t = 6
    model({"heldin": heldin}).rates[0, t].log().sum().backward()
    touched = heldin.grad[0].abs().sum(-1) > 0  # (T_obs,)
    lo = 0 if bwd is None else max(0, t - n_layers * bwd)
    hi = min(T_OBS - 1, t + n_layers * fwd)
    expected = torch.zeros(T_OBS, dtype=torch.bool)
    expected[lo : hi + 1] = True
    assert torch.equal(touched, expected), (touched, expected)


def test_tiny_model_trains() -> None:
    torch.manual_seed(0)
    batch = make_batch(seed=1)
    y = batch["spikes"]
    model = NDT(SPEC, d_model=16, ff_dim=32, dropout=0.05, dropout_embedding=0.05, dropout_attention=0.05)
    opt = torch.optim.Adam(model.parameters(), lr=2e-2)
    losses = []
    for _ in range(80):
        out = model(batch)
        nll = F.poisson_nll_loss(out.rates, y, log_input=False, reduction="none")  # (B, T, N)
        loss = nll[out.recon_mask].sum() / y.shape[0]  # per-trial NLL on the scored entries
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert all(map(math.isfinite, losses))
    first, last = np.mean(losses[:10]), np.mean(losses[-10:])
    assert last < 0.85 * first, (first, last)  # masks differ per step, so the loss is noisy
    # Eval mode: held-out neurons are predicted better than by their constant mean rate (needs the phase,
    # which only the held-in spikes carry).
    model.eval()
    with torch.no_grad():
        rates = model(batch).rates
    ho = (slice(None), slice(0, T_OBS), slice(N_IN, N))
    nll_model = F.poisson_nll_loss(rates[ho], y[ho], log_input=False, reduction="sum")
    const = y[ho].mean((0, 1), keepdim=True).expand_as(y[ho])
    nll_const = F.poisson_nll_loss(const, y[ho], log_input=False, reduction="sum")
    assert nll_model < 0.8 * nll_const, (nll_model.item(), nll_const.item())


def test_validation_loss_scores_only_entries_never_in_the_input() -> None:
    """Unmasked in eval mode NDT sees (and can copy) its held-in input, so val/loss scores only the
    held-out neurons and the forward bins: changing held-in targets at observed bins leaves it unchanged."""
    torch.manual_seed(0)
    module = TrainingModule(model={"name": "ndt", "d_model": 8}, spec=SPEC.to_dict()).eval()  # as Lightning
    batch = make_batch(n_trials=4)
    val = module._loss(batch, train=False)[1]["recon"]
    spikes = batch["spikes"].clone()
    spikes[:, :T_OBS, :N_IN] += 5.0  # targets the model also gets as input
    assert torch.equal(module._loss({**batch, "spikes": spikes}, train=False)[1]["recon"], val)
    spikes[:, 0, N_IN] += 5.0  # one held-out target: never an input, so scored
    assert module._loss({**batch, "spikes": spikes}, train=False)[1]["recon"] > val
    # The definition: mean NLL over held-out and forward entries, times T N (a per-trial NLL).
    with torch.no_grad():
        nll = -module.likelihood.log_prob(module.model(batch).rates, batch["spikes"])  # (B, T, N)
    unseen = torch.ones(T, N, dtype=torch.bool)
    unseen[:T_OBS, :N_IN] = False
    torch.testing.assert_close(val, nll[:, unseen].mean() * T * N)


@pytest.mark.parametrize(
    ("recipe", "data"), [("ndt_mc_maze_small", "mc_maze_small"), ("ndt_ca1", "ca1_linear_track")]
)
def test_small_data_recipes_compose_and_build(recipe: str, data: str) -> None:
    from neuralnets.config import compose
    from neuralnets.models import create_model

    cfg = compose([f"experiment={recipe}"], config_name="train")
    assert cfg.recipe == recipe and cfg.data.name == data and cfg.model.name == "ndt"
    # The recipe's point: attention limited to a window of bins (context), a small heavily regularised model.
    assert cfg.model.context_forward is not None and cfg.model.context_backward is not None
    assert cfg.model.dropout >= 0.3 and cfg.module.weight_decay > 0
    assert cfg.module.augment_jitter == 1  # chosen on validation for both recordings
    model = create_model(dict(cfg.model), SPEC)  # the composed options build an NDT
    assert isinstance(model, NDT) and model.attn_mask is not None
    assert model.attn_mask.shape == (T, T)


def test_stndt_ca1_recipe_composes_and_builds() -> None:
    from neuralnets.config import compose
    from neuralnets.models import create_model
    from neuralnets.models.stndt import STNDT

    cfg = compose(["experiment=stndt_ca1"], config_name="train")
    assert cfg.recipe == "stndt_ca1" and cfg.data.name == "ca1_linear_track" and cfg.model.name == "stndt"
    assert cfg.model.context_forward == 10 and cfg.model.context_backward == 10
    assert isinstance(create_model(dict(cfg.model), SPEC), STNDT)
