"""Native CPU GRU-cell kernels (`neuralnets.nn.native`, csrc/gru_cell.cpp).

They must compute what the pure-PyTorch kernels of `neuralnets.nn.fast` compute (the reference),
on every layout the fused recurrences hand them (2-d and 3-d, strided per-step slices, a broadcast
bias-only input), with and without the clip; reject bad arguments with a clear message; and the
toolkit must fall back to the pure-PyTorch kernels when they cannot be built or are turned off.
"""

import contextlib
import os
import warnings
from pathlib import Path

import pytest
import torch

from neuralnets.models.lfads_unroll import lfads_unroll
from neuralnets.nn import fast, native

F32 = dict(rtol=1e-5, atol=1e-6)


@pytest.fixture(scope="module")
def ops():
    """The kernels, built and loaded. Skipped only where no C++ compiler exists; with a compiler, a failed
    build or load fails every test that needs them (CI must not hide a broken build behind a skip)."""
    if native.compiler() is None:
        pytest.skip(f"no C++ compiler ({os.environ.get('CXX', 'c++')}) here; the fused path falls back")
    if native._state.get("ops") is None:
        native._state.pop("ops", None)
        try:
            native._state["ops"] = native.load_ops()
        except Exception as err:  # noqa: BLE001 - any failure is the test's failure
            pytest.fail(f"a C++ compiler ({native.compiler()}) is here but the native kernels failed: {err}")
    return native._state["ops"]


def _inputs(lead, H, dtype=torch.float32, seed=0):
    g = torch.Generator().manual_seed(seed)
    xp = torch.randn(*lead, 3 * H, generator=g, dtype=dtype) * 3
    hp = torch.randn(*lead, 3 * H, generator=g, dtype=dtype) * 3
    h = torch.randn(*lead, H, generator=g, dtype=dtype) * 2
    return xp, hp, h


def _forward(xp, hp, h, clip):
    lead, H = h.shape[:-1], h.shape[-1]
    keep = None if clip is None else h.new_empty(*lead, H)  # as the recurrences pass it
    outs = [h.new_empty(*lead, H), h.new_empty(*lead, 2 * H), h.new_empty(*lead, H), keep]
    fast._cell_forward(xp, hp, h, clip, *outs)
    return outs


def _backward(dh, h, ru, n, hc, keep):
    lead, H = h.shape[:-1], h.shape[-1]
    dhh, dan = h.new_empty(*lead, 3 * H), h.new_empty(*lead, H)
    direct = fast._cell_backward(dh, h, ru, n, hc, keep, dhh, dan)
    return dhh, dan, direct


@pytest.mark.parametrize("clip", [None, 2.0])
@pytest.mark.parametrize("lead,H", [((5,), 3), ((7,), 13), ((2, 3), 9), ((4, 6), 64)])
def test_native_kernels_equal_the_pytorch_kernels(ops, monkeypatch, lead, H, clip):
    xp, hp, h = _inputs(lead, H)
    native_fwd = _forward(xp, hp, h, clip)
    dh = torch.randn(*lead, H)
    native_bwd = _backward(dh, h, native_fwd[1], native_fwd[2], hp[..., 2 * H :], native_fwd[3])
    monkeypatch.setitem(native._state, "ops", None)
    ref_fwd = _forward(xp, hp, h, clip)
    ref_bwd = _backward(dh, h, ref_fwd[1], ref_fwd[2], hp[..., 2 * H :], ref_fwd[3])
    for got, want in zip(native_fwd[:3] + list(native_bwd), ref_fwd[:3] + list(ref_bwd), strict=True):
        torch.testing.assert_close(got, want, **F32)
    if clip is not None:
        torch.testing.assert_close(native_fwd[3], ref_fwd[3], rtol=0, atol=0)
        assert (
            0 < native_fwd[3].sum() < native_fwd[3].numel()
        )  # the clip was active somewhere, not everywhere


