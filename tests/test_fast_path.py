"""Fast recurrences (`neuralnets.nn.fast`, `neuralnets.models.lfads_unroll`): same outputs and gradients
as the plain autograd code.

- the hand-written backward passes are checked by `torch.autograd.gradcheck` in float64;
- the fused paths are compared with the plain per-step code (ClippedGRUCell loops, torch.nn.GRU,
  LFADS `recurrence="plain"`) on outputs and every parameter gradient, in float64 (tight) and float32
  (rtol 1e-4), in training mode with dropout and posterior sampling (both paths consume the same
  random numbers), in eval mode and without grad;
- GPU tests (marked `gpu`) repeat the comparison on CUDA and check the CUDA-graph training step
  (`GraphedStep`, in `experiments/benchmark.py`).
"""

import copy
import importlib.util
import sys
from pathlib import Path

import pytest
import torch

from neuralnets.config import model_config
from neuralnets.data.spikedata import DataSpec
from neuralnets.models.lfads import LFADS
from neuralnets.models.lfads_unroll import lfads_unroll
from neuralnets.nn.clipped_gru import BidirectionalGRU, ClippedGRU, ClippedGRUCell, run_bidirectional
from neuralnets.nn.fast import resolve_recurrence, stacked_gru

SPEC = DataSpec(n_heldin=6, n_neurons=8, n_obs_bins=7, n_fwd_bins=3, bin_size=0.01)
SMALL = dict(gen_dim=10, fac_dim=4, ic_enc_dim=6, ci_enc_dim=5, con_dim=6, co_dim=2)
F32 = dict(rtol=1e-4, atol=1e-5)
F64 = dict(rtol=1e-10, atol=1e-12)
cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


def _batch(spec=SPEC, B=4, seed=0, dtype=torch.float32, device="cpu"):
    g = torch.Generator().manual_seed(seed)
    spikes = torch.poisson(torch.full((B, spec.n_bins, spec.n_neurons), 0.8), generator=g)  # (B, T, N)
    spikes = spikes.to(device=device, dtype=dtype)
    return {"heldin": spikes[:, : spec.n_obs_bins, : spec.n_heldin], "spikes": spikes}


def _loss(out):
    """A loss that reaches every output with non-uniform weights."""
    w = torch.linspace(0.5, 1.5, out.rates.numel(), dtype=out.rates.dtype, device=out.rates.device)
    loss = (out.rates * w.view_as(out.rates)).sum() + sum(out.aux_losses.values())
    return loss if out.inputs is None else loss + out.inputs.pow(2).sum()


def _run_pair(model, batch, train: bool, seed=1):
    """Run `model` with recurrence plain and fused from the same weights and random state."""
    results = []
    for recurrence in ("plain", "fused"):
        m = copy.deepcopy(model)
        m.recurrence = recurrence
        m.train(train)
        torch.manual_seed(seed)
        out = m(batch)
        _loss(out).backward()
        results.append((out, {n: p.grad for n, p in m.named_parameters()}))
    return results


def _assert_pair_close(results, tol):
    (o1, g1), (o2, g2) = results
    torch.testing.assert_close(o2.rates, o1.rates, **tol)
    torch.testing.assert_close(o2.latents, o1.latents, **tol)
    for k in o1.aux_losses:
        torch.testing.assert_close(o2.aux_losses[k], o1.aux_losses[k], **tol)
    if o1.inputs is not None:
        torch.testing.assert_close(o2.inputs, o1.inputs, **tol)
    assert g1.keys() == g2.keys()
    for name in g1:
        assert (g1[name] is None) == (g2[name] is None), name
        if g1[name] is not None:
            torch.testing.assert_close(g2[name], g1[name], **tol, msg=lambda m, n=name: f"{n}: {m}")


# ----------------------------------------------------------------------------------------- gradcheck
def test_stacked_gru_gradcheck_with_clip():
    torch.manual_seed(0)
    K, T, B, H = 2, 4, 3, 3
    d = dict(dtype=torch.float64, requires_grad=True)
    x_proj = (2.0 * torch.randn(K, T, B, 3 * H, dtype=torch.float64)).requires_grad_()
    h0 = torch.randn(K, B, H, **d)
    w = (torch.randn(K, 3 * H, H, dtype=torch.float64) / H**0.5).requires_grad_()
    b = torch.randn(K, 3 * H, **d)
    hs = stacked_gru(x_proj, h0, w, b, 0.6)
    clipped = (hs.abs() == 0.6).float().mean()
    assert 0.05 < clipped < 0.95  # both the clipped and the unclipped branch are exercised
    assert torch.autograd.gradcheck(lambda *a: stacked_gru(*a, 0.6), (x_proj, h0, w, b))


