"""The rows a ranker trains on, apart from training itself: the serving side's roles and the
demo build datasets without importing torch, which only ``models.training`` needs."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass
class Dataset:
    """Rows in time order; rows of one request are contiguous and share ``request_index``."""

    features: np.ndarray  # float32 [N, F]
    labels: np.ndarray  # float32 [N, T], 0/1
    item_ids: np.ndarray  # object/str [N]
    request_index: np.ndarray  # int64 [N], non-decreasing
    feature_names: tuple[str, ...]
    task_names: tuple[str, ...]

    def __post_init__(self) -> None:
        n = len(self.features)
        if self.features.shape != (n, len(self.feature_names)):
            raise ValueError("features must be [N, len(feature_names)]")
        if self.labels.shape != (n, len(self.task_names)):
            raise ValueError("labels must be [N, len(task_names)]")
        if self.item_ids.shape != (n,) or self.request_index.shape != (n,):
            raise ValueError("item_ids and request_index need one entry per row")
        if np.any(np.diff(self.request_index) < 0):
            raise ValueError("request_index must be non-decreasing (rows in time order)")
        if not np.isfinite(self.features).all():
            raise ValueError("features contain NaN or Inf")
        if not np.isin(self.labels, (0.0, 1.0)).all():
            raise ValueError("labels must be 0 or 1")

    def followed_by(self, later: Dataset) -> Dataset:
        """This dataset's rows, then ``later``'s (whose requests all come after), as one."""
        if (later.feature_names, later.task_names) != (self.feature_names, self.task_names):
            raise ValueError("datasets of different columns cannot be joined")
        first = int(self.request_index[-1]) + 1 if len(self.request_index) else 0
        return Dataset(np.concatenate([self.features, later.features]),
                       np.concatenate([self.labels, later.labels]),
                       np.concatenate([self.item_ids, later.item_ids]),
                       np.concatenate([self.request_index, later.request_index + first]),
                       self.feature_names, self.task_names)
