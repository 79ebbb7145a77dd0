"""A synthetic NLB MC_Maze_Small *train* file in DANDI's layout, to pair with the real test file.

DANDI (dandiset 000140) ships MC_Maze_Small as two NWB files; the test file is bundled in
`tests/fixtures/`, the train file (`sub-Jenkins_ses-small_desc-train_behavior+ecephys.nwb`) is not
available offline. `write_dandi_train_file` writes one with the structure of the real pair:

- the same file metadata, devices, electrode groups and 192-row electrodes table as the real test file;
- units sorted by id: the 107 held-in units of the real test file (same ids, same electrodes) and 35
  held-out units with ids of their own, the `heldout` flag column, `spike_times` and `obs_intervals`
  (one interval covering the continuous recording);
- a trials table with NLB's MC_Maze columns (start/stop, trial_type, trial_version, maze_id, success,
  target_on_time, go_cue_time, move_onset_time, rt, delay, split), 'train' and 'val' trials interleaved
  in file order and a few 'none' trials;
- behaviour in `processing/behavior`: `hand_vel` (and `hand_pos`, `cursor_pos`, `eye_pos`).

The spikes are the NLB tensors bundled with the package (`mc_maze_small_full.h5`): spike times are
placed inside the 5 ms bins of the tensors, so binning the file with NLB's preprocessing must give the
tensors back (train trials: observed and forward bins; val trials: observed bins, their forward bins
are empty), and `hand_vel` at the observed bin centres of the train trials is `train_behavior`.
Written once per test session (~1 s).
"""

from __future__ import annotations

import shutil
from datetime import datetime, timezone
from pathlib import Path

import h5py
import numpy as np

from neuralnets.data.datasets.mc_maze_small import MC_MAZE_SMALL_PATH

REAL_TEST_FILE = Path(__file__).parent / "fixtures" / "sub-Jenkins_ses-small_desc-test_ecephys.nwb"
TRAIN_NAME = "sub-Jenkins_ses-small_desc-train_behavior+ecephys.nwb"
BIN = 0.005
N_OBS, N_FWD = 140, 40
VAL_EVERY = 4  # every 4th train-phase trial in file order is an NLB 'val' trial (75 train + 25 val)
NONE_AT = (10, 57)  # file positions of 'none' trials


def dandi_pair(folder: Path) -> tuple[Path, Path]:
    """A folder holding the synthetic train file and a copy of the real test file, as DANDI names them."""
    folder.mkdir(parents=True, exist_ok=True)
    test = folder / REAL_TEST_FILE.name
    shutil.copyfile(REAL_TEST_FILE, test)
    return write_dandi_train_file(folder / TRAIN_NAME), test


def heldout_ids(heldin: list[int]) -> list[int]:
    """35 held-out unit ids that interleave with the held-in ones (id + 5 of every third held-in unit)."""
    ids = [u + 5 for u in heldin[::3]][:35]
    assert len(ids) == 35 and not set(ids) & set(heldin)
    return ids


