"""The feature path: items and events in micro-batches, one atomic store write per batch.

Offsets are committed only after the write (and the dead letters) are durable. Batch k+1 is
fetched and decoded while the store applies batch k; commits stay in order.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field
from functools import partial
from typing import Any

from aiokafka import TopicPartition

from models.features import ItemMeta, engagement_history, event_deltas
from schemas import Event, ItemUpsert, Rejection, decode
from stream.features.store import FeatureStore, FeatureUpdate, through_outages
from stream.runtime.consumer import Batch, BatchConsumer, next_offsets
from stream.runtime.metrics import WorkerMetrics
from stream.settings import Settings


@dataclass
class PreparedBatch:
    """A decoded micro-batch waiting for its store write and offset commit."""

    offsets: dict[TopicPartition, int]
    events: dict[str, Event] = field(default_factory=dict)
    metas: dict[str, bytes] = field(default_factory=dict)
    dead_letters: list[asyncio.Future[object]] = field(default_factory=list)


def feature_update(events: list[Event], metas: dict[str, bytes]) -> FeatureUpdate:
    """Everything a batch writes: also used to replay logs for training, so that training
    sees exactly the features serving computes."""
    users, items = event_deltas(events)
    return FeatureUpdate(
        event_ids=[e.event_id for e in events],
        users={k: v.pack() for k, v in users.items()},
        items={k: v.pack() for k, v in items.items()},
        item_meta=metas,
        history=engagement_history(events),
    )


class FeatureService(BatchConsumer):
    """Consumes ``items`` and ``events``; keeps user and item features in the store."""

    def __init__(self, settings: Settings, bootstrap: str, store: FeatureStore,
                 metrics: WorkerMetrics, **kwargs: Any) -> None:
        super().__init__(
            settings, bootstrap, metrics,
            topics=(settings.topic("items"), settings.topic("events")),
            group_id=settings.features_group,
            fetch_wait_ms=settings.batch_wait_ms,
            max_records=settings.batch_max_records,
            **kwargs)
        self.store = store
        self._items_topic = settings.topic("items")
        self._writing: asyncio.Task[None] | None = None

    async def handle(self, batch: Batch) -> None:
        prepared = await self.prepare(batch)
        await self.drain()
        self._writing = asyncio.ensure_future(self.write_and_commit(prepared))

    async def drain(self) -> None:
        if self._writing is not None:
            await self._writing
            self._writing = None

    async def prepare(self, batch: Batch) -> PreparedBatch:
        """Decode the batch; bad records go to the dead-letter topic (sent, not yet awaited)."""
        prepared = PreparedBatch(offsets=next_offsets(batch))
        limits = self.settings.limits
        for records in batch.values():
            for record in records:
                try:
                    if record.topic == self._items_topic:
                        item = decode(record.value or b"", ItemUpsert, limits)
                        prepared.metas[item.item_id] = ItemMeta.from_upsert(item).pack()
                    else:
                        event = decode(record.value or b"", Event, limits)
                        if event.event_id in prepared.events:
                            self.metrics.duplicates.inc()
                        else:
                            prepared.events[event.event_id] = event
                except Rejection as rejection:
                    prepared.dead_letters.append(await self.dead_letter(record, rejection))
        return prepared

    async def write_and_commit(self, prepared: PreparedBatch) -> None:
        started = time.perf_counter()
        await self._write(list(prepared.events.values()), prepared.metas)
        if prepared.dead_letters:
            await asyncio.gather(*prepared.dead_letters)
        self.metrics.items.inc(len(prepared.metas))
        await self.commit(prepared.offsets)
        self.metrics.batch_seconds.observe(time.perf_counter() - started)

    async def _write(self, events: list[Event], metas: dict[str, bytes]) -> None:
        """Write until it sticks; events seen before are dropped and the rest written again."""
        while True:
            update = feature_update(events, metas)
            duplicates = set(await through_outages(
                partial(self.store.apply, update), "feature store write"))
            if not duplicates:
                self.metrics.events.inc(len(events))
                return
            self.metrics.duplicates.inc(len(duplicates))
            events = [e for e in events if e.event_id not in duplicates]
