"""`neuralnets-analyze RUN_DIR`: what a trained model found, as a report and TensorBoard figures.

    neuralnets-analyze runs/lfads_lorenz/2026-12-04_10-00-00     # a finished training run
    neuralnets-analyze lfads_lorenz --out lorenz-analysis        # a bundled pretrained model
    neuralnets-analyze --compare RUN_A RUN_B   /   --spread RUN1 RUN2 RUN3   # DSA; modes over seeds

Runs every analysis the model's capabilities allow, on the data it was trained on:
- fixed and slow points of its autonomous dynamics (`has_recurrent_dynamics`), grouped into the
  manifolds they form, each group's modes beside a least-squares DMD of the latents, and, on synthetic
  data with known fixed points (Lorenz), their distance to those;
- condition-averaged latent trajectories, PCA and jPCA (data with trial conditions);
- inferred-input events (`has_inferred_inputs`): peaks above a threshold set on an input-free null, a
  verdict, alignment to the trial events, a score against known inputs.
An analysis the model or data cannot support is listed with the one-line reason. The report goes to
`analysis.md` in the run directory (written atomically; for a bundled model in `--out`, default
`./analysis-<name>`) and the figures and report text into TensorBoard event files there (the run's
own TensorBoard directory). The command itself (its options) is `neuralnets.analysis.cli`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from neuralnets.analysis import linear_dynamics as ld
from neuralnets.analysis import manifolds as mf
from neuralnets.analysis.fixed_points import model_fixed_points, require_dynamics
from neuralnets.analysis.ground_truth import attractor_diameter, fixed_point_distances, map_to_true_latents
from neuralnets.analysis.inputs import (
    MIN_SEPARATION,
    NULL_EVENTS_PER_TRIAL,
    START_BINS,
    detect_input_events,
    event_aligned,
    event_precision_recall,
    input_magnitude,
    input_verdict,
    known_events,
    null_inputs,
    require_inputs,
    trial_events,
)
from neuralnets.analysis.jpca import condition_average, jpca
from neuralnets.analysis.manifolds import MIN_TAU_BINS
from neuralnets.errors import AnalysisError, CheckpointError, DataError, RunStatusError
from neuralnets.eval.tables import markdown_table

REPORT_FILE = "analysis.md"
ALIGN_BINS = 10  # bins before and after a trial event in the event-aligned input magnitude
NULL_TRIALS_MAX = 256  # train trials the input-free null is simulated from
DMD_RANK = 10  # principal components of the latent trajectories the data-driven linear fit runs in


@dataclass
class Section:
    """One analysis: its title, markdown body, figures {tag: Figure} and numbers {name: value}."""

    title: str
    text: str
    figures: dict[str, Any] = field(default_factory=dict)
    numbers: dict[str, Any] = field(default_factory=dict)


def _fmt(x: float, spec: str = ".3g") -> str:
    return "n/a" if x is None or not np.isfinite(x) else format(x, spec)


def _trials(data, split: str) -> np.ndarray:
    """Indices of `split`, or of all trials when the split is empty."""
    idx = data.indices(split)
    return idx if len(idx) else np.arange(data.n_trials)


# ---------------------------------------------------------------------------------------------- sections
def fixed_points_section(
    model, data, latents: np.ndarray, session: str | None, n_initial: int, n_iter: int, seed: int,
    min_tau: float | None = None,
) -> Section:  # fmt: skip
    """Fixed/slow points from the train trials' states, grouped into the manifolds they form, each with
    its modes slower than `min_tau` s (default `MIN_TAU_BINS` bins), beside a least-squares DMD of the
    model's latent trajectories; with known fixed points, their distances."""
    title = "Fixed and slow points of the autonomous dynamics"
    try:
        require_dynamics(model)
    except AnalysisError as e:
        return Section(title, f"Skipped: {e}.")
    from neuralnets.analysis.figures import fixed_points_figure

    dt = float(data.bin_size)
    min_tau = MIN_TAU_BINS * dt if min_tau is None else min_tau
    window = data.n_obs * dt  # a mode slower than the trial is, over a trial, an attractor
    train = _trials(data, "train")
    res = model_fixed_points(
        model, data.heldin_obs[train], session=session, n_initial=n_initial, n_iter=n_iter, seed=seed
    )
    fp = res.fixed_points
    n_fixed = int(fp.is_fixed.sum())
    groups = mf.group_points(fp.states, fp.scale, fp.q) if len(fp) and fp.scale > 0 else []
    fit = ld.fit_linear_dynamics(
        res.trajectory_latents, dt, rank=min(DMD_RANK, res.trajectory_latents.shape[2])
    )
    data_modes = mf.modes(fit.eigenvalues, dt, min_tau)
    lines = [
        f"Searched from {fp.n_initial} states the model visits on {len(train)} train trials (plus noise); "
        f"{fp.n_converged} reached q < {fp.q_tol:g}; after merging duplicates: {n_fixed} fixed points "
        f"(q < 1e-10) and {len(fp) - n_fixed} slow points, which form **{len(groups)} group(s)** (points "
        f"closer than {mf.LINK_FRAC:g} × the visited states' spread are linked; a group's shape and extent "
        "come from its members' spread). q = ½‖F(h) − h‖² per bin; τ = −dt/ln|λ| of the Jacobian of the "
        f"one-bin map, frequency angle(λ)/(2π dt). Every mode slower than {min_tau * 1e3:.0f} ms is listed, "
        "and every growing one, complex pairs once.",
        "",
    ]
    group_rows, numbers_groups = [], []
    for i, g in enumerate(groups):
        rep = g.representative
        ms = mf.modes(fp.eigenvalues[rep], dt, min_tau)
        member_taus = [abs(fp.time_constants[j, 0]) for j in g.members]
        align = (
            mf.slowest_direction_alignment(g, fp.eigenvectors[rep]) if fp.eigenvectors is not None else None
        )
        name = mf.describe_group(g, align, abs(fp.time_constants[rep, 0]), window)
        ext = ", ".join(f"{e / fp.scale:.2f}" for e in g.extent) or "0"
        spread = (
            f"{min(member_taus) * 1e3:.0f}–{max(member_taus) * 1e3:.0f} ms" if len(g.members) > 1 else "—"
        )
        vs_dmd = ld.compare_modes(ms, data_modes)
        agree = f"{sum(r['agree'] for r in vs_dmd)} of {len(vs_dmd)}" if vs_dmd else "—"
        group_rows.append([
            str(i), name, f"{len(g.members)} ({int(fp.is_fixed[g.members].sum())} fixed)", ext,
            mf.describe_kinds([fp.kinds[j] for j in g.members], fp.kinds[rep]), mf.format_modes(ms), spread,
            agree,
        ])  # fmt: skip
        numbers_groups.append({
            "kind": g.kind, "name": name, "n_points": len(g.members), "dimension": g.dimension,
            "extent_rel": (g.extent / fp.scale).tolist(), "stability": fp.kinds[rep], "modes": ms,
            "slowest_tau_range_s": [min(member_taus), max(member_taus)], "alignment": align,
            "agrees_with_dmd": [r["agree"] for r in vs_dmd],
        })  # fmt: skip
    header = ["group", "what", "points", "extent / spread", "stability", "modes (slowest point)",
              "slowest τ over members", "modes DMD agrees with"]  # fmt: skip
    no_points = (
        "No point reached the tolerance: search longer (`--n-iter`) or from more states (`--n-initial`)."
    )
    lines.append(markdown_table(header, group_rows) if groups else no_points)
    disagree = [r for n in numbers_groups for r in n["agrees_with_dmd"] if not r]
    lines += [
        f"**Second opinion (data-driven).** A least-squares linear fit x_(t+1) = A x_t + b of the model's "
        f"latent trajectories on the train trials (top {fit.A.shape[0]} principal components; one-step "
        f"R² {fit.r2:.3f}) has modes: {mf.format_modes(data_modes)}. "
        + (
            f"{len(disagree)} mode(s) of the fixed points have no match in it (decay rate within "
            f"{ld.DISAGREE_REL:.0%}, frequency within {ld.DISAGREE_HZ_REL:.0%}): the fixed points' "
            "linearisation and what the model does on the data differ there; trust neither number alone."
            if disagree
            else "Every listed mode of the fixed points has a match in it."
        ),
    ]
    numbers: dict[str, Any] = {
        "n_fixed": n_fixed, "n_slow": len(fp) - n_fixed, "kinds": fp.kinds, "groups": numbers_groups,
        "dmd_modes": data_modes, "dmd_r2": fit.r2, "min_tau_s": min_tau,
    }  # fmt: skip
    if len(fp) and data.latents is not None and "fixed_points" in data.meta:
        extent = attractor_diameter(data.latents)
        mapped = map_to_true_latents(fp.latents, latents, data.latents, train)
        rows = fixed_point_distances(mapped, np.asarray(data.meta["fixed_points"]), extent)
        numbers["true_fixed_point_distance_rel"] = [r["relative"] for r in rows]
        lines += [
            "",
            "**Ground truth.** The found points, mapped into the true latent space by the linear map the "
            "harness fits for latent R² (train trials), against the system's own fixed points; distance "
            f"as a fraction of the attractor's diameter ({extent:.2f}):",
            "",
            markdown_table(
                ["true fixed point", "nearest found point", "distance / diameter"],
                [[str(r["true_point"]), str(r["nearest"]), f"{r['relative']:.1%}"] for r in rows],
            ),
        ]
    fig = fixed_points_figure(res.trajectory_latents, fp)
    return Section(title, "\n".join(lines), {"analysis/fixed_points": fig}, numbers)


