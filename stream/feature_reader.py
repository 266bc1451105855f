"""Read side of the feature store: user and candidate features as numpy arrays, one round trip."""

from __future__ import annotations

import time
from collections.abc import Sequence

import numpy as np

from models.features import entity_features, item_meta_features, unpack_history
from models.ranking_features import CandidateFeatures
from stream.store import FeatureStore, Lookup


class FeatureReader:
    def __init__(self, store: FeatureStore, embedding_dim: int) -> None:
        self._store = store
        self._dim = embedding_dim

    async def fetch(self, user_id: str, item_ids: Sequence[str],
                    now: float | None = None) -> CandidateFeatures:
        return (await self.fetch_many([(user_id, item_ids)], now))[0]

    async def fetch_many(self, lookups: Sequence[Lookup],
                         now: float | None = None) -> list[CandidateFeatures]:
        """Features of several requests (user, candidates) from one store round trip."""
        now = time.time() if now is None else now
        fetched = await self._store.fetch_many(lookups)
        # Decode the whole micro-batch at once, then split: per-call overhead dominates at
        # ~100 candidates per request.
        users = entity_features([f.user for f in fetched], now)
        values = [value for f in fetched for value in f.items]
        metas = [meta for f in fetched for meta in f.item_meta]
        meta_rows, embeddings = item_meta_features(metas, now, self._dim)
        items = np.concatenate([entity_features(values, now), meta_rows], axis=1)
        known = np.array([c is not None or m is not None
                          for c, m in zip(values, metas, strict=True)], dtype=bool)
        bounds = np.cumsum([len(f.items) for f in fetched])[:-1]
        return [
            CandidateFeatures(user, item_rows, item_embeddings, item_known,
                              *unpack_history(f.history, self._dim))
            for f, user, item_rows, item_embeddings, item_known in zip(
                fetched, users, np.split(items, bounds), np.split(embeddings, bounds),
                np.split(known, bounds), strict=True)
        ]
