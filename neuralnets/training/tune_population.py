"""`neuralnets-tune ... tune.population=K`: a tuning worker that trains its members K at a time as one
population (`neuralnets.training.population`), for small models whose members are many and cheap.

The study is the same Optuna study as `neuralnets.training.tune` (storage, sampler, successive-halving
pruner, budget `tune.n_trials`, `members/NNN` run directories, leaderboard): the worker asks Optuna for K
members, trains them as one batched model, reports each member's `tune.metric` every epoch to its trial,
and as soon as a member is pruned or done it is scored (`finish_run`: an ordinary run directory), told to
the study, and its slot is refilled with the next member Optuna asks for, until the budget is spent.
"""

from __future__ import annotations

import logging
import math
from pathlib import Path
from typing import Any

from omegaconf import DictConfig

from neuralnets.errors import ConfigError, NeuralnetsError, RunInterrupted
from neuralnets.runs import error_line, write_status
from neuralnets.training.population import Population
from neuralnets.training.population_members import POPULATION_MODELS
from neuralnets.training.study import (
    MEMBERS,
    WorkerLock,
    _locked,
    _optuna,
    fail_lost_trials,
    member_config,
    open_storage,
    study_name,
    study_space,
    worker_threads,
)
from neuralnets.training.tune_report import _maximised, counted

log = logging.getLogger(__name__)


class _Slot:
    """The Optuna trial of one population slot and its reported values."""

    def __init__(self, trial: Any, cfg: DictConfig, run_dir: Path, params: dict[str, float]):
        self.trial, self.cfg, self.run_dir, self.params = trial, cfg, run_dir, params
        self.values: dict[int, float] = {}  # epoch -> maximised metric

    @property
    def best(self) -> float:
        return max(self.values.values(), default=-math.inf)


def _ask(cfg: DictConfig, study: Any, space: list[dict[str, Any]], worker: str) -> _Slot | None:
    """A new member from the study (None once the budget is spent), under the study lock."""
    t = cfg.tune
    tune_dir = Path(t.dir)
    with _locked(tune_dir / ".study.lock"):
        fail_lost_trials(study, tune_dir)
        if counted(study) >= int(study.user_attrs.get("n_trials", t.n_trials)):
            return None
        trial = study.ask()
        trial.set_user_attr("worker", worker)
    params = {
        p["key"]: trial.suggest_float(p["key"], p["low"], p["high"], log=bool(p.get("log"))) for p in space
    }
    run_dir = tune_dir / MEMBERS / f"{trial.number:03d}"
    trial.set_user_attr("run_dir", str(run_dir.relative_to(tune_dir)))
    trial.set_user_attr("population", True)
    return _Slot(trial, member_config(cfg, params, trial.number), run_dir, params)


def _tell(study: Any, slot: _Slot, status: str, value: float | None, error: str | None = None) -> None:
    optuna = _optuna()
    states = {"complete": "COMPLETE", "pruned": "PRUNED", "diverged": "PRUNED", "failed": "FAIL"}
    slot.trial.set_user_attr("status", status)
    if error:
        slot.trial.set_user_attr("error", error)
    state = getattr(optuna.trial.TrialState, states[status])
    study.tell(slot.trial, value if status == "complete" else None, state=state)
    log.info("member %03d: %s -> %s (%s)", slot.trial.number, slot.params, value, error or status)


def run_population_worker(cfg: DictConfig, index: int = 0) -> None:
    """One worker that trains `tune.population` members at a time until the study's budget is spent."""
    optuna = _optuna()
    t = cfg.tune
    K = int(t.population)
    if cfg.model.name not in POPULATION_MODELS:
        raise ConfigError(
            f"tune.population={K}: populations train {sorted(POPULATION_MODELS)} (model={cfg.model.name})"
        )
    space = study_space(cfg)
    cfg, threads = worker_threads(cfg)
    tune_dir = Path(t.dir)
    with WorkerLock(tune_dir) as me:
        study = optuna.load_study(study_name=study_name(cfg), storage=open_storage(cfg))
        seed = int(t.seed) + len(study.trials) + 1009 * (int(t.worker) * int(t.workers) + index)
        study.sampler = optuna.samplers.TPESampler(seed=seed, n_startup_trials=5)
        study.pruner = optuna.pruners.SuccessiveHalvingPruner(
            min_resource=int(t.min_epochs), reduction_factor=int(t.reduction_factor)
        )
        slots: list[_Slot | None] = []
        for _ in range(K):
            slot = _ask(cfg, study, space, me.name)
            if slot is None:
                break
            slots.append(slot)
        if not slots:
            return
        pop = Population([s.cfg for s in slots])
        log.info("worker %s: a population of %d members (%d threads)", me.name, len(slots), threads)
        floor = t.get("prune_worse_than")
        floor = None if floor is None else _maximised(t.metric, float(floor))
        try:
            # the members' run directories, claimed; their statuses recorded on a signal or an error
            with pop.recorded(tune_dir / "populations", run_dirs=[s.run_dir for s in slots]):
                while any(s is not None for s in slots):
                    val = pop.run_epoch()
                    for k, slot in enumerate(slots):
                        if slot is None:
                            continue
                        m = pop.members[k]
                        value = _maximised(t.metric, float(val[t.metric][k]))
                        value = value if math.isfinite(value) else -math.inf
                        slot.values[m.epoch - 1] = value
                        slot.trial.report(value, m.epoch - 1)
                        below = floor is not None and m.epoch >= int(t.min_epochs) and value < floor
                        pruned = below or slot.trial.should_prune()
                        if not (pruned or m.stopped):
                            continue
                        _finish_slot(pop, k, slot, study, pruned)
                        slots[k] = _ask(cfg, study, space, me.name)
                        if slots[k] is None:
                            m.stopped = True  # an empty slot: frozen until the population ends
                        else:
                            pop.replace_member(k, slots[k].cfg, slots[k].run_dir)
        except BaseException as err:  # a bug or an interruption: the running members are lost, recorded
            state = "interrupted" if isinstance(err, RunInterrupted) else "failed"  # interrupted: not counted
            for slot in slots:
                if slot is not None:
                    slot.trial.set_user_attr("status", state)
                    slot.trial.set_user_attr("error", error_line(err))
                    study.tell(slot.trial, state=optuna.trial.TrialState.FAIL)
            raise


def _finish_slot(pop: Population, k: int, slot: _Slot, study: Any, pruned: bool) -> None:
    """Score the member of slot k and tell the study how it ended."""
    m = pop.members[k]
    if m.diverged:  # status.json already says so (Population.end_epoch)
        _tell(
            study, slot, "diverged", None, f"{m.skipped} of {m.step} steps had a non-finite loss or gradient"
        )
        return
    try:
        pop.finish_member(k, **({"pruned": True} if pruned else {}))
    except (NeuralnetsError, OSError) as err:
        write_status(m.run_dir, "failed", error=error_line(err))
        _tell(study, slot, "failed", None, error_line(err))
        return
    if not math.isfinite(slot.best):
        _tell(study, slot, "failed", None, f"{pop.members[k].cfg.callbacks.monitor} was never finite")
    else:
        _tell(study, slot, "pruned" if pruned else "complete", slot.best)
