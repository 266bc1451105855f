"""The features role: items and events in micro-batches, applied to the store exactly once.

The runtime decodes, dead-letters and commits; this role turns one decoded batch into one
:class:`EventBatch`, whose events carry their (partition, offset) so the store can tell a
replay from new data. Applying a batch is an ordered effect of the runtime: batch k+1 is
decoded, and its deltas built, while batch k is applied; batches are applied in the order they
were read (offset marks only rise).
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any

from models.features import ItemMeta, packed_event_deltas
from schemas import Event, ItemUpsert
from stream.features.store import Deltas, EventBatch, FeatureStore, MemoryStore
from stream.features.watermarks import Origin
from stream.runtime.consumer import Decoded, Sends, SupervisedConsumer
from stream.runtime.metrics import WorkerMetrics
from stream.settings import Settings


def event_batch(decoded: Sequence[Decoded[Any]]) -> EventBatch:
    batch = EventBatch()
    events, origins = batch.events, batch.origins  # this loop runs per event
    for record, value in decoded:
        if isinstance(value, Event):
            events.append(value)
            origins.append(Origin(record.partition, record.offset))
        else:
            batch.metas[value.item_id] = ItemMeta.from_upsert(value).pack()
    return batch


class FeatureService(SupervisedConsumer):
    """Consumes ``items`` and ``events``; keeps user and item features in the store."""

    def __init__(self, settings: Settings, bootstrap: str, store: FeatureStore,
                 metrics: WorkerMetrics, **kwargs: Any) -> None:
        super().__init__(
            settings, bootstrap, metrics, name="features",
            topics={settings.topic("items"): ItemUpsert, settings.topic("events"): Event},
            group_id=settings.group("features"),
            fetch_wait_ms=settings.batch_wait_ms,
            max_records=settings.batch_max_records,
            replay_from_start=isinstance(store, MemoryStore),
            **kwargs)
        self.store = store

    async def handle(self, batch: Sequence[Decoded[Any]]) -> Sends:
        update = event_batch(batch)
        deltas = packed_event_deltas(update.events)
        return [self.in_order(lambda: self._apply(update, deltas))]

    async def _apply(self, update: EventBatch, deltas: Deltas) -> None:
        started = time.perf_counter()
        applied = await self.store.apply(update, deltas)
        self.metrics.events.inc(applied.events)
        self.metrics.replayed.inc(applied.replayed)
        self.metrics.duplicates.inc(len(applied.duplicates))
        self.metrics.items.inc(len(update.metas))
        self.metrics.batch_seconds.observe(time.perf_counter() - started)
