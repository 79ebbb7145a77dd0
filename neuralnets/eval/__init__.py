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

import importlib

# name -> the module defining it; imported on first use (PEP 562), so that `neuralnets-eval --help`
# and `import neuralnets.eval.cli` do not load PyTorch.
_HOMES = {
    "fewshot_co_bps": "fewshot",
    "behavior_trials": "harness",
    "evaluate": "harness",
    "evaluate_sessions": "harness",
    "evaluate_splits": "harness",
    "fit_fewshot": "fewshot",
    "skipped_metrics": "harness",
    "METRICS": "metrics",
    "bits_per_spike": "metrics",
    "co_bps": "metrics",
    "fp_bps": "metrics",
    "input_corr": "metrics",
    "input_readout_r2": "metrics",
    "poisson_ll": "metrics",
    "psth_r2": "metrics",
    "rate_r2": "metrics",
    "latent_r2": "regression",
    "vel_r2": "regression",
    "format_table": "tables",
    "log_to_tensorboard": "tblog",
}

__all__ = [
    "METRICS",
    "behavior_trials",
    "bits_per_spike",
    "co_bps",
    "evaluate",
    "evaluate_sessions",
    "evaluate_splits",
    "fewshot_co_bps",
    "fit_fewshot",
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


def __getattr__(name: str):
    if name in _HOMES:
        return getattr(importlib.import_module(f"neuralnets.eval.{_HOMES[name]}"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted([*globals(), *__all__])
