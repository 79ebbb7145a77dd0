"""Ground truth for the fixed-point analysis: do the bundled Lorenz models have the Lorenz fixed points?

    python experiments/lorenz_fixed_points.py            # writes experiments/results/lorenz_fixed_points.md
    python experiments/lorenz_fixed_points.py --models lfads_lorenz --n-initial 128 --out /tmp/fp.md

For each bundled model trained on the built-in Lorenz data (`lfads_lorenz`, `rnn_lorenz`), the fixed
and slow points of its autonomous dynamics (`neuralnets.analysis.fixed_points.model_fixed_points`,
initial states drawn from the states it visits on the train trials) are read out in its latent
(factor) space and mapped into the true latent space (the z-scored Lorenz state) with the linear map
the harness fits for latent R² (`eval.regression.linear_fit`, train trials). For each of the Lorenz
system's three fixed points (`data.meta["fixed_points"]`: the origin and the two wing centres) the
script reports the distance to the nearest found point as a fraction of the attractor's extent (its
diameter: the largest distance between two visited true states; target: < 15 % for each) and how
close the data themselves come to that point (the nearest visited true state, and the share of all
visited states within 15 % of the extent of it: a model learns its dynamics only where data are). It also
compares the rotation at the wing points: the Lorenz system's Jacobian there has a complex pair
mu = a ± i w (per Lorenz time unit); one bin is `lorenz_dt` Lorenz time units, so the per-bin map has
|lambda| = exp(a lorenz_dt) and the rotation frequency is w lorenz_dt / (2 pi bin_size) Hz.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
import torch

import neuralnets
from neuralnets.analysis.fixed_points import model_fixed_points
from neuralnets.analysis.ground_truth import attractor_diameter, fixed_point_distances, map_to_true_latents
from neuralnets.data import load

OUT = Path(__file__).resolve().parent / "results" / "lorenz_fixed_points.md"
TRUE_NAMES = ("origin", "wing (+x, +y)", "wing (-x, -y)")
TARGET = 0.15


def lorenz_wing_mode(params: dict) -> tuple[float, float]:
    """(|lambda| per bin, Hz) of the Lorenz system's rotating pair at a wing fixed point."""
    s, r, b = params["sigma"], params["rho"], params["beta"]
    x = np.sqrt(b * (r - 1))
    jac = np.array([[-s, s, 0.0], [1.0, -1.0, -x], [x, x, -b]])  # at (x, x, rho - 1)
    mu = np.linalg.eigvals(jac)
    pair = mu[np.argmax(np.abs(mu.imag))]
    dt = params["lorenz_dt"]
    return float(np.exp(pair.real * dt)), float(abs(pair.imag) * dt / (2 * np.pi * params["bin_size"]))


