"""NLB submission files and local scoring against NLB target files.

A submission (the file NLB's EvalAI server scores) holds one HDF5 group per dataset, named as in
`nlb_group_name` ('mc_maze_small' at 5 ms), with float32 rates in counts per bin:

| key | shape |
|---|---|
| `train_rates_heldin` / `train_rates_heldout` | (R, T_obs, N_in) / (R, T_obs, N_out), NLB train trials |
| `eval_rates_heldin` / `eval_rates_heldout` | (E, T_obs, N_in) / (E, T_obs, N_out), NLB eval trials |
| `eval_rates_heldin_forward` / `eval_rates_heldout_forward` | (E, T_fwd, N_in) / (E, T_fwd, N_out) |

From a run (`submission_from_run`): the train arrays are the SpikeData's 'train' + 'val' trials (NLB's
train trials of the phase; in trial order, which is NLB's order for `load_nlb_h5` and `load_nlb_nwb`),
the eval arrays its 'test' trials (NLB's evaluation trials: 'val' in the val phase, 'test' in the test
phase).

`score_against_targets` scores a submission against a target file (`read_nlb_targets`) with the
harness's metric functions: co-bps, fp-bps (when the targets have forward spikes), vel R² (when they
have behaviour) and PSTH R² (when they have `psth` and `eval_cond_idx`).
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping
from pathlib import Path

import numpy as np

from neuralnets.data.formats.common import open_h5, require_file
from neuralnets.data.formats.nlb_targets import check_targets, nlb_group_name, write_nlb_h5
from neuralnets.data.spikedata import SpikeData
from neuralnets.errors import DataError
from neuralnets.eval import metrics as M
from neuralnets.eval.regression import vel_r2

SUBMISSION_KEYS = (
    "train_rates_heldin",
    "train_rates_heldout",
    "eval_rates_heldin",
    "eval_rates_heldout",
    "eval_rates_heldin_forward",
    "eval_rates_heldout_forward",
)
FORWARD_KEYS = SUBMISSION_KEYS[4:]

# NLB's shapes for the datasets whose files are at hand (the DANDI test file, the NLB tensors): trials of
# each phase (train = NLB 'train' (+ 'val' in the test phase), eval = NLB 'val' / 'test'), neurons, and the
# 700 ms observed + 200 ms forward windows. Checked by `nlb_shapes` / `check_nlb_submission`.
NLB_DATASETS = {
    "mc_maze_small": dict(train={"val": 75, "test": 100}, eval={"val": 25, "test": 100}, n_in=107, n_out=35),
}
NLB_WINDOWS_MS = (700, 200)  # observed, forward


def submission_from_run(rates: np.ndarray, data: SpikeData) -> dict[str, np.ndarray]:
    """Slice a run's rates `(trials, T_obs + T_fwd, N_in + N_out)` for ALL trials of `data` (counts per bin,
    held-in neurons then held-out, observed bins then forward) into the six NLB submission arrays.

    Train = `data`'s 'train' + 'val' trials, eval = its 'test' trials, each in trial order; float32.
    Without forward bins (`data.n_fwd == 0`) the forward keys are left out.
    """
    lam = np.asarray(rates.detach().cpu() if hasattr(rates, "detach") else rates)
    if lam.shape != data.spikes.shape:
        raise DataError(
            f"rates have shape {lam.shape} but data {data.name!r} has spikes {data.spikes.shape} "
            "(trials, bins, neurons); rates must cover all trials, bins and neurons"
        )
    tr = np.flatnonzero(np.isin(data.split, ["train", "val"]))
    ev = data.indices("test")
    if tr.size == 0 or ev.size == 0:
        raise DataError(
            f"{data.source}: an NLB submission needs train ('train'/'val') and eval ('test') trials; "
            f"got {tr.size} and {ev.size}"
        )
    t_obs, n_in = data.n_obs, data.n_heldin
    out = {
        "train_rates_heldin": lam[tr, :t_obs, :n_in],
        "train_rates_heldout": lam[tr, :t_obs, n_in:],
        "eval_rates_heldin": lam[ev, :t_obs, :n_in],
        "eval_rates_heldout": lam[ev, :t_obs, n_in:],
    }
    if data.n_fwd:
        out["eval_rates_heldin_forward"] = lam[ev, t_obs:, :n_in]
        out["eval_rates_heldout_forward"] = lam[ev, t_obs:, n_in:]
    out = {k: np.ascontiguousarray(v, dtype=np.float32) for k, v in out.items()}
    check_submission(out, "rates")
    return out


def check_submission(sub: Mapping[str, np.ndarray], src: str) -> None:
    """The six arrays agree in trials, bins and neurons and are finite, non-negative rates; else DataError."""
    missing = [k for k in SUBMISSION_KEYS[:4] if k not in sub]
    if missing:
        raise DataError(f"{src}: submission lacks {missing}; it needs {list(SUBMISSION_KEYS)}")
    unknown = [k for k in sub if k not in SUBMISSION_KEYS]
    if unknown:
        raise DataError(f"{src}: keys {unknown} are not NLB submission keys {list(SUBMISSION_KEYS)}")
    if (FORWARD_KEYS[0] in sub) != (FORWARD_KEYS[1] in sub):
        raise DataError(f"{src}: give both forward keys {list(FORWARD_KEYS)} or neither")
    for k, v in sub.items():
        v = np.asarray(v)
        if v.ndim != 3 or 0 in v.shape:
            raise DataError(f"{src}: {k!r} must be a non-empty (trials, bins, neurons) array; got {v.shape}")
        if not np.isfinite(v).all():
            raise DataError(f"{src}: {k!r} has non-finite rates")
        if (v < 0).any():
            raise DataError(f"{src}: {k!r} has negative rates (min {v.min()})")
    r, t_obs, n_in = np.shape(sub["train_rates_heldin"])
    n_out = np.shape(sub["train_rates_heldout"])[2]
    e = np.shape(sub["eval_rates_heldin"])[0]
    want = {
        "train_rates_heldout": (r, t_obs, n_out),
        "eval_rates_heldin": (e, t_obs, n_in),
        "eval_rates_heldout": (e, t_obs, n_out),
    }
    if FORWARD_KEYS[0] in sub:
        t_fwd = np.shape(sub[FORWARD_KEYS[0]])[1]
        want.update({FORWARD_KEYS[0]: (e, t_fwd, n_in), FORWARD_KEYS[1]: (e, t_fwd, n_out)})
    for k, shape in want.items():
        if tuple(np.shape(sub[k])) != shape:
            raise DataError(
                f"{src}: {k!r} has shape {tuple(np.shape(sub[k]))}; expected {shape} to match "
                "'train_rates_heldin' / 'train_rates_heldout' / 'eval_rates_heldin'"
            )


def nlb_shapes(group: str, phase: str) -> dict[str, tuple[int, int, int]] | None:
    """The six arrays' shapes NLB expects for `group` ('mc_maze_small', 'mc_maze_small_20', ...) in `phase`
    ('val' or 'test'), or None for a dataset not in `NLB_DATASETS`."""
    head, _, tail = group.rpartition("_")
    name, bin_ms = (head, int(tail)) if tail.isdigit() else (group, 5)  # 'mc_maze_small_20': 20 ms bins
    if name not in NLB_DATASETS or phase not in ("val", "test"):
        return None
    d = NLB_DATASETS[name]
    t_obs, t_fwd = (w // bin_ms for w in NLB_WINDOWS_MS)
    r, e = d["train"][phase], d["eval"][phase]
    return {
        "train_rates_heldin": (r, t_obs, d["n_in"]),
        "train_rates_heldout": (r, t_obs, d["n_out"]),
        "eval_rates_heldin": (e, t_obs, d["n_in"]),
        "eval_rates_heldout": (e, t_obs, d["n_out"]),
        "eval_rates_heldin_forward": (e, t_fwd, d["n_in"]),
        "eval_rates_heldout_forward": (e, t_fwd, d["n_out"]),
    }


def check_nlb_format(sub: Mapping[str, np.ndarray], group: str, phase: str, src: str) -> None:
    """`check_submission`, then, for a dataset in `NLB_DATASETS`, all six arrays with exactly NLB's shapes
    for `phase` (trials, bins, neurons); DataError naming the key, the shape and NLB's."""
    check_submission(sub, src)
    want = nlb_shapes(group, phase)
    if want is None:
        return
    missing = [k for k in want if k not in sub]
    if missing:
        raise DataError(f"{src}: NLB's {group} submission needs {missing} too")
    for k, shape in want.items():
        if tuple(np.shape(sub[k])) != shape:
            raise DataError(
                f"{src}: {k!r} has shape {tuple(np.shape(sub[k]))}; NLB's {group} {phase} phase expects "
                f"{shape} (trials, bins, neurons)"
            )


