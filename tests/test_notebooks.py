"""The notebooks run top to bottom in a fresh kernel, from an unrelated working directory, and are
stored with their outputs stripped."""

from __future__ import annotations

from pathlib import Path

import pytest

nbformat = pytest.importorskip("nbformat")
nbclient = pytest.importorskip("nbclient")

# Figures each notebook must render (raster vs rates, rate traces, latents, inputs / one comparison).
MIN_FIGURES = {"01_pretrained_lfads": 4, "02_train_and_compare": 1, "04_dynamics": 4}
NOTEBOOKS = sorted((Path(__file__).resolve().parents[1] / "notebooks").glob("*.ipynb"))


def test_the_expected_notebooks_exist():
    names = {p.name for p in NOTEBOOKS}
    assert {"01_pretrained_lfads.ipynb", "02_train_and_compare.ipynb", "04_dynamics.ipynb"} <= names


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_notebook_is_stored_without_outputs(path):
    nb = nbformat.read(path, as_version=4)
    nbformat.validate(nb)
    for cell in nb.cells:
        if cell.cell_type == "code":
            assert cell.outputs == [] and cell.execution_count is None, f"{path.name}: outputs not stripped"
    assert nb.metadata.kernelspec.name == "python3"


@pytest.mark.slow
@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_notebook_runs_top_to_bottom(path, tmp_path, monkeypatch):
    # The kernel inherits this environment: a short training budget for notebook 2 (it still trains),
    # and one BLAS/torch thread, much faster for these tiny models on 2 shared cores.
    monkeypatch.setenv("NEURALNETS_NOTEBOOK_FAST", "1")
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    (tmp_path / "tmp").mkdir()
    monkeypatch.setenv("TMPDIR", str(tmp_path / "tmp"))  # notebook 2 keeps its run in a temp directory
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    nb = nbformat.read(path, as_version=4)
    client = nbclient.NotebookClient(
        nb,
        kernel_name="python3",  # ipykernel's own spec, installed with it in the same environment
        timeout=180,
        resources={"metadata": {"path": str(cwd)}},  # run from an unrelated working directory
    )
    client.execute()  # raises CellExecutionError with the failing cell's traceback
    outputs = [o for c in nb.cells if c.cell_type == "code" for o in c.outputs]
    assert not [o for o in outputs if o.output_type == "error"]
    images = [o for o in outputs if "image/png" in o.get("data", {})]
    want = MIN_FIGURES.get(path.stem, 1)
    assert len(images) >= want, f"{path.name}: expected {want} rendered figures, got {len(images)}"
    tables = [o for o in outputs if "text/markdown" in o.get("data", {})]
    assert any("co_bps" in o["data"]["text/markdown"] for o in tables), "no metrics table"
    assert not list(cwd.iterdir()), "the notebook wrote into its working directory"
