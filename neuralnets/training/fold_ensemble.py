"""Ensembles of runs trained on different cross-validation folds (`data.load_kwargs.fold`): bagging
over folds, chosen by cross-validation. `neuralnets-ensemble` comes here when its runs differ only in
their fold.

Runs are grouped into configurations (the same settings, different folds: `fold_groups`). A
configuration's out-of-fold prediction holds, for each trial of the folds, the rates of its member that
did not train on that trial; its cross-validated score is co-bps of that prediction over every fold's
trials (e.g. all 75 NLB training trials of MC_Maze_Small, against the 15 of one validation split).
Configurations are ranked by that score and the number k averaged is the one whose mean out-of-fold
prediction scores highest (`choose_configurations`); the test trials are never used. The ensemble
averages every member (every fold) of the k configurations on the test trials; on the folds' trials it
holds the out-of-fold mean, so its validation numbers stay out-of-sample.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from omegaconf import OmegaConf

from neuralnets.config import load_saved_config
from neuralnets.data.spikedata import SpikeData
from neuralnets.errors import ConfigError, DataError
from neuralnets.runs import CONFIG_FILE, load_run_data

SETTINGS = ("seed", "module", "model", "data", "trainer", "callbacks")  # what makes a configuration


def without_fold(kwargs: Any) -> dict:
    """Load kwargs (a dict or DictConfig; None: none) without `fold`: what folds of one data set share."""
    items = OmegaConf.to_container(kwargs) if OmegaConf.is_config(kwargs) else dict(kwargs or {})
    return {k: v for k, v in items.items() if k != "fold"}


def differ_only_in_fold(runs: Sequence[dict[str, Any]]) -> bool:
    """True when the runs share their data except `fold` and at least two folds occur; False when all
    share the data exactly; a DataError naming the first run whose data differs in more."""
    first = runs[0]
    base = without_fold(first.get("data_kwargs"))
    folds = set()
    for run in runs:
        folds.add((run.get("data_kwargs") or {}).get("fold"))
        kwargs = without_fold(run.get("data_kwargs"))
        pairs = [("data_source", run.get("data_source") or None, first.get("data_source") or None)]
        pairs += [(f"data_kwargs.{k}", kwargs.get(k), base.get(k)) for k in sorted(set(kwargs) | set(base))]
        for key, mine, theirs in pairs:
            if mine != theirs:
                raise DataError(
                    f"{run['run_dir']} was trained on {key}={mine!r}, but {first['run_dir']} on "
                    f"{theirs!r}: an ensemble needs runs on the same data (they may differ only in "
                    "data.load_kwargs.fold)"
                )
    return len(folds) > 1


def fold_groups(runs: Sequence[dict[str, Any]]) -> list[list[int]]:
    """Indices of `runs` grouped by configuration: the settings of config.yaml (`SETTINGS`) with
    `data.load_kwargs.fold` left out, in first-seen order."""
    groups: dict[str, list[int]] = {}
    for i, run in enumerate(runs):
        cfg = OmegaConf.to_container(load_saved_config(Path(run["run_dir"]) / CONFIG_FILE))
        settings = {key: cfg.get(key) for key in SETTINGS}
        if settings.get("data"):
            settings["data"]["load_kwargs"] = without_fold(settings["data"].get("load_kwargs"))
        groups.setdefault(json.dumps(settings, sort_keys=True, default=str), []).append(i)
    return list(groups.values())


def out_of_fold(
    rates: Sequence[np.ndarray],
    val_masks: Sequence[np.ndarray],
    runs: Sequence[dict[str, Any]],
    group: list[int],
) -> np.ndarray:
    """The group's out-of-fold rates `(trials, T, N)`: each trial from the member that validated on it
    (zeros on trials no member validated on). Two members validating on one trial is a DataError."""
    oof = np.zeros_like(rates[group[0]])
    seen = np.zeros(len(val_masks[group[0]]), dtype=bool)
    for i in group:
        if (seen & val_masks[i]).any():
            raise DataError(
                f"{runs[i]['run_dir']}: its validation trials overlap another member's of the same "
                f"configuration (fold {(runs[i].get('data_kwargs') or {}).get('fold')} twice?)"
            )
        oof[val_masks[i]] = rates[i][val_masks[i]]
        seen |= val_masks[i]
    return oof


def validation_masks(runs: Sequence[dict[str, Any]]) -> list[np.ndarray]:
    """Each run's validation trials `(trials,)` bool, from its own data split (loaded once per fold)."""
    cache: dict[str, np.ndarray] = {}
    masks = []
    for run in runs:
        key = json.dumps(run.get("data_kwargs") or {}, sort_keys=True)
        if key not in cache:
            cache[key] = load_run_data(run).split == "val"
        masks.append(cache[key])
    return masks