def write_dandi_train_file(path: Path) -> Path:
    from pynwb import NWBHDF5IO, NWBFile, TimeSeries
    from pynwb.file import Subject

    with h5py.File(MC_MAZE_SMALL_PATH, "r") as f:
        t = {k: f[k][()] for k in f}
    train_in = np.concatenate(
        [t["train_spikes_heldin"], t["train_spikes_heldin_forward"]], 1
    )  # (75, 180, 107)
    train_out = np.concatenate([t["train_spikes_heldout"], t["train_spikes_heldout_forward"]], 1)
    val_in, val_out = t["eval_spikes_heldin"], t["eval_spikes_heldout"]  # (25, 140, N): no forward bins
    with NWBHDF5IO(str(REAL_TEST_FILE), "r") as io:
        real = io.read()
        heldin = [int(u) for u in real.units.id[:]]
        unit_electrode = [int(real.units["electrodes"][i].index[0]) for i in range(len(heldin))]
        electrodes = real.electrodes.to_dataframe()
        groups = {n: (g.description, g.location, g.device.name, g.device.description)
                  for n, g in real.electrode_groups.items()}  # fmt: skip
        meta = dict(
            session_description=real.session_description.replace("evaluating", "training"),
            experiment_description=real.experiment_description,
            experimenter=list(real.experimenter),
            institution=real.institution,
            lab=real.lab,
            keywords=list(real.keywords[:]),
            related_publications=list(real.related_publications),
            session_id=real.session_id,
            session_start_time=real.session_start_time,
        )
        subject = dict(subject_id=real.subject.subject_id, species=real.subject.species, sex=real.subject.sex)

    # Trials in file order: 'train' and 'val' interleaved, two 'none' trials.
    n_train, n_val = len(train_in), len(val_in)
    kinds, it, iv = [], 0, 0
    while it < n_train or iv < n_val:
        if len(kinds) in NONE_AT:
            kinds.append(("none", -1))
        elif (len(kinds) + 1) % VAL_EVERY == 0 and iv < n_val or it == n_train:
            kinds.append(("val", iv))
            iv += 1
        else:
            kinds.append(("train", it))
            it += 1
    rng = np.random.default_rng(0)
    n_units = 142
    out_ids = heldout_ids(heldin)
    ids = sorted(heldin + out_ids)
    column = {u: ("in", heldin.index(u)) if u in heldin else ("out", out_ids.index(u)) for u in ids}
    spikes: dict[int, list[np.ndarray]] = {u: [] for u in ids}
    rows, vel_t, vel = [], [], []
    for k, (kind, j) in enumerate(kinds):
        start = 2.0 * k
        onset = start + 0.5 + 0.0123 * (k % 7)  # not on the file's bin grid
        edges0 = onset - 0.25  # first observed bin starts here
        if kind == "train":
            block_in, block_out = train_in[j], train_out[j]
        elif kind == "val":
            block_in = np.concatenate([val_in[j], np.zeros((N_FWD, val_in.shape[2]), np.float32)])
            block_out = np.concatenate([val_out[j], np.zeros((N_FWD, val_out.shape[2]), np.float32)])
        else:
            block_in = rng.poisson(0.02, (N_OBS + N_FWD, len(heldin))).astype(np.float32)
            block_out = rng.poisson(0.02, (N_OBS + N_FWD, len(out_ids))).astype(np.float32)
        for u in ids:
            side, c = column[u]
            counts = (block_in if side == "in" else block_out)[:, c].astype(int)  # (180,)
            b = np.repeat(np.arange(len(counts)), counts)
            spikes[u].append(edges0 + BIN * (b + rng.uniform(0.05, 0.95, b.size)))
        centres = edges0 + BIN * (np.arange(N_OBS) + 0.5)
        vel_t.append(centres)
        vel.append(t["train_behavior"][j] if kind == "train" else np.zeros((N_OBS, 2), np.float32))
        rows.append(
            dict(
                start_time=start,
                stop_time=start + 1.5,
                trial_type=int(rng.integers(1, 28)),
                trial_version=int(rng.integers(0, 3)),
                maze_id=int(rng.integers(1, 100)),
                success=True,
                target_on_time=start + 0.1,
                go_cue_time=onset - 0.3,
                move_onset_time=onset,
                rt=0.3,
                delay=0.4,
                split=kind,
            )
        )
    end = 2.0 * len(kinds)

    nwb = NWBFile(
        identifier=f"synthetic-train-{path.stem}", file_create_date=datetime.now(timezone.utc), **meta
    )
    nwb.subject = Subject(**subject)
    made = {}
    for name, (desc, loc, dev_name, dev_desc) in groups.items():
        device = nwb.devices.get(dev_name) or nwb.create_device(name=dev_name, description=dev_desc)
        made[name] = nwb.create_electrode_group(name=name, description=desc, location=loc, device=device)
    for _, e in electrodes.iterrows():
        nwb.add_electrode(
            x=e.x, y=e.y, z=e.z, imp=e.imp, location=e.location, filtering=e.filtering,
            group=made[e.group_name], group_name=e.group_name,
        )  # fmt: skip
    nwb.add_unit_column(
        name="heldout",
        description="Whether the unit is held out in the test data (True) or not (False) in the Neural "
        "Latents Benchmark",
    )
    for u in ids:
        side, c = column[u]
        electrode = unit_electrode[c] if side == "in" else unit_electrode[heldin.index(u - 5)]
        nwb.add_unit(
            id=u,
            spike_times=np.sort(np.concatenate(spikes[u])),
            obs_intervals=[[0.0, end]],
            electrodes=[electrode],
            heldout=side == "out",
        )
    for name, desc in [
        ("trial_type", "Index of the trial type"),
        ("trial_version", "Version of the maze for the trial type"),
        ("maze_id", "Maze identity"),
        ("success", "Whether the trial was a success"),
        ("target_on_time", "Time of target presentation"),
        ("go_cue_time", "Time of the go cue"),
        ("move_onset_time", "Time of movement onset, calculated offline using a robust algorithm"),
        ("rt", "Reaction time (s)"),
        ("delay", "Delay period (s)"),
        ("split", 'Trial split that the trial belongs to for the Neural Latents Benchmark. Can be "train", '
         '"val", "test", or "none"'),
    ]:  # fmt: skip
        nwb.add_trial_column(name=name, description=desc)
    for row in rows:
        nwb.add_trial(**row)
    behavior = nwb.create_processing_module("behavior", "hand, cursor and eye kinematics")
    times = np.concatenate(vel_t)
    hand_vel = np.concatenate(vel).astype(np.float64)  # (samples, 2)
    hand_pos = np.cumsum(hand_vel, 0) * BIN
    for name, data in [("hand_vel", hand_vel), ("hand_pos", hand_pos), ("cursor_pos", hand_pos),
                       ("eye_pos", np.zeros_like(hand_pos))]:  # fmt: skip
        behavior.add(
            TimeSeries(name=name, data=data, timestamps=times, unit="mm" if "pos" in name else "mm/s")
        )
    assert len(ids) == n_units
    with NWBHDF5IO(str(path), "w") as io:
        io.write(nwb)
    return path