def condition_section(data, latents: np.ndarray) -> Section:
    """Condition-averaged latent trajectories: PCA and jPCA."""
    title = "Condition-averaged trajectories: PCA and jPCA"
    if data.condition is None:
        return Section(title, "Skipped: the data have no trial conditions.")
    avg, labels = condition_average(latents, data.condition)
    if len(labels) < 2:
        return Section(title, f"Skipped: one condition only ({labels.tolist()}); jPCA needs at least 2.")
    if avg.shape[2] < 2 or avg.shape[1] < 3:
        return Section(title, f"Skipped: latents {avg.shape[1:]} (bins, dims) need >= 3 bins and >= 2 dims.")
    from neuralnets.analysis.figures import jpca_figure

    res = jpca(avg, float(data.bin_size), n_pcs=min(6, avg.shape[2]))
    names = data.meta.get("condition_names")
    shown = np.asarray(names)[labels] if names is not None and len(names) > int(labels.max()) else labels
    freqs = ", ".join(f"{f:.2f}" for f in res.frequencies_hz)
    text = "\n".join([
        f"{len(labels)} conditions averaged over all their trials; cross-condition mean removed; "
        f"top {len(res.pc_variance)} PCs keep {res.pc_variance.sum():.1%} of the variance "
        f"({', '.join(f'{v:.1%}' for v in res.pc_variance)}).",
        "",
        "| fit of dx/dt = M x | R² |",
        "|---|---|",
        f"| unconstrained M | {res.r2_full:.3f} |",
        f"| skew-symmetric M (rotation) | {res.r2_skew:.3f} |",
        f"| ratio skew / unconstrained | {res.rotational_ratio:.3f} |",
        "",
        f"Rotation frequencies of the jPC planes (Hz, fastest first): {freqs}.",
    ])  # fmt: skip
    numbers = {
        "r2_full": res.r2_full, "r2_skew": res.r2_skew, "rotational_ratio": res.rotational_ratio,
        "frequencies_hz": res.frequencies_hz.tolist(), "pc_variance": res.pc_variance.tolist(),
    }  # fmt: skip
    return Section(title, text, {"analysis/jpca": jpca_figure(res, shown)}, numbers)


