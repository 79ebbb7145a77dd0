"""Turn a finished training run into a small bundled-style folder: slim checkpoint + model card.

    export_run("runs/pretrained/lfads_lorenz/2026-11-25_10-00-00", "checkpoints/lfads_lorenz",
               name="lfads_lorenz", description="LFADS on the built-in Lorenz data")

The folder can be loaded with `load_pretrained(folder)`; inside `neuralnets/pretrained/checkpoints/`
it is a bundled model. `experiments/train_pretrained.py` trains and exports the bundled ones.
"""

from __future__ import annotations

import datetime
import hashlib
import json
import platform
import shutil
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from neuralnets.checkpoints import run_checkpoint
from neuralnets.config import load_saved_config
from neuralnets.errors import CheckpointError, RunStatusError
from neuralnets.eval.tables import markdown_table
from neuralnets.files import atomic_path
from neuralnets.pretrained.loading import RUN_CONFIG, load_pretrained, read_checkpoint
from neuralnets.pretrained.registry import CARD_FILE, CARD_FORMAT, CARD_README, CHECKPOINT_FILE

# Metrics of a re-scored export may differ from the run's own by float rounding only.
VERIFY_ATOL = 1e-4


def slim_checkpoint(src: str | Path, dst: str | Path) -> dict[str, Any]:
    """Write `dst`: the weights and hyperparameters of training checkpoint `src`, nothing else.

    Drops optimiser/scheduler state, loops and callbacks (about 2/3 of a Lightning checkpoint). The
    result still loads with `torch.load(weights_only=True)` and `TrainingModule.load_from_checkpoint`.
    Returns the slim checkpoint dict.
    """
    ckpt = read_checkpoint(src)
    slim = {
        # clone: each tensor gets its own compact storage (views would drag their whole base along)
        "state_dict": {k: v.detach().clone().contiguous() for k, v in ckpt["state_dict"].items()},
        "hyper_parameters": _plain(ckpt["hyper_parameters"]),
        "epoch": ckpt.get("epoch"),
        "global_step": ckpt.get("global_step"),
    }
    if "pytorch-lightning_version" in ckpt:  # Lightning's loader reads it to migrate old checkpoints
        slim["pytorch-lightning_version"] = ckpt["pytorch-lightning_version"]
    with atomic_path(dst) as tmp:  # a reader never sees half a checkpoint
        torch.save(slim, tmp)
    return slim


def export_run(
    run_dir: str | Path,
    dest: str | Path,
    name: str,
    *,
    description: str = "",
    training: Mapping[str, Any] | None = None,
    force: bool = False,
    verify: bool = True,
) -> Path:
    """Export finished run `run_dir` (config.yaml, metrics.json, its scored checkpoint) to folder `dest`.

    Writes `dest/model.ckpt` (slim), `dest/model_card.json` and `dest/README.md`. Refuses to replace an
    existing `dest` unless `force`. `training`: extra facts for the card (command, threads, ...).
    With `verify`, the exported folder is loaded back, re-scored on the regenerated data and must
    reproduce the run's test metrics (within `VERIFY_ATOL`). Returns `dest`.
    """
    from omegaconf import OmegaConf

    import neuralnets
    from neuralnets.runs import read_run

    run_dir, dest = Path(run_dir), Path(dest)
    if dest.exists() and not force:
        raise FileExistsError(f"{dest} exists; refusing to overwrite it (pass force=True / --force)")
    record = read_run(run_dir)
    if not record.get("checkpoint"):
        raise RunStatusError(f"{run_dir}/metrics.json names no scored checkpoint; was the run finished?")
    src = run_checkpoint(run_dir, "best")  # the one metrics.json names, inside the run directory
    if not (run_dir / RUN_CONFIG).is_file():
        raise FileNotFoundError(f"{run_dir / RUN_CONFIG} not found; is {run_dir} a neuralnets run directory?")
    config = OmegaConf.to_container(load_saved_config(run_dir / RUN_CONFIG))

    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{dest.name}.", dir=dest.parent))
    tmp.chmod(0o755)  # mkdtemp makes it private; package data must be readable by everyone
    try:
        slim = slim_checkpoint(src, tmp / CHECKPOINT_FILE)
        blob = (tmp / CHECKPOINT_FILE).read_bytes()
        data_cfg = config.get("data", {})
        card = {
            "name": name,
            "card_format": CARD_FORMAT,
            "description": description,
            "model": record["model"],
            "n_parameters": record.get("n_parameters"),
            "checkpoint": {
                "file": CHECKPOINT_FILE,
                "sha256": hashlib.sha256(blob).hexdigest(),
                "size_bytes": len(blob),
                "from": str(record["checkpoint"]),
                "epoch": slim["epoch"],
                "global_step": slim["global_step"],
            },
            "data": {
                "name": data_cfg.get("name", record["data"]),
                "source": str(data_cfg.get("source", record.get("data_source", record["data"]))),
                "load_kwargs": dict(data_cfg.get("load_kwargs") or {}),
                "spec": slim["hyper_parameters"]["spec"],
            },
            "config": config,
            "training": {
                "train_time_s": record.get("train_time_s"),
                "steps": record.get("steps"),
                "device": "cpu" if config.get("trainer", {}).get("accelerator") == "cpu" else "see config",
                "torch": torch.__version__,
                "python": platform.python_version(),
                **dict(training or {}),
            },
            "split": record.get("split", "test"),
            "metrics": record["metrics"],
            "val_metrics": record.get("val_metrics", {}),
            "date": datetime.date.today().isoformat(),
            "neuralnets_version": neuralnets.__version__,
        }
        (tmp / CARD_FILE).write_text(json.dumps(card, indent=2) + "\n")
        (tmp / CARD_README).write_text(render_card(card))
        if verify:
            card["verified_max_abs_diff"] = verify_folder(tmp, card)
            (tmp / CARD_FILE).write_text(json.dumps(card, indent=2) + "\n")
        if dest.exists():
            shutil.rmtree(dest)
        tmp.rename(dest)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp)
    return dest


