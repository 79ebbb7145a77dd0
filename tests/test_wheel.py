"""A user who does not clone the repository: build a wheel, install it (not editable) into a fresh
virtual environment and train from another working directory with the configs the wheel carries."""

from __future__ import annotations

import os
import shutil
import site
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
from tiny import TINY_DATA, TINY_LFADS

REPO = Path(__file__).resolve().parents[1]


def _run(cmd: list[str], cwd: Path, env: dict, timeout: float = 300) -> subprocess.CompletedProcess:
    out = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    assert out.returncode == 0, f"{cmd}\n{out.stdout[-3000:]}\n{out.stderr[-3000:]}"
    return out


@pytest.mark.slow
def test_a_wheel_install_trains_from_another_directory(tmp_path):
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "NEURALNETS_DEBUG")}
    # Build from a copy of what the wheel is made of (the build leaves build/ and *.egg-info behind);
    # the configs/ link inside the package is copied as a link, as a checkout has it.
    src = tmp_path / "src"
    src.mkdir()
    for name in ("pyproject.toml", "README.md", "configs"):
        (shutil.copytree if (REPO / name).is_dir() else shutil.copy)(REPO / name, src / name)
    ignore = shutil.ignore_patterns("__pycache__", "*.so", "build")
    shutil.copytree(REPO / "neuralnets", src / "neuralnets", symlinks=True, ignore=ignore)
    wheels = tmp_path / "wheels"
    pip = [sys.executable, "-m", "pip"]
    _run(
        [*pip, "wheel", "--no-deps", "--no-build-isolation", "-q", str(src), "-w", str(wheels)], tmp_path, env
    )
    (wheel,) = wheels.glob("neuralnets-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    yaml = [n for n in names if n.startswith("neuralnets/configs/") and n.endswith(".yaml")]
    assert (
        len(yaml) == len(list((REPO / "configs").rglob("*.yaml"))) and "neuralnets/configs/train.yaml" in yaml
    )

    # A fresh venv with the wheel installed (no dependencies downloaded: it sees this environment's
    # site-packages through a .pth file, after its own).
    venv = tmp_path / "venv"
    _run([sys.executable, "-m", "venv", "--without-pip", str(venv)], tmp_path, env)
    python = venv / "bin" / "python"
    purelib = Path(
        _run(
            [str(python), "-c", "import sysconfig; print(sysconfig.get_path('purelib'))"], tmp_path, env
        ).stdout.strip()
    )
    (purelib / "outer_site.pth").write_text("\n".join(site.getsitepackages()) + "\n")
    _run(
        [*pip, "--python", str(python), "install", "--no-deps", "--no-index", "-q", str(wheel)], tmp_path, env
    )

    work = tmp_path / "elsewhere"
    work.mkdir()
    where = _run(
        [
            str(python),
            "-c",
            "import neuralnets, neuralnets.config as c; print(neuralnets.__file__, c.CONFIG_DIR)",
        ],
        work,
        env,
    ).stdout.split()
    assert all(Path(p).is_relative_to(venv) for p in where), where  # the installed copy, not the checkout
    tiny = [*TINY_DATA, "data.batch_size=16", *TINY_LFADS, "+trainer.max_steps=2", "trainer.max_epochs=1"]
    tiny += [
        "trainer.enable_progress_bar=false",
        "trainer.enable_model_summary=false",
        "print_baselines=false",
    ]
    out = _run([str(venv / "bin" / "neuralnets-train"), *tiny, "threads=1", "out_dir=runs"], work, env, 600)
    (run,) = (work / "runs" / "lfads_lorenz").iterdir()
    assert (run / "metrics.json").is_file() and (run / "config.yaml").is_file(), out.stdout
    assert "Tip:" not in out.stdout + out.stderr  # no Lightning advertising
    helptext = _run([str(venv / "bin" / "neuralnets-train"), "--help"], work, env).stdout
    assert "model: gpfa, lfads" in helptext
