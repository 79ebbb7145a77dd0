"""The evaluation harness: `evaluate(rates, data, split)`, the run-directory contract, TensorBoard logging.

`evaluate` never looks at a model: it scores rates (and optionally latents) predicted for *every* trial
of a `SpikeData` against that data. Regressions (velocity, latents) are fit on the train trials and
scored on the `split` trials; the Poisson metrics only ever touch the `split` trials.

Run directory contract (training writes it, `read_run` / `neuralnets-compare` read it):
- `run_dir/metrics.json` (`METRICS_FILE`): {"model": str, "data": str (dataset name or path, as
  accepted by `neuralnets.data.loaders.load`), "split": str, "metrics": {name: float},
  "train_time_s": float, "n_parameters": int, ...anything else}.
- `run_dir/predictions.h5` (`PREDICTIONS_FILE`; `predictions.npz` is also read): `rates (trials, T, N)`
  counts per bin for all trials of the dataset, optionally `latents (trials, T_lat, K)`; write it with
  `save_predictions` (or `neuralnets.training.outputs.write_predictions`).
- Optional keys read by `neuralnets-compare` to rebuild the dataset for baseline rows:
  "data_source" (name or path, preferred over "data") and "data_kwargs" (keyword arguments of
  `neuralnets.data.loaders.load`, e.g. a synthetic seed).
"""

from __future__ import annotations

import json
import math
import os
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from neuralnets.data.spikedata import DataError, SpikeData
from neuralnets.eval import metrics as M

METRICS_FILE = "metrics.json"
PREDICTIONS_FILE = "predictions.h5"  # what training writes (neuralnets.training.outputs)
PREDICTIONS_FILES = (PREDICTIONS_FILE, "predictions.npz")  # what a run directory may hold, in lookup order
TB_PREFIX = "hp/"  # TensorBoard hparams-table metric names: hp/co_bps, hp/fp_bps, ...

# Every metric the harness reports, in table order, with what it means. Higher is better for all.
METRICS: dict[str, str] = {
    "co_bps": "co-smoothing bits/spike: held-out neurons, observed bins",
    "fp_bps": "forward-prediction bits/spike: all neurons, forward bins",
    "vel_r2": "ridge from predicted rates to behaviour, fit on train trials, R² on eval trials",
    "psth_r2": "held-out neurons: condition-averaged rates vs condition-averaged smoothed spikes, R²",
    # Not an NLB metric: the model sees these spikes, so echoing the (smoothed) input scores high here.
    "bps_heldin": "bits/spike on held-in neurons, observed bins (reconstruction of the input)",
    "rate_r2": "R² of predicted vs true rates per neuron (synthetic data)",
    "latent_r2": "R² of a linear map from model latents to true latents (synthetic data)",
}

# `SpikeData.meta` key listing the splits whose behaviour is real data (set by
# `neuralnets.data.loaders.load_nlb_h5` when only the NLB train trials have behaviour; the other
# trials hold zeros that are not data). Absent means every trial has behaviour. vel R² only uses
# trials of those splits, in the fit and in the score.
BEHAVIOR_SPLITS_KEY = "behavior_splits"


# ---------------------------------------------------------------------------------------------- evaluate
def behavior_trials(data: SpikeData) -> np.ndarray:
    """(trials,) bool: trials with recorded behaviour (all False when there is no behaviour)."""
    if data.behavior is None:
        return np.zeros(data.n_trials, dtype=bool)
    splits = data.meta.get(BEHAVIOR_SPLITS_KEY) if isinstance(data.meta, Mapping) else None
    if splits is None:
        return np.ones(data.n_trials, dtype=bool)
    if isinstance(splits, str) or not all(isinstance(s, str) for s in splits):
        raise DataError(
            f"{data.source}: meta[{BEHAVIOR_SPLITS_KEY!r}] must be a list of split names; got {splits!r}"
        )
    return np.isin(data.split, list(splits))


