"""`evaluate(rates, data, split)`: score predicted rates (and latents) against a `SpikeData`.

`evaluate` never looks at a model: it scores rates (and optionally latents) predicted for *every* trial
of a `SpikeData` against that data. Regressions (velocity, latents) are fit on the train trials and
scored on the `split` trials; the Poisson metrics only ever touch the `split` trials. The metric
definitions live in `neuralnets.eval.metrics` (`METRICS` names them), `.regression` and `.fewshot`;
writing the scores to a run directory is `neuralnets.runs`, logging them `neuralnets.eval.tblog`,
tables `neuralnets.eval.tables`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch
from torch import Tensor

from neuralnets.data.sessions import MultiSessionData
from neuralnets.data.spikedata import SpikeData
from neuralnets.errors import ConfigError, DataError
from neuralnets.eval import metrics as M
from neuralnets.eval.fewshot import fit_fewshot
from neuralnets.eval.metrics import METRICS
from neuralnets.eval.regression import fit_vel, latent_r2, vel_r2_score

# `SpikeData.meta` key listing the splits whose behaviour is real data (set by
# `neuralnets.data.formats.nlb_h5.load_nlb_h5` when only the NLB train trials have behaviour; the other
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


PSTH_VARIANTS = ("nlb", "heldout")


def skipped_metrics(
    data: SpikeData,
    split: str = "test",
    latents: Any = None,
    psth_variant: str = "nlb",
    fewshot: bool = True,
    inputs: Any = None,
) -> dict[str, str]:
    """Metrics `evaluate` cannot compute on this data/split (or was asked to skip), each with the reason.

    latents, inputs: the model latents (trials, T_lat, K) and inferred inputs (trials, T_inf, U') or None
    (only their presence and shape are read)."""
    idx = data.indices(split)
    train = data.indices("train")
    # (trials_eval, T, N); None: every entry recorded (no all-True copy to multiply with)
    mask = None if data.observed is None else data.observed[idx]
    spikes = data.spikes[idx]
    t_obs, n_in = data.n_obs, data.n_heldin
    reasons: dict[str, str] = {}

    def no_spikes(sl) -> bool:
        return not (spikes[sl].any() if mask is None else (spikes[sl] * mask[sl]).any())

    if data.n_heldout == 0:
        reasons["co_bps"] = "no held-out neurons"
    elif no_spikes((slice(None), slice(0, t_obs), slice(n_in, None))):
        reasons["co_bps"] = f"no held-out spikes recorded in the {split!r} trials"
    if data.n_fwd == 0:
        reasons["fp_bps"] = "no forward-prediction bins"
    elif mask is not None and not mask[:, t_obs:].any():
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
    elif psth_variant == "heldout" and data.n_heldout == 0:
        reasons["psth_r2"] = "no held-out neurons (psth_variant='heldout' scores held-out neurons)"
    if "co_bps" in reasons:
        reasons["fewshot_co_bps"] = reasons["co_bps"]
    elif not fewshot:
        reasons["fewshot_co_bps"] = "skipped on request (fewshot=False)"
    elif latents is None:
        reasons["fewshot_co_bps"] = "no model latents given"
    elif len(np.shape(latents)) != 3 or np.shape(latents)[1] < t_obs:
        reasons["fewshot_co_bps"] = (
            f"model latents of shape {tuple(np.shape(latents))} do not cover the {t_obs} observed bins"
        )
    else:
        held = data.spikes[train][:, :t_obs, n_in:]
        if not (
            held.any() if data.observed is None else (held * data.observed[train][:, :t_obs, n_in:]).any()
        ):
            reasons["fewshot_co_bps"] = "no held-out spikes recorded in the train trials"
    if data.inputs is None:
        reasons["input_corr"] = "no known inputs in the data"
    elif not np.any(data.inputs[data.indices(split)] != data.inputs[data.indices(split)][:1, :1]):
        reasons["input_corr"] = "the known inputs never vary on these trials (an input-free system)"
    elif inputs is None:
        reasons["input_corr"] = "no inferred inputs given"
    elif min(np.shape(inputs)[1], t_obs) < M.INPUT_CORR_MAX_LAG + M.INPUT_CORR_MAX_LEAD + 2:
        reasons["input_corr"] = (
            f"inferred inputs ({np.shape(inputs)[1]} bins) and observed bins ({t_obs}) must both cover "
            f"{M.INPUT_CORR_MAX_LAG + M.INPUT_CORR_MAX_LEAD + 2} bins "
            f"(lags -{M.INPUT_CORR_MAX_LEAD}..{M.INPUT_CORR_MAX_LAG})"
        )
    if "input_corr" in reasons:
        reasons["input_readout_r2"] = reasons["input_corr"]
    elif len(data.indices(split)) < 2:
        reasons["input_readout_r2"] = f"fewer than 2 {split!r} trials (the read-out is cross-validated)"
    if data.rates is None:
        reasons["rate_r2"] = "no ground-truth rates"
    if data.latents is None:
        reasons["latent_r2"] = "no ground-truth latents"
    elif latents is None:
        reasons["latent_r2"] = "no model latents given"
    elif len(train) == 0:
        reasons["latent_r2"] = "no train trials to fit the latent map"
    return reasons


def _all_trials(x: Any, name: str, dim: str, data: SpikeData) -> Tensor:
    """`x` as a tensor of shape (trials, T, dim) covering every trial of `data`, or a ValueError."""
    t = M.as_tensor(x, name, keep_float=True)  # the metrics convert the trials they use to float64
    if t.ndim != 3 or t.shape[0] != data.n_trials:
        raise DataError(
            f"{name} have shape {tuple(t.shape)}; expected ({data.n_trials}, T, {dim}) for all trials of "
            f"data {data.name!r}"
        )
    return t


def evaluate(
    rates: np.ndarray | Tensor,
    data: SpikeData,
    split: str = "test",
    latents: np.ndarray | Tensor | None = None,
    *,
    psth_sigma_ms: float = M.DEFAULT_PSTH_SIGMA_MS,
    alphas: tuple[float, ...] = M.DEFAULT_ALPHAS,
    vel_cv: str = "samples",
    psth_variant: str = "nlb",
    fewshot_k: int = M.FEWSHOT_K,
    fewshot_resamples: int = M.FEWSHOT_RESAMPLES,
    fewshot: bool = True,
    inputs: np.ndarray | Tensor | None = None,
) -> dict[str, float]:
    """Score predicted rates on `data`'s `split` trials; returns {metric: value} for the computable metrics.

    rates: (trials, T_obs+T_fwd, N_all) expected counts per bin for ALL trials of `data` (numpy or torch,
    any device; the Poisson metrics run on that device). latents: optional (trials, T_lat, K) for all
    trials; latent R² uses the first min(T_lat, T) bins of both model and true latents, few-shot co-bps
    the first T_obs bins of the model latents. inputs: optional inferred inputs (trials, T_inf, U') for all
    trials, compared with `data.inputs` on the split's first min(T_inf, T_obs) bins (`input_corr`).
    Entries with `data.observed == False` are never scored. Metrics that cannot be computed (see
    `skipped_metrics`) are left out of the dict. Keys and meanings: `METRICS`. `fewshot=False` skips
    few-shot co-bps, the one costly metric (`fewshot_resamples` Poisson GLM fits): the training
    callback skips it, the final scoring of a run keeps it.

    The defaults are NLB's definitions. Earlier project variants, by name: `alphas=M.LEGACY_ALPHAS,
    vel_cv="trials"` (vel R² with alpha chosen by CV over trials); `psth_variant="heldout"` (PSTH R² on
    held-out neurons only, target averaged over the evaluated trials only, constant-target neurons left
    out).
    """
    return evaluate_splits(
        rates,
        data,
        (split,),
        latents,
        psth_sigma_ms=psth_sigma_ms,
        alphas=alphas,
        vel_cv=vel_cv,
        psth_variant=psth_variant,
        fewshot_k=fewshot_k,
        fewshot_resamples=fewshot_resamples,
        fewshot=fewshot,
        inputs=inputs,
    )[split]


def evaluate_splits(
    rates: np.ndarray | Tensor,
    data: SpikeData,
    splits: Sequence[str] = ("val", "test"),
    latents: np.ndarray | Tensor | None = None,
    *,
    psth_sigma_ms: float = M.DEFAULT_PSTH_SIGMA_MS,
    alphas: tuple[float, ...] = M.DEFAULT_ALPHAS,
    vel_cv: str = "samples",
    psth_variant: str = "nlb",
    fewshot_k: int = M.FEWSHOT_K,
    fewshot_resamples: int = M.FEWSHOT_RESAMPLES,
    fewshot: bool = True,
    inputs: np.ndarray | Tensor | None = None,
) -> dict[str, dict[str, float]]:
    """`evaluate` on several splits at once: {split: metrics}, each equal to `evaluate(..., split)`.

    What only depends on the train trials is computed once for all splits: the rates' validation, the
    velocity ridge fit (alpha by CV on the train trials) and the few-shot GLM read-outs (`fit_fewshot`,
    the costly part of a run's final scoring)."""
    if psth_variant not in PSTH_VARIANTS:
        raise ConfigError(f"psth_variant must be one of {PSTH_VARIANTS}; got {psth_variant!r}")
    lam = M.as_tensor(rates, "rates", keep_float=True)  # no float64 copy of all trials
    if tuple(lam.shape) != data.spikes.shape:
        raise DataError(
            f"rates have shape {tuple(lam.shape)} but data {data.name!r} has spikes of shape "
            f"{data.spikes.shape} (trials, bins, neurons); rates must cover all trials, bins and neurons"
        )
    for split in splits:
        if data.indices(split).size == 0:
            raise DataError(f"{data.source}: split {split!r} has no trials")
    dev = lam.device
    # Validate once over all trials (the regressions also read the train trials), with global indices.
    M.check_values(
        lam, "rates", None if data.observed is None else torch.as_tensor(data.observed, device=dev), True
    )
    z = None if latents is None else _all_trials(latents, "latents", "K", data)  # (trials, T, K)
    u = None if inputs is None else _all_trials(inputs, "inputs", "U", data)  # (trials, T, U)
    shared: dict[str, Any] = {}  # train-side fits, computed for the first split that needs them
    return {
        split: _evaluate_split(
            lam, data, split, z, u, shared, latents, inputs, psth_sigma_ms, alphas, vel_cv, psth_variant,
            fewshot_k, fewshot_resamples, fewshot,
        )
        for split in splits
    }  # fmt: skip


def _evaluate_split(
    lam: Tensor,
    data: SpikeData,
    split: str,
    z: Tensor | None,
    u: Tensor | None,
    shared: dict[str, Any],
    latents: Any,
    inputs: Any,
    psth_sigma_ms: float,
    alphas: tuple[float, ...],
    vel_cv: str,
    psth_variant: str,
    fewshot_k: int,
    fewshot_resamples: int,
    fewshot: bool,
) -> dict[str, float]:
    """The metrics of one split (`evaluate_splits`); `shared` keeps the train-side fits between splits."""
    idx = data.indices(split)
    dev = lam.device
    skip = skipped_metrics(data, split, latents, psth_variant, fewshot, inputs)
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
        if "vel" not in shared:  # the ridge fit on the train trials serves every split
            shared["vel"] = fit_vel(lam[torch.as_tensor(tr, device=dev), :t_obs], beh[tr], alphas, cv=vel_cv)
        out["vel_r2"] = vel_r2_score(
            *shared["vel"], lam[torch.as_tensor(ev, device=dev), :t_obs], beh[ev], vel_cv
        )
    if "psth_r2" not in skip:
        # NLB: all neurons, the target averages every trial of the dataset with that condition (recorded
        # bins). The earlier variant: held-out neurons only, target from the evaluated trials, constant ones
        # dropped.
        nlb = psth_variant == "nlb"
        sl = (slice(None), slice(0, t_obs), slice(None) if nlb else slice(n_in, None))
        target = (
            {
                "target_spikes": data.spikes[sl],
                "target_condition": data.condition,
                "target_mask": None if data.observed is None else data.observed[sl],
            }
            if nlb
            else {"constant_target": "drop"}
        )
        out["psth_r2"] = M.psth_r2(
            lam_e[sl],
            y_e[sl],
            data.condition[idx],
            data.bin_size,
            psth_sigma_ms,
            None if m_e is None else m_e[sl],
            **target,
            target_cache=shared.setdefault("psth", {}) if nlb else None,  # every split's target: all trials
        )
    if fewshot and "fewshot_co_bps" not in skip:
        tr = data.indices("train")
        obs = data.observed_mask()  # (trials, T, N)
        tr = tr[(data.spikes[tr, :t_obs, n_in:] * obs[tr, :t_obs, n_in:]).sum(axis=(1, 2)) > 0]
        sl = (slice(0, t_obs), slice(n_in, None))
        if "fewshot" not in shared:  # the k-trial read-outs, fit once for every split
            shared["fewshot"] = fit_fewshot(
                z[torch.as_tensor(tr, device=z.device), :t_obs],
                data.spikes[tr][:, sl[0], sl[1]],
                k=fewshot_k,
                n_resamples=fewshot_resamples,
                mask_train=obs[tr][:, sl[0], sl[1]],
            )
        out["fewshot_co_bps"] = shared["fewshot"].score(
            z[torch.as_tensor(idx, device=z.device), :t_obs],
            data.spikes[idx][:, sl[0], sl[1]],
            obs[idx][:, sl[0], sl[1]],
        )
    if "bps_heldin" not in skip:
        sl = (slice(None), slice(0, t_obs), slice(0, n_in))
        out["bps_heldin"] = M.bits_per_spike(lam_e[sl], y_e[sl], None if m_e is None else m_e[sl])
    if "input_corr" not in skip:
        t = min(u.shape[1], t_obs)
        out["input_corr"] = M.input_corr(data.inputs[idx, :t], u[torch.as_tensor(idx, device=u.device), :t])
    if "input_readout_r2" not in skip:
        t = min(u.shape[1], t_obs)
        u_e = u[torch.as_tensor(idx, device=u.device), :t]
        out["input_readout_r2"] = M.input_readout_r2(data.inputs[idx, :t], u_e)
    if "rate_r2" not in skip:
        out["rate_r2"] = M.rate_r2(lam_e, data.rates[idx], m_e)
    if "latent_r2" not in skip:
        t = min(z.shape[1], data.latents.shape[1])  # common leading bins
        tr = data.indices("train")
        zt = data.latents
        out["latent_r2"] = latent_r2(
            z[torch.as_tensor(tr, device=z.device), :t],
            zt[tr, :t],
            z[torch.as_tensor(idx, device=z.device), :t],
            zt[idx, :t],
        )
    return {k: out[k] for k in METRICS if k in out}


def evaluate_sessions(
    predictions: Mapping[str, Mapping[str, Any]], data: MultiSessionData, split: str = "test", **kwargs: Any
) -> dict[str, Any]:
    """`evaluate` each session of `data` on its `split` trials: `predictions` is {session: {"rates":
    (trials, T, N_s), "latents": (trials, T, K) optional, "inputs": optional}} for all of that session's
    trials; `kwargs` go to `evaluate`. Returns {"sessions": {session: metrics}, "mean": {metric: mean over
    the sessions}} (a metric enters the mean only if every session has it)."""
    missing = sorted(set(data.names) - set(predictions))
    if missing:
        raise DataError(f"no predictions for session(s) {missing} of {data.name!r}")
    per_session = {
        name: evaluate(
            predictions[name]["rates"],
            session,
            split,
            latents=predictions[name].get("latents"),
            inputs=predictions[name].get("inputs"),
            **kwargs,
        )  # fmt: skip
        for name, session in data
    }
    common = [k for k in METRICS if all(k in m for m in per_session.values())]
    mean = {k: float(np.mean([m[k] for m in per_session.values()])) for k in common}
    return {"sessions": per_session, "mean": mean}