def inputs_section(
    model, data, inputs: np.ndarray | None, tolerance_bins: int, session: str | None = None, seed: int = 0
) -> Section:
    """Inferred-input events: peaks above a threshold set on an input-free null from the train trials, a
    verdict against that null, alignment to trial events, and a score against known inputs."""
    title = "Inferred inputs"
    try:
        require_inputs(model)
    except AnalysisError as e:
        return Section(title, f"Skipped: {e}.")
    if inputs is None:
        return Section(title, "Skipped: the predictions hold no inferred inputs.")
    from neuralnets.analysis.figures import input_events_figure
    from neuralnets.eval.metrics import INPUT_CORR_MAX_LAG, INPUT_CORR_MAX_LEAD, input_corr, input_readout_r2

    mag = input_magnitude(inputs)  # (trials, T_obs)
    train, test = _trials(data, "train"), _trials(data, "test")
    null_train = train[:NULL_TRIALS_MAX]
    null = input_magnitude(null_inputs(model, data.heldin_obs[null_train], seed=seed, session=session))
    verdict = input_verdict(mag[train], null)
    thr = verdict.threshold
    detected = detect_input_events(mag[test], thr)
    per_trial = len(detected) / len(test)
    lines = [
        f"**Verdict: {verdict.text}.**",
        "",
        f"Magnitude ‖u_t‖ of the {inputs.shape[2]} inferred inputs; an event is a peak of it (peaks "
        f"closer than {MIN_SEPARATION} bins are one). The null: the model's own dynamics with the "
        f"controller switched off, run from the initial states of {len(null_train)} train trials, Poisson "
        "spikes drawn from its rates and fed back through the model: what it infers when no input drove "
        f"the population. Threshold {thr:.3g}, set so that the null gives {NULL_EVENTS_PER_TRIAL:g} events "
        f"per trial. Test trials: {len(detected)} events in {len(test)} trials ({per_trial:.2f} per trial). "
        f"Peaks in a trial's first {START_BINS} bins are not events (there the controller can stand in for "
        f"an initial state the encoder missed): {verdict.onset_per_trial:.2f} per train trial.",
    ]
    numbers: dict[str, Any] = {
        "threshold": thr, "verdict": verdict.text, "reliable_inputs": verdict.reliable,
        "events_per_trial_test": per_trial, "events_per_trial_null": verdict.null_per_trial,
        "verdict_p_value": verdict.p_value,
    }  # fmt: skip
    aligned = {}
    for name, bins in trial_events(data).items():
        aligned[name] = event_aligned(mag, bins, ALIGN_BINS, ALIGN_BINS)
        lags, mean, _ = aligned[name]
        peak = int(np.nanargmax(mean)) if np.isfinite(mean).any() else None
        if peak is not None:
            lines.append(
                f"- around `{name}`: mean magnitude peaks {lags[peak] * data.bin_size * 1e3:+.0f} ms from "
                f"the event at {mean[peak]:.3g} (baseline median {np.median(mag):.3g})."
            )
    if not aligned:
        lines.append("- no trial events in the data to align to (the loader kept none).")
    if data.inputs is not None:
        t = min(mag.shape[1], data.n_obs)
        known = known_events(data.inputs[test, :t])
        known = known[known[:, 1] >= START_BINS]  # scored over the bins the detector looks at
        score = event_precision_recall(detect_input_events(mag[test, :t], thr), known, tolerance_bins)
        false = (score.n_detected - score.n_matched) / len(test)
        numbers.update(
            precision=score.precision, recall=score.recall, median_lag_bins=score.median_lag_bins,
            false_events_per_trial=false, lag_counts=score.lag_counts(),
        )  # fmt: skip
        counts = ", ".join(f"{k:+d}: {v}" for k, v in score.lag_counts().items())
        lines.append(
            f"- against the known inputs' events (peaks of |u| over half its maximum) within "
            f"±{tolerance_bins} bins: precision {_fmt(score.precision)}, recall {_fmt(score.recall)} "
            f"({score.n_matched} of {score.n_known} known events matched; {false:.2f} unmatched events per "
            f"trial). Lags (detected − known, bins; negative: the model leads): {counts}; median "
            f"{_fmt(score.median_lag_bins)}."
        )
        if t >= INPUT_CORR_MAX_LAG + INPUT_CORR_MAX_LEAD + 2 and len(test) >= 2:
            corr = input_corr(data.inputs[test, :t], inputs[test, :t])
            r2 = input_readout_r2(data.inputs[test, :t], inputs[test, :t])
            numbers.update(input_corr=corr, input_readout_r2=r2)
            lines.append(
                f"- harness metrics on the test trials (lags -{INPUT_CORR_MAX_LEAD}..+{INPUT_CORR_MAX_LAG} "
                f"bins): input_corr (|known| vs inferred magnitude) {corr:.3f}, input_readout_r2 "
                f"(cross-validated signed read-out) {r2:.3f}."
            )
    fig = input_events_figure(aligned, float(data.bin_size), thr) if aligned else None
    return Section(title, "\n".join(lines), {"analysis/input_events": fig} if fig else {}, numbers)