def skipped_metrics(data: SpikeData, split: str = "test", latents: Any = None) -> dict[str, str]:
    """Metrics `evaluate` cannot compute on this data/split, each with the reason it is left out."""
    idx = data.indices(split)
    train = data.indices("train")
    mask = data.observed_mask()[idx]  # (trials_eval, T, N)
    spikes = data.spikes[idx]
    t_obs, n_in = data.n_obs, data.n_heldin
    reasons: dict[str, str] = {}

    def no_spikes(sl) -> bool:
        return not (spikes[sl] * mask[sl]).any()

    if data.n_heldout == 0:
        reasons["co_bps"] = "no held-out neurons"
    elif no_spikes((slice(None), slice(0, t_obs), slice(n_in, None))):
        reasons["co_bps"] = f"no held-out spikes recorded in the {split!r} trials"
    if data.n_fwd == 0:
        reasons["fp_bps"] = "no forward-prediction bins"
    elif not mask[:, t_obs:].any():
        reasons["fp_bps"] = f"forward bins were not recorded for the {split!r} trials"
    elif no_spikes((slice(None), slice(t_obs, None), slice(None))):
        reasons["fp_bps"] = f"no spikes in the forward bins of the {split!r} trials"
    if no_spikes((slice(None), slice(0, t_obs), slice(0, n_in))):
        reasons["bps_heldin"] = f"no held-in spikes recorded in the {split!r} trials"
    if data.behavior is None:
        reasons["vel_r2"] = "no behaviour"
    else:
        has = behavior_trials(data)
        if has[train].sum() < 2:
            reasons["vel_r2"] = "fewer than 2 train trials with behaviour (cross-validation needs 2)"
        elif not has[idx].any():
            reasons["vel_r2"] = f"no behaviour on the {split!r} trials"
    if data.condition is None:
        reasons["psth_r2"] = "no trial conditions"
    elif data.n_heldout == 0:
        reasons["psth_r2"] = "no held-out neurons (PSTH R² is scored on held-out neurons)"
    if data.rates is None:
        reasons["rate_r2"] = "no ground-truth rates"
    if data.latents is None:
        reasons["latent_r2"] = "no ground-truth latents"
    elif latents is None:
        reasons["latent_r2"] = "no model latents given"
    elif len(train) == 0:
        reasons["latent_r2"] = "no train trials to fit the latent map"
    return reasons


