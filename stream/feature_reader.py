"""Read side of the feature store: user and candidate features as numpy arrays, one round trip."""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from models.features import FEATURE_NAMES, ITEM_META_NAMES, entity_features, item_meta_features
from stream.store import FeatureStore

USER_FEATURE_NAMES: tuple[str, ...] = tuple(f"user_{n}" for n in FEATURE_NAMES)
ITEM_FEATURE_NAMES: tuple[str, ...] = tuple(f"item_{n}" for n in (*FEATURE_NAMES, *ITEM_META_NAMES))


@dataclass(frozen=True)
class CandidateFeatures:
    user: np.ndarray        # float32 [len(USER_FEATURE_NAMES)]
    items: np.ndarray       # float32 [n, len(ITEM_FEATURE_NAMES)]
    embeddings: np.ndarray  # float32 [n, dim], zeros for items never upserted
    known: np.ndarray       # bool [n]: the item has counters or metadata


class FeatureReader:
    def __init__(self, store: FeatureStore, embedding_dim: int) -> None:
        self._store = store
        self._dim = embedding_dim

    async def fetch(self, user_id: str, item_ids: Sequence[str],
                    now: float | None = None) -> CandidateFeatures:
        now = time.time() if now is None else now
        fetched = await self._store.fetch(user_id, item_ids)
        user = entity_features([fetched.user], now)[0]
        counters = entity_features(fetched.items, now)
        metas, embeddings = item_meta_features(fetched.item_meta, now, self._dim)
        known = np.array([c is not None or m is not None
                          for c, m in zip(fetched.items, fetched.item_meta, strict=True)])
        return CandidateFeatures(user, np.concatenate([counters, metas], axis=1), embeddings,
                                 known)
