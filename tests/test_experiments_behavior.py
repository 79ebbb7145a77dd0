"""`experiments/behavior.py`: the causal RNN behaviour decoder's training loop (used by the model
comparison) learns a mapping, is seeded, and refuses bad input with clear errors."""

import importlib.util
from pathlib import Path

import numpy as np
import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
_spec = importlib.util.spec_from_file_location("behavior", ROOT / "experiments" / "behavior.py")
behavior = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(behavior)
fit_behavior_decoder = behavior.fit_behavior_decoder


def _r2(pred: np.ndarray, true: np.ndarray) -> float:
    """R^2 over all trials and bins, averaged over behaviour dimensions."""
    p, y = pred.reshape(-1, pred.shape[-1]), true.reshape(-1, true.shape[-1])
    ss_res = ((y - p) ** 2).sum(0)
    ss_tot = ((y - y.mean(0)) ** 2).sum(0)
    return float(np.mean(1 - ss_res / ss_tot))


def test_fit_behavior_decoder_learns_mapping() -> None:
    # Behaviour = fixed linear map of a causally smoothed version of the inputs, plus a little noise.
    rng = np.random.default_rng(0)
    x = rng.poisson(1.0, size=(48, 15, 6)).astype(np.float32)  # (trials, T, C) spike counts
    smooth = np.zeros_like(x)
    for t in range(x.shape[1]):
        smooth[:, t] = x[:, t] if t == 0 else 0.5 * smooth[:, t - 1] + 0.5 * x[:, t]
    w = rng.normal(size=(6, 2))
    y = smooth @ w + 0.1 * rng.normal(size=(48, 15, 2))  # (trials, T, D)
    pred = fit_behavior_decoder(x[:36], y[:36], x[36:], hidden_dim=16, epochs=80, lr=1e-2, seed=0)
    assert pred.shape == (12, 15, 2) and pred.dtype == np.float32
    assert _r2(pred, y[36:]) > 0.5
    # Same seed -> same predictions, and the global torch RNG is not consumed.
    state = torch.get_rng_state()
    pred2 = fit_behavior_decoder(x[:36], y[:36], x[36:], hidden_dim=16, epochs=5, lr=1e-2, seed=0)
    pred3 = fit_behavior_decoder(x[:36], y[:36], x[36:], hidden_dim=16, epochs=5, lr=1e-2, seed=0)
    assert np.array_equal(pred2, pred3)
    assert torch.equal(state, torch.get_rng_state())


def test_fit_behavior_decoder_bad_input() -> None:
    x = np.zeros((4, 5, 3), dtype=np.float32)
    with pytest.raises(ValueError, match="behavior_train shape"):
        fit_behavior_decoder(x, np.zeros((4, 6, 2)), x)
    with pytest.raises(ValueError, match="inputs_eval has 2 channels"):
        fit_behavior_decoder(x, np.zeros((4, 5, 2)), x[..., :2])
    with pytest.raises(ValueError, match="inputs_train must be"):
        fit_behavior_decoder(x[0], np.zeros((4, 5, 2)), x)
    bad = np.zeros((4, 5, 2))
    bad[0, 0, 0] = np.nan
    with pytest.raises(ValueError, match="behavior_train has non-finite"):
        fit_behavior_decoder(x, bad, x)
