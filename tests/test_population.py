"""Population training (#30): member k of a population equals the same configuration trained alone."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import pytorch_lightning as pl
import torch
from omegaconf import OmegaConf
from tiny import TINY_DATA, TINY_LFADS

from neuralnets.config import compose
from neuralnets.errors import ConfigError, RunInterrupted
from neuralnets.runs import read_status
from neuralnets.training.population import Population, resume_population, train_population
from neuralnets.training.population_optim import MemberAdamW
from neuralnets.training.run import run_training

BASE = [
    *TINY_DATA,
    *TINY_LFADS,
    "data.batch_size=8",
    "model.kl_ramp_steps=10",
    "model.l2_ramp_steps=10",
    "trainer.enable_progress_bar=false",
    "trainer.enable_model_summary=false",
    "callbacks.eval_every_n_epochs=100",
    "callbacks.early_stopping_patience=0",
    "threads=1",
]
# Members with different lr, dropout, coordinated dropout, KL / L2 scales and seeds.
MEMBERS = [
    ["seed=0", "module.lr=0.01", "model.dropout=0.1", "module.coordinated_dropout=0.3"],
    [
        "seed=1",
        "module.lr=0.003",
        "model.dropout=0.0",
        "module.coordinated_dropout=0.0",
        "model.kl_ic_scale=0.3",
    ],
    [
        "seed=2",
        "module.lr=0.02",
        "model.dropout=0.25",
        "module.coordinated_dropout=0.45",
        "model.l2_gen_scale=5",
    ],
]


def member_cfgs(epochs: int, members=MEMBERS):
    return [compose([*BASE, f"trainer.max_epochs={epochs}", *m]) for m in members]


class _Losses(pl.Callback):
    def __init__(self):
        self.losses = []

    def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx):
        self.losses.append(float(outputs["loss"]))


def solo(cfg, tmp_path, name):
    """A solo run through the one lifecycle: (its training losses per step, its result)."""
    cb = _Losses()
    result = run_training(cfg, tmp_path / name, callbacks=[cb])
    return cb.losses, result


def test_initial_weights_equal_the_solo_models():
    cfgs = member_cfgs(1)
    pop = Population(cfgs)
    from neuralnets.training.population_members import build_member

    for k, cfg in enumerate(cfgs):
        alone = build_member(cfg).module.model  # the seed, data and module of `run_training`
        theirs = dict(alone.named_parameters())
        for name, value in pop.model.member_state_dict(k).items():
            assert torch.equal(value, theirs[name]), (k, name)


def first_losses(pop: Population, n: int) -> torch.Tensor:
    """The population's first `n` training losses `(n, K)`, validated at each epoch's end as in training."""
    losses = []
    while len(losses) < n:
        for batches in zip(*[iter(m.batches) for m in pop.members], strict=True):
            losses.append(pop.training_step(batches))
        pop.end_epoch(pop.validate())
    return torch.stack(losses[:n])


def test_training_losses_match_solo_runs_over_20_steps(tmp_path):
    cfgs = member_cfgs(7)  # 24 training trials, batch 8: 3 steps per epoch, 7 epochs >= 20 steps
    pop = Population(cfgs)
    pop_losses = first_losses(pop, 20)  # (20, K)
    for k, cfg in enumerate(member_cfgs(7)):
        losses, _ = solo(cfg, tmp_path, f"solo{k}")
        ref = torch.tensor(losses[:20], dtype=torch.float64)
        np.testing.assert_allclose(pop_losses[:, k].double(), ref, rtol=1e-5, err_msg=f"member {k}")


def test_adam_matches_torch_adamw_per_member():
    torch.manual_seed(0)
    K = 3
    w = torch.randn(K, 4, 5)
    lr, eps, wd = (
        torch.tensor([1e-2, 3e-3, 0.1]),
        torch.tensor([1e-8, 1e-6, 1e-8]),
        torch.tensor([0.0, 0.01, 0.1]),
    )
    stacked = w.clone().requires_grad_(True)
    opt = MemberAdamW([stacked], lr, eps, wd)
    solos = [w[k].clone().requires_grad_(True) for k in range(K)]
    torch_opts = [
        torch.optim.AdamW([solos[k]], lr=float(lr[k]), eps=float(eps[k]), weight_decay=float(wd[k]))
        for k in range(K)
    ]
    active = torch.tensor([True, True, True])
    for step in range(6):
        grads = torch.randn(K, 4, 5)
        if step == 3:
            active = torch.tensor([True, False, True])  # member 1 frozen from here
        stacked.grad = grads.clone()
        opt.step(active)
        for k in range(K):
            if active[k]:
                solos[k].grad = grads[k].clone()
                torch_opts[k].step()
    for k in range(K):
        torch.testing.assert_close(stacked[k].detach(), solos[k].detach(), rtol=1e-6, atol=1e-7)


def test_short_run_scores_match_solo_and_runs_are_ordinary(tmp_path):
    members = MEMBERS[:2]
    records = train_population(member_cfgs(3, members), tmp_path / "pop")
    for k, cfg in enumerate(member_cfgs(3, members)):
        _, result = solo(cfg, tmp_path, f"solo{k}")
        assert abs(records[k]["val_metrics"]["co_bps"] - result.record["val_metrics"]["co_bps"]) < 0.002
        run = tmp_path / "pop"
        member_dir = records[k]["run_dir"]
        status = json.loads(open(f"{member_dir}/status.json").read())
        assert status["status"] == "finished"
        assert list(run.rglob("events.out.tfevents.*"))
    from neuralnets import load_pretrained

    model = load_pretrained(records[0]["run_dir"])
    assert model is not None


def test_a_killed_population_resumes_every_member(tmp_path):
    cfgs = member_cfgs(2, MEMBERS[:2])
    pop = Population(cfgs)
    with pop.recorded(tmp_path / "pop") as pop_dir:
        # one epoch, then "killed" (SIGKILL: nothing recorded): the state on disk is the epoch's
        for batches in zip(*[iter(m.batches) for m in pop.members], strict=True):
            pop.training_step(batches)
        pop.end_epoch(pop.validate())
        pop.save_state()
    resumed = resume_population(pop_dir)
    straight = train_population(member_cfgs(2, MEMBERS[:2]), tmp_path / "straight")
    for a, b in zip(resumed, straight, strict=True):
        assert a["steps"] == b["steps"]
        assert a["val_metrics"]["co_bps"] == pytest.approx(b["val_metrics"]["co_bps"], abs=1e-5)


def test_an_interrupted_population_records_its_members_and_resumes(tmp_path):
    """SIGTERM (here: Ctrl-C) in the second epoch: every member recorded interrupted, the command's error is
    RunInterrupted (exit 75), and --resume continues every member from the first epoch's state."""
    pop = Population(member_cfgs(2, MEMBERS[:2]))
    real, calls = pop.run_epoch, []

    def second_epoch_interrupted():
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return real()

    pop.run_epoch = second_epoch_interrupted
    with pytest.raises(RunInterrupted, match="--resume"), pop.recorded(tmp_path / "pop") as pop_dir:
        pop.fit()
    assert [read_status(m.run_dir)["status"] for m in pop.members] == ["interrupted", "interrupted"]
    resumed = resume_population(pop_dir)
    straight = train_population(member_cfgs(2, MEMBERS[:2]), tmp_path / "straight")
    for a, b in zip(resumed, straight, strict=True):
        assert a["steps"] == b["steps"]
        assert a["val_metrics"]["co_bps"] == pytest.approx(b["val_metrics"]["co_bps"], abs=1e-5)
        assert read_status(Path(a["run_dir"]))["status"] == "finished"