@pytest.mark.parametrize("with_controller", [True, False])
def test_lfads_unroll_gradcheck(with_controller):
    """The hand-written BPTT of controller + generator, with dropout masks, sampling and clipping."""
    torch.manual_seed(0)
    B, G, C, U, T, T_obs = 3, 4, 3, 2, 5, 3
    r = lambda *s, scale=1.0: (scale * torch.randn(*s, dtype=torch.float64)).requires_grad_()  # noqa: E731
    gen = dict(g0=r(B, G), w_gh=r(3 * G, G, scale=0.8), b_gh=r(3 * G), b_gi=r(3 * G))
    mask = (torch.rand(T + 1, B, G, dtype=torch.float64) < 0.7).double() / 0.7
    ctrl = {}
    if with_controller:
        gen["w_gi"] = r(3 * G, U)
        ctrl = dict(
            ci_proj=r(T_obs, B, 3 * C), c0=r(B, C), w_fb=r(3 * C, G, scale=0.5), w_ch=r(3 * C, C),
            b_ch=r(3 * C), w_co=r(2 * U, C), b_co=r(2 * U),
        )  # fmt: skip
    names = list(gen) + list(ctrl)
    eps = torch.randn(T_obs, B, U, dtype=torch.float64)

    def fn(*tensors):
        kw = dict(zip(names, tensors, strict=True))
        out = lfads_unroll(n_bins=T, mask=mask, clip=0.6, log_var_min=-3.0, eps=eps if ctrl else None, **kw)
        return tuple(o for o in out if o is not None)

    states = fn(*gen.values(), *ctrl.values())[0]
    assert 0 < (states.abs() == 0.6).sum() < states.numel()  # some states clipped, some not
    assert torch.autograd.gradcheck(fn, tuple(gen.values()) + tuple(ctrl.values()))


# ------------------------------------------------------------------------- fused vs plain: building blocks
def test_stacked_gru_matches_cell_loop_and_strided_input():
    torch.manual_seed(0)
    cells = [ClippedGRUCell(3, 5, clip_value=0.8) for _ in range(2)]
    for c in cells:
        with torch.no_grad():
            c.bias_hh.normal_()
    x = torch.randn(4, 6, 3)  # (B, T, I)
    h0 = torch.randn(2, 4, 5)
    # x_proj as a transposed (non-contiguous) view, as the encoders pass it
    x_proj = torch.stack([c.input_proj(x) for c in cells]).transpose(1, 2)  # (K, T, B, 3H)
    hs = stacked_gru(
        x_proj, h0, torch.stack([c.weight_hh for c in cells]), torch.stack([c.bias_hh for c in cells]), 0.8
    )
    hs.pow(2).sum().backward()
    fused_grads = [p.grad.clone() for c in cells for p in c.parameters()]
    for c in cells:
        c.zero_grad()
    ref = []
    for k, c in enumerate(cells):
        h, out = h0[k], []
        for t in range(6):
            h = c(x[:, t], h)
            out.append(h)
        ref.append(torch.stack(out))  # (T, B, H)
    ref = torch.stack(ref)
    assert (ref.abs() == 0.8).any()  # clipping happened
    torch.testing.assert_close(hs, ref, **F32)
    ref.pow(2).sum().backward()
    for g_fused, g_ref in zip(fused_grads, [p.grad for c in cells for p in c.parameters()], strict=True):
        torch.testing.assert_close(g_fused, g_ref, **F32)


def test_stacked_gru_checks_shapes():
    with pytest.raises(ValueError, match="x_proj"):
        stacked_gru(torch.zeros(2, 3, 4, 9), torch.zeros(2, 4, 2), torch.zeros(2, 9, 3), None)


def test_clipped_gru_sequence_runner_fused_equals_plain():
    torch.manual_seed(0)
    plain = ClippedGRU(3, 4, clip_value=1.0, recurrence="plain")
    fused = copy.deepcopy(plain)
    fused.recurrence = "fused"
    x, h0 = torch.randn(2, 5, 3), torch.randn(2, 4)
    a, b = plain(x, h0), fused(x, h0)
    torch.testing.assert_close(b, a, **F32)
    a.sum().backward()
    b.sum().backward()
    for p, q in zip(plain.parameters(), fused.parameters(), strict=True):
        torch.testing.assert_close(q.grad, p.grad, **F32)


def test_clipped_gru_fused_needs_reset_after():
    x = torch.randn(2, 3, 3)
    rnn = ClippedGRU(3, 4, reset_after=False, recurrence="auto")
    assert rnn(x).shape == (2, 3, 4)  # auto falls back to the plain loop
    rnn.recurrence = "fused"
    with pytest.raises(ValueError, match="reset_after"):
        rnn(x)


