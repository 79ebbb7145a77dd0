"""What a trained model found: fixed points and linearised dynamics, the slow manifolds they form, a
data-driven second opinion (DMD) and dynamical similarity between models (DSA), rotational structure
(jPCA), inferred-input events against an input-free null; `neuralnets-analyze RUN_DIR` writes them as a
report and TensorBoard figures (`neuralnets.analysis.report`). See docs/analysis.md.

The names below are imported when first used: `neuralnets.analysis.cli` (the command) must not pull in
PyTorch before it has read its options."""

from __future__ import annotations

import importlib
from typing import Any

_WHERE = {
    "FixedPoints": "fixed_points",
    "find_fixed_points": "fixed_points",
    "model_fixed_points": "fixed_points",
    "JPCA": "jpca",
    "condition_average": "jpca",
    "jpca": "jpca",
    "dsa": "linear_dynamics",
    "fit_linear_dynamics": "linear_dynamics",
    "group_points": "manifolds",
    "modes": "manifolds",
}

__all__ = sorted(_WHERE)


def __getattr__(name: str) -> Any:
    if name not in _WHERE:
        raise AttributeError(f"module 'neuralnets.analysis' has no attribute {name!r}")
    return getattr(importlib.import_module(f"neuralnets.analysis.{_WHERE[name]}"), name)