def test_native_kernels_read_strided_slices_and_a_broadcast_input(ops, monkeypatch):
    K, T, B, H = 2, 3, 4, 5
    x_proj = torch.randn(K, B, T, 3 * H).transpose(1, 2)  # (K, T, B, 3H) time-major view, as fast builds it
    xp, hp, h = x_proj[:, 1], torch.randn(K, B, 3 * H), torch.randn(K, T, B, H)[:, 1]
    bias = torch.randn(3 * H)  # the generator's input after the controller stops: one bias row
    got = [_forward(xp, hp, h, 1.0), _forward(bias, hp[0], h[0], 1.0)]
    monkeypatch.setitem(native._state, "ops", None)
    want = [_forward(xp, hp, h, 1.0), _forward(bias.expand(B, 3 * H), hp[0], h[0], 1.0)]
    for g_outs, w_outs in zip(got, want, strict=True):
        for g, w in zip(g_outs, w_outs, strict=True):  # states, gates, candidates, clip masks
            torch.testing.assert_close(g, w, **F32)


def test_native_backward_blocks_nan_where_clipped(ops):
    # The reference selects (torch.where), so a non-finite gradient at a clipped entry does not leak.
    H = 4
    dh = torch.tensor([[float("nan"), 1.0, 2.0, float("inf")]])
    keep = torch.tensor([[0.0, 1.0, 1.0, 0.0]])
    ru, n, h, hc = torch.full((1, 2 * H), 0.5), torch.zeros(1, H), torch.zeros(1, H), torch.ones(1, H)
    dhh, dan, direct = _backward(dh, h, ru, n, hc, keep)
    assert torch.isfinite(dhh).all() and torch.isfinite(dan).all() and torch.isfinite(direct).all()
    torch.testing.assert_close(direct, torch.tensor([[0.0, 0.5, 1.0, 0.0]]))


def test_native_kernels_reject_bad_arguments(ops):
    xp, hp, h = _inputs((3,), 4)
    outs = [torch.empty(3, 4), torch.empty(3, 8), torch.empty(3, 4), torch.empty(3, 4)]
    with pytest.raises(RuntimeError, match="xp needs a contiguous last dim of size 12"):
        ops.gru_cell_forward(xp[:, :10], hp, h, None, *outs)
    with pytest.raises(RuntimeError, match="h has dtype Double"):
        ops.gru_cell_forward(xp, hp, h.double(), None, *outs)
    with pytest.raises(RuntimeError, match="leading dims must match"):
        ops.gru_cell_forward(xp[:2], hp[:2], h[:2], None, *outs)
    with pytest.raises(RuntimeError, match="float32/float64 only"):
        ops.gru_cell_forward(xp.half(), hp.half(), h.half(), None, *(o.half() for o in outs))


def test_lfads_unroll_native_equals_pytorch_kernels(ops, monkeypatch):
    g = torch.Generator().manual_seed(3)
    B, G, C, U, T, T_obs = 5, 12, 7, 2, 6, 4

    def w(*shape):
        return (torch.randn(*shape, generator=g) * 0.4).requires_grad_()

    args = dict(
        g0=w(B, G), n_bins=T, w_gh=w(3 * G, G), b_gh=w(3 * G), b_gi=w(3 * G), w_gi=w(3 * G, U),
        ci_proj=w(T_obs, B, 3 * C), c0=w(B, C), w_fb=w(3 * C, G), w_ch=w(3 * C, C), b_ch=w(3 * C),
        w_co=w(2 * U, C), b_co=w(2 * U), eps=torch.randn(T_obs, B, U, generator=g),
        mask=(torch.rand(T + 1, B, G, generator=g) > 0.2).float() / 0.8, clip=0.6,
    )  # fmt: skip
    runs = []
    for use in (ops, None):
        monkeypatch.setitem(native._state, "ops", use)
        outs = lfads_unroll(**args)
        grads = torch.autograd.grad(
            sum(o.pow(2).sum() for o in outs),
            [v for v in args.values() if isinstance(v, torch.Tensor) and v.requires_grad],
        )
        runs.append((outs, grads))
    for got, want in zip(runs[0][0] + runs[0][1], runs[1][0] + runs[1][1], strict=True):
        torch.testing.assert_close(got, want, **F32)


def test_native_off_by_environment(monkeypatch):
    monkeypatch.delitem(native._state, "ops", raising=False)  # forget the loaded kernels (restored after)
    monkeypatch.setenv("NEURALNETS_NATIVE", "0")
    assert native.native_ops() is None
    assert not native.use_native(torch.zeros(1))