def evaluate(
    rates: np.ndarray | Tensor,
    data: SpikeData,
    split: str = "test",
    latents: np.ndarray | Tensor | None = None,
    *,
    psth_sigma_ms: float = M.DEFAULT_PSTH_SIGMA_MS,
    alphas: tuple[float, ...] = M.DEFAULT_ALPHAS,
) -> dict[str, float]:
    """Score predicted rates on `data`'s `split` trials; returns {metric: value} for the computable metrics.

    rates: (trials, T_obs+T_fwd, N_all) expected counts per bin for ALL trials of `data` (numpy or torch,
    any device; the Poisson metrics run on that device). latents: optional (trials, T_lat, K) for all
    trials; latent R² uses the first min(T_lat, T) bins of both model and true latents.
    Entries with `data.observed == False` are never scored. Metrics that cannot be computed (see
    `skipped_metrics`) are left out of the dict. Keys and meanings: `METRICS`.
    """
    lam = M.as_tensor(rates, "rates")
    if tuple(lam.shape) != data.spikes.shape:
        raise ValueError(
            f"rates have shape {tuple(lam.shape)} but data {data.name!r} has spikes of shape "
            f"{data.spikes.shape} (trials, bins, neurons); rates must cover all trials, bins and neurons"
        )
    idx = data.indices(split)
    if idx.size == 0:
        raise DataError(f"{data.source}: split {split!r} has no trials")
    dev = lam.device
    # Validate once over all trials (the regressions also read the train trials), with global indices.
    M.check_values(
        lam, "rates", None if data.observed is None else torch.as_tensor(data.observed, device=dev), True
    )
    skip = skipped_metrics(data, split, latents)
    idx_t = torch.as_tensor(idx, device=dev)
    lam_e = lam[idx_t]  # (trials_eval, T, N)
    y_e = torch.as_tensor(data.spikes[idx], device=dev)
    m_e = None if data.observed is None else torch.as_tensor(data.observed[idx], device=dev)
    t_obs, n_in = data.n_obs, data.n_heldin
    out: dict[str, float] = {}

    if "co_bps" not in skip:
        out["co_bps"] = M.co_bps(lam_e, y_e, n_in, data.n_fwd, m_e)
    if "fp_bps" not in skip:
        out["fp_bps"] = M.fp_bps(lam_e, y_e, data.n_fwd, m_e)
    if "vel_r2" not in skip:
        has = behavior_trials(data)
        tr = data.indices("train")
        tr, ev = tr[has[tr]], idx[has[idx]]
        beh = data.behavior  # (trials, T_obs, D)
        out["vel_r2"] = M.vel_r2(
            lam[torch.as_tensor(tr, device=dev), :t_obs],
            beh[tr],
            lam[torch.as_tensor(ev, device=dev), :t_obs],
            beh[ev],
            alphas=alphas,
        )
    if "psth_r2" not in skip:
        # Held-out neurons only: a held-in PSTH could be matched by echoing the (smoothed) input.
        sl = (slice(None), slice(0, t_obs), slice(n_in, None))
        out["psth_r2"] = M.psth_r2(
            lam_e[sl],
            y_e[sl],
            data.condition[idx],
            data.bin_size,
            psth_sigma_ms,
            None if m_e is None else m_e[sl],
        )
    if "bps_heldin" not in skip:
        sl = (slice(None), slice(0, t_obs), slice(0, n_in))
        out["bps_heldin"] = M.bits_per_spike(lam_e[sl], y_e[sl], None if m_e is None else m_e[sl])
    if "rate_r2" not in skip:
        out["rate_r2"] = M.rate_r2(lam_e, data.rates[idx], m_e)
    if "latent_r2" not in skip:
        z = M.as_tensor(latents, "latents")
        if z.ndim != 3 or z.shape[0] != data.n_trials:
            raise ValueError(
                f"latents have shape {tuple(z.shape)}; expected ({data.n_trials}, T, K) for all trials of "
                f"data {data.name!r}"
            )
        t = min(z.shape[1], data.latents.shape[1])  # common leading bins
        tr = data.indices("train")
        zt = data.latents
        out["latent_r2"] = M.latent_r2(
            z[torch.as_tensor(tr, device=z.device), :t],
            zt[tr, :t],
            z[torch.as_tensor(idx, device=z.device), :t],
            zt[idx, :t],
        )
    return {k: out[k] for k in METRICS if k in out}


# ---------------------------------------------------------------------------------------------- run dirs
def _finite_or_none(x: Any) -> Any:
    if isinstance(x, float) and not math.isfinite(x):
        return None  # strict JSON has no NaN/inf
    if isinstance(x, Mapping):
        return {k: _finite_or_none(v) for k, v in x.items()}
    if isinstance(x, list | tuple):
        return [_finite_or_none(v) for v in x]
    if isinstance(x, np.generic):
        return _finite_or_none(x.item())
    return x


def _atomic_write(path: Path, text: str) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name + ".", suffix=".tmp")
    with os.fdopen(fd, "w") as f:
        f.write(text)
    os.replace(tmp, path)


def write_metrics(
    metrics: Mapping[str, float], run_dir: str | Path, extra: Mapping[str, Any] | None = None
) -> Path:
    """Write run_dir/metrics.json = {**existing, **extra, "metrics": metrics}; returns its path.

    Keys already in the file and not in `extra` are kept (so evaluation can add to what training
    wrote); no other file in run_dir is touched. NaN/inf become null.
    """
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    path = run_dir / METRICS_FILE
    payload: dict[str, Any] = {}
    if path.exists():
        try:
            payload = json.loads(path.read_text())
        except json.JSONDecodeError as e:
            raise ValueError(f"{path} exists but is not valid JSON ({e}); fix or remove it") from None
    payload.update(dict(extra or {}))
    payload["metrics"] = {k: float(v) for k, v in metrics.items()}
    _atomic_write(path, json.dumps(_finite_or_none(payload), indent=2, sort_keys=False) + "\n")
    return path


