"""Stitching study: one stitched LFADS over all sessions vs a separate LFADS per session, same budget.

    python experiments/stitching.py                       # 3 seeds, writes experiments/results/stitching.md
    python experiments/stitching.py --seeds 0 --epochs 10 --out /tmp/stitching.md   # a quick look

Data: `lorenz_sessions` (one Lorenz system recorded in several sessions, each with its own neurons).
Both arms use the same LFADS core size and see the same trials for the same number of epochs (so the
same number of optimiser steps in total): the stitched model trains one core on all sessions, each
separate model its own core on one session. Scored on each session's test trials with the harness:
latent R² (a linear map from the model's latents to the true latents, fit on that session's train
trials), co-bps, and a "pooled" latent R², where ONE linear map is fit on the train trials of all
sessions together: only a model whose latents share coordinates across sessions scores well there.
Mean ± sd over the seeds (the data are the same for every seed; the seed sets initialisation and
batch order).
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
import pytorch_lightning as pl
import torch

from neuralnets.data.datamodule import MultiSessionDataModule, SpikeDataModule
from neuralnets.data.synthetic import lorenz_sessions
from neuralnets.eval import evaluate
from neuralnets.eval.regression import latent_r2
from neuralnets.training.build import init_sessions_from_data, train_mean_counts
from neuralnets.training.module import TrainingModule

CORE = {"gen_dim": 32, "fac_dim": 8, "ic_enc_dim": 32, "co_dim": 0}
RAMP_SHARE = 0.25  # KL and L2 weights ramp up over this share of each model's own optimiser steps
MODULE = {"lr": 1e-2, "lr_schedule": "none", "coordinated_dropout": 0.3}
OUT = Path(__file__).resolve().parent / "results" / "stitching.md"


def fit(module: TrainingModule, dm: pl.LightningDataModule, epochs: int) -> None:
    trainer = pl.Trainer(
        max_epochs=epochs, accelerator="cpu", logger=False, enable_checkpointing=False,
        enable_progress_bar=False, enable_model_summary=False, num_sanity_val_steps=0,
    )  # fmt: skip
    trainer.fit(module, datamodule=dm)


def ramps(dm: pl.LightningDataModule, epochs: int) -> dict[str, int]:
    """KL / L2 ramp lengths: `RAMP_SHARE` of the model's steps (the stitched model takes as many steps
    as all separate models together, so equal ramps in steps would regularise the arms differently)."""
    steps = max(1, int(RAMP_SHARE * epochs * len(dm.train_dataloader())))
    return {"kl_ramp_steps": steps, "l2_ramp_steps": steps}


def stitched_arm(data, epochs: int, seed: int, batch_size: int, readin_dim: int = 16) -> dict[str, dict]:
    """{session: {"latents", "rates"}} of one stitched LFADS trained on all sessions."""
    pl.seed_everything(seed, workers=True)
    dm = MultiSessionDataModule(data, batch_size=batch_size, seed=seed)
    core = {**CORE, **ramps(dm, epochs)}
    model = {"name": "stitched", "core": "lfads", "readin_dim": readin_dim, "core_options": core}
    module = TrainingModule(model=model, spec=data.spec.to_dict(), **MODULE)
    init_sessions_from_data(module.model, data)
    fit(module, dm, epochs)
    return module.model.predict_sessions(data)


def separate_arm(data, epochs: int, seed: int, batch_size: int) -> dict[str, dict]:
    """{session: {"latents", "rates"}} of one LFADS per session, each trained on its session alone."""
    preds = {}
    for name, session in data:
        pl.seed_everything(seed, workers=True)
        dm = SpikeDataModule(session, batch_size=batch_size, seed=seed)
        model = {"name": "lfads", **CORE, **ramps(dm, epochs)}
        module = TrainingModule(model=model, spec=session.spec.to_dict(), **MODULE)
        module.model.init_readout_bias(train_mean_counts(session))
        fit(module, dm, epochs)
        preds[name] = module.model.predict(session.heldin_obs)
    return preds


def score(data, preds: dict[str, dict]) -> dict[str, dict[str, float]]:
    """Per session: harness latent R² and co-bps on the test trials, and the pooled latent R²."""
    train = {n: d.indices("train") for n, d in data}
    pooled_z = np.concatenate([preds[n]["latents"][train[n]] for n in data.names])  # (trials, T, K)
    pooled_true = np.concatenate([d.latents[train[n]] for n, d in data])  # (trials, T, 3)
    out = {}
    for name, d in data:
        m = evaluate(preds[name]["rates"], d, "test", latents=preds[name]["latents"], fewshot=False)
        test = d.indices("test")
        pooled = latent_r2(pooled_z, pooled_true, preds[name]["latents"][test], d.latents[test])
        out[name] = {"latent_r2": m["latent_r2"], "pooled_latent_r2": pooled, "co_bps": m["co_bps"]}
    return out


def table(results: dict[str, list[dict]], names: tuple[str, ...], header: list[str]) -> str:
    """Markdown: one row per (arm, metric), a column per session and the mean over sessions."""
    lines = [*header, "", "| arm | metric | " + " | ".join(names) + " | mean over sessions |",
             "|---|---|" + "---|" * (len(names) + 1)]  # fmt: skip
    for arm, runs in results.items():
        for metric in ("latent_r2", "pooled_latent_r2", "co_bps"):
            per = np.array([[r[n][metric] for n in names] for r in runs])  # (seeds, sessions)
            cells = [f"{per[:, j].mean():.3f} ± {per[:, j].std(ddof=1) if len(per) > 1 else 0:.3f}"
                     for j in range(len(names))]  # fmt: skip
            means = per.mean(axis=1)
            cells.append(f"{means.mean():.3f} ± {means.std(ddof=1) if len(means) > 1 else 0:.3f}")
            lines.append(f"| {arm} | {metric} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--epochs", type=int, default=40)
    p.add_argument("--n-sessions", type=int, default=4)
    p.add_argument("--n-trials", type=int, default=100, help="trials per session (60%% train)")
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--readin-dim", type=int, default=16, help="the stitched model's shared input size")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--out", type=Path, default=OUT)
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    data = lorenz_sessions(n_sessions=args.n_sessions, n_trials=args.n_trials, seed=0)
    results: dict[str, list[dict]] = {"stitched": [], "separate": []}
    start = time.perf_counter()
    for seed in args.seeds:
        results["stitched"].append(
            score(data, stitched_arm(data, args.epochs, seed, args.batch_size, args.readin_dim))
        )
        results["separate"].append(score(data, separate_arm(data, args.epochs, seed, args.batch_size)))
        print(f"seed {seed} done ({time.perf_counter() - start:.0f} s)", flush=True)
    sizes = ", ".join(f"{n}: {d.n_heldin}+{d.n_heldout} neurons" for n, d in data)
    header = [
        "# Stitching: one LFADS over all sessions vs one LFADS per session",
        "",
        f"Command: `python experiments/stitching.py --seeds {' '.join(map(str, args.seeds))} --epochs "
        f"{args.epochs} --n-sessions {args.n_sessions} --n-trials {args.n_trials} --batch-size "
        f"{args.batch_size} --readin-dim {args.readin_dim} --threads {args.threads}`",
        "",
        f"Data: `lorenz_sessions(n_sessions={args.n_sessions}, n_trials={args.n_trials}, seed=0)` ({sizes}); "
        f"LFADS core {CORE}, KL and L2 ramps over {RAMP_SHARE:.0%} of each model's steps, stitched read-in "
        f"dim {args.readin_dim}; module {MODULE}; {args.epochs} epochs "
        f"for every model (the same trials and optimiser steps in total). Test trials of each session; "
        f"mean ± sd over seeds {args.seeds}. Total time {time.perf_counter() - start:.0f} s with "
        f"{args.threads} thread(s).",
        "",
        "`latent_r2`: harness latent R² (linear map fit on that session's train trials). `pooled_latent_r2`:"
        " one linear map fit on all sessions' train trials together. `co_bps`: held-out neurons.",
    ]
    text = table(results, data.names, header)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(text)
    print(text)


if __name__ == "__main__":
    main()
