"""What a trained model found: fixed points and linearised dynamics, rotational structure (jPCA),
inferred-input events; `neuralnets-analyze RUN_DIR` writes them as a report and TensorBoard figures
(`neuralnets.analysis.report`). See docs/analysis.md."""

from neuralnets.analysis.fixed_points import FixedPoints, find_fixed_points, model_fixed_points
from neuralnets.analysis.jpca import JPCA, condition_average, jpca

__all__ = ["JPCA", "FixedPoints", "condition_average", "find_fixed_points", "jpca", "model_fixed_points"]