# ---------------------------------------------------------------------------------------------- driver
def analyze(
    pretrained,
    data,
    predictions: dict[str, np.ndarray] | None = None,
    session: str | None = None,
    *,
    n_initial: int = 256,
    n_iter: int = 1000,
    tolerance_bins: int = 2,
    seed: int = 0,
    min_tau: float | None = None,
) -> list[Section]:
    """Every analysis of `pretrained` (a `PretrainedModel`) on `data` (a SpikeData; one session of a
    multi-session model, named by `session`). `predictions`: its {"rates", "latents", "inputs"} for all
    trials (computed here when None)."""
    if predictions is None or "latents" not in predictions:
        predictions = pretrained.predict(data, session=session)
    model = pretrained.model
    latents = predictions["latents"]
    return [
        fixed_points_section(model, data, latents, session, n_initial, n_iter, seed, min_tau),
        condition_section(data, latents),
        inputs_section(model, data, predictions.get("inputs"), tolerance_bins, session, seed),
    ]


def render(sections: list[Section], title: str, about: list[str]) -> str:
    """The markdown report."""
    lines = [f"# {title}", "", *about, ""]
    for s in sections:
        lines += [f"## {s.title}", "", s.text, ""]
    return "\n".join(lines)


def write_report(sections: list[Section], out_dir: Path, text: str) -> Path:
    """`analysis.md` (atomically) and the figures and report text into TensorBoard in `out_dir`."""
    from torch.utils.tensorboard import SummaryWriter

    from neuralnets.files import write_text_atomic

    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / REPORT_FILE
    write_text_atomic(path, text)
    with SummaryWriter(log_dir=str(out_dir)) as writer:
        for s in sections:
            for tag, fig in s.figures.items():
                writer.add_figure(tag, fig, global_step=0, close=False)
        writer.add_text("analysis/report", text, global_step=0)
    return path


