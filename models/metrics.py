"""Probability metrics shared by training, BatchNorm adaptation and the benches (no torch)."""

from __future__ import annotations

import numpy as np

EPS = 1e-7  # probability clip: a prediction of exactly 0 or 1 would cost an infinite log loss


def log_loss(targets: np.ndarray, predictions: np.ndarray) -> float:
    """Mean binary cross-entropy. ``targets`` may be 0/1 labels or true probabilities: against
    the world's true probabilities it measures a model without the noise of sampled labels."""
    q = np.clip(np.asarray(predictions, dtype=np.float64), EPS, 1 - EPS)
    p = np.asarray(targets, dtype=np.float64)
    return float(-np.mean(p * np.log(q) + (1 - p) * np.log1p(-q)))
