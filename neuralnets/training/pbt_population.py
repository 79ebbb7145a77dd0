"""Population-based training in population mode: `neuralnets-pbt ... pbt.population=true`.

The same PBT as `neuralnets.training.pbt` (AutoLFADS: Keshtkaran et al. 2022; `configs/pbt.yaml`), with
the `pbt.num_samples` members trained in this process as one batched population
(`neuralnets.training.population`) instead of Ray Tune trials: no Ray needed on one machine. Every
`pbt.perturbation_interval` epochs the members are ranked by `pbt.metric`; each of the worst
`quantile_fraction` copies a random best member's slice in place (weights, AdamW moments and step
count, learning rate) and its searched hyperparameters, then perturbs them (x0.8 / x1.2, or resampled
within `pbt.search_space` with `resample_probability`), kept inside the bounds. Every member stays an
ordinary run directory (its checkpoints carry its final hyperparameters); `pbt_history.json` in the
population directory lists every exploit and the member's values after it.
"""

from __future__ import annotations

import json
import logging
import math
from pathlib import Path
from typing import Any

import numpy as np
import torch
from omegaconf import DictConfig, OmegaConf

from neuralnets.errors import ConfigError
from neuralnets.files import write_text_atomic
from neuralnets.models.base import Ramp
from neuralnets.training.pbt_space import check_config, search_bounds
from neuralnets.training.population import Population

log = logging.getLogger(__name__)
HISTORY_FILE = "pbt_history.json"
# model keys whose value is the scale of an auxiliary loss (the ramp keeps its start and length)
AUX_SCALES = {
    "kl_ic_scale": "kl_ic",
    "kl_co_scale": "kl_co",
    "l2_gen_scale": "l2_gen",
    "l2_con_scale": "l2_con",
    "kl_scale": "kl",  # RNNSeq2Seq (variational)
}


def _draw(rng: np.random.Generator, low: float, high: float, log_scale: bool) -> float:
    if log_scale:
        return float(math.exp(rng.uniform(math.log(low), math.log(high))))
    return float(rng.uniform(low, high))


def set_member_value(pop: Population, k: int, key: str, value: float) -> None:
    """Set searched hyperparameter `key` (a dotted config key) of member k in place: the population's
    batched settings, the member's module (so its checkpoints rebuild with the value) and its config."""
    m = pop.members[k]
    group, name = key.split(".", 1)
    if group == "module" and name == "lr":
        pop.optim.lr[k] = value
    elif group == "module" and name == "coordinated_dropout":
        pop.cd[k] = value
    elif group == "module" and name in ("weight_decay", "adam_eps"):
        getattr(pop.optim, "eps" if name == "adam_eps" else "weight_decay")[k] = value
    elif group == "model" and name == "dropout":
        pop.model.dropout_p[k] = value
        m.module.model.dropout.p = value  # its noise draws read the rate here
    elif group == "model" and name in AUX_SCALES:
        aux = AUX_SCALES[name]
        if aux in pop.model.aux_ramps:
            old = pop.model.aux_ramps[aux][k]
            pop.model.aux_ramps[aux][k] = m.module.model.aux_weights[aux] = Ramp(value, old.start, old.steps)
    else:
        raise ConfigError(f"pbt.population: {key} cannot be changed during training in population mode")
    if group == "module":
        m.module.hparams[name] = value
    else:
        m.module.hparams["model"][name] = value
    OmegaConf.update(m.cfg, key, value, merge=False)


def copy_member(pop: Population, src: int, dst: int) -> None:
    """Exploit: member `dst` continues from member `src`'s state (weights, AdamW moments and step count,
    learning rate); its own run directory, RNG stream and batch order stay its own."""
    with torch.no_grad():
        for p, m_, v_ in zip(pop.params, pop.optim.exp_avg, pop.optim.exp_avg_sq, strict=True):
            p[dst].copy_(p[src])
            m_[dst].copy_(m_[src])
            v_[dst].copy_(v_[src])
    pop.optim.steps[dst] = pop.optim.steps[src]
    pop.optim.lr[dst] = pop.optim.lr[src]
    a, b = pop.members[src], pop.members[dst]
    b.step = a.step  # the ramps continue where the source's are
    b.best, b.best_path, b.wait = None, None, 0  # its next checkpoint is its own new best