def choose_configurations(
    rates: Sequence[np.ndarray], runs: Sequence[dict[str, Any]], data: SpikeData, k: int | str = "auto"
) -> dict[str, Any]:
    """Rank configurations by cross-validated co-bps and choose k (see the module docstring). `data` is
    the data without `fold` (its test trials are every fold's). Returns groups (run indices), their
    scores, the order, k, the curve {k: score} (auto only), the folds' trials and each group's
    out-of-fold rates. A configuration missing a fold the others have is left out (named in `skipped`)."""
    from neuralnets.eval.harness import evaluate

    masks = validation_masks(runs)
    groups = fold_groups(runs)
    covered = [np.logical_or.reduce([masks[i] for i in g]) for g in groups]
    folds = np.logical_or.reduce(covered)  # (trials,) every fold's validation trials
    complete = [gi for gi, c in enumerate(covered) if (c == folds).all()]
    skipped = [
        {"run_dir": runs[i]["run_dir"], "status": "incomplete folds", "error": None}
        for gi, g in enumerate(groups)
        if gi not in complete
        for i in g
    ]
    if not complete:
        raise DataError("no configuration was trained on every fold; a cross-validated ensemble needs one")
    cv_data = dataclasses.replace(data, split=np.where(folds, "val", data.split))  # folds' trials as val
    oof = {gi: out_of_fold(rates, masks, runs, groups[gi]) for gi in complete}
    scores = {gi: evaluate(oof[gi], cv_data, "val")["co_bps"] for gi in complete}
    order = sorted(complete, key=lambda gi: -scores[gi])
    curve: dict[int, float] = {}
    if k == "auto":
        for n in range(1, len(order) + 1):
            curve[n] = evaluate(np.mean([oof[gi] for gi in order[:n]], axis=0), cv_data, "val")["co_bps"]
        k = max(curve, key=curve.get)
    elif not 1 <= int(k) <= len(order):
        raise ConfigError(f"--k {k}: expected 'auto' or 1..{len(order)} (the configurations on every fold)")
    return {
        "groups": groups, "scores": scores, "order": order, "k": int(k), "curve": curve,
        "folds": folds, "oof": oof, "cv_data": cv_data, "masks": masks, "skipped": skipped,
    }  # fmt: skip


def fold_ensemble_rates(rates: Sequence[np.ndarray], choice: dict[str, Any]) -> tuple[np.ndarray, np.ndarray]:
    """(the ensemble's rates (trials, T, N): every member of the chosen configurations averaged, the
    folds' trials replaced by the chosen configurations' out-of-fold mean; that out-of-fold mean)."""
    chosen = choice["order"][: choice["k"]]
    members = [i for gi in chosen for i in choice["groups"][gi]]
    mean = np.mean([rates[i] for i in members], axis=0, dtype=np.float64).astype(np.float32)
    oof = np.mean([choice["oof"][gi] for gi in chosen], axis=0, dtype=np.float64).astype(np.float32)
    mean[choice["folds"]] = oof[choice["folds"]]
    return mean, oof


def describe_members(
    runs: Sequence[dict[str, Any]], scores: Sequence[float], choice: dict[str, Any]
) -> list[dict]:
    """One entry per run for metrics.json: its fold, configuration, own-fold val co-bps, the
    configuration's cross-validated co-bps and whether it is averaged."""
    chosen = set(choice["order"][: choice["k"]])
    out = []
    for gi, group in enumerate(choice["groups"]):
        for i in group:
            out.append({
                "run_dir": runs[i]["run_dir"], "model": runs[i]["model"],
                "fold": (runs[i].get("data_kwargs") or {}).get("fold"), "configuration": gi,
                "val_co_bps": scores[i], "cv_co_bps": choice["scores"].get(gi), "chosen": gi in chosen,
            })  # fmt: skip
    return out


def bagged_ensemble(
    rates: Sequence[np.ndarray], runs: Sequence[dict[str, Any]], data: SpikeData, k: int | str = "auto"
) -> dict[str, Any]:
    """What `neuralnets-ensemble` records for runs on different folds: the ensemble's `rates`, the
    `members` entries, the `chosen` run indices, `k` (configurations), the `curve`, `skipped` runs,
    the `k_rule` and the chosen configurations' out-of-fold `cv_metrics`."""
    from neuralnets.eval.harness import evaluate

    choice = choose_configurations(rates, runs, data, k)
    mean, oof = fold_ensemble_rates(rates, choice)
    members = describe_members(runs, [r["val_metrics"].get("co_bps") for r in runs], choice)
    n_folds, n_trials = len({m["fold"] for m in members}), int(choice["folds"].sum())
    return {
        "rates": mean,
        "members": members,
        "chosen": [i for gi in choice["order"][: choice["k"]] for i in choice["groups"][gi]],
        "k": choice["k"],
        "curve": choice["curve"],
        "skipped": choice["skipped"],
        "k_rule": f"top-k configurations by cross-validated val co_bps over {n_folds} folds ({n_trials} "
        "trials, out-of-fold)" + (" (k chosen on them)" if k == "auto" else ""),
        "cv_metrics": evaluate(oof, choice["cv_data"], "val"),
    }


def base_data(runs: Sequence[dict[str, Any]]) -> tuple[SpikeData, dict[str, Any]]:
    """The data without `fold` (the default split; the same test trials as every fold) and its kwargs."""
    kwargs = without_fold(runs[0].get("data_kwargs"))
    return load_run_data({**runs[0], "data_kwargs": kwargs}), kwargs