def verify_folder(folder: str | Path, card: Mapping[str, Any] | None = None) -> float:
    """Load `folder`, regenerate its data from the card, re-score; returns the largest metric difference.

    Raises ValueError when a card metric is not reproduced within `VERIFY_ATOL`.
    """
    model = load_pretrained(Path(folder))
    card = model.card if card is None else card
    data = card_data(card)
    got = model.evaluate(data, card.get("split", "test"))
    diffs = {k: abs(got[k] - v) for k, v in card["metrics"].items() if k in got}
    missing = sorted(set(card["metrics"]) - set(got))
    worst = max(diffs.values(), default=0.0)
    if missing or worst > VERIFY_ATOL:
        raise CheckpointError(
            f"{folder}: re-scored metrics {got} do not reproduce the card's {card['metrics']} "
            f"(missing {missing}, largest difference {worst:.2e} > {VERIFY_ATOL})"
        )
    return worst


def card_data(card: Mapping[str, Any]):
    """The dataset a model card was trained and scored on: `neuralnets.data.load(source, **load_kwargs)`."""
    from neuralnets.data import load

    return load(card["data"]["source"], **card["data"]["load_kwargs"])


def render_card(card: Mapping[str, Any]) -> str:
    """The model card as Markdown (README.md beside the checkpoint)."""
    d, t, c = card["data"], card["training"], card["checkpoint"]
    spec = d["spec"]
    kwargs = ", ".join(f"{k}={v!r}" for k, v in d["load_kwargs"].items())
    load_args = f'"{d["source"]}"' + (f", {kwargs}" if kwargs else "")
    metric_names = list(card["metrics"])
    lines = [
        f"# {card['name']}",
        "",
        card.get("description", ""),
        "",
        "```python",
        "import neuralnets",
        f'model = neuralnets.load_pretrained("{card["name"]}")',
        f"data = neuralnets.data.load({load_args})",
        "out = model.predict(data)  # rates, latents" + (", inputs" if card["model"] == "LFADS" else ""),
        "```",
        "",
        "## Model",
        f"- {card['model']}, {card['n_parameters']:,} parameters; "
        f"`{c['file']}` {c['size_bytes'] / 1e3:.0f} kB "
        f"(weights + hyperparameters, from `{c['from']}`, epoch {c['epoch']}, step {c['global_step']})",
        f"- sha256 `{c['sha256']}`",
        "",
        "## Data",
        f"- `neuralnets.data.load({load_args})` ({d['name']})",
        f"- {spec['n_heldin']} held-in + {spec['n_neurons'] - spec['n_heldin']} held-out neurons, "
        f"{spec['n_obs_bins']} observed + {spec['n_fwd_bins']} forward bins of {spec['bin_size'] * 1e3:g} ms",
        "",
        "## Training",
        f"- command: `{t.get('command', '(not recorded)')}`",
    ]
    if t.get("neuralnets_train"):
        lines.append(f"- same run with the Hydra CLI: `{t['neuralnets_train']}`")
    lines += [
        f"- {t.get('steps')} steps in {t.get('train_time_s')} s of training "
        f"({t.get('device')}, {t.get('threads', '?')} thread(s), torch {t.get('torch')})",
        f"- date {card['date']}, neuralnets {card['neuralnets_version']}",
        "",
        f"## Harness metrics ({card.get('split', 'test')} split)",
        "",
        *markdown_table(metric_names, [[card["metrics"][k] for k in metric_names]]).splitlines(),
        "",
        "Definitions: `neuralnets.eval.METRICS`. The full training config is in `model_card.json`.",
        "",
    ]
    if card.get("rescored"):
        r = card["rescored"]
        lines += [f"Re-scored {r['date']}: {r['why']} (the earlier values are in `model_card.json`).", ""]
    return "\n".join(lines)


def _plain(x: Any) -> Any:
    """Plain containers only (so the checkpoint loads with weights_only=True)."""
    if isinstance(x, Mapping):
        return {str(k): _plain(v) for k, v in x.items()}
    if isinstance(x, list | tuple):
        return [_plain(v) for v in x]
    return x