@pytest.mark.parametrize("members", [["../elsewhere"], ["/tmp"], "member_000", []])
def test_a_population_file_naming_paths_elsewhere_is_refused(tmp_path, members):
    pop_dir = tmp_path / "pop"
    pop_dir.mkdir()
    (pop_dir / "population.json").write_text(json.dumps({"members": members, "K": 1}))
    with pytest.raises(ConfigError, match="population.json"):
        resume_population(pop_dir)


def test_members_of_different_architecture_are_refused():
    cfgs = [compose([*BASE, "seed=0"]), compose([*BASE, "seed=1", "model.gen_dim=20"])]
    with pytest.raises(ConfigError, match="model.gen_dim"):
        Population(cfgs)


@pytest.mark.parametrize("co_dim", [1, 0])
def test_fused_member_unroll_matches_the_plain_reference(co_dim):
    cfgs = [compose([*BASE, f"model.co_dim={co_dim}", *m]) for m in MEMBERS]
    pop = Population(cfgs)
    batches = [next(iter(m.batches)) for m in pop.members]
    results = {}
    for recurrence in ("plain", "fused"):
        pop.model.recurrence = recurrence
        for m, rng in zip(
            pop.members, [torch.manual_seed(k).get_state() for k in range(len(cfgs))], strict=True
        ):
            m.rng = rng  # the same draws for both paths
        for p in pop.params:
            p.grad = None
        pop.model.train()
        from neuralnets.models.lfads_population import draw_member_noise, stack_noise

        drawn = []
        for m in pop.members:
            torch.set_rng_state(m.rng)
            drawn.append(draw_member_noise(m.module.model, 8, float(m.module.hparams.coordinated_dropout)))
        loss, _, _ = pop.loss(
            batches, stack_noise([n for _, n in drawn], pop.device), [c for c, _ in drawn], True
        )
        loss.sum().backward()
        grads = [torch.zeros_like(p) if p.grad is None else p.grad.clone() for p in pop.params]
        results[recurrence] = (loss.detach(), grads)
    torch.testing.assert_close(results["fused"][0], results["plain"][0], rtol=1e-5, atol=1e-5)
    for a, b in zip(results["fused"][1], results["plain"][1], strict=True):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)


