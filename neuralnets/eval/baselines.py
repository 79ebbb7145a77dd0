"""Reference rows scored by the same harness as every model.

- `smoothing_glm`: the NLB baseline. Held-in spikes smoothed with a Gaussian kernel are the held-in
  rates; a Poisson GLM (log link) from the smoothed held-in spikes to each held-out neuron, fit on the
  train trials, gives the held-out rates.
- `true_rates`: the generating rates of synthetic data (the ceiling).
- `mean_rates`: each neuron's mean train count per bin everywhere (the null model; co-bps ≈ 0).
- `condition_average`: the PSTH of each trial's condition, the smoothed mean of the train trials of
  that condition (NLB's condition-average reference); needs `condition`, skipped without.

Each returns rates `(trials, T, N)` in counts per bin for all trials; `run_baselines` wraps them with
fit time and parameter count for tables.

`baseline_rows` (the rows every `neuralnets-train` run prints, `neuralnets-eval`, `format_table`) keeps
its rows in a cache, so each dataset's baselines are computed once: one JSON file per (data content,
split, baselines, GLM options, load options, harness code) in `baseline_cache_dir()`
(`$NEURALNETS_BASELINE_CACHE`, else `<neuralnets cache>/baselines` with the cache root
`$NEURALNETS_CACHE_DIR`, `$XDG_CACHE_HOME/neuralnets` or `~/.cache/neuralnets`). The key hashes the
data's arrays and settings (`data_fingerprint`) and the source of the evaluation code
(`neuralnets/eval/*.py`), so changed data or a changed metric never reads an old entry. An entry is
written atomically and carries the sha256 of its contents; one that does not parse, match its digest
or its key is recomputed and replaced (never trusted; JSON only, nothing is unpickled).
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np
import torch

from neuralnets.data.spikedata import SpikeData
from neuralnets.errors import ConfigError, DataError
from neuralnets.eval import metrics as M
from neuralnets.eval.baseline_cache import (  # re-exported: baselines' callers import them from here
    _cache_key,
    _json_value,
    _read_cache,
    _write_cache,
    baseline_cache_dir,
    data_fingerprint,
    large_blocks_returned,
)
from neuralnets.eval.glm import GLM_FLOOR, fit_poisson_glm
from neuralnets.eval.harness import evaluate
from neuralnets.eval.metrics import smooth_spikes

DEFAULT_GLM_ALPHAS = (1e-3, 1e-2, 1e-1, 1.0)  # L2 penalties tried for the GLM (standardised features)
DEFAULT_PSTH_SIGMAS_MS = (10.0, 25.0, 50.0, 100.0)  # smoothing widths tried for the condition average

log = logging.getLogger(__name__)


@dataclass
class SmoothingGLMFit:
    """A fitted smoothing + GLM baseline: its rates for all trials and how it was chosen."""

    rates: np.ndarray  # (trials, T, N) float32 counts per bin
    weights: np.ndarray  # (N_in, N_out) on standardised smoothed held-in spikes
    bias: np.ndarray  # (N_out,)
    alpha: float  # the L2 penalty used
    alpha_scores: dict[float, float]  # held-out co-bps of each alpha tried (empty if only one)
    selected_on: str  # "val trials", "3-fold CV on train trials" or "fixed"
    sigma_ms: float


def smoothing_glm(
    data: SpikeData,
    sigma_ms: float = 50.0,
    alpha: float | Sequence[float] = DEFAULT_GLM_ALPHAS,
    device: str | torch.device = "cpu",
    max_iter: int = 100,
) -> np.ndarray:
    """The NLB smoothing baseline's rates (trials, T, N) float32 counts per bin; see `fit_smoothing_glm`."""
    return fit_smoothing_glm(data, sigma_ms, alpha, device, max_iter).rates


