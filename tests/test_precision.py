"""CPU speed paths that must not change the numbers: bf16 autocast (trainer.precision=auto) and the
Poisson log y! term summed once per trial instead of at every step."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from neuralnets.data.datamodule import batch_tensors, log_count_factorials, make_batch
from neuralnets.data.synthetic import lorenz
from neuralnets.nn.likelihoods import make_likelihood
from neuralnets.training import build
from neuralnets.training.build import resolve_precision
from neuralnets.training.module import TrainingModule

SMALL_LFADS = dict(name="lfads", gen_dim=32, fac_dim=6, ic_enc_dim=16, ci_enc_dim=16, con_dim=16, co_dim=2)


@pytest.fixture(scope="module")
def data():
    return lorenz(n_trials=24, n_neurons=20, n_heldout=5, n_bins=18, n_fwd=4, seed=1)


def _batch(data, observed=None):
    tensors = batch_tensors(data)
    if observed is not None:
        tensors["observed"] = observed
        tensors["log_count_factorial"] = log_count_factorials(tensors["spikes"], observed)
    return make_batch(tensors, torch.arange(16), data.n_obs, data.n_heldin)


# ------------------------------------------------------------------------------------ log y! per trial
@pytest.mark.parametrize("name", ["poisson", "negative_binomial"])
def test_count_term_is_the_target_only_part_of_log_prob(name):
    lik = make_likelihood(name, 3)
    y = torch.tensor([[0.0, 1.0, 5.0], [2.0, 0.0, 7.0]])
    rates = torch.tensor([[0.5, 1.5, 4.0], [2.0, 0.1, 6.0]])
    full = lik.log_prob(rates, y)
    torch.testing.assert_close(lik.log_prob(rates, y, count_term=False) + lik.count_term(y), full)
    torch.testing.assert_close(lik.count_term(y)[0, 2], -torch.log(torch.tensor(120.0)))  # -log 5!


def test_log_count_factorials_sums_observed_entries_per_trial():
    y = torch.tensor([[[3.0, 0.0], [1.0, 4.0]], [[2.0, 2.0], [0.0, 1.0]]])  # (2, 2, 2)
    obs = torch.tensor([[[True, True], [False, True]], [[True, False], [True, True]]])
    expected = torch.tensor([np.log(6) + np.log(24), np.log(2)], dtype=torch.float32)
    torch.testing.assert_close(log_count_factorials(y, obs, chunk=1), expected)
    torch.testing.assert_close(
        log_count_factorials(y, None), expected + torch.tensor([0.0, float(np.log(2))])
    )


@pytest.mark.parametrize("masked", [False, True])
@pytest.mark.parametrize("likelihood", ["poisson", "negative_binomial"])
def test_losses_with_per_trial_log_factorials_equal_the_elementwise_ones(data, masked, likelihood):
    """The logged recon (train and val) is the same number whether log y! comes from the DataModule's
    per-trial sums or from lgamma at every entry."""
    observed = None
    if masked:
        gen = torch.Generator().manual_seed(0)
        observed = torch.rand(data.spikes.shape, generator=gen) > 0.3  # (trials, T, N) bool
    batch = _batch(data, observed)
    assert "log_count_factorial" in batch
    module = TrainingModule(model=SMALL_LFADS, spec=data.spec.to_dict(), likelihood=likelihood)
    module.model.eval()  # deterministic rates
    without = {k: v for k, v in batch.items() if k != "log_count_factorial"}
    for train in (True, False):
        fast = module._loss(batch, train=train)[1]["recon"]
        slow = module._loss(without, train=train)[1]["recon"]
        torch.testing.assert_close(fast, slow, rtol=1e-6, atol=1e-4)
        # And the definition: mean NLL over the scored entries times T N.
        rates = module.model(batch).rates
        nll = -module.likelihood.log_prob(rates, batch["spikes"])
        mask = torch.ones_like(nll, dtype=torch.bool) if observed is None else batch["observed"]
        expected = nll[mask].mean() * data.n_bins * data.n_neurons
        torch.testing.assert_close(fast, expected, rtol=1e-5, atol=1e-3)


@pytest.mark.parametrize("likelihood", ["poisson", "negative_binomial"])
def test_loss_under_coordinated_dropout_sums_log_factorials_of_the_scored_entries(data, likelihood):
    """With a per-step mask (coordinated dropout) log y! is summed over the scored entries where it is not
    0; the recon is still the mean full NLL over the scored entries times T N."""
    from neuralnets.nn.augmentations import coordinated_dropout, expand_heldin_mask

    batch = _batch(data)
    batch["spikes"][0, 0, :3] = torch.tensor([2.0, 3.0, 7.0])  # counts whose log y! is not 0
    module = TrainingModule(
        model=SMALL_LFADS, spec=data.spec.to_dict(), likelihood=likelihood, coordinated_dropout=0.3
    )
    module.model.eval()  # deterministic rates: the only random draw is the dropout mask
    torch.manual_seed(0)
    recon = module._loss(batch, train=True)[1]["recon"]
    torch.manual_seed(0)
    heldin, dropped = coordinated_dropout(batch["heldin"], 0.3)
    rates = module.model({**batch, "heldin": heldin}).rates
    nll = -module.likelihood.log_prob(rates, batch["spikes"])  # (B, T, N) with log y!
    scored = expand_heldin_mask(dropped, data.n_bins, data.n_neurons)
    torch.testing.assert_close(recon, nll[scored].mean() * data.n_bins * data.n_neurons, rtol=1e-5, atol=1e-3)


# ------------------------------------------------------------------------------------------ precision
def test_auto_precision_follows_the_cpu(monkeypatch):
    assert resolve_precision("32-true", "cpu")[0] == "32-true"
    monkeypatch.setattr(build, "native_bf16_cpu", lambda: True)
    assert resolve_precision("auto", "cpu")[0] == "bf16-mixed"
    monkeypatch.setattr(build, "native_bf16_cpu", lambda: False)
    assert resolve_precision("auto", "cpu")[0] == "32-true"
    if not torch.cuda.is_available():
        assert resolve_precision("auto", "auto")[0] == "32-true"


def test_native_bf16_detection_matches_the_cpu_flags():
    try:
        flags = next(ln for ln in open("/proc/cpuinfo") if ln.startswith("flags")).split()
    except (OSError, StopIteration):
        pytest.skip("no /proc/cpuinfo")
    assert build.native_bf16_cpu() == bool({"amx_tile", "avx512_bf16"} & set(flags))


def test_lfads_under_cpu_bf16_autocast_matches_fp32(data):
    """bf16 autocast (recurrences, log-rates and loss in fp32) gives the fp32 loss and gradients up to
    bf16 rounding of the projections, on any CPU (autocast works everywhere; only speed differs)."""
    torch.manual_seed(0)
    module = TrainingModule(model={**SMALL_LFADS, "dropout": 0.0}, spec=data.spec.to_dict())
    module.model.eval()  # posterior means: no sampling, so both runs see the same computation
    batch = _batch(data)

    def run(autocast: bool):
        module.zero_grad(set_to_none=True)
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
            loss, _ = module._loss(batch, train=False)
            out = module.model(batch)
        loss.backward()
        grads = {n: p.grad.clone() for n, p in module.named_parameters() if p.grad is not None}
        return loss.detach(), out, grads

    loss32, out32, g32 = run(False)
    loss16, out16, g16 = run(True)
    assert loss16.dtype == torch.float32 and out16.rates.dtype == torch.float32
    torch.testing.assert_close(loss16, loss32, rtol=5e-3, atol=0.0)
    torch.testing.assert_close(out16.rates, out32.rates, rtol=0.05, atol=1e-3)
    assert set(g16) == set(g32)
    for name, g in g32.items():
        # Relative to the whole gradient tensor: bf16 keeps ~3 significant digits per element.
        err = (g16[name] - g).norm() / g.norm().clamp(min=1e-12)
        assert err < 0.05, f"{name}: relative gradient error {float(err):.3g}"
