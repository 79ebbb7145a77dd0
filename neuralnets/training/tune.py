"""`neuralnets-tune`: tune a model for a dataset on a CPU by successive halving (Optuna).

    neuralnets-tune model=lfads data=mc_maze_small tune.n_trials=16 tune.max_epochs=100 tune.timeout_s=3600

Members are sampled by TPE over the ranges of `configs/tune/<model>.yaml` and trained one after
another in this process (the `training/build.py` builders); each reports `tune.metric` on the
validation trials every epoch and Optuna's `SuccessiveHalvingPruner` stops the weak ones early (test
trials are never seen). The tune directory (`tune.dir`, default `runs/tune/<model>_<data>`) holds

    trials.json      the study: every member's hyperparameters, per-epoch values and state (resume)
    members/NNN/     each member as an ordinary run directory (config, TensorBoard, predictions, metrics)
    leaderboard.md   member, hyperparameters, best val metric, epochs trained, status (also .csv)
    best -> members/NNN   the best complete member

Rerunning the same command continues the study until it holds `tune.n_trials` members. The study is
kept as JSON rather than in Optuna's SQLite storage: the Optuna 2.10 that `hydra-optuna-sweeper`
pins does not run on SQLAlchemy 2.
"""

from __future__ import annotations

import csv
import io
import json
import logging
import math
import os
import sys
import time
import warnings
from pathlib import Path
from typing import Any

import hydra
import pytorch_lightning as pl
import torch
from omegaconf import DictConfig, OmegaConf

from neuralnets.cli import hydra_task, run_cli
from neuralnets.config import CONFIG_DIR, compose
from neuralnets.errors import ConfigError
from neuralnets.runs import CONFIG_FILE, atomic_path, claim_run_dir, write_status
from neuralnets.training.build import (
    build_callbacks,
    build_datamodule,
    build_module,
    build_trainer,
)
from neuralnets.training.train import finish_run

log = logging.getLogger(__name__)
STUDY_FILE, LEADERBOARD = "trials.json", "leaderboard"


def _optuna():
    try:
        import optuna
    except ImportError:
        raise ConfigError("neuralnets-tune needs Optuna: pip install 'neuralnets[sweep]'") from None
    return optuna


def search_space(cfg: DictConfig) -> list[dict[str, Any]]:
    """The `params` of the search-space file (`tune.space`, else `configs/tune/<model.name>.yaml`),
    each `{key, low, high, log}` with `key` an existing config key."""
    path = Path(cfg.tune.space) if cfg.tune.get("space") else CONFIG_DIR / "tune" / f"{cfg.model.name}.yaml"
    if not path.is_file():
        raise ConfigError(f"no search space {path} for model {cfg.model.name!r} (set tune.space=FILE)")
    space = (
        OmegaConf.load(path) if cfg.tune.get("space") else compose(config_name=f"tune/{cfg.model.name}").tune
    )
    params = OmegaConf.to_container(space).get("params") or []
    for p in params:
        key = p.get("key")
        if OmegaConf.select(cfg, str(key)) is None:
            raise ConfigError(f"{path}: {key!r} is not a setting of this config (model {cfg.model.name})")
        low, high = p.get("low"), p.get("high")
        if not (isinstance(low, int | float) and isinstance(high, int | float) and low < high):
            raise ConfigError(f"{path}: {key}: need numbers low < high; got low={low!r}, high={high!r}")
        if p.get("log") and low <= 0:
            raise ConfigError(f"{path}: {key}: a log scale needs low > 0; got {low}")
    return params


def _distributions(space: list[dict[str, Any]]) -> dict[str, Any]:
    optuna = _optuna()
    return {
        p["key"]: optuna.distributions.UniformDistribution(p["low"], p["high"])
        if not p.get("log")
        else optuna.distributions.LogUniformDistribution(p["low"], p["high"])
        for p in space
    }


class ReportAndPrune(pl.Callback):
    """After each validation epoch: report `metric` (maximised; `val/loss` is negated) to the Optuna
    trial and stop training when the pruner says so."""

    def __init__(self, trial: Any, metric: str):
        self.trial, self.metric, self.pruned = trial, metric, False
        self.values: dict[int, float] = {}

    def on_validation_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if trainer.sanity_checking or self.metric not in trainer.callback_metrics:
            return
        value = float(trainer.callback_metrics[self.metric])
        value = -value if self.metric.endswith("loss") else value
        if not math.isfinite(value):
            value = -math.inf
        epoch = trainer.current_epoch
        self.values[epoch] = value
        self.trial.report(value, epoch)
        if self.trial.should_prune():
            self.pruned, trainer.should_stop = True, True


