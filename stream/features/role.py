"""The features role: items and events in micro-batches, applied to the store exactly once.

The runtime decodes, dead-letters and commits; this role turns one decoded batch into one
:class:`EventBatch`, whose events carry their (partition, offset) so the store can tell a
replay from new data.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any

from models.features import ItemMeta
from schemas import Event, ItemUpsert
from stream.features.store import EventBatch, FeatureStore, MemoryStore
from stream.features.watermarks import Origin
from stream.runtime.consumer import Decoded, Sends, SupervisedConsumer
from stream.runtime.metrics import WorkerMetrics
from stream.settings import Settings


def event_batch(decoded: Sequence[Decoded[Any]]) -> EventBatch:
    batch = EventBatch()
    for one in decoded:
        if isinstance(one.value, ItemUpsert):
            batch.metas[one.value.item_id] = ItemMeta.from_upsert(one.value).pack()
        else:
            batch.events.append(one.value)
            batch.origins.append(Origin(one.record.partition, one.record.offset))
    return batch


class FeatureService(SupervisedConsumer):
    """Consumes ``items`` and ``events``; keeps user and item features in the store."""

    def __init__(self, settings: Settings, bootstrap: str, store: FeatureStore,
                 metrics: WorkerMetrics, **kwargs: Any) -> None:
        super().__init__(
            settings, bootstrap, metrics, name="features",
            topics={settings.topic("items"): ItemUpsert, settings.topic("events"): Event},
            group_id=settings.features_group,
            fetch_wait_ms=settings.batch_wait_ms,
            max_records=settings.batch_max_records,
            replay_from_start=isinstance(store, MemoryStore),
            **kwargs)
        self.store = store

    async def handle(self, batch: Sequence[Decoded[Any]]) -> Sends:
        started = time.perf_counter()
        update = event_batch(batch)
        applied = await self.store.apply(update)
        self.metrics.events.inc(applied.events)
        self.metrics.replayed.inc(applied.replayed)
        self.metrics.duplicates.inc(len(applied.duplicates))
        self.metrics.items.inc(len(update.metas))
        self.metrics.batch_seconds.observe(time.perf_counter() - started)
        return []