def check_nlb_submission(path: str | Path, phase: str = "test") -> dict[str, dict[str, tuple]]:
    """Check a submission file as NLB would take it: one group per dataset, each `check_nlb_format` for
    `phase`. Returns {group: {key: shape}}."""
    subs = read_nlb_submission(path)
    if not subs:
        raise DataError(f"{path}: the file holds no dataset group")
    for group, sub in subs.items():
        check_nlb_format(sub, group, phase, f"{path}:{group}")
    return {g: {k: tuple(v.shape) for k, v in sub.items()} for g, sub in subs.items()}


def write_nlb_submission(
    path: str | Path,
    dataset_name: str,
    train_rates_heldin: np.ndarray,
    train_rates_heldout: np.ndarray,
    eval_rates_heldin: np.ndarray,
    eval_rates_heldout: np.ndarray,
    eval_rates_heldin_forward: np.ndarray | None,
    eval_rates_heldout_forward: np.ndarray | None,
) -> Path:
    """Write `<dataset_name>/<key>` float32 arrays (the NLB submission layout) atomically to a new file.

    `dataset_name` is the group name ('mc_maze_small', or e.g. 'mc_maze_small_20' at 20 ms: see
    `nlb_group_name`). An existing file is never replaced (FileExistsError); the file appears complete or
    not at all (temporary file, fsync, link into place). Forward arrays may be None only together.
    """
    arrays = dict(
        zip(
            SUBMISSION_KEYS,
            (
                train_rates_heldin,
                train_rates_heldout,
                eval_rates_heldin,
                eval_rates_heldout,
                eval_rates_heldin_forward,
                eval_rates_heldout_forward,
            ),
            strict=True,
        )
    )
    sub = {k: np.asarray(v, dtype=np.float32) for k, v in arrays.items() if v is not None}
    if not isinstance(dataset_name, str) or not dataset_name or "/" in dataset_name:
        raise DataError(
            f"{path}: dataset_name must be a group name such as 'mc_maze_small'; got {dataset_name!r}"
        )
    check_submission(sub, str(path))
    return write_nlb_h5(path, {dataset_name: sub})


