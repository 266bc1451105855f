"""The serving path's feature code in one process, with no broker: a memory store, the reader,
the ranking matrix and the interests role's update step.

Whatever featurises requests away from a worker (training's log replay, the closed loops of
benchmarks) does it through here, so its rows mean what serving's rows mean.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import numpy as np

from models.features import ItemMeta
from models.ranking_features import ranking_matrix
from schemas import Event, ItemUpsert, RankingRequest
from stream.features.reader import FeatureReader
from stream.features.store import EventBatch, MemoryStore
from stream.features.watermarks import Origin
from stream.interests.role import interest_params
from stream.interests.update import update_users
from stream.settings import Settings


class OfflineFeatures:
    """Items and events go in as a worker would apply them; a request's matrix comes out as
    the worker would score it, at the request's own timestamp."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self._store = MemoryStore(settings.dedup_ttl_s, settings.history_length)
        self._reader = FeatureReader(self._store, settings.embedding_dim,
                                     interests=settings.interest_features)
        self._interests = interest_params(settings)
        self._events = 0

    async def publish(self, items: Iterable[ItemUpsert]) -> None:
        """Upsert items (and ads) into the store, as the features role does."""
        await self._store.apply(EventBatch(
            metas={item.item_id: ItemMeta.from_upsert(item).pack() for item in items}))

    async def matrix(self, request: RankingRequest) -> np.ndarray:
        """float32 ``[len(request.candidates), len(RANKER_FEATURE_NAMES)]``, candidates' order."""
        features = await self._reader.fetch(request.user_id, request.candidates, now=request.ts)
        return ranking_matrix(features, request.context, request.ts)

    async def apply(self, events: Sequence[Event]) -> None:
        """Apply engagements to the counters and to the engaged users' interests."""
        # One stream: its events take consecutive offsets of one partition.
        origins = [Origin(0, self._events + k) for k in range(len(events))]
        self._events += len(events)
        await self._store.apply(EventBatch(list(events), origins))
        await update_users(self._store, events, self._interests,
                           self.settings.interests_long_dwell_s, self.settings.embedding_dim)
