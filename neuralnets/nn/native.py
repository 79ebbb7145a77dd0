"""Native CPU kernels (C++, compiled on first use): the fused pointwise math of a (clipped) GRU step.

`neuralnets.nn.fast` runs its recurrences' time loops in Python; per step the gate math is a dozen
small PyTorch ops. `csrc/gru_cell.cpp` does it in one vectorised pass (forward and backward),
which makes an LFADS training step at the MC_Maze scale ~8% faster on a 2-core CPU (measured with
`experiments/benchmark.py`).

Build: the first process that needs the kernels compiles them (~15 s; a C++ compiler, `$CXX` or
`c++`, and torch's headers, which ship with torch) into a cache folder, `$NEURALNETS_KERNEL_CACHE`
or `~/.cache/neuralnets/kernels`, under a name that hashes the source, the flags and the torch
version; later processes just load the library. The build writes a temporary file and renames it
into place, so concurrent processes (DDP ranks) never see a half-written library and an interrupted
build leaves no lock behind. Where the build fails, the fused path runs its pure-PyTorch version of
the same math (a warning says why). `NEURALNETS_NATIVE=0` turns the kernels off.

Loading a shared library runs its code, so the cache is trusted only as far as it can be checked:
the folder and the library must belong to the current user and be writable by nobody else, and the
library's sha256, recorded beside it (`<library>.sha256`) when this process's build wrote it, must
match. Anything else is refused (one warning) and the pure-PyTorch path runs; delete the file to
rebuild it.
"""

from __future__ import annotations

import hashlib
import os
import stat
import subprocess
import warnings
from pathlib import Path

import torch

from neuralnets.errors import UntrustedLibrary

SOURCE = Path(__file__).parent / "csrc" / "gru_cell.cpp"
BUILD_TIMEOUT_S = 600
_state: dict[str, object] = {}


def _cache_dir() -> Path:
    if os.environ.get("NEURALNETS_KERNEL_CACHE"):
        return Path(os.environ["NEURALNETS_KERNEL_CACHE"])
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "neuralnets" / "kernels"


def _compile_command(output: Path) -> list[str]:
    """The compiler call that builds SOURCE into the shared library `output` (against the headers and
    libraries inside the installed torch package)."""
    torch_dir = Path(torch.__file__).parent
    flags = ["-O3", "-std=c++20", "-shared", "-fPIC", "-fopenmp", "-w"]  # OpenMP: at::parallel_for
    flags.append(f"-D_GLIBCXX_USE_CXX11_ABI={int(torch._C._GLIBCXX_USE_CXX11_ABI)}")
    # AVX2 code where torch itself runs AVX2 or better (ATen's `Vectorized` then uses 8-float
    # registers); otherwise ATen's portable vector code.
    if torch.backends.cpu.get_cpu_capability() in ("AVX2", "AVX512"):
        flags += ["-mavx2", "-mfma", "-DCPU_CAPABILITY=AVX2", "-DCPU_CAPABILITY_AVX2"]
    includes = [
        f"-I{torch_dir / 'include'}",
        f"-I{torch_dir / 'include' / 'torch' / 'csrc' / 'api' / 'include'}",
    ]
    lib_dir = torch_dir / "lib"
    libs = [f"-L{lib_dir}", f"-Wl,-rpath,{lib_dir}", "-lc10", "-ltorch_cpu"]
    return [os.environ.get("CXX", "c++"), *flags, *includes, str(SOURCE), "-o", str(output), *libs]


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _digest_path(library: Path) -> Path:
    return library.with_name(library.name + ".sha256")


def _check_owned_private(path: Path) -> None:
    """`path` must belong to this user and not be writable by group or others (nor be a symlink)."""
    st = os.lstat(path)
    if stat.S_ISLNK(st.st_mode):
        raise UntrustedLibrary(f"{path} is a symbolic link")
    if hasattr(os, "getuid") and st.st_uid != os.getuid():
        raise UntrustedLibrary(f"{path} belongs to uid {st.st_uid}, not to this user (uid {os.getuid()})")
    if st.st_mode & (stat.S_IWGRP | stat.S_IWOTH):
        raise UntrustedLibrary(f"{path} is writable by group or others (mode {stat.S_IMODE(st.st_mode):o})")


def verify_library(path: Path) -> None:
    """Refuse to load `path` unless its folder and itself are private to this user and its sha256
    matches the one recorded at build time (raises UntrustedLibrary saying why)."""
    _check_owned_private(path.parent)
    _check_owned_private(path)
    record = _digest_path(path)
    if not record.is_file():
        raise UntrustedLibrary(f"{path} has no recorded sha256 ({record.name}); it was not built here")
    _check_owned_private(record)
    expected = record.read_text().split()[0] if record.read_text().strip() else ""
    if _sha256(path) != expected:
        raise UntrustedLibrary(f"{path}: sha256 does not match the one recorded at build time")


def _library_path() -> Path:
    """Where the library for this source, these flags and this torch lives in the cache."""
    key = hashlib.sha256(b"v2: sha256 recorded beside the library\n")
    key.update(SOURCE.read_bytes())
    key.update(" ".join(_compile_command(Path("out.so"))).encode())
    key.update(torch.__version__.encode())
    return _cache_dir() / f"gru_cell_{key.hexdigest()[:16]}.so"


def build(path: Path) -> None:
    """Compile the kernels into `path` and record its sha256 beside it (each atomically: a temporary
    file renamed into place; the record first, so a library in place always has its record)."""
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    _check_owned_private(path.parent)
    tmp = path.with_name(f"{path.stem}.{os.getpid()}.tmp.so")
    record_tmp = path.with_name(f"{path.stem}.{os.getpid()}.tmp.sha256")
    try:
        done = subprocess.run(
            _compile_command(tmp), capture_output=True, text=True, timeout=BUILD_TIMEOUT_S, check=False
        )
        if done.returncode != 0:
            raise RuntimeError(f"compiler exit status {done.returncode}: {done.stderr.strip()[-800:]}")
        tmp.chmod(0o700)
        record_tmp.write_text(f"{_sha256(tmp)}  {path.name}\n")
        os.replace(record_tmp, _digest_path(path))
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
        record_tmp.unlink(missing_ok=True)


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
        try:
            path = _library_path()
            if not path.exists():
                build(path)
            verify_library(path)
            torch.ops.load_library(str(path))
            ops = torch.ops.neuralnets
            for name in ("gru_cell_forward", "gru_cell_backward"):
                if not hasattr(ops, name):
                    raise UntrustedLibrary(f"{path} does not define torch.ops.neuralnets.{name}")
        except UntrustedLibrary as err:
            ops = None
            warnings.warn(
                f"neuralnets: refusing the native CPU GRU kernels ({err}); using the pure-PyTorch fused "
                "path (same results, slower). Delete the file to rebuild it, or set NEURALNETS_NATIVE=0.",
                stacklevel=2,
            )
        except Exception as err:  # no compiler, no write access, ...: the PyTorch kernels are equivalent
            ops = None
            warnings.warn(
                f"neuralnets: could not build the native CPU GRU kernels ({type(err).__name__}: "
                f"{str(err).strip()[:800]}); using the pure-PyTorch fused path (same results, slower). "
                "Set NEURALNETS_NATIVE=0 to skip the attempt.",
                stacklevel=2,
            )
    _state["ops"] = ops
    return ops


def use_native(t: torch.Tensor) -> bool:
    """Whether the native kernels apply to tensors like `t` (CPU, float32/float64) and are available."""
    return t.device.type == "cpu" and t.dtype in (torch.float32, torch.float64) and native_ops() is not None