def run_group_name(data: SpikeData, dataset_name: str | None = None) -> str:
    """The NLB group of `data`: `dataset_name` if given, else `data.meta['nlb_group']`, else
    `nlb_group_name(data.name, data.bin_size)` (e.g. 'mc_maze_small' for the bundled tensors at 5 ms)."""
    return dataset_name or data.meta.get("nlb_group") or nlb_group_name(data.name, data.bin_size)


def write_run_submission(
    path: str | Path, rates: np.ndarray, data: SpikeData, dataset_name: str | None = None
) -> Path:
    """`submission_from_run` + `write_nlb_submission` into the group `run_group_name(data, dataset_name)`.

    Data loaded with an NLB phase (`meta['nlb_phase']`, as `load_nlb_nwb` sets it) are checked against NLB's
    shapes for that phase first (`check_nlb_format`), so a submission NLB would refuse is never written.
    """
    sub = submission_from_run(rates, data)
    group = run_group_name(data, dataset_name)
    if "nlb_phase" in data.meta:
        check_nlb_format(sub, group, data.meta["nlb_phase"], str(path))
    return write_nlb_submission(path, group, *(sub.get(k) for k in SUBMISSION_KEYS))


def read_nlb_submission(path: str | Path, dataset: str | None = None) -> dict:
    """{group: {key: float32 array}} of a submission file, or one group's dict with `dataset=` (checked)."""
    path = require_file(path)
    src = str(path)
    with open_h5(path) as f:
        names = sorted(f.keys())
        if dataset is not None and dataset not in f:
            raise DataError(f"{src}: no dataset group {dataset!r}; groups: {names}")
        out = {}
        for name in [dataset] if dataset is not None else names:
            g = f[name]
            if not hasattr(g, "keys"):
                raise DataError(f"{src}: key {name!r} is an array; submissions hold one group per dataset")
            out[name] = {k: np.asarray(g[k][()]) for k in g.keys()}
            check_submission(out[name], f"{src}:{name}")
    return out[dataset] if dataset is not None else out


