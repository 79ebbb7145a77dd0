"""Population training: K members of one architecture trained in one process as one batched model.

Each member is a full composed run config (`configs/train.yaml` plus its overrides) that differs from
the others only in non-architectural settings (seed, module.lr / lr schedule / coordinated dropout /
adam eps / weight decay, model dropout, KL and L2 scales and ramps, trainer.max_epochs, early-stopping
patience). Member k:
- starts from exactly the weights its solo run would (`pl.seed_everything(seed)`, then the data
  module and training module built by the same functions as `run_training`);
- consumes exactly its solo run's random numbers: its own batch order (`TrialBatches` seeded by its
  seed) and its own CPU RNG state, swapped in around its draws (`draw_member_noise`);
- has its own AdamW lr / eps / weight decay, gradient clipping by its own norm, LR schedule, KL / L2
  ramps, early stopping, best checkpoint;
- leaves an ordinary run directory (config.yaml, status.json, checkpoints with sha256 records,
  TensorBoard events, predictions.h5, metrics.json scored by `finish_run`), so compare / ensemble /
  analyze / load_pretrained work on it unchanged.
The population's own directory holds `population.json` (its members) and `population.pt` (the
stacked state, written atomically after every epoch): `resume_population(dir)` continues every member.
LFADS (`PopulationLFADS`) and the GRU `RNNSeq2Seq` (`PopulationRNN`); tests/test_population.py checks the
equivalence with solo runs.
"""

from __future__ import annotations

import contextlib
import ctypes
import dataclasses
import json
import logging
import math
import os
import sys
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
import torch
from omegaconf import DictConfig

from neuralnets.checkpoints import save_checkpoint
from neuralnets.config import load_saved_config
from neuralnets.errors import ConfigError, RunInterrupted
from neuralnets.eval.metrics import co_bps
from neuralnets.files import atomic_path, write_text_atomic
from neuralnets.models.lfads_population import stack_noise
from neuralnets.runs import (
    CHECKPOINT_DIR,
    CONFIG_FILE,
    LAST_CHECKPOINT,
    STATUS_FILE,
    recorded_run,
    write_config,
    write_status,
)
from neuralnets.training import build
from neuralnets.training.interrupts import _Interrupts
from neuralnets.training.population_members import POPULATION_MODELS, build_member, check_members
from neuralnets.training.population_optim import (
    MemberAdamW,
    Plateau,
    clip_member_grads,
    cosine_lr,
    member_grad_norms,
)

log = logging.getLogger(__name__)

POPULATION_FILE = "population.json"
STATE_FILE = "population.pt"


def reuse_freed_memory() -> bool:
    """Keep freed memory in this process's heap (glibc: no mmap for large blocks, no trimming) so that
    a population's large per-step tensors reuse pages instead of faulting fresh zeroed ones in every
    step: ~10-20% of a K = 32 step on the 2-core CPU (experiments/results/population_benchmark.md).
    The process keeps its peak memory until it ends. Returns whether the allocator took the settings
    (False off glibc, or with NEURALNETS_KEEP_HEAP=0)."""
    if os.environ.get("NEURALNETS_KEEP_HEAP", "1") == "0" or not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL("libc.so.6")
        m_trim_threshold, m_mmap_max = -1, -4  # mallopt parameters (malloc.h)
        return bool(libc.mallopt(m_mmap_max, 0)) and bool(libc.mallopt(m_trim_threshold, 2**31 - 1))
    except (OSError, AttributeError):
        return False