def test_run_bidirectional_fused_equals_nn_gru():
    """Encoders of different sizes (two scans) and of equal sizes (one scan) match torch.nn.GRU."""
    torch.manual_seed(0)
    encs = [BidirectionalGRU(4, 5), BidirectionalGRU(4, 3), BidirectionalGRU(4, 5)]
    with torch.no_grad():
        for e in encs:
            e.h0.normal_()
    x = torch.randn(3, 6, 4)
    copies = copy.deepcopy(encs)
    fused = run_bidirectional(encs, x, fused=True)
    plain = run_bidirectional(copies, x, fused=False)
    loss = lambda res: sum((o * torch.arange(o.shape[-1])).sum() + f.pow(2).sum() for o, f in res)  # noqa: E731
    loss(fused).backward()
    loss(plain).backward()
    for (of, ff), (op, fp) in zip(fused, plain, strict=True):
        torch.testing.assert_close(of, op, **F32)
        torch.testing.assert_close(ff, fp, **F32)
    for e, c in zip(encs, copies, strict=True):
        for (name, p), q in zip(e.named_parameters(), c.parameters(), strict=True):
            torch.testing.assert_close(p.grad, q.grad, **F32, msg=lambda m, n=name: f"{n}: {m}")


def test_bidirectional_gru_recurrence_option():
    torch.manual_seed(0)
    enc = BidirectionalGRU(4, 5)
    assert enc.recurrence == "auto" and enc.fused  # auto = the stacked scan (on CPU)
    plain = copy.deepcopy(enc)
    plain.recurrence = "plain"
    assert not plain.fused
    x = torch.randn(3, 6, 4)
    (o1, f1), (o2, f2) = plain(x), enc(x)
    torch.testing.assert_close(o2, o1, **F32)
    torch.testing.assert_close(f2, f1, **F32)


# ------------------------------------------------------------------------------ fused vs plain: LFADS
@pytest.mark.parametrize(
    "co_dim, n_fwd, ci_lag, ic_dim",
    [(2, 3, 0, None), (2, 0, 0, None), (0, 3, 0, None), (2, 3, 2, 3), (0, 3, 0, 3)],
)
def test_lfads_fused_equals_plain_float64_train_mode(co_dim, n_fwd, ci_lag, ic_dim):
    """Dropout and posterior samples included: both paths draw the same random numbers. Also with a
    controller-input lag and a low-dimensional initial condition mapped to g0."""
    spec = DataSpec(n_heldin=6, n_neurons=8, n_obs_bins=7, n_fwd_bins=n_fwd, bin_size=0.01)
    torch.manual_seed(0)
    options = dict(SMALL, co_dim=co_dim, ci_lag=ci_lag, ic_dim=ic_dim)
    model = LFADS(spec, **options, dropout=0.3, cell_clip=1.0).double()
    results = _run_pair(model, _batch(spec, dtype=torch.float64), train=True)
    assert (results[0][0].latents != 0).all()
    _assert_pair_close(results, F64)


def test_lfads_fused_equals_plain_float32_eval_and_no_grad():
    torch.manual_seed(0)
    model = LFADS(SPEC, **SMALL)
    _assert_pair_close(_run_pair(model, _batch(), train=False), F32)
    model.eval()
    with torch.no_grad():
        model.recurrence = "plain"
        a = model(_batch())
        model.recurrence = "fused"
        b = model(_batch())
    torch.testing.assert_close(b.rates, a.rates, **F32)
    torch.testing.assert_close(b.inputs, a.inputs, **F32)


def test_lfads_fused_equals_plain_float32_eval_with_lag_and_ic_dim():
    torch.manual_seed(0)
    model = LFADS(SPEC, **SMALL, ci_lag=3, ic_dim=4)
    _assert_pair_close(_run_pair(model, _batch(), train=False), F32)


def test_lfads_gradcheck_through_lag_and_ic_map():
    """float64 gradcheck of the fused forward w.r.t. the g0 map and the controller's input weights
    (which read the lagged encoding): the lag and the map sit outside the hand-written unroll."""
    torch.manual_seed(0)
    model = LFADS(SPEC, **dict(SMALL, gen_dim=5, con_dim=3), ci_lag=2, ic_dim=2, cell_clip=1.0)
    model = model.double().eval()
    model.recurrence = "fused"
    batch = _batch(B=2, dtype=torch.float64)
    names = ["ic_to_g0.weight", "ic_to_g0.bias", "controller.weight_ih"]
    params = {n: p.detach().clone().requires_grad_() for n, p in model.named_parameters() if n in names}

    def fn(*tensors):
        out = torch.func.functional_call(model, dict(zip(names, tensors, strict=True)), (batch,))
        return out.rates, out.inputs

    assert torch.autograd.gradcheck(fn, tuple(params[n] for n in names))


