"""Read side of the feature store: user and candidate features as numpy arrays, one round trip
(and, beside it, the users' interests)."""

from __future__ import annotations

import time
from collections.abc import Sequence

import numpy as np

from models.features import (
    ITEM_FEATURE_NAMES,
    entity_features,
    item_meta_features,
    unpack_history,
)
from models.ranking_features import CandidateFeatures
from stream.features.item_cache import ItemFeatureCache
from stream.features.store import FeatureStore, Lookup
from stream.interests.state import STATE, stored_interests


class FeatureReader:
    """Users are read fresh on every call; items come from an :class:`ItemFeatureCache` that
    is refilled, in the same round trip as the users, for ids it lacks or holds too long."""

    def __init__(self, store: FeatureStore, embedding_dim: int,
                 item_cache_ttl_s: float = 0.0, interests: bool = True) -> None:
        """``interests=False`` leaves the interest columns at zero (STREAMRANK_INTEREST_FEATURES):
        for a model that must do without them, in training and serving alike."""
        self._store = store
        self._dim = embedding_dim
        self._interests = interests
        self._items = ItemFeatureCache(item_cache_ttl_s, len(ITEM_FEATURE_NAMES), embedding_dim)

    async def fetch(self, user_id: str, item_ids: Sequence[str],
                    now: float | None = None) -> CandidateFeatures:
        return (await self.fetch_many([(user_id, item_ids)], now))[0]

    async def fetch_many(self, lookups: Sequence[Lookup],
                         now: float | None = None) -> list[CandidateFeatures]:
        """Features of several requests (user, candidates) from one store round trip."""
        now = time.time() if now is None else now
        cache = self._items
        slots = [cache.slots(item_ids) for _, item_ids in lookups]
        stale = [np.flatnonzero(cache.stale(s, now)) for s in slots]
        wanted: list[Lookup] = []
        claimed: set[str] = set()  # candidates overlap across a micro-batch: read each once
        for (user_id, item_ids), positions in zip(lookups, stale, strict=True):
            missing = [item_id for item_id in dict.fromkeys(item_ids[k] for k in positions.tolist())
                       if item_id not in claimed]
            claimed.update(missing)
            wanted.append((user_id, missing))
        fetched = await self._store.fetch_many(wanted, STATE if self._interests else None)
        # Users and refilled items decoded in one call: per-call overhead dominates (one call
        # of 34 rows took 58 us, two of 1 and 33 rows 95 us).
        counters = [v for f in fetched for v in f.items]
        rows = entity_features([*(f.user for f in fetched), *counters], now)
        users = rows[:len(fetched)]
        if claimed:
            generation = cache.generation
            self._refill([i for _, ids in wanted for i in ids], counters, rows[len(fetched):],
                         [m for f in fetched for m in f.item_meta], now)
            for (_, item_ids), request_slots, positions in zip(lookups, slots, stale,
                                                               strict=True):
                if cache.generation != generation:
                    request_slots[:] = cache.slots(item_ids)
                elif len(positions):
                    request_slots[positions] = cache.slots([item_ids[k]
                                                            for k in positions.tolist()])
        return [
            CandidateFeatures(user, *cache.gather(request_slots),
                              *unpack_history(f.history, self._dim), stored_interests(f.state))
            for request_slots, f, user in zip(slots, fetched, users, strict=True)
        ]

    def _refill(self, item_ids: list[str], counters: list[bytes | None],
                counter_rows: np.ndarray, metas: list[bytes | None], now: float) -> None:
        meta_rows, embeddings = item_meta_features(metas, now, self._dim)
        rows = np.concatenate([counter_rows, meta_rows], axis=1)
        known = np.array([c is not None or m is not None
                          for c, m in zip(counters, metas, strict=True)], dtype=bool)
        self._items.put(item_ids, rows, embeddings, known, now)

