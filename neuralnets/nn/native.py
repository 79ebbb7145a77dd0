"""Native CPU kernels (C++, compiled on first use): the fused pointwise math of a (clipped) GRU step.

`neuralnets.nn.fast` runs its recurrences' time loops in Python; per step the gate math is a dozen
small PyTorch ops. `csrc/gru_cell.cpp` does it in one vectorised pass (forward and backward),
which makes an LFADS training step at the MC_Maze scale ~8% faster on a 2-core CPU (measured with
`experiments/benchmark.py`).

Build: the first process that needs the kernels compiles them (~15 s; a C++ compiler, `$CXX` or
`c++`, and torch's headers, which ship with torch) under a name that hashes the source, the compiler
command (flags included) and the torch version. Where the build fails, the fused path runs its
pure-PyTorch version of the same math (a warning says why). `NEURALNETS_NATIVE=0` turns the kernels off.

Where the library lives, and why that is the trust check. Loading a shared library runs its code
(its constructors run inside `dlopen`, before anything can inspect what it defines), so the only sound
check is where the file comes from, decided before it is loaded. A digest recorded beside the library
proves nothing: whoever can plant the file can plant its record too. So:

- the library is kept in the package itself, `neuralnets/nn/csrc/build/` (BUILD_DIR), beside the Python
  code that loads it: whoever can write there can already change that code, so a file there gives an
  attacker no power they did not have. The folder and the library must belong to this user and be
  writable by nobody else (and not be symbolic links); the first build creates the folder (mode 0700);
- where the package folder cannot keep it (a read-only or someone else's install) or fails those
  checks (one warning), each process builds the library into a fresh private temporary folder
  (`tempfile.TemporaryDirectory`: a new name, mode 0700, so nothing can be planted in it), loads it from
  there and deletes the folder: correct and safe, only slower (one build per process);
- nothing is ever loaded from a shared or user cache folder (`~/.cache`, `$NEURALNETS_KERNEL_CACHE`
  of earlier versions): a library found there is never opened.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import stat
import subprocess
import sys
import tempfile
import time
import warnings
from pathlib import Path

import torch

from neuralnets.errors import UntrustedLibrary
from neuralnets.files import atomic_path

SOURCE = Path(__file__).parent / "csrc" / "gru_cell.cpp"
BUILD_DIR = Path(__file__).parent / "csrc" / "build"  # kept libraries: beside the code that loads them
BUILD_TIMEOUT_S = 600
_state: dict[str, object] = {}


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


def _check_owned_private(path: Path) -> None:
    """`path` must belong to this user (or to the package's owner, who owns this code) and not be writable
    by group or others (nor be a symlink)."""
    st = os.lstat(path)
    if stat.S_ISLNK(st.st_mode):
        raise UntrustedLibrary(f"{path} is a symbolic link")
    owners = {os.getuid(), os.stat(__file__).st_uid} if hasattr(os, "getuid") else {st.st_uid}
    if st.st_uid not in owners:
        raise UntrustedLibrary(f"{path} belongs to uid {st.st_uid}: not this user, not the package owner")
    if st.st_mode & (stat.S_IWGRP | stat.S_IWOTH):
        raise UntrustedLibrary(f"{path} is writable by group or others (mode {stat.S_IMODE(st.st_mode):o})")


def _library_name() -> str:
    """The library's file name: a hash of the source, the compiler command and the torch version."""
    key = hashlib.sha256(b"v3: kept in the package or built privately\n")
    key.update(SOURCE.read_bytes())
    key.update(" ".join(_compile_command(Path("out.so"))).encode())
    key.update(torch.__version__.encode())
    return f"gru_cell_{key.hexdigest()[:16]}.so"


def _library_path() -> Path:
    """Where the library for this source, these flags and this torch is kept: in the package (BUILD_DIR)."""
    return BUILD_DIR / _library_name()


def compiler() -> str | None:
    """The C++ compiler the build would run (`$CXX` or `c++`) if it is found, else None."""
    return shutil.which(os.environ.get("CXX", "c++"))


def build(path: Path) -> None:
    """Compile the kernels into `path` (a temporary file in its folder, renamed into place, so concurrent
    processes such as DDP ranks never see a half-written library and a killed build leaves nothing).
    Says so on stderr, with its time: the first training otherwise sits silent for it."""
    print("neuralnets: compiling the native CPU GRU kernels (once; kept for later runs) ...", file=sys.stderr,
          end=" ", flush=True)  # fmt: skip
    start = time.perf_counter()
    try:
        with atomic_path(path) as tmp:
            done = subprocess.run(
                _compile_command(tmp), capture_output=True, text=True, timeout=BUILD_TIMEOUT_S, check=False
            )
            if done.returncode != 0:
                raise RuntimeError(f"compiler exit status {done.returncode}: {done.stderr.strip()[-800:]}")
            tmp.chmod(0o700)
    except BaseException:
        print(f"failed after {time.perf_counter() - start:.0f} s", file=sys.stderr, flush=True)
        raise
    print(f"done in {time.perf_counter() - start:.0f} s", file=sys.stderr, flush=True)


def _kept_library() -> Path | None:
    """The library kept in BUILD_DIR (built there first if missing), or None where the package folder
    cannot keep one for this user. Raises UntrustedLibrary where the folder or file fails the checks."""
    try:
        BUILD_DIR.mkdir(mode=0o700, exist_ok=True)
    except OSError:
        return None
    _check_owned_private(BUILD_DIR)
    path = _library_path()
    if not os.path.lexists(path):
        if not os.access(BUILD_DIR, os.W_OK):
            return None
        build(path)
    _check_owned_private(path)
    return path


def load_ops():
    """Build (or find) and load the kernels; the namespace `torch.ops.neuralnets`. Raises on any failure
    (the compiler's, a refused file's); `native_ops` is the forgiving caller. See the module docstring for
    where the library comes from."""
    try:
        path = _kept_library()
    except UntrustedLibrary as err:
        warnings.warn(
            f"neuralnets: not loading the native CPU GRU kernels kept in the package ({err}); building them "
            f"in a private temporary folder instead. Delete {BUILD_DIR} to keep them there again.",
            stacklevel=3,
        )
        path = None
    if path is not None:
        torch.ops.load_library(str(path))
    else:  # a fresh private folder (mode 0700, new name): nothing can have been planted in it
        with tempfile.TemporaryDirectory(prefix="neuralnets-kernels-") as private:
            path = Path(private) / _library_name()
            build(path)
            torch.ops.load_library(str(path))  # mapped now; the folder and file can go
    ops = torch.ops.neuralnets
    for name in ("gru_cell_forward", "gru_cell_backward"):
        if not hasattr(ops, name):
            raise RuntimeError(f"{path} does not define torch.ops.neuralnets.{name}")
    return ops


def native_ops():
    """The loaded kernel namespace (`torch.ops.neuralnets`), or None where off or unbuildable.

    Ops (see csrc/gru_cell.cpp): `gru_cell_forward(xp, hp, h, clip, h_out, ru_out, n_out, keep_out)`
    and `gru_cell_backward(dh, h_prev, ru, n, hc, keep, dhh_out, dan_out, direct_out)`, CPU float32 /
    float64, with the semantics of `fast._cell_forward` / `fast._cell_backward`. Decided once per process.
    """
    if "ops" in _state:
        return _state["ops"]
    ops = None
    if os.environ.get("NEURALNETS_NATIVE", "1") != "0":
        try:
            ops = load_ops()
        except Exception as err:  # no compiler, a failed build, ...: the PyTorch kernels are equivalent
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