def test_lfads_fused_equals_plain_float32_mc_maze_width():
    """Float32 at the benchmark's layer widths (fewer bins and trials to stay fast)."""
    spec = DataSpec(n_heldin=137, n_neurons=182, n_obs_bins=8, n_fwd_bins=2, bin_size=0.02)
    torch.manual_seed(0)
    model = LFADS(spec, gen_dim=200, fac_dim=100, ic_enc_dim=64, ci_enc_dim=64, con_dim=64, co_dim=4)
    _assert_pair_close(_run_pair(model, _batch(spec, B=8), train=True), F32)


def test_recurrence_option_and_fallback():
    assert resolve_recurrence("auto") == "fused" and resolve_recurrence("plain") == "plain"
    with pytest.raises(ValueError, match="recurrence"):
        LFADS(SPEC, recurrence="turbo", **SMALL)
    model = LFADS(SPEC, **SMALL)
    assert model.recurrence == "auto" and model.uses_fused()
    model.controller.clip_value = (
        2.0  # generator and controller clips differ: the fused unroll does not apply
    )
    assert not model.uses_fused()  # 'auto' falls back to the plain loop ...
    assert model(_batch()).rates.shape == (4, 10, 8)
    model.recurrence = "fused"
    with pytest.raises(ValueError, match="fused"):  # ... an explicit 'fused' says why it cannot
        model(_batch())


def test_default_config_uses_the_fast_path():
    cfg = model_config("lfads")  # as neuralnets-train model=lfads composes it
    assert cfg["recurrence"] == "auto"
    params = {k: v for k, v in cfg.items() if k != "name"}
    assert LFADS(SPEC, **params).uses_fused()


def test_fused_recurrence_runs_in_float32_under_cpu_autocast():
    torch.manual_seed(0)
    model = LFADS(SPEC, **SMALL).eval()
    batch = _batch()
    ref = model(batch)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = model(batch)
    assert out.rates.dtype == torch.float32 and torch.isfinite(out.rates).all()
    # bf16 only in the encoders / projections around the recurrence: close to, not equal to, fp32
    torch.testing.assert_close(out.rates, ref.rates, rtol=0.1, atol=0.05)


# ---------------------------------------------------------------------------------------------- GPU
@pytest.mark.gpu
@cuda
@pytest.mark.parametrize("options", [{}, dict(ci_lag=2, ic_dim=3)], ids=["default", "lag_ic_dim"])
def test_lfads_fused_equals_plain_on_cuda(options):
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    torch.manual_seed(0)
    model = LFADS(SPEC, **SMALL, **options).cuda()
    _assert_pair_close(_run_pair(model, _batch(device="cuda"), train=True), F32)


@pytest.mark.gpu
@cuda
def test_graphed_training_step_matches_eager_on_cuda():
    from neuralnets.training.module import TrainingModule

    path = Path(__file__).parents[1] / "experiments" / "benchmark.py"
    spec = importlib.util.spec_from_file_location("benchmark", path)
    benchmark = importlib.util.module_from_spec(spec)
    sys.modules["benchmark"] = benchmark  # dataclasses look their module up there
    spec.loader.exec_module(benchmark)
    GraphedStep = benchmark.GraphedStep  # the CUDA-graph step lives with the benchmark that uses it

    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    torch.manual_seed(0)
    cfg = dict(name="lfads", **SMALL, kl_ramp_steps=0, l2_ramp_steps=0)
    base = TrainingModule(cfg, SPEC.to_dict()).cuda()
    base.model.eval()  # deterministic loss (posterior means, no dropout), so both runs are comparable
    batch = _batch(device="cuda")
    eager, graphed = copy.deepcopy(base), copy.deepcopy(base)
    opt_e = torch.optim.Adam(eager.parameters(), lr=1e-2)
    opt_g = torch.optim.Adam(graphed.parameters(), lr=1e-2, capturable=True)
    step = GraphedStep(lambda b: graphed._loss(b, train=True)[0], opt_g, batch, warmup=2)
    assert step.graphed
    for _ in range(2 + 3):  # warm-up steps of GraphedStep + 3 replays
        opt_e.zero_grad()
        eager._loss(batch, train=True)[0].backward()
        opt_e.step()
    for _ in range(3):
        step.step(batch)
    torch.cuda.synchronize()
    for p, q in zip(eager.parameters(), graphed.parameters(), strict=True):
        torch.testing.assert_close(q, p, rtol=1e-4, atol=1e-5)