def run_population_pbt(cfg: DictConfig, out: str | Path | None = None) -> list[dict[str, Any]]:
    """PBT of `cfg` (`configs/pbt.yaml`) as one population; returns the members' records, best first."""
    check_config(cfg)
    p = cfg.pbt
    bounds = search_bounds(cfg)
    rng = np.random.default_rng(int(cfg.seed))
    base = OmegaConf.create(OmegaConf.to_container(cfg, resolve=False))
    base.pop("pbt")
    base.callbacks.early_stopping_patience = 0  # generations decide who continues, not early stopping
    if p.metric not in ("val/loss", "val/co_bps", "val/recon"):
        raise ConfigError(f"pbt.population: pbt.metric={p.metric}; use val/recon, val/loss or val/co_bps")
    cfgs = []
    for i in range(int(p.num_samples)):
        member = OmegaConf.create(OmegaConf.to_container(base, resolve=False))
        member.seed = int(cfg.seed) + i
        for key, (low, high, log_scale) in bounds.items():
            OmegaConf.update(member, key, _draw(rng, low, high, log_scale), merge=False)
        cfgs.append(member)
    pop = Population(cfgs)
    with pop.recorded(out):  # member statuses recorded on a signal or an error
        return _evolve(pop, p, bounds, rng)


def _evolve(pop: Population, p: DictConfig, bounds: dict, rng: np.random.Generator) -> list[dict[str, Any]]:
    """The generations: train `p.perturbation_interval` epochs, then the bottom quantile copies a top
    member and perturbs or resamples its searched values; finally score every member (best first)."""
    cfg0 = pop.members[0].cfg
    sign = 1.0 if p.mode == "max" else -1.0
    history: list[dict[str, Any]] = []
    n_gen = int(cfg0.trainer.max_epochs) // int(p.perturbation_interval)
    for gen in range(n_gen):
        for _ in range(int(p.perturbation_interval)):
            val = pop.run_epoch()
        pop.save_state()
        if gen == n_gen - 1:
            break
        score = np.array([sign * v if math.isfinite(v) else -math.inf for v in val[p.metric]])  # maximised
        order = np.argsort(-score, kind="stable")  # best first
        n_q = max(1, int(math.ceil(pop.K * float(p.quantile_fraction))))
        top, bottom = order[:n_q], order[-n_q:]
        for dst in bottom:
            src = int(rng.choice(top))
            copy_member(pop, src, int(dst))
            values = {}
            for key, (low, high, log_scale) in bounds.items():
                if rng.random() < float(p.resample_probability):
                    new = _draw(rng, low, high, log_scale)
                else:
                    new = float(OmegaConf.select(pop.members[src].cfg, key)) * float(rng.choice([0.8, 1.2]))
                values[key] = min(max(new, low), high)
                set_member_value(pop, int(dst), key, values[key])
            history.append({"generation": gen, "epoch": pop.members[int(dst)].epoch, "member": int(dst),
                            "copied": src, "values": values})  # fmt: skip
            log.info("pbt generation %d: member %d <- member %d, %s", gen, dst, src, values)
        write_text_atomic(pop.dir / HISTORY_FILE, json.dumps(history, indent=1))
    final = [sign * v if math.isfinite(v) else -math.inf for v in val[p.metric]]  # maximised
    records = pop.finish()
    for record, value in zip(records, final, strict=True):
        record["pbt"] = {p.metric: sign * value}
    return [records[i] for i in np.argsort(-np.array(final), kind="stable")]
