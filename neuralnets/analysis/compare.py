"""`neuralnets-analyze --compare A B`: how alike are two models' dynamics?

Each model's latent trajectories on its own data's test trials are compared by dynamical similarity
analysis (`linear_dynamics.dsa`: delay embedding, a linear operator in the top principal components,
the angular Procrustes distance between the operators, 0 to π/2 radians). A distance means little
alone, so two references sit beside it: the distance between two halves of A's own trials and of B's
(what sampling alone gives). Each model's data-driven modes (least-squares DMD) are listed too.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from neuralnets.analysis.linear_dynamics import dsa, fit_linear_dynamics
from neuralnets.analysis.manifolds import format_modes, modes

MAX_TRIALS = 200  # test trials per model the comparison uses
N_DELAYS = 5  # bins of delay embedding
RANK = 6  # principal components of the delay-embedded trajectories


def _test_latents(pm, data, session: str | None) -> np.ndarray:
    """The model's latents `(trials, T, K)` on up to MAX_TRIALS test trials of `data` (all trials when
    the data have no test split)."""
    idx = data.indices("test")
    idx = (idx if len(idx) else np.arange(data.n_trials))[:MAX_TRIALS]
    return np.asarray(pm.model.predict(data.heldin_obs[idx], session=session)["latents"], dtype=np.float64)


def compare_text(
    pm_a, data_a, pm_b, data_b, names: tuple[str, str], sessions=(None, None), seed: int = 0
) -> str:
    """The comparison report (markdown) of two loaded models on their data."""
    xa, xb = _test_latents(pm_a, data_a, sessions[0]), _test_latents(pm_b, data_b, sessions[1])
    dist = dsa(xa, xb, N_DELAYS, RANK, seed=seed)
    half_a = dsa(xa[::2], xa[1::2], N_DELAYS, RANK, seed=seed)
    half_b = dsa(xb[::2], xb[1::2], N_DELAYS, RANK, seed=seed)
    floor = max(half_a, half_b)
    verdict = (
        "no larger than the split-half distances: no difference in dynamics this measure can see"
        if dist <= 2 * floor
        else f"{dist / max(floor, 1e-12):.1f}x the larger split-half distance: the dynamics differ"
    )
    lines = [
        f"# Dynamics of `{names[0]}` vs `{names[1]}`",
        "",
        f"Dynamical similarity analysis (Ostrow et al. 2023) of the models' latent trajectories on up to "
        f"{MAX_TRIALS} test trials each: delay embedding of {N_DELAYS} bins, a linear operator in the top "
        f"{RANK} principal components, angular Procrustes distance between the operators (radians; 0: the "
        "same dynamics up to a rotation of coordinates, π/2 ≈ 1.571: unrelated).",
        "",
        "| pair | DSA distance (rad) |",
        "|---|---|",
        f"| A vs B | {dist:.3f} |",
        f"| A, even vs odd trials | {half_a:.3f} |",
        f"| B, even vs odd trials | {half_b:.3f} |",
        "",
        f"**A vs B is {verdict}.**",
        "",
        "Data-driven modes (least-squares linear fit of the latents, slower than 5 bins):",
        "",
    ]
    for name, x, data in ((names[0], xa, data_a), (names[1], xb, data_b)):
        dt = float(data.bin_size)
        fit = fit_linear_dynamics(x, dt, rank=min(10, x.shape[2]))
        lines.append(
            f"- `{name}`: {format_modes(modes(fit.eigenvalues, dt, 5 * dt))} (one-step R² {fit.r2:.3f})"
        )
    return "\n".join(lines) + "\n"


def run_compare(targets: list[str], out: str | None, session: str | None, seed: int, load_target) -> int:
    """`neuralnets-analyze --compare A B`: load both (`load_target`: the CLI's loader of a run or bundled
    name), write `compare.md` atomically into `out` (default ./compare-<A>-<B>) and print it."""
    from neuralnets.files import write_text_atomic

    a, b = targets
    pm_a, data_a, _, session_a, _, _ = load_target(a, None, session)
    pm_b, data_b, _, session_b, _, _ = load_target(b, None, session)
    text = compare_text(pm_a, data_a, pm_b, data_b, (a, b), (session_a, session_b), seed=seed)
    out_dir = Path(out) if out else Path.cwd() / f"compare-{Path(a).name}-{Path(b).name}"
    out_dir.mkdir(parents=True, exist_ok=True)
    write_text_atomic(out_dir / "compare.md", text)
    print(text + f"\nreport: {out_dir / 'compare.md'}")
    return 0