def test_tune_population_refills_slots_until_the_budget_is_spent(tmp_path):
    optuna = pytest.importorskip("optuna")
    from neuralnets.runs import read_run, read_status
    from neuralnets.training.tune import open_storage, study_name, tune

    overrides = [*BASE, "tune.max_epochs=2", "tune.min_epochs=1", f"tune.dir={tmp_path / 'study'}"]
    cfg = compose([*overrides, "tune.n_trials=3", "tune.population=2"], config_name="tune")
    rows = tune(cfg)
    assert len(rows) == 3  # 2 slots, one refilled as a member finishes or is pruned
    study = optuna.load_study(study_name=study_name(cfg), storage=open_storage(cfg))
    trials = sorted(study.get_trials(deepcopy=False), key=lambda t: t.number)
    assert [t.number for t in trials] == [0, 1, 2]
    for t in trials:
        run_dir = tmp_path / "study" / t.user_attrs["run_dir"]
        assert t.state.is_finished() and t.user_attrs["status"] in ("complete", "pruned"), t.user_attrs
        assert read_status(run_dir)["status"] == "finished"
        assert t.intermediate_values  # val co-bps reported every epoch
        run = read_run(run_dir)
        assert max(t.intermediate_values.values()) == pytest.approx(run["monitor"]["val/co_bps"])
        assert f"lr: {t.params['module.lr']}" in (run_dir / "config.yaml").read_text()


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_population_on_cuda_matches_cpu():
    torch.backends.cuda.matmul.allow_tf32 = False
    cfgs = member_cfgs(1)
    losses = {}
    for device in ("cpu", "cuda"):
        pop = Population(cfgs, device=device)
        batches = [next(iter(m.batches)) for m in pop.members]
        losses[device] = torch.stack([pop.training_step(batches) for _ in range(3)])
    torch.testing.assert_close(losses["cuda"], losses["cpu"], rtol=1e-4, atol=1e-4)


def test_population_command_refuses_members_of_different_architecture(capsys):
    from neuralnets.training.population_cli import main, member_overrides

    assert member_overrides(["a=1"], ["b=2", "b=3"], 2) == [
        ["a=1", "b=2", "seed=0"],
        ["a=1", "b=2", "seed=1"],
        ["a=1", "b=3", "seed=0"],
        ["a=1", "b=3", "seed=1"],
    ]
    code = main([*BASE, "--member", "model.gen_dim=20", "--member", "model.gen_dim=24"])
    assert code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "model.gen_dim" in err[0]


def test_pbt_population_mode_copies_member_slices_and_finishes_every_member(tmp_path):
    from neuralnets.training.pbt_population import HISTORY_FILE, copy_member, run_population_pbt

    cfg = compose([*BASE, "trainer.max_epochs=2", "pbt.num_samples=4", "pbt.perturbation_interval=1",
                   "pbt.population=true", "pbt.quantile_fraction=0.25"], config_name="pbt")  # fmt: skip
    records = run_population_pbt(cfg, tmp_path / "pbt")
    assert len(records) == 4 and all(r["metrics"]["co_bps"] is not None for r in records)
    (pop_dir,) = (tmp_path / "pbt").iterdir()
    history = json.loads((pop_dir / HISTORY_FILE).read_text())
    assert (
        len(history) == 1 and history[0]["member"] != history[0]["copied"]
    )  # one generation, 1 of 4 exploited
    # the copy itself: weights and optimiser moments of the destination slice equal the source's
    pop = Population(member_cfgs(1, MEMBERS[:2]))
    batches = [next(iter(m.batches)) for m in pop.members]
    pop.training_step(batches)
    copy_member(pop, 0, 1)
    for p, m in zip(pop.params, pop.optim.exp_avg, strict=True):
        assert torch.equal(p[1], p[0]) and torch.equal(m[1], m[0])


