"""The shared evaluation harness: NLB metrics, `evaluate(rates, data, split)`, baselines, tables.

`evaluate` scores predicted rates (counts per bin, all trials) against a `SpikeData`; it never looks at
a model. Modules, each importing only those listed before it:

- `metrics`: the metric functions on arrays and `METRICS` (name -> meaning, table order);
- `regression`: ridge CV, vel R², linear fit, latent R²; `fewshot`: few-shot co-bps;
- `harness`: `evaluate`, `evaluate_sessions` (each session of a `MultiSessionData`), `skipped_metrics`,
  `behavior_trials` (scoring a dataset's split);
- `baselines`: the smoothing + GLM, mean-rate, condition-average and true-rate rows, scored by `evaluate`;
- `tblog`: TensorBoard scalars and hparams table; `tables`: comparison tables (`format_table`);
- `cli`: `neuralnets-eval` and `neuralnets-compare`.

The run directory (metrics.json, predictions.h5) is `neuralnets.runs`.
"""

from neuralnets.eval.fewshot import fewshot_co_bps
from neuralnets.eval.harness import behavior_trials, evaluate, evaluate_sessions, skipped_metrics
from neuralnets.eval.metrics import (
    METRICS,
    bits_per_spike,
    co_bps,
    fp_bps,
    input_corr,
    input_readout_r2,
    poisson_ll,
    psth_r2,
    rate_r2,
)
from neuralnets.eval.regression import latent_r2, vel_r2
from neuralnets.eval.tables import format_table
from neuralnets.eval.tblog import log_to_tensorboard

__all__ = [
    "METRICS",
    "behavior_trials",
    "bits_per_spike",
    "co_bps",
    "evaluate",
    "evaluate_sessions",
    "fewshot_co_bps",
    "format_table",
    "fp_bps",
    "input_corr",
    "input_readout_r2",
    "latent_r2",
    "log_to_tensorboard",
    "poisson_ll",
    "psth_r2",
    "rate_r2",
    "skipped_metrics",
    "vel_r2",
]