def test_native_build_failure_warns_and_falls_back(monkeypatch, tmp_path, capsys):
    monkeypatch.setattr(native, "_state", {})  # decide afresh (the loaded kernels come back after)
    monkeypatch.setattr(native, "BUILD_DIR", tmp_path / "build")
    monkeypatch.setenv("CXX", str(tmp_path / "no-such-compiler"))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert native.native_ops() is None
    message = " ".join(str(c.message) for c in caught)
    assert "no-such-compiler" in message and "pure-PyTorch" in message
    # The build says what takes the time, on one line, however it ends.
    err = capsys.readouterr().err
    assert "compiling the native CPU GRU kernels" in err and "failed after" in err
    assert list((tmp_path / "build").iterdir()) == []  # no half-written library left behind
    # The fused recurrence still runs, on the pure-PyTorch kernels.
    xp, hp, h = _inputs((3,), 4)
    assert torch.isfinite(_forward(xp, hp, h, 1.0)[0]).all()


def _fallback_is_correct():
    """The fused recurrence runs on the PyTorch kernels and equals the plain LFADS loop."""
    from neuralnets.data.spikedata import DataSpec
    from neuralnets.models.lfads import LFADS

    spec = DataSpec(n_heldin=5, n_neurons=7, n_obs_bins=6, n_fwd_bins=2, bin_size=0.01)
    torch.manual_seed(0)
    model = LFADS(spec, gen_dim=8, fac_dim=3, ic_enc_dim=4, ci_enc_dim=4, con_dim=4, co_dim=1).eval()
    heldin = torch.poisson(torch.ones(3, 6, 5))
    fused = model({"heldin": heldin}).rates
    model.recurrence = "plain"
    torch.testing.assert_close(fused, model({"heldin": heldin}).rates, **F32)


def _no_build(monkeypatch) -> list[Path]:
    """Replace the compiler run: record where a build was asked for, and fail it (no 15 s compile)."""
    asked: list[Path] = []

    def build(path: Path) -> None:
        asked.append(path)
        raise RuntimeError("build stubbed out by the test")

    monkeypatch.setattr(native, "build", build)
    return asked


def test_a_library_in_a_world_writable_build_folder_is_never_loaded(monkeypatch, tmp_path):
    """The kept folder fails the checks: one warning, and the build goes to a private temporary folder
    (mode 0700, not the kept folder); the file found there is not opened."""
    monkeypatch.setattr(native, "_state", {})
    kept = tmp_path / "build"
    kept.mkdir()
    kept.chmod(0o777)
    monkeypatch.setattr(native, "BUILD_DIR", kept)
    native._library_path().write_bytes(b"\x7fELF not a library")
    asked = _no_build(monkeypatch)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert native.native_ops() is None
        assert native.native_ops() is None  # decided once per process
    message = " ".join(str(c.message) for c in caught)
    assert "writable by group or others (mode 777)" in message and "private temporary folder" in message
    assert len(asked) == 1 and asked[0].parent != kept and asked[0].name == native._library_path().name
    _fallback_is_correct()


def test_a_read_only_install_builds_in_a_private_folder(monkeypatch, tmp_path):
    blocker = tmp_path / "csrc"
    blocker.write_text("a file where the folder would go: mkdir fails, as in a read-only install")
    monkeypatch.setattr(native, "BUILD_DIR", blocker / "build")
    seen: list = []
    monkeypatch.setattr(native, "build", lambda p: seen.append((p, p.parent.stat().st_mode & 0o777)))
    monkeypatch.setattr(torch.ops, "load_library", lambda p: seen.append(Path(p)))
    with contextlib.suppress(RuntimeError):  # nothing was really loaded (unless an earlier test did)
        native.load_ops()
    (built, mode), loaded = seen
    assert mode == 0o700 and loaded == built and built.parent != native.BUILD_DIR.parent
    assert not built.parent.exists()  # the private folder is gone once the library is mapped


def test_a_fresh_build_is_kept_private_in_the_package_folder(monkeypatch, tmp_path, ops):
    monkeypatch.setattr(native, "BUILD_DIR", tmp_path / "k")
    native.BUILD_DIR.mkdir(mode=0o700)
    path = native._library_path()
    native.build(path)
    assert path.is_file() and (path.stat().st_mode & 0o077) == 0
    assert [p.name for p in native.BUILD_DIR.iterdir()] == [path.name]  # no temporary file left
    assert native._kept_library() == path  # found again, not rebuilt