class Population:
    """K members trained as one batched model (`POPULATION_MODELS`); see the module docstring."""

    def __init__(self, cfgs: Sequence[DictConfig], device: str | torch.device = "cpu"):
        if not cfgs:
            raise ConfigError("population: no members")
        check_members(cfgs)
        reuse_freed_memory()
        self.members = [build_member(cfg) for cfg in cfgs]
        self.device = torch.device(device)
        population_class, _ = POPULATION_MODELS[cfgs[0].model.name]
        self.model = population_class([m.module.model for m in self.members]).to(self.device)
        self.params = list(self.model.params.values())
        self.lr0 = torch.tensor([float(m.module.hparams.lr) for m in self.members], dtype=torch.float64)
        self.optim = MemberAdamW(
            self.params,
            lr=self.lr0,
            eps=torch.tensor([float(m.module.hparams.adam_eps) for m in self.members]),
            weight_decay=torch.tensor([float(m.module.hparams.weight_decay) for m in self.members]),
        )
        self.cd = torch.tensor([float(m.module.hparams.coordinated_dropout) for m in self.members])  # (K,)
        self.clip = [m.cfg.trainer.get("gradient_clip_val") for m in self.members]
        # -log y! of every trial, once: (trials, T, N) (lgamma is slow; the loss gathers it by trial index)
        self.log_fact = torch.lgamma(self.members[0].batches.tensors["spikes"] + 1.0).to(self.device)
        self.dir: Path | None = None
        self._runs: contextlib.ExitStack | None = None  # the open run directories (`recorded`)
        self.train_time = 0.0

    @property
    def K(self) -> int:
        return len(self.members)

    def active(self) -> torch.Tensor:
        return torch.tensor([not m.stopped for m in self.members])  # (K,) bool

    # ------------------------------------------------------------------ one training step
    def training_step(self, batches: Sequence[dict[str, torch.Tensor]]) -> torch.Tensor:
        """One step of every member on its own batch; returns the members' training losses (K,)."""
        noises, cds = [], []
        for m, batch in zip(self.members, batches, strict=True):
            torch.set_rng_state(m.rng)  # the member's own stream, as its solo run draws it
            B = batch["spikes"].shape[0]
            cd, noise = self.model.draw_noise(m.module.model, B, float(m.module.hparams.coordinated_dropout))
            m.rng = torch.get_rng_state()
            noises.append(noise)
            cds.append(cd)
        self.model.train()
        loss, _, _ = self.loss(batches, stack_noise(noises, self.device), cds, train=True)  # (K,)
        for p in self.params:
            p.grad = None
        active = self.active()
        loss[active.to(loss.device)].sum().backward()
        self.optimizer_step(loss.detach().cpu(), active)
        return loss.detach().cpu()

    def optimizer_step(self, loss: torch.Tensor, active: torch.Tensor) -> None:
        norms = member_grad_norms(self.params).cpu()  # (K,)
        finite = torch.isfinite(norms) & torch.isfinite(loss)  # (K,) a non-finite grad has a non-finite norm
        for k, m in enumerate(self.members):
            if active[k] and not finite[k]:
                m.skipped += 1
                log.warning("member %d: non-finite loss or gradient at step %d; step skipped", k, m.step)
        for p in self.params:  # a skipped member's gradients must not leak NaN into the others' math
            if p.grad is not None:
                p.grad.nan_to_num_(0.0, 0.0, 0.0)
        clip = self.clip[0]
        if clip:
            clip_member_grads(self.params, float(clip), norms.to(self.device))
        self.optim.step((active & finite).to(self.device))
        for k, m in enumerate(self.members):
            if active[k]:
                m.step += 1  # the solo trainer's global_step counts skipped steps too

    def loss(self, batches, noise, cd_uniforms, train: bool) -> tuple[torch.Tensor, ...]:
        """Each member's loss (K,) as `TrainingModule._loss` computes it (recon in nats per trial plus
        the ramped auxiliary losses; validation: full weights), the rates (K, B, T, N) and recon (K,)."""
        spikes = torch.stack([b["spikes"] for b in batches]).to(self.device)  # (K, B, T, N)
        K, B, T, N = spikes.shape
        heldin = spikes[:, :, : self.model.spec.n_obs_bins, : self.model.spec.n_heldin]  # (K, B, T_obs, N_in)
        observed = [b.get("observed") for b in batches]
        scored = (
            torch.ones_like(spikes, dtype=torch.bool) if observed[0] is None else torch.stack(observed).bool()
        )
        if train and any(u is not None for u in cd_uniforms):
            u = torch.stack([torch.ones_like(heldin[0]) if c is None else c for c in cd_uniforms]).to(
                self.device
            )
            rate = self.cd.to(self.device).view(K, 1, 1, 1)
            dropped = u < rate  # (K, B, T_obs, N_in); never True for a member without CD (rate 0)
            heldin = torch.where(dropped, torch.zeros_like(heldin), heldin / (1.0 - rate))
            has_cd = (self.cd > 0).to(self.device).view(K, 1, 1, 1)
            cd_scored = torch.ones_like(scored)
            cd_scored[:, :, : heldin.shape[2], : heldin.shape[3]] = dropped | ~has_cd
            scored = scored & cd_scored
        rates, _, aux = self.model(heldin, noise)  # (K, B, T, N)
        log_fact = torch.stack([self.log_fact[b["index"]] for b in batches])  # (K, B, T, N)
        nll = rates - torch.xlogy(spikes, rates) + log_fact  # Poisson NLL (K, B, T, N)
        total = torch.where(scored, nll, torch.zeros_like(nll)).sum(dim=(1, 2, 3))
        recon = total / scored.sum(dim=(1, 2, 3)).clamp(min=1) * (T * N)  # (K,) nats per trial
        steps = [m.step for m in self.members] if train else None
        weights = self.model.aux_weights(steps)
        loss = recon
        for name, value in aux.items():
            loss = loss + weights[name].to(self.device) * value
        return loss, rates, recon

    # ------------------------------------------------------------------ validation
    @torch.no_grad()
    def validate(self) -> dict[str, list[float]]:
        """Each member's `val/loss` (the mean over validation batches weighted by their size, as Lightning
        averages it), `val/recon` (its reconstruction part) and `val/co_bps` (the harness's co-smoothing
        bits/spike on the validation trials), each on its own validation trials (members on different
        folds hold as many validation trials, in different trials)."""
        self.model.eval()
        total, recon_total, count = (
            torch.zeros(self.K, dtype=torch.float64),
            torch.zeros(self.K, dtype=torch.float64),
            0,
        )
        rates, spikes, observed = [], [], []
        for batches in zip(*(m.dm.val_dataloader() for m in self.members), strict=True):
            B = batches[0]["spikes"].shape[0]
            loss, r, recon = self.loss(batches, {"g0_eps": None}, [None] * self.K, train=False)
            total += loss.double().cpu() * B
            recon_total += recon.double().cpu() * B
            count += B
            rates.append(r.cpu())  # (K, B, T, N)
            spikes.append(torch.stack([b["spikes"] for b in batches]).cpu())  # (K, B, T, N)
            if batches[0].get("observed") is not None:
                observed.append(torch.stack([b["observed"] for b in batches]).cpu())
        spec = self.model.spec
        y = torch.cat(spikes, dim=1)  # (K, n_val, T, N)
        obs = torch.cat(observed, dim=1) if observed else None
        lam = torch.cat(rates, dim=1)  # (K, n_val, T, N)
        cobps = [
            co_bps(lam[k], y[k], spec.n_heldin, spec.n_fwd_bins, None if obs is None else obs[k])
            for k in range(self.K)
        ]
        n = max(count, 1)
        return {
            "val/loss": (total / n).tolist(),
            "val/recon": (recon_total / n).tolist(),
            "val/co_bps": cobps,
        }

    # ------------------------------------------------------------------ run directories
    @contextlib.contextmanager
    def recorded(
        self, parent: str | Path | None = None, run_dirs: Sequence[Path] | None = None
    ) -> Iterator[Path]:
        """The population's run directories for the block, each through `runs.recorded_run` (claimed,
        locked, how it ended recorded in status.json: a signal -> interrupted, resumable from the last
        epoch's population.pt; an error -> failed). A new population: its directory
        `<parent>/<time>_K<k>` (default parent `<out_dir>/population`) holding `member_<k>` run
        directories, or the given `run_dirs` (claimed: refused if one holds a run); a resumed one
        (`self.dir` and the members' `run_dir` set): locked as they are. SIGTERM stops the block as
        Ctrl-C does, and an interruption leaves it as `RunInterrupted` (exit 75)."""
        try:
            with contextlib.ExitStack() as stack, _Interrupts().installed():
                self._runs = stack
                if self.dir is None:
                    cfg0 = self.members[0].cfg
                    parent = Path(parent) if parent is not None else Path(cfg0.out_dir) / "population"
                    stamp = time.strftime("%Y-%m-%d_%H-%M-%S")
                    self.dir = stack.enter_context(recorded_run((parent, f"{stamp}_K{self.K}")))
                    (self.dir / STATUS_FILE).unlink(missing_ok=True)  # the population itself is not a run
                    for k in range(self.K):
                        self._open_member(k, None if run_dirs is None else run_dirs[k])
                    self._write_record()
                else:
                    stack.enter_context(recorded_run(self.dir, claim=False))
                    for m in self.members:
                        stack.enter_context(recorded_run(m.run_dir, claim=False))
                yield self.dir
        except KeyboardInterrupt:  # the members were recorded interrupted on the way out
            raise RunInterrupted(
                f"population {self.dir} interrupted at epoch {max(m.epoch for m in self.members)}; "
                f"neuralnets-population --resume {self.dir} continues every member"
            ) from None
        finally:
            self._runs = None

    def _open_member(self, k: int, run_dir: Path | None) -> None:
        """Member k's run directory (inside `recorded`): claimed, with its config, status and logger."""
        m = self.members[k]
        m.run_dir = self._runs.enter_context(recorded_run(run_dir or (self.dir, f"member_{k:03d}")))
        write_config(m.run_dir, m.cfg)
        write_status(m.run_dir, "running", error=None, population=str(self.dir), member=k)
        m.logger = build.build_logger(m.cfg, m.run_dir)

    def _write_record(self) -> None:
        record = {"members": [os.path.relpath(m.run_dir, self.dir) for m in self.members], "K": self.K}
        write_text_atomic(self.dir / POPULATION_FILE, json.dumps(record, indent=1))

    def replace_member(self, k: int, cfg: DictConfig, run_dir: Path | None = None) -> None:
        """Put a new member (built from `cfg` as its solo run would start) into slot k, whose member has
        finished: its weights, optimiser state, schedule and settings replace the old ones."""
        new = build_member(
            cfg
        )  # first: building resolves `auto` settings (data.batch_size) as member 0's were
        check_members([self.members[0].cfg, new.cfg])
        self.members[k] = new
        self.model.load_member(k, {n: p.detach() for n, p in new.module.model.named_parameters()})
        self.model.dropout_p[k] = float(new.module.model.dropout.p)
        for name, ramps in self.model.aux_ramps.items():
            ramps[k] = new.module.model.aux_weights[name]
        hp = new.module.hparams
        opt = self.optim
        with torch.no_grad():
            for m_, v_ in zip(opt.exp_avg, opt.exp_avg_sq, strict=True):
                m_[k].zero_()
                v_[k].zero_()
        opt.steps[k], opt.lr[k], self.lr0[k] = 0, float(hp.lr), float(hp.lr)
        opt.eps[k], opt.weight_decay[k] = float(hp.adam_eps), float(hp.weight_decay)
        self.cd[k] = float(hp.coordinated_dropout)
        if self._runs is not None:
            self._open_member(k, run_dir)
            self._write_record()

    def _member_checkpoint(self, k: int) -> dict[str, Any]:
        """Member k as a solo checkpoint (the TrainingModule's hparams and state dict)."""
        m = self.members[k]
        with torch.no_grad():
            m.module.model.load_state_dict(self.model.member_state_dict(k), strict=False)
        state = {f"model.{n}": v for n, v in m.module.model.state_dict().items()}
        state.update({k2: v for k2, v in m.module.state_dict().items() if not k2.startswith("model.")})
        return {
            "hyper_parameters": dict(m.module.hparams),
            "state_dict": state,
            "epoch": m.epoch,
            "global_step": m.step,
            "pytorch-lightning_version": pl.__version__,
            "population": {"dir": str(self.dir), "member": k},
        }

    def end_epoch(self, val: dict[str, list[float]]) -> None:
        """After an epoch: log, checkpoint (best and last), LR schedule and early stopping per member."""
        for k, m in enumerate(self.members):
            if m.stopped:
                continue
            m.epoch += 1
            hp = m.module.hparams
            if m.step >= int(hp.divergence_min_steps) and m.skipped > float(hp.max_skipped_fraction) * m.step:
                m.stopped = m.diverged = True  # as the solo run's DivergenceError: recorded, not scored
                error = f"training diverged: {m.skipped} of {m.step} steps had a non-finite loss or gradient"
                if m.run_dir is not None:
                    write_status(m.run_dir, "diverged", error=error, skipped_steps=m.skipped)
                continue
            value = float(val[m.cfg.callbacks.monitor][k])
            if m.logger is not None:
                scalars = {name: float(v[k]) for name, v in val.items()}
                scalars.update({"lr-AdamW": float(self.optim.lr[k]), "epoch": m.epoch - 1})
                m.logger.log_metrics(scalars, step=m.step)
            ckpt = self._member_checkpoint(k) if m.run_dir is not None else None
            if m.best is None:
                better = math.isfinite(value)
            else:  # strictly better, as ModelCheckpoint and EarlyStopping compare
                better = value < m.best if m.cfg.callbacks.mode == "min" else value > m.best
            if better:
                m.best, m.wait = value, 0
                if ckpt is not None:
                    best = m.run_dir / CHECKPOINT_DIR / f"best-epoch={m.epoch - 1}.ckpt"
                    save_checkpoint(best, ckpt)
                    if m.best_path and Path(m.best_path) != best:
                        for old in (Path(m.best_path), Path(m.best_path + ".sha256")):
                            old.unlink(missing_ok=True)
                    m.best_path = str(best)
            else:
                m.wait += 1
            if ckpt is not None:
                save_checkpoint(m.run_dir / CHECKPOINT_DIR / LAST_CHECKPOINT, ckpt)
            if m.plateau is not None:
                self.optim.lr[k] = m.plateau.update(float(val["val/loss"][k]), float(self.optim.lr[k]))
            elif hp.lr_schedule == "cosine":
                self.optim.lr[k] = cosine_lr(
                    float(self.lr0[k]), float(hp.lr_min), m.epoch, int(m.cfg.trainer.max_epochs)
                )
            patience = int(m.cfg.callbacks.early_stopping_patience or 0)
            if (patience and m.wait >= patience) or m.epoch >= int(m.cfg.trainer.max_epochs):
                m.stopped = True

    # ------------------------------------------------------------------ the loop
    def run_epoch(self, log_every: int = 5) -> dict[str, list[float]]:
        """One epoch of every active member, its validation and `end_epoch`; returns the validation."""
        start = time.perf_counter()
        iters = [iter(m.batches) for m in self.members]  # each member's own order this epoch
        for batches in zip(*iters, strict=True):
            loss = self.training_step(batches)
            for k, m in enumerate(self.members):
                if m.logger is not None and not m.stopped and m.step % log_every == 0:
                    m.logger.log_metrics({"train/loss": float(loss[k])}, step=m.step - 1)
        val = self.validate()
        self.train_time += time.perf_counter() - start
        self.end_epoch(val)
        return val

    def fit(self) -> None:
        """Train until every member stopped (max_epochs or early stopping); the population state is
        saved after every epoch (`population.pt`), so a killed population resumes every member."""
        while not all(m.stopped for m in self.members):
            self.run_epoch()
            if self.dir is not None:
                self.save_state()

    def save_state(self) -> None:
        """population.pt: everything the loop needs to continue (atomic write)."""
        members = []
        for m in self.members:
            fields = {f.name: getattr(m, f.name) for f in dataclasses.fields(m)}
            for key in ("cfg", "module", "batches", "logger", "run_dir", "plateau"):
                fields.pop(key)
            fields["plateau"] = None if m.plateau is None else dataclasses.asdict(m.plateau)
            fields["batch_rng"] = m.batches.generator.get_state()
            members.append(fields)
        state = {
            "params": {n: self.model.p(n).detach().cpu() for n in self.model.names},
            "optim": self.optim.state_dict(),
            "members": members,
            "train_time": self.train_time,
        }
        with atomic_path(self.dir / STATE_FILE) as tmp:
            torch.save(state, tmp)

    def load_state(self, state: dict) -> None:
        with torch.no_grad():
            for n, v in state["params"].items():
                self.model.p(n).copy_(v)
        self.optim.load_state_dict(state["optim"])
        self.train_time = float(state["train_time"])
        for m, saved in zip(self.members, state["members"], strict=True):
            m.batches.generator.set_state(saved.pop("batch_rng"))
            plateau = saved.pop("plateau")
            if plateau is not None:
                m.plateau = Plateau(**plateau)
            for key, value in saved.items():
                setattr(m, key, value)

    def finish(self) -> list[dict[str, Any]]:
        """Score every member (`finish_member`); returns their records."""
        return [self.finish_member(k) for k in range(self.K)]

    def finish_member(self, k: int, **status: Any) -> dict[str, Any]:
        """Score member k through the one lifecycle's `finish_run` (best checkpoint, predictions,
        metrics.json, hparams row) and mark it finished (with `status` fields, e.g. pruned=True)."""
        from neuralnets.training.run import finish_run

        m = self.members[k]
        m.stopped = True
        if m.diverged:
            return {"run_dir": str(m.run_dir), "status": "diverged", "metrics": {}, "val_metrics": {}}
        if m.step == 0 or m.best_path is None:
            raise ConfigError(f"{m.run_dir}: member {k} took no step or never had a finite validation value")
        record = finish_run(
            m.cfg, m.run_dir, m.dm.data, m.module, best=Path(m.best_path), monitor=m.best, logger=m.logger,
            train_time=self.train_time / self.K, step=m.step, epochs=m.epoch,
        )  # fmt: skip
        write_status(m.run_dir, "finished", error=None, epochs=m.epoch, skipped_steps=m.skipped,
                     train_time_s=record["train_time_s"], **status)  # fmt: skip
        return record


