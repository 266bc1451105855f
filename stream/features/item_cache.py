"""Decoded item features, kept in process for a short time so hot candidates skip the store.

Every request names its candidates, and the same popular items come back request after
request. Fetching and decoding them each time cost most of the serving CPU (redis-py packs a
500-key MGET in pure Python). Item counters move slowly (their shortest half-life is an hour),
so serving them up to ``ttl_s`` old changes nothing a ranker can see, while user features,
which one session changes quickly, are always read fresh.

No library fits: the point is a numpy-row layout that a request gathers with one fancy index,
which a mapping-of-objects cache (cachetools and the like) would undo.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

INITIAL_CAPACITY = 1024


class ItemFeatureCache:
    """Item feature rows, embeddings and known-flags by item id, each fresh for ``ttl_s``.

    Memory is bounded by what the traffic asks for within ``ttl_s``: when the arrays are full,
    expired rows are dropped first, and they only grow if the fresh rows still fill half.
    ``ttl_s = 0`` re-reads every item on every batch (training replays use that).
    """

    def __init__(self, ttl_s: float, n_columns: int, dim: int) -> None:
        if ttl_s < 0:
            raise ValueError("ttl_s must be >= 0")
        self.ttl_s = ttl_s
        self.generation = 0  # bumped whenever rows move, which invalidates slots handed out
        self._slot: dict[str, int] = {}
        self._ids: list[str] = []
        self._rows = np.zeros((INITIAL_CAPACITY, n_columns), dtype=np.float32)
        self._embeddings = np.zeros((INITIAL_CAPACITY, dim), dtype=np.float32)
        self._known = np.zeros(INITIAL_CAPACITY, dtype=bool)
        self._fetched_at = np.zeros(INITIAL_CAPACITY, dtype=np.float64)

    def __len__(self) -> int:
        return len(self._ids)

    def slots(self, item_ids: Sequence[str]) -> np.ndarray:
        """Row of each id, -1 where it is not cached."""
        get = self._slot.get
        return np.fromiter((get(item_id, -1) for item_id in item_ids), dtype=np.int64,
                           count=len(item_ids))

    def stale(self, slots: np.ndarray, now: float) -> np.ndarray:
        """Which of these rows must be read from the store before serving at ``now``."""
        return (slots < 0) | (self._fetched_at[slots] + self.ttl_s < now)

    def put(self, item_ids: Sequence[str], rows: np.ndarray, embeddings: np.ndarray,
            known: np.ndarray, now: float) -> None:
        """Store freshly read items. Slots handed out earlier stay valid unless ``generation``
        changed."""
        new = [item_id for item_id in item_ids if item_id not in self._slot]
        if len(self._ids) + len(new) > len(self._known):
            # Expired ids being put again are dropped and come back as new: make room for all.
            self._compact(now, room=len(item_ids))
            new = [item_id for item_id in item_ids if item_id not in self._slot]
        for item_id in new:
            self._slot[item_id] = len(self._ids)
            self._ids.append(item_id)
        target = self.slots(item_ids)
        self._rows[target] = rows
        self._embeddings[target] = embeddings
        self._known[target] = known
        self._fetched_at[target] = now

    def gather(self, slots: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        return self._rows[slots], self._embeddings[slots], self._known[slots]

    def _compact(self, now: float, room: int) -> None:
        keep = np.flatnonzero(self._fetched_at[:len(self._ids)] + self.ttl_s >= now)
        capacity = len(self._known)
        while 2 * (len(keep) + room) > capacity:
            capacity *= 2
        self._ids = [self._ids[slot] for slot in keep.tolist()]
        self._slot = {item_id: slot for slot, item_id in enumerate(self._ids)}
        self._rows = _moved(self._rows, keep, capacity)
        self._embeddings = _moved(self._embeddings, keep, capacity)
        self._known = _moved(self._known, keep, capacity)
        self._fetched_at = _moved(self._fetched_at, keep, capacity)
        self.generation += 1


def _moved(array: np.ndarray, keep: np.ndarray, capacity: int) -> np.ndarray:
    out = np.zeros((capacity, *array.shape[1:]), dtype=array.dtype)
    out[:len(keep)] = array[keep]
    return out
