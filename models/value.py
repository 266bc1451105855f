"""The value model: one number per item from its per-task probabilities."""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np


class ValueModel:
    """``value = Σ weight[task] · p[task]``; negative weights (e.g. hide) push items down."""

    def __init__(self, weights: Mapping[str, float]) -> None:
        self.weights = dict(weights)

    def values(self, probs: np.ndarray, task_names: tuple[str, ...]) -> np.ndarray:
        unknown = set(self.weights) - set(task_names)
        if unknown:
            raise ValueError(f"value weights for tasks the model lacks: {sorted(unknown)}")
        weights = np.array([self.weights.get(task, 0.0) for task in task_names],
                           dtype=np.float32)
        return np.asarray(probs @ weights)
