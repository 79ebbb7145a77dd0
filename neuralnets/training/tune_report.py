"""What a tuning study (`neuralnets.training.tune`) reports: each member's validation metric every
epoch to its Optuna trial, with the pruning decision (`ReportAndPrune`), and the leaderboard of all
members, best first, with the `best` link to the best complete one."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import pytorch_lightning as pl

from neuralnets.files import replace_symlink

# The member states of the leaderboard, best first; `lost`: its worker died (killed) during training
# (a failed trial without a status of its own).
# `interrupted`: stopped by SIGTERM/SIGINT with its last.ckpt (resumable), not counted in the budget.
STATES = ("complete", "pruned", "diverged", "failed", "interrupted", "lost", "running")
UNCOUNTED = ("interrupted", "lost")


def _maximised(metric: str, value: float) -> float:
    """The study maximises: a loss is negated."""
    return -value if metric.endswith("loss") else value


class ReportAndPrune(pl.Callback):
    """After each validation epoch: report `metric` (maximised; a loss is negated) to the Optuna trial
    and stop training when the pruner says so, or when the value is still worse than `floor` (in the
    metric's own units) after `floor_epochs` epochs."""

    def __init__(self, trial: Any, metric: str, floor: float | None = None, floor_epochs: int = 1):
        self.trial, self.metric, self.pruned = trial, metric, False
        self.floor = None if floor is None else _maximised(metric, float(floor))
        self.floor_epochs = floor_epochs
        self.values: dict[int, float] = {}  # epoch -> maximised value

    @property
    def best(self) -> float:
        """The best maximised value reported (-inf before any)."""
        return max(self.values.values(), default=-math.inf)

    def on_validation_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if trainer.sanity_checking or self.metric not in trainer.callback_metrics:
            return
        value = _maximised(self.metric, float(trainer.callback_metrics[self.metric]))
        if not math.isfinite(value):
            value = -math.inf
        epoch = trainer.current_epoch
        self.values[epoch] = value
        self.trial.report(value, epoch)
        below = self.floor is not None and epoch + 1 >= self.floor_epochs and value < self.floor
        if below or self.trial.should_prune():
            self.pruned, trainer.should_stop = True, True


def member_state(trial: Any) -> str:
    """The member's state (one of STATES) from its trial."""
    return trial.user_attrs.get("status") or ("running" if trial.state.name == "RUNNING" else "lost")


def counted(study: Any) -> int:
    """Members that use up `tune.n_trials`: all but those lost with a killed worker or interrupted."""
    return sum(member_state(t) not in UNCOUNTED for t in study.get_trials(deepcopy=False))


def leaderboard_rows(study: Any, metric: str) -> list[dict[str, Any]]:
    """Members best first (complete, pruned, diverged, failed, interrupted, lost, running), with their best
    validation `metric` in its own units."""
    rows = []
    for trial in study.get_trials(deepcopy=False):
        values = [v for v in trial.intermediate_values.values() if math.isfinite(v)]
        best = max(values, default=None)  # a pruned trial's value is its last one
        state = member_state(trial)
        rows.append(
            {
                "member": f"{trial.number:03d}",
                **trial.params,
                metric: None if best is None or not math.isfinite(best) else _maximised(metric, best),
                "epochs_trained": len(trial.intermediate_values),
                "status": state,
                "run_dir": trial.user_attrs.get("run_dir"),
            }
        )
    sign = -1.0 if metric.endswith("loss") else 1.0
    return sorted(
        rows,
        key=lambda r: (STATES.index(r["status"]), -(sign * r[metric]) if r[metric] is not None else math.inf),
    )


def _link_best(tune_dir: Path, rows: list[dict[str, Any]]) -> Path | None:
    """Point `<tune dir>/best` at the best complete member's run directory."""
    complete = [r for r in rows if r["status"] == "complete" and r["run_dir"]]
    if not complete:
        return None
    return replace_symlink(tune_dir / "best", complete[0]["run_dir"])