def train_population(cfgs: Sequence[DictConfig], parent: str | Path | None = None) -> list[dict[str, Any]]:
    """Train the members `cfgs` as one population and score each; returns their metrics records."""
    pop = Population(cfgs)
    with pop.recorded(parent):
        pop.fit()
        return pop.finish()


def resume_population(pop_dir: str | Path) -> list[dict[str, Any]]:
    """Continue a killed population from its last saved epoch: every member, from its own run
    directory's config.yaml and the stacked state in population.pt."""

    pop_dir = Path(pop_dir)
    names = _member_names(pop_dir)
    pop = Population([load_saved_config(pop_dir / name / CONFIG_FILE) for name in names])
    pop.dir = pop_dir
    for m, name in zip(pop.members, names, strict=True):
        m.run_dir = pop_dir / name
    with pop.recorded():  # locked before any member's status is touched
        for m in pop.members:
            write_status(m.run_dir, "running", error=None)
            m.logger = build.build_logger(m.cfg, m.run_dir)
        state_path = pop_dir / STATE_FILE
        if state_path.is_file():
            pop.load_state(torch.load(state_path, map_location="cpu", weights_only=True))
        pop.fit()
        return pop.finish()


def _member_names(pop_dir: Path) -> list[str]:
    """The member directories population.json lists: names of folders directly inside `pop_dir` only
    (the file is untrusted: a path elsewhere is refused)."""
    from neuralnets.runs import read_json

    path = pop_dir / POPULATION_FILE
    if not path.is_file():
        raise ConfigError(f"{pop_dir} is not a population directory (no {POPULATION_FILE})")
    names = read_json(path).get("members") if isinstance(read_json(path), dict) else None
    if not isinstance(names, list) or not names:
        raise ConfigError(f"{path}: 'members' must be a non-empty list of member directory names")
    for name in names:
        if not isinstance(name, str) or Path(name).name != name or name in ("", ".", ".."):
            raise ConfigError(f"{path}: member {name!r} is not a directory inside {pop_dir}")
        if not (pop_dir / name / CONFIG_FILE).is_file():
            raise ConfigError(f"{path}: member {name!r} has no {CONFIG_FILE}")
    return names
