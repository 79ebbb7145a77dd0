"""Imports in the harness point one way (STYLE item 9): no module of neuralnets.eval or neuralnets.runs
imports, at module level or inside a function, a module that imports it back (directly or not)."""

from __future__ import annotations

import ast
import importlib
from pathlib import Path

import neuralnets

ROOT = Path(neuralnets.__file__).resolve().parent
# Each module may import only modules listed before it (within this group), never training/models/
# pretrained; runs.py knows nothing of eval.
LAYERS = [
    "neuralnets.runs",
    "neuralnets.eval.glm",
    "neuralnets.eval.primitives",
    "neuralnets.eval.metrics",
    "neuralnets.eval.regression",
    "neuralnets.eval.fewshot",
    "neuralnets.eval.harness",
    "neuralnets.eval.nlb",
    "neuralnets.eval.baseline_cache",
    "neuralnets.eval.baselines",
    "neuralnets.eval.tblog",
    "neuralnets.eval.tables",
    "neuralnets.eval.cli",
]


def _module_file(name: str) -> Path:
    return ROOT.parent / (name.replace(".", "/") + ".py")


def imported_modules(path: Path) -> set[str]:
    """Every neuralnets module named by an import anywhere in the file (functions included)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            for a in node.names:  # `from pkg import module` names the module, else the package itself
                sub = f"{node.module}.{a.name}"
                found.add(sub if _module_file(sub).is_file() else node.module)
    return {m for m in found if m.startswith("neuralnets")}


def test_every_layer_exists_and_imports():
    for name in LAYERS:
        assert _module_file(name).is_file(), name
        importlib.import_module(name)
    listed = {f"neuralnets.eval.{p.stem}" for p in (ROOT / "eval").glob("*.py") if p.stem != "__init__"}
    assert listed <= set(LAYERS), f"add {sorted(listed - set(LAYERS))} to LAYERS"


def test_imports_point_down_the_layers():
    bad = []
    for i, name in enumerate(LAYERS):
        above = set(LAYERS[i + 1 :]) | {"neuralnets.eval"}  # the package __init__ imports the layers
        packages = {"neuralnets.training", "neuralnets.models", "neuralnets.pretrained"}
        if name == "neuralnets.runs":
            packages.add("neuralnets.eval")
        for target in imported_modules(_module_file(name)):
            if target in above or any(target.startswith(p + ".") or target == p for p in packages):
                bad.append(f"{name} imports {target}")
    assert not bad, bad


def test_no_import_cycle_within_eval_and_runs():
    group = set(LAYERS)
    graph = {m: {t for t in imported_modules(_module_file(m)) if t in group and t != m} for m in LAYERS}
    state: dict[str, int] = {}

    def visit(m: str, stack: list[str]) -> None:
        state[m] = 1
        for t in graph[m]:
            assert state.get(t) != 1, f"import cycle: {' -> '.join([*stack, m, t])}"
            if t not in state:
                visit(t, [*stack, m])
        state[m] = 2

    for m in LAYERS:
        if m not in state:
            visit(m, [])
