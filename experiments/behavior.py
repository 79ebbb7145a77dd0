"""Behaviour decoding for the model comparison: fit a causal RNN decoder (`RNNBehaviorDecoder`)
from spikes or inferred rates to behaviour, and predict held-out trials.

Used by `experiments/compare_models.py` (the `rnn_dec_r2` column); a training loop serving an
experiment, so it lives here rather than in the model package.
"""

from __future__ import annotations

import math

import numpy as np
import torch
from torch import nn

from neuralnets.models.rnn import RNNBehaviorDecoder


def _as_trials(name: str, x: np.ndarray) -> np.ndarray:
    arr = np.asarray(x, dtype=np.float32)
    if arr.ndim != 3 or 0 in arr.shape:
        raise ValueError(f"{name} must be a non-empty (trials, T, channels) array; got shape {arr.shape}")
    if not np.isfinite(arr).all():
        raise ValueError(f"{name} has non-finite values")
    return arr


def fit_behavior_decoder(
    inputs_train: np.ndarray,
    behavior_train: np.ndarray,
    inputs_eval: np.ndarray,
    hidden_dim: int = 64,
    n_layers: int = 1,
    cell: str = "gru",
    dropout: float = 0.0,
    epochs: int = 300,
    lr: float = 1e-2,
    weight_decay: float = 0.0,
    batch_size: int | None = None,
    seed: int = 0,
    device: str = "cpu",
) -> np.ndarray:
    """Train a causal `RNNBehaviorDecoder` with MSE + Adam and predict behaviour on `inputs_eval`.

    Args:
        inputs_train: (trials, T, C) spikes or rates (any units; z-scored per channel on the train set).
        behavior_train: (trials, T, D) targets, e.g. hand velocity (z-scored for training; predictions
            are returned in the original units).
        inputs_eval: (trials_eval, T_eval, C) inputs to predict from (T_eval may differ from T).
        epochs: passes over the training trials; `batch_size=None` = full batch (one step per epoch).
        seed: seeds the initialisation and minibatch order (the global torch RNG is left untouched).
    Returns:
        predictions (trials_eval, T_eval, D) float32 numpy array.
    """
    x_tr = _as_trials("inputs_train", inputs_train)
    y_tr = _as_trials("behavior_train", behavior_train)
    x_ev = _as_trials("inputs_eval", inputs_eval)
    if y_tr.shape[:2] != x_tr.shape[:2]:
        raise ValueError(
            f"behavior_train shape {y_tr.shape} does not match inputs_train {x_tr.shape} in (trials, T)"
        )
    if x_ev.shape[2] != x_tr.shape[2]:
        raise ValueError(f"inputs_eval has {x_ev.shape[2]} channels; inputs_train has {x_tr.shape[2]}")
    if epochs < 1 or lr <= 0:
        raise ValueError(f"epochs must be >= 1 and lr > 0; got epochs={epochs}, lr={lr}")
    if batch_size is not None and batch_size < 1:
        raise ValueError(f"batch_size must be >= 1 or None; got {batch_size}")

    # z-score with train statistics so one learning rate suits counts, rates and velocities alike.
    x_mu, x_sd = x_tr.mean((0, 1)), x_tr.std((0, 1)) + 1e-6  # (C,)
    y_mu, y_sd = y_tr.mean((0, 1)), y_tr.std((0, 1)) + 1e-6  # (D,)
    dev = torch.device(device)
    xt = torch.from_numpy((x_tr - x_mu) / x_sd).to(dev)  # (trials, T, C)
    yt = torch.from_numpy((y_tr - y_mu) / y_sd).to(dev)  # (trials, T, D)
    xe = torch.from_numpy((x_ev - x_mu) / x_sd).to(dev)  # (trials_eval, T_eval, C)

    n = xt.shape[0]
    bs = n if batch_size is None else min(batch_size, n)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = RNNBehaviorDecoder(x_tr.shape[2], y_tr.shape[2], hidden_dim, n_layers, cell, dropout).to(dev)
        opt = torch.optim.Adam(model.parameters(), lr=lr, weight_decay=weight_decay)
        model.train()
        for _ in range(epochs):
            order = torch.randperm(n, device=dev) if bs < n else torch.arange(n, device=dev)
            for start in range(0, n, bs):
                idx = order[start : start + bs]
                loss = torch.mean((model(xt[idx]) - yt[idx]) ** 2)
                opt.zero_grad(set_to_none=True)
                loss.backward()
                # RNNs occasionally see a gradient spike at a high learning rate; clipping keeps it bounded.
                nn.utils.clip_grad_norm_(model.parameters(), max_norm=5.0)
                opt.step()
            if not math.isfinite(loss.item()):
                raise FloatingPointError(f"behaviour decoder loss became {loss.item()}; lower lr (now {lr})")
        model.eval()
        with torch.no_grad():
            pred = model(xe).cpu().numpy()  # (trials_eval, T_eval, D) in z-scored units
    return (pred * y_sd + y_mu).astype(np.float32)
