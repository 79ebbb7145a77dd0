"""Native CPU kernels (C++, built on first use): the fused pointwise math of a (clipped) GRU step.

`neuralnets.nn.fast` runs its recurrences' time loops in Python; per step the gate math is a dozen
small PyTorch ops, which at LFADS sizes cost as much as the step's matmul. `csrc/gru_cell.cpp` does
it in one vectorised pass (forward and backward). It is compiled with `torch.utils.cpp_extension` the
first time it is needed (~20 s, needs a C++ compiler and the Python headers) and cached by torch
under `$TORCH_EXTENSIONS_DIR` (default `~/.cache/torch_extensions`), keyed by the source, so later
processes load it in milliseconds. Where the build fails the fused path runs its pure-PyTorch
version of the same math (a warning says why). `NEURALNETS_NATIVE=0` turns the kernels off.
"""

from __future__ import annotations

import os
import warnings
from pathlib import Path

import torch

SOURCE = Path(__file__).parent / "csrc" / "gru_cell.cpp"
_state: dict[str, object] = {}


def _build_flags() -> tuple[str, list[str]]:
    """Extension name and compiler flags for this CPU: AVX2 code where torch itself runs AVX2 or
    better (ATen's `Vectorized` then uses 8-float registers), else portable code."""
    capability = torch.backends.cpu.get_cpu_capability()
    if capability in ("AVX2", "AVX512"):
        avx2 = ["-mavx2", "-mfma", "-DCPU_CAPABILITY=AVX2", "-DCPU_CAPABILITY_AVX2"]
        return "neuralnets_gru_cell_avx2", ["-O3", "-fopenmp", *avx2]
    return "neuralnets_gru_cell", ["-O3", "-fopenmp"]


def native_ops():
    """The loaded kernel namespace (`torch.ops.neuralnets`), or None where off or unbuildable.

    Ops (see csrc/gru_cell.cpp): `gru_cell_forward(xp, hp, h, clip, h_out, ru_out, n_out, keep_out)`
    and `gru_cell_backward(dh, h_prev, ru, n, hc, keep, dhh_out, dan_out, direct_out)`, CPU float32 /
    float64, with the semantics of `fast._cell_forward` / `fast._cell_backward`.
    """
    if "ops" in _state:
        return _state["ops"]
    ops = None
    if os.environ.get("NEURALNETS_NATIVE", "1") != "0":
        name, flags = _build_flags()
        try:
            from torch.utils import cpp_extension

            cpp_extension.load(
                name=name,
                sources=[str(SOURCE)],
                extra_cflags=flags,
                extra_ldflags=["-fopenmp"],
                is_python_module=False,
            )
            ops = torch.ops.neuralnets
        except Exception as err:  # no compiler / headers: the pure-PyTorch kernels are equivalent
            warnings.warn(
                f"neuralnets: could not build the native CPU GRU kernels ({type(err).__name__}: "
                f"{str(err).strip()[:300]}); using the pure-PyTorch fused path (same results, slower). "
                "Set NEURALNETS_NATIVE=0 to skip the attempt.",
                stacklevel=2,
            )
    _state["ops"] = ops
    return ops


def use_native(t: torch.Tensor) -> bool:
    """Whether the native kernels apply to tensors like `t` (CPU, float32/float64) and are available."""
    return t.device.type == "cpu" and t.dtype in (torch.float32, torch.float64) and native_ops() is not None
