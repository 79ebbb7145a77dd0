"""What a trained model found: fixed points and linearised dynamics, the slow manifolds they form, a
data-driven second opinion (DMD) and dynamical similarity between models (DSA), rotational structure
(jPCA), inferred-input events against an input-free null; `neuralnets-analyze RUN_DIR` writes them as a
report and TensorBoard figures (`neuralnets.analysis.report`). See docs/analysis.md."""

from neuralnets.analysis.fixed_points import FixedPoints, find_fixed_points, model_fixed_points
from neuralnets.analysis.jpca import JPCA, condition_average, jpca
from neuralnets.analysis.linear_dynamics import dsa, fit_linear_dynamics
from neuralnets.analysis.manifolds import group_points, modes

__all__ = [
    "JPCA",
    "FixedPoints",
    "condition_average",
    "dsa",
    "find_fixed_points",
    "fit_linear_dynamics",
    "group_points",
    "jpca",
    "model_fixed_points",
    "modes",
]
