"""The shared evaluation harness: NLB metrics, `evaluate(rates, data, split)`, baselines, tables.

`evaluate` scores predicted rates (counts per bin, all trials) against a `SpikeData`; it never looks at
a model. See `neuralnets.eval.metrics` for the exact metric definitions and `harness.METRICS` for the
keys it returns.
"""

from neuralnets.eval.harness import (
    METRICS,
    METRICS_FILE,
    PREDICTIONS_FILE,
    evaluate,
    format_table,
    load_predictions,
    log_to_tensorboard,
    read_run,
    save_predictions,
    skipped_metrics,
    write_metrics,
)
from neuralnets.eval.metrics import (
    bits_per_spike,
    co_bps,
    fp_bps,
    latent_r2,
    poisson_ll,
    psth_r2,
    rate_r2,
    vel_r2,
)

__all__ = [
    "METRICS",
    "METRICS_FILE",
    "PREDICTIONS_FILE",
    "bits_per_spike",
    "co_bps",
    "evaluate",
    "format_table",
    "fp_bps",
    "latent_r2",
    "load_predictions",
    "log_to_tensorboard",
    "poisson_ll",
    "psth_r2",
    "rate_r2",
    "read_run",
    "save_predictions",
    "skipped_metrics",
    "vel_r2",
    "write_metrics",
]