def read_run(run_dir: str | Path) -> dict[str, Any]:
    """Contents of run_dir/metrics.json plus "run_dir"; clear errors if the directory or a key is missing."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise FileNotFoundError(f"run directory {run_dir} does not exist")
    path = run_dir / METRICS_FILE
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found: is {run_dir} a finished run directory?")
    try:
        run = json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise ValueError(f"{path} is not valid JSON ({e})") from None
    if not isinstance(run, dict):
        raise ValueError(f"{path} must hold a JSON object; got {type(run).__name__}")
    missing = [k for k in ("model", "data", "metrics") if k not in run]
    if missing:
        raise ValueError(
            f"{path} lacks the key(s) {missing}; the run-directory contract needs model, data, metrics"
        )
    if not isinstance(run["metrics"], dict):
        raise ValueError(f"{path}: 'metrics' must be an object of metric name -> number")
    run.setdefault("split", "test")
    run.setdefault("train_time_s", None)
    run.setdefault("n_parameters", None)
    run["run_dir"] = str(run_dir)
    return run


def save_predictions(
    run_dir: str | Path, rates: np.ndarray | Tensor, latents: np.ndarray | Tensor | None = None
) -> Path:
    """Write run_dir/predictions.h5: float32 `rates (trials, T, N)`, optional `latents (trials, T, K)`.

    The same layout as `neuralnets.training.outputs.write_predictions`; refuses to overwrite.
    """
    import h5py

    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    path = run_dir / PREDICTIONS_FILE
    if path.exists():
        raise FileExistsError(f"{path} exists; refusing to overwrite predictions")
    with h5py.File(path, "w") as f:
        f.create_dataset("rates", data=_to_numpy(rates))
        if latents is not None:
            f.create_dataset("latents", data=_to_numpy(latents))
    return path


def load_predictions(path: str | Path) -> tuple[np.ndarray, np.ndarray | None]:
    """(rates, latents or None) from a run directory or a rates file.

    Files: `.h5`/`.hdf5` or `.npz` with array `rates (trials, T, N)` and optional `latents`, or a `.npy`
    holding the rates. A run directory is searched for `PREDICTIONS_FILES` in order.
    """
    path = Path(path)
    if path.is_dir():
        found = [path / name for name in PREDICTIONS_FILES if (path / name).is_file()]
        if not found:
            raise FileNotFoundError(
                f"{path} holds no predictions file (looked for {list(PREDICTIONS_FILES)})"
            )
        path = found[0]
    if not path.is_file():
        raise FileNotFoundError(f"predictions file {path} not found")
    suffix = path.suffix.lower()
    if suffix == ".npy":
        return np.load(path, allow_pickle=False), None
    if suffix in (".h5", ".hdf5"):
        import h5py

        try:
            with h5py.File(path, "r") as f:
                if "rates" not in f:
                    raise ValueError(f"{path} has no dataset 'rates' (found {sorted(f.keys())})")
                return f["rates"][()], (f["latents"][()] if "latents" in f else None)
        except OSError as e:
            raise ValueError(f"{path}: cannot read as HDF5 ({e})") from None
    if suffix != ".npz":
        raise ValueError(
            f"{path}: a rates file must be .h5/.hdf5/.npz (array 'rates', optional 'latents') or .npy"
        )
    with np.load(path, allow_pickle=False) as f:
        if "rates" not in f.files:
            raise ValueError(f"{path} has no array 'rates' (found {sorted(f.files)})")
        return f["rates"], (f["latents"] if "latents" in f.files else None)


def _to_numpy(x: np.ndarray | Tensor) -> np.ndarray:
    if isinstance(x, Tensor):
        x = x.detach().cpu().numpy()
    return np.asarray(x, dtype=np.float32)


# ---------------------------------------------------------------------------------------------- TensorBoard
def _flat_hparams(h: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """Nested dict -> {"a.b": value} with values TensorBoard accepts (bool/int/float/str)."""
    out: dict[str, Any] = {}
    for k, v in h.items():
        key = f"{prefix}{k}"
        if isinstance(v, Mapping):
            out.update(_flat_hparams(v, key + "."))
        elif isinstance(v, bool | int | float | str):
            out[key] = v
        elif isinstance(v, np.generic):
            out[key] = v.item()
        else:
            out[key] = str(v)
    return out


def tb_metric_names(metrics: Mapping[str, float]) -> dict[str, float]:
    """{"hp/co_bps": value, ...} for the finite metrics."""
    return {TB_PREFIX + k: float(v) for k, v in metrics.items() if v is not None and math.isfinite(float(v))}


def log_to_tensorboard(
    logger_or_writer: Any, hparams: Mapping[str, Any], metrics: Mapping[str, float]
) -> None:
    """Log `metrics` as scalars `hp/<name>` and register them with `hparams` in TensorBoard's hparams table.

    Accepts a Lightning `TensorBoardLogger` (uses `log_hyperparams(params, metrics)`), any other
    Lightning logger (e.g. CSV: hyperparameters and `hp/` metrics logged separately), or a
    `torch.utils.tensorboard.SummaryWriter` (writes the hparams summaries into the writer's own run
    directory, so the run shows up as one row).
    """
    params = _flat_hparams(hparams)
    tb_metrics = tb_metric_names(metrics)
    if hasattr(logger_or_writer, "log_hyperparams"):
        from pytorch_lightning.loggers import TensorBoardLogger

        if isinstance(logger_or_writer, TensorBoardLogger):
            logger_or_writer.log_hyperparams(params, tb_metrics)
        else:  # other Lightning loggers (CSV, ...): no hparams table, so hparams and metrics apart
            logger_or_writer.log_hyperparams(params)
            logger_or_writer.log_metrics(tb_metrics)
        return
    if not hasattr(logger_or_writer, "add_scalar"):
        raise TypeError(
            f"log_to_tensorboard needs a Lightning TensorBoardLogger or a SummaryWriter; got "
            f"{type(logger_or_writer).__name__}"
        )
    from torch.utils.tensorboard.summary import hparams as hparams_summary

    writer = logger_or_writer
    exp, ssi, sei = hparams_summary(params, tb_metrics)
    file_writer = writer._get_file_writer()
    for summary in (exp, ssi, sei):
        file_writer.add_summary(summary)
    for k, v in tb_metrics.items():
        writer.add_scalar(k, v, 0)
    writer.flush()


# ---------------------------------------------------------------------------------------------- tables
def load_run_data(run: Mapping[str, Any]) -> SpikeData:
    """The dataset a run was scored on: `load(run["data_source"] or run["data"], **run["data_kwargs"])`."""
    from neuralnets.data.loaders import load

    source = run.get("data_source") or run["data"]
    kwargs = run.get("data_kwargs") or {}
    if not isinstance(kwargs, Mapping):
        raise ValueError(f"'data_kwargs' of run {run.get('run_dir', run.get('model'))} must be an object")
    return load(source, **kwargs)


def format_table(
    rows: list[Mapping[str, Any]],
    baselines: bool = False,
    data: SpikeData | None = None,
    split: str | None = None,
) -> str:
    """Markdown table of run records (dicts as in metrics.json), optionally with baseline rows.

    With `baselines`, the baseline rows (`neuralnets.eval.baselines.baseline_rows`) are computed on
    `data` when given, else on each dataset named by the rows (see `load_run_data`), for the rows'
    split (or `split`). A dataset that cannot be loaded gets a note under the table instead of rows.
    """
    from neuralnets.eval.baselines import baseline_rows
    from neuralnets.eval.tables import to_markdown

    rows = [dict(r) for r in rows]
    notes = []
    if baselines:
        done: set[tuple] = set()
        for r in list(rows):
            sp = split or r.get("split", "test")
            key = (
                r.get("data_source") or r.get("data"),
                json.dumps(r.get("data_kwargs") or {}, sort_keys=True),
                sp,
            )
            if key in done:
                continue
            done.add(key)
            try:
                d = data if data is not None else load_run_data(r)
                rows += baseline_rows(d, sp, data_label=r.get("data"))
            except (DataError, FileNotFoundError, ValueError) as e:
                notes.append(f"(no baseline rows for {key[0]!r}: {e})")
    return to_markdown(rows) + "".join(n + "\n" for n in notes)