def fit_smoothing_glm(
    data: SpikeData,
    sigma_ms: float = 50.0,
    alpha: float | Sequence[float] = DEFAULT_GLM_ALPHAS,
    device: str | torch.device = "cpu",
    max_iter: int = 100,
) -> SmoothingGLMFit:
    """The NLB smoothing baseline, fit on the train trials and predicted for all trials.

    - held-in neurons, observed bins: the held-in spikes smoothed with a Gaussian of s.d. `sigma_ms`
      (`smooth_spikes`);
    - held-out neurons, observed bins: a Poisson GLM from the standardised smoothed held-in spikes (plus
      bias) to each held-out neuron, fit jointly on the train trials' recorded bins with L2 penalty
      `alpha` on the weights (`fit_poisson_glm`), floored at 1e-9. Given several alphas, the one with
      the best held-out co-bps is kept: scored on the 'val' trials when there are any with recorded
      held-out spikes, else by 3-fold cross-validation over the train trials. Test trials are never used.
    - forward bins (all neurons): each neuron's mean count per bin over the train trials' recorded
      forward bins (a constant: the smoothing baseline has no dynamics to extrapolate).
    """
    train = data.indices("train")
    if train.size == 0:
        raise DataError(
            f"{data.source}: smoothing_glm needs train trials to fit the GLM; split 'train' is empty"
        )
    alphas = [float(alpha)] if np.isscalar(alpha) else [float(a) for a in alpha]
    if not alphas or any(not (a >= 0 and np.isfinite(a)) for a in alphas):
        raise ConfigError(f"alpha must be a non-negative number or a non-empty list of them; got {alpha!r}")
    t_obs, n_in, n_out = data.n_obs, data.n_heldin, data.n_heldout
    mask = data.observed_mask()  # (trials, T, N)
    smoothed = smooth_spikes(
        data.heldin_obs, mask[:, :t_obs, :n_in], data.bin_size, sigma_ms
    )  # (trials, T_obs, N_in)
    weights, bias = np.zeros((n_in, n_out)), np.zeros(n_out)
    held_out = None  # (trials, T_obs, N_out) float32 GLM rates
    scores: dict[float, float] = {}
    selected_on = "fixed"

    if n_out > 0:
        dev = torch.device(device)
        feats = torch.as_tensor(smoothed, device=dev)  # (trials, T_obs, N_in)
        y_out = torch.as_tensor(
            data.spikes[:, :t_obs, n_in:], dtype=torch.float64, device=dev
        )  # (trials, T_obs, N_out)

        def w_out(idx: torch.Tensor) -> torch.Tensor:  # (len(idx), T_obs, N_out) float64 recorded entries
            return torch.as_tensor(mask[idx.cpu().numpy(), :t_obs, n_in:], dtype=torch.float64, device=dev)

        def fit(
            trials: np.ndarray, a: float, init: tuple | None = None
        ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
            idx = torch.as_tensor(trials, device=dev)
            x = feats[idx].reshape(-1, n_in)  # (trials*T_obs, N_in), a copy: standardised in place
            mu, sd = x.mean(0), x.std(0)
            sd = torch.where(sd > 0, sd, torch.ones_like(sd))  # silent held-in neurons: feature stays 0
            x = x.sub_(mu).div_(sd)
            y, w = y_out[idx].reshape(-1, n_out), w_out(idx).reshape(-1, n_out)
            start = None if init is None else init[:2]  # (W, b) of the previous alpha
            wts, b = fit_poisson_glm(x, y, w, a, max_iter, init=start)
            return wts, b, mu, sd

        def predict(params, trials: np.ndarray) -> torch.Tensor:
            wts, b, mu, sd = params
            x = (feats[torch.as_tensor(trials, device=dev)] - mu) / sd  # (trials, T_obs, N_in)
            return torch.exp((x @ wts + b).clamp(max=30.0)).clamp(min=GLM_FLOOR)  # (trials, T_obs, N_out)

        def heldout_bps(pred: torch.Tensor, trials: np.ndarray) -> float:
            idx = torch.as_tensor(trials, device=dev)
            return M.bits_per_spike(pred, y_out[idx], w_out(idx).bool())

        val = data.indices("val")
        val = val[(data.spikes[val, :t_obs, n_in:] * mask[val, :t_obs, n_in:]).sum(axis=(1, 2)) > 0]
        fits: dict[float, tuple] = {}
        # The regularisation path from the strongest penalty down: each fit starts from the previous one.
        path = sorted(alphas, reverse=True)
        if len(alphas) > 1 and val.size > 0:
            selected_on = "val trials"
            previous = None
            for a in path:
                fits[a] = previous = fit(train, a, previous)
                scores[a] = heldout_bps(predict(fits[a], val), val)
        elif len(alphas) > 1:
            if train.size < 3:
                raise DataError(f"{data.source}: choosing the GLM alpha by 3-fold CV needs >= 3 train trials")
            selected_on = "3-fold CV on train trials"
            folds = np.array_split(np.random.default_rng(0).permutation(train), 3)
            previous = [None] * 3
            for a in path:
                preds = []
                for k in range(3):  # three fits per alpha; each is vectorised over neurons
                    rest = np.concatenate([f for j, f in enumerate(folds) if j != k])
                    previous[k] = fit(rest, a, previous[k])
                    preds.append(predict(previous[k], folds[k]))
                order = np.concatenate(folds)
                scores[a] = heldout_bps(torch.cat(preds), order)
        scores = {a: scores[a] for a in alphas if a in scores}  # in the order given (ties: the first)
        best = max(scores, key=lambda a: scores[a]) if scores else alphas[0]
        params = fits.get(best) or fit(train, best)
        all_trials = np.arange(data.n_trials)
        held_out = np.empty((data.n_trials, t_obs, n_out), dtype=np.float32)
        for chunk in np.array_split(all_trials, max(1, len(all_trials) // 256)):  # ~256 trials at a time
            held_out[chunk] = predict(params, chunk).cpu().numpy()
        weights = (params[0] / params[3][:, None]).cpu().numpy()  # per unit of smoothed count
        bias = (params[1] - params[2] @ (params[0] / params[3][:, None])).cpu().numpy()
        del feats, y_out, fits, params
    else:
        best = alphas[0]

    # float32, made once the fits are done: each float64 value is rounded once on assignment.
    rates = np.zeros(data.spikes.shape, dtype=np.float32)  # (trials, T, N)
    rates[:, :t_obs, :n_in] = smoothed
    if held_out is not None:
        rates[:, :t_obs, n_in:] = held_out
    if data.n_fwd > 0:
        rates[:, t_obs:, :] = _mean_count(data, train, slice(t_obs, None))[None, None, :]
    return SmoothingGLMFit(rates, weights, bias, best, scores, selected_on, sigma_ms)


def _mean_count(data: SpikeData, trials: np.ndarray, bins: slice) -> np.ndarray:
    """(N,) each neuron's mean count per bin over the recorded entries of `trials` × `bins`.

    Neurons with no recorded entry there fall back to their mean over all recorded train bins.
    """
    mean = data.mean_counts(trials, bins)
    if np.isnan(mean).any():
        fallback = np.nan_to_num(data.mean_counts(trials), nan=0.0)
        mean = np.where(np.isnan(mean), fallback, mean)
    return mean


@dataclass
class ConditionAverageFit:
    """A fitted condition-average baseline: its rates for all trials and how it was chosen."""

    rates: np.ndarray  # (trials, T, N) float32 counts per bin
    sigma_ms: float  # the smoothing width used
    sigma_scores: dict[float, float]  # val bits/spike (all neurons, all bins) of each width tried
    selected_on: str  # "val trials" or "fixed"
    unseen_conditions: list  # conditions of non-train trials absent from the train trials (all-trial mean)


def condition_average(
    data: SpikeData, sigma_ms: float | Sequence[float] = DEFAULT_PSTH_SIGMAS_MS
) -> np.ndarray:
    """The condition-average baseline's rates (trials, T, N) float32; see `fit_condition_average`."""
    return fit_condition_average(data, sigma_ms).rates


def fit_condition_average(
    data: SpikeData, sigma_ms: float | Sequence[float] = DEFAULT_PSTH_SIGMAS_MS
) -> ConditionAverageFit:
    """Each trial's rates (all neurons, observed and forward bins) = the PSTH of its condition: the mean
    over the train trials of that condition of their recorded counts, smoothed along time with a
    Gaussian of s.d. `sigma_ms` (normalised by the number of recorded trials at each bin, so unrecorded
    entries are never counted as zeros). A condition with no train trial gets the mean over all train
    trials. Given several widths, the one with the best bits/spike on the recorded entries of the 'val'
    trials (all neurons, all bins) is kept; test trials are never used.
    """
    if data.condition is None:
        raise DataError(
            f"{data.source}: condition_average needs trial conditions; dataset has no 'condition'"
        )
    train = data.indices("train")
    if train.size == 0:
        raise DataError(f"{data.source}: condition_average needs train trials; split 'train' is empty")
    sigmas = [float(sigma_ms)] if np.isscalar(sigma_ms) else [float(x) for x in sigma_ms]
    if not sigmas or any(not (np.isfinite(x) and x > 0) for x in sigmas):
        raise ConfigError(f"sigma_ms must be a positive number or a non-empty list of them; got {sigma_ms!r}")
    mask = data.observed_mask()  # (trials, T, N)
    cond = data.condition
    labels = np.unique(cond[train])
    x = torch.as_tensor(data.spikes[train], dtype=torch.float64)  # (train, T, N)
    recorded = torch.as_tensor(mask[train], dtype=torch.float64)
    # Means of the recorded counts (0 where nothing was recorded) and recorded trials per entry, (C, T, N)
    # per condition; the all-trial mean is one more "condition" (last row), the fallback for unseen ones.
    by_condition = M.condition_means(x, recorded, cond[train], labels)
    overall = M.condition_means(x, recorded, np.zeros(train.size, dtype=int), np.zeros(1, dtype=int))
    means = torch.cat([by_condition[0], overall[0]]).numpy()  # (C+1, T, N)
    counts = torch.cat([by_condition[1], overall[1]]).numpy()
    del x, recorded, by_condition, overall  # float64 copies of the train trials: not needed any more
    row = {c: i for i, c in enumerate(labels.tolist())}
    which = np.array([row.get(c, len(labels)) for c in cond.tolist()])  # (trials,) PSTH row per trial
    unseen = sorted({c for c in cond.tolist() if c not in row})

    def psth(sigma: float) -> np.ndarray:  # (C+1, T, N); smooth(sum) / smooth(n) per condition
        return smooth_spikes(means, counts, data.bin_size, sigma)

    val = data.indices("val")
    val = val[(data.spikes[val] * mask[val]).sum(axis=(1, 2)) > 0]
    scores: dict[float, float] = {}
    if len(sigmas) > 1 and val.size > 0:
        for x in sigmas:  # the val trials' rows only, never all trials in float64
            scores[x] = M.bits_per_spike(psth(x)[which[val]], data.spikes[val], mask[val])
    best = max(scores, key=lambda x: scores[x]) if scores else sigmas[0]
    selected_on = "val trials" if scores else "fixed"
    # Rounded to float32 per condition, then one row per trial: the same numbers as rounding per trial.
    rates = psth(best).astype(np.float32)[which]  # (trials, T, N)
    return ConditionAverageFit(rates, best, scores, selected_on, unseen)


def mean_rates(data: SpikeData) -> np.ndarray:
    """The null row: each neuron's mean train count per bin (all recorded bins) everywhere, (trials, T, N)."""
    train = data.indices("train")
    if train.size == 0:
        raise DataError(f"{data.source}: mean_rates needs train trials; split 'train' is empty")
    mean = _mean_count(data, train, slice(None))  # (N,)
    return np.broadcast_to(mean, data.spikes.shape).astype(np.float32)


def true_rates(data: SpikeData) -> np.ndarray:
    """The generating rates (trials, T, N) of synthetic data (the ceiling)."""
    if data.rates is None:
        raise DataError(
            f"{data.source}: dataset {data.name!r} has no ground-truth rates (only synthetic data do)"
        )
    return data.rates


# ---------------------------------------------------------------------------------------------- registry
@dataclass
class BaselineRun:
    """One baseline's predictions on a dataset, with what a comparison table shows about it."""

    name: str
    rates: np.ndarray  # (trials, T, N) counts per bin
    latents: np.ndarray | None  # (trials, T, K) or None
    train_time_s: float
    n_parameters: int
    info: dict = field(default_factory=dict)  # settings worth a column or an hparam (e.g. chosen alpha)


BASELINES = ("smoothing_glm", "mean_rates", "condition_average", "true_rates")


def skip_reason(name: str, data: SpikeData) -> str | None:
    """Why baseline `name` cannot be computed on `data` (None when it can)."""
    if name == "true_rates" and data.rates is None:
        return f"dataset {data.name!r} has no ground-truth rates"
    if name == "condition_average" and data.condition is None:
        return f"dataset {data.name!r} has no trial conditions"
    return None


def run_baselines(data: SpikeData, names: Sequence[str] | None = None, **glm_kwargs) -> list[BaselineRun]:
    """Compute baselines on `data`; default: all of `BASELINES` but true_rates without ground truth.
    condition_average on data without conditions is skipped, with the reason logged as a warning (not
    an error: real recordings often lack them); `glm_kwargs` go to `fit_smoothing_glm`."""
    return list(iter_baselines(data, names, **glm_kwargs))


def iter_baselines(
    data: SpikeData, names: Sequence[str] | None = None, **glm_kwargs
) -> Iterator[BaselineRun]:
    """`run_baselines` one baseline at a time (its rates can be dropped before the next is computed)."""
    if names is None:
        names = [n for n in BASELINES if n != "true_rates" or skip_reason(n, data) is None]
    unknown = sorted(set(names) - set(BASELINES))
    if unknown:
        raise ConfigError(f"unknown baseline(s) {unknown}; choose from {BASELINES}")
    for name in names:
        if name == "condition_average" and skip_reason(name, data):
            log.warning("baseline condition_average skipped: %s", skip_reason(name, data))
            continue
        t0 = time.perf_counter()
        info: dict = {}
        if name == "smoothing_glm":
            fit = fit_smoothing_glm(data, **glm_kwargs)
            rates, latents = fit.rates, None
            info = {"alpha": fit.alpha, "sigma_ms": fit.sigma_ms, "alpha_selected_on": fit.selected_on}
            n_par = data.n_heldin * data.n_heldout + data.n_heldout + (data.n_neurons if data.n_fwd else 0)
        elif name == "mean_rates":
            rates, latents, n_par = mean_rates(data), None, data.n_neurons
        elif name == "condition_average":
            with large_blocks_returned():  # float64 copies of all train trials
                ca = fit_condition_average(data)
            rates, latents = ca.rates, None
            n_conditions = len(np.unique(data.condition[data.indices("train")]))
            n_par = n_conditions * data.n_bins * data.n_neurons
            info = {"sigma_ms": ca.sigma_ms, "sigma_selected_on": ca.selected_on}
            if ca.unseen_conditions:  # their trials got the all-trial mean
                info["all_trial_mean_for_conditions"] = ca.unseen_conditions
        else:
            rates, latents, n_par = true_rates(data), data.latents, 0
        yield BaselineRun(name, rates, latents, time.perf_counter() - t0, int(n_par), info)


__all__ = [
    "BASELINES",
    "baseline_cache_dir",
    "baseline_rows",
    "BaselineRun",
    "ConditionAverageFit",
    "DEFAULT_PSTH_SIGMAS_MS",
    "condition_average",
    "data_fingerprint",
    "fit_condition_average",
    "DEFAULT_GLM_ALPHAS",
    "SmoothingGLMFit",
    "fit_poisson_glm",
    "fit_smoothing_glm",
    "iter_baselines",
    "mean_rates",
    "run_baselines",
    "skip_reason",
    "smooth_spikes",
    "smoothing_glm",
    "true_rates",
]


def baseline_rows(
    data: SpikeData,
    split: str = "test",
    names: Sequence[str] | None = None,
    data_label: str | None = None,
    *,
    cache: bool = True,
    load_options: Mapping | None = None,
    **glm_kwargs,
) -> list[dict]:
    """Table rows (as in metrics.json: model, data, split, metrics, train_time_s, n_parameters, info)
    for the baselines on `data`, each scored by `neuralnets.eval.evaluate` on `split`.

    `cache`: read the rows from the baseline cache when an entry for this data, split, baselines, GLM
    options and `load_options` (the loader's keyword arguments, recorded in the key) is there, else compute
    and store them (see the module docstring). `train_time_s` is the time the rows took when computed."""
    key = _cache_key(data, split, names, glm_kwargs, load_options) if cache else None
    rows = _read_cache(key) if key is not None else None
    if rows is None:
        rows = []
        for run in iter_baselines(data, names, **glm_kwargs):  # one baseline's rates in memory at a time
            with large_blocks_returned():  # scoring: float64 temporaries of many sizes
                metrics = evaluate(run.rates, data, split, run.latents)
            rows.append(
                {
                    "model": f"baseline/{run.name}",
                    "split": split,
                    "metrics": metrics,
                    "train_time_s": run.train_time_s,
                    "n_parameters": run.n_parameters,
                    "info": run.info,
                }
            )
        rows = json.loads(json.dumps(rows, default=_json_value))  # the types a cache hit gives back
        if key is not None:
            _write_cache(key, rows)
    label = data_label or data.name
    return [{"model": r.pop("model"), "data": label, **r} for r in rows]