def study(name: str, n_initial: int, n_iter: int, q_tol: float, seed: int) -> tuple[list[str], dict]:
    pm = neuralnets.load_pretrained(name)
    card = pm.card["data"]
    data = load(card["name"], **card["load_kwargs"])
    out = pm.predict(data)
    train = data.indices("train")
    start = time.time()
    res = model_fixed_points(
        pm.model, data.heldin_obs[train], n_initial=n_initial, n_iter=n_iter, q_tol=q_tol, seed=seed
    )
    seconds = time.time() - start
    fp = res.fixed_points
    extent = attractor_diameter(data.latents)
    true = np.asarray(data.meta["fixed_points"])
    mapped = np.zeros((0, 3))  # (P, 3) found points in the true latent space
    if len(fp):
        mapped = map_to_true_latents(fp.latents, out["latents"], data.latents, train)
    fixed = fp.is_fixed
    near_any = fixed_point_distances(mapped, true, extent)
    near_fixed = fixed_point_distances(mapped[fixed], true, extent)
    # How close the data come to each true fixed point: a model can only learn dynamics where data are.
    flat = data.latents.reshape(-1, 3)  # (trials * T, 3) visited true states
    visited = [r["relative"] for r in fixed_point_distances(flat, true, extent)]
    near = [float((np.sqrt(((flat - p) ** 2).sum(-1)) < TARGET * extent).mean()) for p in true]
    true_abs, true_hz = lorenz_wing_mode(data.meta["params"])
    lines = [
        f"## {name} ({type(pm.model).__name__}, {pm.n_parameters} parameters)",
        "",
        f"{fp.n_initial} initial states from the states visited on (up to 512 of) the {len(train)} train "
        f"trials; {fp.n_converged} reached "
        f"q < {q_tol:g} (per bin); after merging: {int(fixed.sum())} fixed points (q < 1e-10) and "
        f"{int((~fixed).sum())} slow points. Search time {seconds:.1f} s. Attractor extent (diameter, "
        f"z-scored units): {extent:.3f}.",
        "",
        "| true fixed point | position (z-scored) | nearest visited true state: distance / extent "
        "| visited states within 15 % "
        "| nearest found point: distance / extent | its kind, q "
        "| nearest fixed point (q < 1e-10): distance / extent | target < 15 % |",
        "|---|---|---|---|---|---|---|---|",
    ]
    result = {}
    for j, (a, f) in enumerate(zip(near_any, near_fixed, strict=True)):
        kind = "-" if a["nearest"] is None else f"{fp.kinds[a['nearest']]}, {fp.q[a['nearest']]:.1e}"
        rel_a = "none found" if a["relative"] is None else f"{a['relative']:.1%}"
        rel_f = "none found" if f["relative"] is None else f"{f['relative']:.1%}"
        met = a["relative"] is not None and a["relative"] < TARGET
        position = np.round(true[j], 2).tolist()
        verdict = "met" if met else "missed"
        lines.append(
            f"| {TRUE_NAMES[j]} | {position} | {visited[j]:.1%} | {near[j]:.2%} | {rel_a} | {kind} | "
            f"{rel_f} | {verdict} |"
        )
        result[TRUE_NAMES[j]] = a["relative"]
    lines += ["", "Rotation at the wing points (the slowest complex pair of the nearest found point):", "",
              "| point | \\|lambda\\| per bin | frequency (Hz) |", "|---|---|---|",
              f"| Lorenz system (true) | {true_abs:.4f} | {true_hz:.2f} |"]  # fmt: skip
    for j in (1, 2):
        i = near_any[j]["nearest"]
        if i is None:
            continue
        lam = fp.eigenvalues[i]
        k = int(np.argmax(np.abs(lam.imag) > 1e-9)) if (np.abs(lam.imag) > 1e-9).any() else 0
        hz = fp.frequencies[i, k]
        lines.append(f"| {name}, nearest to {TRUE_NAMES[j]} | {abs(lam[k]):.4f} | {hz:.2f} |")
    return lines, result


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--models", nargs="+", default=["lfads_lorenz", "rnn_lorenz"])
    p.add_argument("--n-initial", type=int, default=512)
    p.add_argument("--n-iter", type=int, default=2000)
    p.add_argument("--q-tol", type=float, default=1e-4)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--out", type=Path, default=OUT)
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    cmd = "python experiments/lorenz_fixed_points.py " + " ".join(
        f"--{k.replace('_', '-')} {' '.join(v) if isinstance(v, list) else v}"
        for k, v in vars(args).items() if k != "out"
    )  # fmt: skip
    title = "# Fixed points of the bundled Lorenz models vs the Lorenz system's"
    lines = [title, "", f"Command: `{cmd}`", "", __doc__.split("\n\n", 2)[2].strip(), ""]
    summary = []
    for name in args.models:
        body, result = study(name, args.n_initial, args.n_iter, args.q_tol, args.seed)
        lines += body + [""]
        summary.append((name, result))
    lines += ["## Summary: nearest found point per true fixed point (distance / extent)", "",
              "| model | " + " | ".join(TRUE_NAMES) + " |", "|---|---|---|---|"]  # fmt: skip
    for name, result in summary:
        cells = ["none" if v is None else f"{v:.1%}" for v in result.values()]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    text = "\n".join(lines) + "\n"
    print(text)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
