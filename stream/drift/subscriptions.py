"""The drift-alert subscriptions every worker knows, and how the API changes them.

DESIGN.md suggests a Faust table. Our consumers run on aiokafka instead (Faust's per-event
machinery is slow, and its tables need changelog agents of their own), and a broadcast reader
of the compacted ``subscriptions`` topic gives the same guarantee: every worker reads every
record from the start at every start, so all workers hold the same set, and a restart
rebuilds it. The topic is keyed by subscription id, so compaction keeps the latest version of
each, and a delete is a tombstone (a null value), which compaction drops in the end.

Every worker runs the registry, because every worker serves the API; only the drift role
delivers alerts (:mod:`stream.drift.delivery`). A write through the API is produced, awaited
(``acks=all``), and then awaited again until this worker's registry has read it, so a GET
right after a POST or DELETE sees it. Another worker sees it once its reader gets there,
usually within its fetch wait.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence
from typing import Any

from aiokafka.structs import TopicPartition

from schemas import DriftSubscription, Rejection, encode
from stream.runtime.consumer import Decoded, RawRecord, Sends, SupervisedConsumer
from stream.runtime.metrics import WorkerMetrics
from stream.settings import Settings

log = logging.getLogger(__name__)

# How long a write through the API waits for this worker to read it back.
READ_BACK_TIMEOUT_S = 10.0


class SubscriptionRegistry(SupervisedConsumer):
    """The latest version of every subscription, by id.

    Like :class:`stream.runtime.versioned_state.VersionedStateService`, it sends nothing to
    the DLQ (every worker reads every record again at every start): a record that does not
    decode, or whose key is not its ``subscription_id``, is counted in
    ``streamrank_rejected_total{topic=<prefix>.subscriptions}`` and skipped. The API writes
    only valid records; such a record comes from another producer.
    """

    tombstones = True  # a null value deletes its subscription

    def __init__(self, settings: Settings, bootstrap: str, metrics: WorkerMetrics,
                 **kwargs: Any) -> None:
        self._topic = settings.topic("subscriptions")
        super().__init__(settings, bootstrap, metrics, name="subscriptions",
                         topics={self._topic: DriftSubscription}, group_id=None,
                         fetch_wait_ms=100, max_records=1000, dead_letters=False, **kwargs)
        self._partition = TopicPartition(self._topic, 0)  # compacted topics have one
        self._by_id: dict[str, DriftSubscription] = {}
        self._next_offset = 0  # after the last record applied
        self._next_seen = 0  # after the last record applied or refused
        self._progress = asyncio.Condition()
        self._synced = False

    # -- reading -------------------------------------------------------------------------

    def check(self, decoded: Decoded[Any]) -> None:
        key = decoded.record.key
        if key is None or key.decode("utf-8", "replace") != decoded.value.subscription_id:
            raise Rejection("invalid_value", f"key {key!r} is not the record's subscription_id "
                            f"{decoded.value.subscription_id!r}")

    async def handle(self, batch: Sequence[Decoded[Any]]) -> Sends:
        for decoded in batch:
            if decoded.value is not None:
                self._by_id[decoded.value.subscription_id] = decoded.value
            elif decoded.record.key is not None:
                self._by_id.pop(decoded.record.key.decode("utf-8", "replace"), None)
        self._next_offset = batch[-1].record.offset + 1
        self._next_seen = max(self._next_seen, self._next_offset)
        async with self._progress:
            self._progress.notify_all()
        return []

    def dead_letter(self, record: RawRecord, rejection: Rejection) -> asyncio.Future[Any]:
        self._next_seen = max(self._next_seen, record.offset + 1)  # read, so synced() counts it
        return super().dead_letter(record, rejection)

    def all(self) -> list[DriftSubscription]:
        return list(self._by_id.values())

    def get(self, subscription_id: str) -> DriftSubscription | None:
        return self._by_id.get(subscription_id)

    def synced(self) -> bool:
        """Whether the registry has read the topic to the end once since it started: before,
        it may lack subscriptions that exist."""
        if not self._synced and self._consumer is not None:
            end = self._consumer.highwater(self._partition)
            self._synced = end is not None and self._next_seen >= end
        return self._synced

    async def wait_synced(self, timeout_s: float) -> None:
        """Return once :meth:`synced`; :class:`TimeoutError` after ``timeout_s``."""
        async with asyncio.timeout(timeout_s):
            while not self.synced():
                await asyncio.sleep(0.05)

    # -- writing -------------------------------------------------------------------------

    async def put(self, subscription: DriftSubscription) -> None:
        """Create or replace ``subscription``; return once this worker has read it."""
        await self._write(subscription.subscription_id, encode(subscription))

    async def delete(self, subscription_id: str) -> None:
        """Write the tombstone of ``subscription_id``; return once this worker has read it."""
        await self._write(subscription_id, None)

    async def _write(self, subscription_id: str, value: bytes | None) -> None:
        sent = await self.producer.send_and_wait(self._topic, value,
                                                 key=subscription_id.encode())
        async with asyncio.timeout(READ_BACK_TIMEOUT_S), self._progress:
            await self._progress.wait_for(lambda: self._next_offset > sent.offset)
