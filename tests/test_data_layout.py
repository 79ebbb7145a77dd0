"""The data package's layout: imports point one way (no cycles), and no module grows past ~500 lines."""

from __future__ import annotations

import ast
from pathlib import Path

import neuralnets.data

DATA_DIR = Path(neuralnets.data.__file__).parent

# Lower layers never import higher ones (DESIGN.md: imports point one way).
LAYERS = {
    "spikedata": 0,
    "sessions": 1,
    "binning": 1,
    "heldout": 1,
    "options": 1,
    "formats.common": 1,
    "synthetic": 2,
    "synthetic_linear": 3,  # builds on synthetic's helpers
    "formats.npz": 2,
    "formats.lfads_h5": 2,
    "formats.nlb_h5": 2,
    "formats.nwb": 2,
    "formats.nlb_targets": 2,
    "formats.nlb_nwb": 3,
    "datasets.mc_maze_small": 3,
    "datasets.ca1_linear_track": 3,
    "loaders": 4,
    "datamodule": 5,
    "cli": 5,
    "__init__": 6,
}


def _modules() -> dict[str, Path]:
    out = {}
    for path in DATA_DIR.rglob("*.py"):
        rel = path.relative_to(DATA_DIR).with_suffix("")
        if rel.name == "__init__" and rel.parent != Path("."):
            continue  # subpackage markers: docstring only
        out[".".join(rel.parts)] = path
    return out


def _data_imports(path: Path) -> set[str]:
    """Every `neuralnets.data.X` module imported anywhere in the file (top level or inside functions)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        names = []
        if isinstance(node, ast.ImportFrom) and node.module:
            names = [node.module]
        elif isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        for n in names:
            if n.startswith("neuralnets.data."):
                found.add(n.removeprefix("neuralnets.data."))
    return found


def test_every_data_module_has_a_layer():
    assert sorted(_modules()) == sorted(LAYERS)


def test_imports_point_one_way():
    bad = []
    for name, path in _modules().items():
        for target in _data_imports(path):
            if LAYERS[target] >= LAYERS[name]:
                bad.append(f"{name} (layer {LAYERS[name]}) imports {target} (layer {LAYERS[target]})")
    assert not bad, bad


def test_spikedata_imports_nothing_from_the_package():
    assert _data_imports(_modules()["spikedata"]) == set()


def test_no_data_module_is_huge():
    sizes = {name: len(path.read_text().splitlines()) for name, path in _modules().items()}
    assert max(sizes.values()) <= 500, sizes