def test_a_diverging_member_is_recorded_and_the_others_finish(tmp_path):
    cfgs = member_cfgs(2, [MEMBERS[0], ["seed=1", "module.lr=1e6", "module.divergence_min_steps=1"]])
    records = train_population(cfgs, tmp_path / "pop")
    assert records[1]["status"] == "diverged"
    status = json.loads((Path(records[1]["run_dir"]) / "status.json").read_text())
    assert status["status"] == "diverged" and "non-finite" in status["error"]
    assert np.isfinite(records[0]["metrics"]["co_bps"])


RNN_SIZES = ["model=rnn", "model.enc_dim=8", "model.latent_dim=4", "model.dec_dim=8", "model.fac_dim=4"]
RNN = [*TINY_DATA, *RNN_SIZES, "model.variational=true", "model.kl_ramp_steps=10", "data.batch_size=4",
       "trainer.max_epochs=4", "trainer.enable_progress_bar=false", "trainer.enable_model_summary=false",
       "callbacks.eval_every_n_epochs=100", "callbacks.early_stopping_patience=0", "threads=1"]  # fmt: skip
RNN_MEMBERS = [
    ["seed=0", "module.lr=0.01", "model.dropout=0.1"],
    [
        "seed=3",
        "module.lr=0.003",
        "model.dropout=0.0",
        "model.kl_scale=0.3",
        "module.coordinated_dropout=0.2",
    ],
]


def test_rnn_members_match_solo_runs_over_20_steps(tmp_path):
    cfgs = [compose([*RNN, *m]) for m in RNN_MEMBERS]  # 24 training trials, batch 4: 6 steps per epoch
    pop = Population(cfgs)
    for k, cfg in enumerate(cfgs):  # the same initial weights
        from neuralnets.training.population_members import build_member

        theirs = dict(build_member(cfg).module.model.named_parameters())
        for name, value in pop.model.member_state_dict(k).items():
            assert torch.equal(value, theirs[name]), (k, name)
    pop_losses = first_losses(pop, 20)  # (20, K)
    for k, m in enumerate(RNN_MEMBERS):
        losses, _ = solo(compose([*RNN, *m]), tmp_path, f"solo{k}")
        ref = torch.tensor(losses[:20], dtype=torch.float64)
        np.testing.assert_allclose(pop_losses[:, k].double(), ref, rtol=1e-5, err_msg=f"member {k}")


def test_population_command_trains_seeds_as_ordinary_runs(tmp_path, capsys):
    from neuralnets.training.population_cli import main

    code = main([*BASE, "trainer.max_epochs=1", "--seeds", "2", "--out", str(tmp_path / "pops")])
    assert code == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert len(lines) == 2 and all("val co-bps" in line for line in lines)
    (pop_dir,) = (tmp_path / "pops").iterdir()
    members = json.loads((pop_dir / "population.json").read_text())["members"]
    seeds = [OmegaConf.load(pop_dir / m / "config.yaml").seed for m in members]
    assert seeds == [0, 1]


@pytest.mark.parametrize("bad", ["+bogus=1", "trainer.max_epochs=abc", "model=lfadz"])
def test_population_command_refuses_a_config_mistake_before_training(bad, capsys, tmp_path):
    from neuralnets.training.population_cli import main

    assert main([*BASE, f"out_dir={tmp_path}", bad, "--seeds", "2"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("neuralnets-population: error:") and len(err.strip().splitlines()) == 1
    assert not any(tmp_path.iterdir())  # no population directory was made


def test_a_refilled_slot_with_auto_settings_matches_the_built_members():
    """`data.batch_size: auto` is resolved when a member is built: a new member's config (still `auto`)
    is compared with the others once built (a tune population refilling its slots on CA1 failed here)."""
    auto = [o for o in BASE if not o.startswith("data.batch_size")] + ["data.batch_size=auto"]
    pop = Population([compose([*auto, "trainer.max_epochs=1", *m]) for m in MEMBERS[:2]])
    pop.replace_member(1, compose([*auto, "trainer.max_epochs=1", *MEMBERS[2]]))
    assert (
        pop.members[1].cfg.seed == 2
        and pop.members[1].cfg.data.batch_size == pop.members[0].cfg.data.batch_size
    )
