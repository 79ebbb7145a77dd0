"""`neuralnets-analyze --spread RUN RUN ...`: how far to trust a time constant or a frequency.

One trained model gives one number per mode; models of the same configuration trained with other
seeds (or the members of a population) give its spread. For each run, the modes of the slowest point of
its largest group of fixed/slow points (`manifolds.group_points`, every mode slower than `min_tau`) and
of the least-squares DMD of its latent trajectories are computed; each mode of the first run is paired
with the nearest mode of every other run (by continuous-time eigenvalue, `mode_spread`), and the report
gives the median and the range [min, max] over runs of τ and f, for both estimates.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from neuralnets.analysis.linear_dynamics import continuous_eigenvalue, fit_linear_dynamics
from neuralnets.analysis.manifolds import group_points, modes
from neuralnets.errors import AnalysisError


def mode_spread(per_run: list[list[dict]]) -> list[dict]:
    """Each mode `{"tau_s", "hz"}` of the first run's list with its nearest mode in every run (itself in
    the first): `{"tau_s": (R,), "hz": (R,)}` arrays, NaN for a run without modes."""
    if not per_run:
        raise AnalysisError("the spread needs at least one run")
    out = []
    for ref in per_run[0]:
        s0 = continuous_eigenvalue(ref["tau_s"], ref["hz"])
        taus, hzs = [], []
        for ms in per_run:
            if not ms:
                taus.append(np.nan)
                hzs.append(np.nan)
                continue
            j = int(np.argmin([abs(s0 - continuous_eigenvalue(m["tau_s"], m["hz"])) for m in ms]))
            taus.append(ms[j]["tau_s"])
            hzs.append(ms[j]["hz"])
        out.append({"tau_s": np.asarray(taus, dtype=float), "hz": np.asarray(hzs, dtype=float)})
    return out


def _cell(values: np.ndarray, scale: float, fmt: str) -> str:
    """'median [min, max]' of the finite values × scale."""
    v = np.asarray(values, dtype=float)
    v = v[np.isfinite(v)] * scale
    if not len(v):
        return "n/a"
    return f"{format(np.median(v), fmt)} [{format(v.min(), fmt)}, {format(v.max(), fmt)}]"


def run_modes(pm, data, session, min_tau: float, n_initial: int, n_iter: int, seed: int) -> tuple[list, list]:
    """(Jacobian modes at the slowest point of the largest group, DMD modes) of one loaded model."""
    from neuralnets.analysis.fixed_points import model_fixed_points, require_dynamics

    require_dynamics(pm.model)
    train = data.indices("train")
    train = train if len(train) else np.arange(data.n_trials)
    res = model_fixed_points(pm.model, data.heldin_obs[train], session=session, n_initial=n_initial,
                             n_iter=n_iter, seed=seed)  # fmt: skip
    fp, dt = res.fixed_points, float(data.bin_size)
    groups = group_points(fp.states, fp.scale, fp.q) if len(fp) and fp.scale > 0 else []
    jac = modes(fp.eigenvalues[groups[0].representative], dt, min_tau) if groups else []
    x = res.trajectory_latents
    dmd = modes(fit_linear_dynamics(x, dt, rank=min(10, x.shape[2])).eigenvalues, dt, min_tau)
    return jac, dmd


def run_spread(targets: list[str], out: str | None, session: str | None, seed: int, n_initial: int,
               n_iter: int, min_tau_s: float | None, load_target) -> int:  # fmt: skip
    """Load every target (`load_target`: the CLI's loader), write `spread.md` atomically into `out`
    (default ./spread-<first target>) and print it."""
    from neuralnets.files import write_text_atomic

    jac, dmd, dt = [], [], None
    for t in targets:
        pm, data, _, sess, _, _ = load_target(t, None, session)
        dt = float(data.bin_size)
        min_tau = min_tau_s if min_tau_s is not None else 5 * dt
        j, d = run_modes(pm, data, sess, min_tau, n_initial, n_iter, seed)
        jac.append(j)
        dmd.append(d)
    lines = [
        f"# Spread of the modes over {len(targets)} runs",
        "",
        "Runs: " + ", ".join(f"`{t}`" for t in targets) + ". Modes slower than "
        f"{min_tau * 1e3:.0f} ms of the first run (Jacobian at the slowest point of its largest group of "
        "fixed/slow points; DMD: least-squares linear fit of its latents), each paired with the nearest mode "
        "of every run; median [min, max] over runs.",
        "",
        "| estimate | τ (ms) | frequency (Hz) |",
        "|---|---|---|",
    ]
    for name, per_run in (("Jacobian", jac), ("DMD", dmd)):
        for m in mode_spread(per_run):
            lines.append(f"| {name} | {_cell(m['tau_s'], 1e3, '.0f')} | {_cell(m['hz'], 1.0, '.2f')} |")
    text = "\n".join(lines) + "\n"
    out_dir = Path(out) if out else Path.cwd() / f"spread-{Path(targets[0]).name}"
    out_dir.mkdir(parents=True, exist_ok=True)
    write_text_atomic(out_dir / "spread.md", text)
    print(text + f"\nreport: {out_dir / 'spread.md'}")
    return 0