# ---------------------------------------------------------------------------------------------- scoring
def score_against_targets(
    submission: Mapping[str, np.ndarray],
    targets: Mapping,
    *,
    alphas: tuple[float, ...] = M.DEFAULT_ALPHAS,
) -> dict[str, float]:
    """Score one dataset's submission arrays against its targets (`read_nlb_targets(path, dataset)`).

    - co_bps: bits/spike of `eval_rates_heldout` on `eval_spikes_heldout` (`metrics.co_bps`);
    - fp_bps: held-in + held-out forward rates on the forward spikes (`metrics.fp_bps`), if both are there;
    - vel_r2: ridge from train rates (held-in + held-out, observed bins) to `train_behavior`, scored on the
      eval rates vs `eval_behavior` (`regression.vel_r2`); skipped with a warning if decode masks are present;
    - psth_r2: eval rates (held-in + held-out) averaged over each condition's `eval_cond_idx` trials vs
      `psth`, R² per neuron, uniform average (`metrics.r2_score`); skipped with a warning given `eval_jitter`.
    Returns {metric: value} for the metrics the targets allow.
    """
    check_submission(submission, "submission")
    check_targets(targets, "targets")
    sub = {k: np.asarray(v, dtype=np.float64) for k, v in submission.items()}
    e, t_obs, n_in = sub["eval_rates_heldin"].shape
    n_out = sub["eval_rates_heldout"].shape[2]
    has_fwd = "eval_spikes_heldin_forward" in targets
    if has_fwd and FORWARD_KEYS[0] not in sub:
        raise DataError("submission has no forward rates but the targets have forward spikes")
    t_fwd = sub[FORWARD_KEYS[0]].shape[1] if has_fwd else 0
    _expect(targets, "eval_spikes_heldout", (e, t_obs, n_out))
    if has_fwd:
        _expect(targets, "eval_spikes_heldin_forward", (e, t_fwd, n_in))
        _expect(targets, "eval_spikes_heldout_forward", (e, t_fwd, n_out))

    # One (E, T_obs + T_fwd, N) array of rates and of target spikes; `observed` marks what the targets hold.
    n = n_in + n_out
    rates = np.zeros((e, t_obs + t_fwd, n))  # (E, T, N)
    spikes = np.zeros_like(rates)
    observed = np.zeros(rates.shape, dtype=bool)
    rates[:, :t_obs, :n_in], rates[:, :t_obs, n_in:] = sub["eval_rates_heldin"], sub["eval_rates_heldout"]
    out: dict[str, float] = {}
    if "eval_spikes_heldout" in targets:
        spikes[:, :t_obs, n_in:] = targets["eval_spikes_heldout"]
        observed[:, :t_obs, n_in:] = True
    if has_fwd:
        rates[:, t_obs:, :n_in], rates[:, t_obs:, n_in:] = sub[FORWARD_KEYS[0]], sub[FORWARD_KEYS[1]]
        spikes[:, t_obs:, :n_in] = targets["eval_spikes_heldin_forward"]
        spikes[:, t_obs:, n_in:] = targets["eval_spikes_heldout_forward"]
        observed[:, t_obs:] = True
    if "eval_spikes_heldout" in targets:
        out["co_bps"] = M.co_bps(rates, spikes, n_in, t_fwd, observed)
    if has_fwd:
        out["fp_bps"] = M.fp_bps(rates, spikes, t_fwd, observed)

    eval_obs = rates[:, :t_obs]  # (E, T_obs, N)
    if "eval_behavior" in targets:
        if "train_decode_mask" in targets or "eval_decode_mask" in targets:
            warnings.warn(
                "targets have decode masks, which this scorer does not apply: vel_r2 skipped", stacklevel=2
            )
        else:
            train = np.concatenate([sub["train_rates_heldin"], sub["train_rates_heldout"]], axis=2)
            _expect(targets, "train_behavior", (train.shape[0], t_obs, None))
            _expect(targets, "eval_behavior", (e, t_obs, None))
            out["vel_r2"] = vel_r2(
                train, targets["train_behavior"], eval_obs, targets["eval_behavior"], alphas=alphas
            )
    if "psth" in targets:
        if "eval_jitter" in targets:
            warnings.warn(
                "targets have 'eval_jitter', which this scorer does not apply: psth_r2 skipped", stacklevel=2
            )
        else:
            _expect(targets, "psth", (None, t_obs, n))
            groups = targets["eval_cond_idx"]
            empty = [c for c, idx in enumerate(groups) if len(idx) == 0]
            if empty:
                raise DataError(f"targets: 'eval_cond_idx' conditions {empty[:5]} have no trials")
            pred = np.stack([eval_obs[np.asarray(idx)].mean(axis=0) for idx in groups])  # (C, T_obs, N)
            out["psth_r2"] = M.r2_score(pred, np.asarray(targets["psth"], dtype=np.float64))
    return out


def score_submission_file(
    submission_path: str | Path, targets_path: str | Path, dataset: str
) -> dict[str, float]:
    """`score_against_targets` on the `dataset` group of a submission file and of a target file."""
    from neuralnets.data.formats.nlb_targets import read_nlb_targets

    return score_against_targets(
        read_nlb_submission(submission_path, dataset), read_nlb_targets(targets_path, dataset)
    )


def _expect(targets: Mapping, key: str, shape: tuple) -> None:
    if key not in targets:
        return
    got = tuple(np.shape(targets[key]))
    if len(got) != len(shape) or any(w is not None and g != w for g, w in zip(got, shape, strict=True)):
        pretty = "(" + ", ".join("*" if w is None else str(w) for w in shape) + ")"
        raise DataError(f"targets: key {key!r} has shape {got}; expected {pretty} to match the submission")