def member_config(cfg: DictConfig, params: dict[str, float], number: int) -> DictConfig:
    """The training config of member `number`: `cfg` with `params` set, `tune.max_epochs` epochs,
    the harness metric every epoch and the checkpoint on `tune.metric` (no early stopping: the pruner)."""
    member = OmegaConf.create(OmegaConf.to_container(cfg, resolve=False))  # callbacks read the keys below
    member.pop("tune")
    for key, value in params.items():
        OmegaConf.update(member, key, value)
    metric = cfg.tune.metric
    member.trainer.max_epochs = int(cfg.tune.max_epochs)
    member.callbacks.monitor = metric
    member.callbacks.mode = "min" if metric.endswith("loss") else "max"
    member.callbacks.eval_every_n_epochs = 1
    member.callbacks.early_stopping_patience = 0
    member.callbacks.figures = False
    member.tune_member = {"study": str(cfg.tune.dir), "number": number, **params}
    return member


def train_member(cfg: DictConfig, run_dir: Path, trial: Any) -> tuple[dict, ReportAndPrune]:
    """Train one member into the new run directory `run_dir` and score it like `neuralnets-train`."""
    claim_run_dir(run_dir)
    pl.seed_everything(cfg.seed, workers=True)
    dm = build_datamodule(cfg)
    module = build_module(cfg, dm.data.spec, init_data=dm.data)
    with atomic_path(run_dir / CONFIG_FILE) as tmp:
        OmegaConf.save(cfg, tmp, resolve=True)
    reporter = ReportAndPrune(trial, cfg.callbacks.monitor)
    callbacks = [*build_callbacks(cfg, run_dir, dm.data), reporter]  # after the harness evaluation
    trainer = build_trainer(cfg, run_dir, dm.data, callbacks=callbacks)
    start = time.perf_counter()
    try:
        trainer.fit(module, datamodule=dm, weights_only=True)
        seconds = time.perf_counter() - start
        record = finish_run(
            cfg,
            run_dir,
            dm.data,
            module,
            trainer.checkpoint_callback,
            trainer.logger,
            seconds,
            trainer.global_step,
        )
    except BaseException as err:
        write_status(run_dir, "failed", error=" ".join(str(err).split()) or type(err).__name__)
        raise
    write_status(run_dir, "finished", epochs=trainer.current_epoch, train_time_s=round(seconds, 2))
    return record, reporter


class Study:
    """The study's trials, kept in `<tune dir>/trials.json` (rewritten atomically after each change)."""

    def __init__(self, tune_dir: Path):
        self.path = tune_dir / STUDY_FILE
        self.trials: list[dict[str, Any]] = []
        if self.path.is_file():
            try:
                self.trials = json.loads(self.path.read_text())["trials"]
            except (json.JSONDecodeError, KeyError, TypeError) as err:
                raise ConfigError(
                    f"{self.path} is not a neuralnets-tune study ({err}); move it away"
                ) from None

    def save(self) -> None:
        with atomic_path(self.path) as tmp:
            tmp.write_text(json.dumps({"trials": self.trials}, indent=1) + "\n")

    def to_optuna(self, space: list[dict[str, Any]], sampler: Any, pruner: Any) -> Any:
        """An in-memory Optuna study (maximising) holding the trials so far; an interrupted member
        (state running) comes back as failed."""
        optuna = _optuna()
        study = optuna.create_study(direction="maximize", sampler=sampler, pruner=pruner)
        dists = _distributions(space)
        states = {"complete": "COMPLETE", "pruned": "PRUNED", "failed": "FAIL", "running": "FAIL"}
        for t in self.trials:
            if set(t["params"]) != set(dists):
                raise ConfigError(
                    f"{self.path}: member {t['number']} searched {sorted(t['params'])}, this search space "
                    f"is {sorted(dists)}; use another tune.dir for a different search"
                )
            values = {int(k): v for k, v in t["values"].items()}
            state = optuna.trial.TrialState[states[t["state"]]]
            study.add_trial(
                optuna.trial.create_trial(
                    params=t["params"],
                    distributions=dists,
                    value=t["best"] if state == optuna.trial.TrialState.COMPLETE else None,
                    intermediate_values=values,
                    state=state,
                )
            )
        return study


def leaderboard_rows(study: Study, metric: str) -> list[dict[str, Any]]:
    """Members best first (complete before pruned before failed), with their best val metric."""
    order = {"complete": 0, "pruned": 1, "failed": 2, "interrupted": 3}
    sign = -1.0 if metric.endswith("loss") else 1.0  # trials.json holds maximised values
    rows = []
    for t in study.trials:
        best = t.get("best")
        rows.append(
            {
                "member": f"{t['number']:03d}",
                **t["params"],
                metric: None if best is None or not math.isfinite(best) else sign * best,
                "epochs_trained": t.get("epochs_trained"),
                "status": "interrupted" if t["state"] == "running" else t["state"],
                "run_dir": t["run_dir"],
            }
        )
    return sorted(
        rows,
        key=lambda r: (
            order[r["status"]],
            -(sign * r[metric]) if r[metric] is not None else math.inf,
        ),
    )