def _load(target: str, out: str | None, session: str | None):
    """(PretrainedModel, SpikeData, predictions or None, session, output directory, description)."""
    from neuralnets.data.loaders import load
    from neuralnets.data.sessions import MultiSessionData
    from neuralnets.pretrained import list_pretrained, load_pretrained

    folder = Path(target)
    exported = (
        folder.is_dir() and (folder / "model_card.json").is_file() and (folder / "model.ckpt").is_file()
    )
    if target in list_pretrained() or exported:  # a bundled model, or a folder exported like one
        try:
            pm = load_pretrained(target if not exported else folder)
        except (FileNotFoundError, ValueError) as e:
            raise CheckpointError(f"{target}: {e}") from None
        card = pm.card["data"]
        data = load(card.get("source") or card["name"], **(card.get("load_kwargs") or {}))
        out_dir = Path(out) if out else (folder if exported else Path.cwd() / f"analysis-{target}")
        about = f"Bundled model `{target}` on `{card['name']}` {card.get('load_kwargs') or {}}."
        predictions = None
    else:
        from neuralnets.runs import read_predictions, read_run, require_finished

        run_dir = Path(target)
        if not run_dir.is_dir():
            raise RunStatusError(
                f"{target} is neither a bundled model ({', '.join(list_pretrained())}) nor a run directory"
            )
        require_finished(run_dir)
        try:
            pm = load_pretrained(run_dir)
            run = read_run(run_dir)
        except (FileNotFoundError, ValueError) as e:
            raise CheckpointError(f"{run_dir}: {e}") from None
        source, kwargs = run.get("data_source") or run["data"], run.get("data_kwargs") or {}
        data = load(source, **kwargs)
        out_dir = Path(out) if out else run_dir
        about = f"Run `{run_dir}` ({run['model']} on `{run['data']}`)."
        predictions = None
        if not isinstance(data, MultiSessionData):
            try:
                predictions = read_predictions(run_dir)
            except FileNotFoundError:
                predictions = None
            if predictions is not None and predictions["rates"].shape != data.spikes.shape:
                predictions = None  # not this data's: predict afresh
    if isinstance(data, MultiSessionData):
        names = list(data.names)
        session = session or names[0]
        if session not in names:
            raise DataError(f"session {session!r} is not one of the data's sessions {names}")
        data = data[session]
        about += f" Session `{session}` of {names}."
    elif session is not None:
        raise DataError(f"--session {session!r} given, but the data have one session")
    return pm, data, predictions, session, out_dir, about