def write_leaderboard(tune_dir: Path, rows: list[dict[str, Any]]) -> None:
    """`leaderboard.md` and `leaderboard.csv` in `tune_dir` (atomic)."""
    if not rows:
        return
    keys = list(rows[0])
    text = io.StringIO()
    writer = csv.DictWriter(text, fieldnames=keys)
    writer.writeheader()
    writer.writerows(rows)
    with atomic_path(tune_dir / f"{LEADERBOARD}.csv") as tmp:
        tmp.write_text(text.getvalue())

    def cell(v: Any) -> str:
        return f"{v:.4g}" if isinstance(v, float) else "" if v is None else str(v)

    lines = ["| " + " | ".join(keys) + " |", "|" + "---|" * len(keys)]
    lines += ["| " + " | ".join(cell(r[k]) for k in keys) + " |" for r in rows]
    with atomic_path(tune_dir / f"{LEADERBOARD}.md") as tmp:
        tmp.write_text("\n".join(lines) + "\n")


def _link_best(tune_dir: Path, rows: list[dict[str, Any]]) -> Path | None:
    """Point `<tune dir>/best` at the best complete member's run directory."""
    complete = [r for r in rows if r["status"] == "complete"]
    if not complete:
        return None
    link = tune_dir / "best"
    tmp = tune_dir / ".best.tmp"
    tmp.unlink(missing_ok=True)
    tmp.symlink_to(Path(complete[0]["run_dir"]).relative_to(tune_dir))
    os.replace(tmp, link)
    return link


def tune(cfg: DictConfig) -> list[dict[str, Any]]:
    """Run (or continue) the study of `cfg.tune`; returns the leaderboard rows."""
    optuna = _optuna()
    t = cfg.tune
    for key in ("n_trials", "max_epochs", "min_epochs", "reduction_factor"):
        if not isinstance(t[key], int) or isinstance(t[key], bool) or t[key] < 1:
            raise ConfigError(f"tune.{key}={t[key]!r}: expected a whole number >= 1")
    if t.get("timeout_s") is not None and not t.timeout_s > 0:
        raise ConfigError(f"tune.timeout_s={t.timeout_s!r}: expected seconds > 0 or null")
    tune_dir = Path(t.dir)
    tune_dir.mkdir(parents=True, exist_ok=True)
    space = search_space(cfg)
    study = Study(tune_dir)
    sampler = optuna.samplers.TPESampler(seed=int(t.seed) + len(study.trials), n_startup_trials=5)
    pruner = optuna.pruners.SuccessiveHalvingPruner(
        min_resource=int(t.min_epochs), reduction_factor=int(t.reduction_factor)
    )
    with warnings.catch_warnings():  # add_trial/create_trial are marked experimental in Optuna 2.10
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        ostudy = study.to_optuna(space, sampler, pruner)
    left = int(t.n_trials) - len(study.trials)
    log.info("%s: %d members so far, %d to go", tune_dir, len(study.trials), max(left, 0))

    def objective(trial: Any) -> float:
        params = {
            p["key"]: trial.suggest_float(p["key"], p["low"], p["high"], log=bool(p.get("log")))
            for p in space
        }
        run_dir = tune_dir / "members" / f"{trial.number:03d}"
        entry = {
            "number": trial.number,
            "params": params,
            "values": {},
            "state": "running",
            "best": None,
            "epochs_trained": None,
            "run_dir": str(run_dir),
        }
        study.trials.append(entry)
        study.save()
        member = member_config(cfg, params, trial.number)
        try:
            record, reporter = train_member(member, run_dir, trial)
        except FloatingPointError as err:  # a diverged member: recorded as failed, the study goes on
            entry["state"] = "failed"
            study.save()
            raise optuna.TrialPruned(f"diverged: {err}") from None
        entry["values"] = {str(k): v for k, v in reporter.values.items()}
        entry["best"] = max(reporter.values.values(), default=-math.inf)
        entry["epochs_trained"] = max(reporter.values, default=-1) + 1
        entry["state"] = "pruned" if reporter.pruned else "complete"
        study.save()
        log.info(
            "member %03d: %s %s = %.4f after %d epochs (%s)",
            trial.number,
            params,
            t.metric,
            entry["best"],
            entry["epochs_trained"],
            entry["state"],
        )
        if reporter.pruned:
            raise optuna.TrialPruned()
        return entry["best"]

    if left > 0:
        ostudy.optimize(objective, n_trials=left, timeout=t.get("timeout_s"))
    rows = leaderboard_rows(study, t.metric)
    write_leaderboard(tune_dir, rows)
    _link_best(tune_dir, rows)
    return rows


@hydra.main(version_base="1.3", config_path=str(CONFIG_DIR), config_name="tune")
@hydra_task("neuralnets-tune")
def main(cfg: DictConfig) -> None:
    if cfg.get("threads"):
        torch.set_num_threads(int(cfg.threads))
    rows = tune(cfg)
    print((Path(cfg.tune.dir) / f"{LEADERBOARD}.md").read_text() if rows else "no members yet")
    print(f"tune directory: {cfg.tune.dir}")


def cli() -> int:
    """Entry point of `neuralnets-tune` (errors and exit codes: `neuralnets.cli.run_cli`)."""
    return run_cli("neuralnets-tune", main)


if __name__ == "__main__":
    sys.exit(cli())
