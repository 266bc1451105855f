"""Every scoring worker's ANN index of the organic items, kept from the items topic.

Retrieval (PinnerSage's medoid queries) must be a local call, so each worker holds the whole
index, fed by a broadcast read of ``items`` (no group: every worker reads every partition).
What goes in, and what comes out:

- an upsert of ``kind == "item"`` inserts the item, or replaces its vector and creation time;
- an upsert of an ad is not a retrieval candidate: it is skipped, and removes the id if it was
  an item before (**retracted**);
- an upsert whose ``metadata`` says ``"expired": true`` removes the item (**retracted**): how
  a publisher withdraws an item before its age does;
- an item older than ``STREAMRANK_ITEM_MAX_AGE_S`` (by ``created_ts``, else the upsert's
  ``ts``) is removed (**expired**): checked as each upsert is read (an old upsert never goes in)
  and every :data:`EXPIRY_SWEEP_S` against the wall clock. 0 keeps items until retracted.

A record that does not decode, or whose embedding has no direction (all zeros), is counted in
``streamrank_rejected_total`` and skipped, never sent to the DLQ: like the other broadcast
readers, every worker reads it again after every restart that lacks a snapshot.

**Snapshot.** Reading 100k items from the start means 100k inserts at 8-13k/s (see
:mod:`models.ann`). So every ``STREAMRANK_ANN_SNAPSHOT_INTERVAL_S`` when it changed, and at a
clean stop, the index is written with the offsets it holds (next offset per items
partition) to ``STREAMRANK_ANN_SNAPSHOT_DIR/<prefix>-items.npz``, atomically, off the event
loop. At start the snapshot is loaded if its topic and embedding dimension match; the reader
then seeks each partition to its offset and reads only the tail. Two cases where the topic is
not the one the snapshot was read from:

- a worker on its own embedded broker (``STREAMRANK_BROKER_URL`` unset) starts on an empty
  topic every time: it neither loads nor writes a snapshot;
- a topic deleted and made again holds fewer records than the snapshot's offsets: the first
  fetch shows it (Kafka's consumer goes back to the start, so a record comes below the
  offset; tansu answers nothing, with a high watermark below the offset), and the index is
  dropped and read again from the start. The broker's end offsets cannot say it beforehand:
  tansu answers ListOffsets short of the high watermark. A remade topic that already holds
  more records than the snapshot's offsets goes unnoticed; delete the snapshot with it.

The offsets are taken before the index is copied, so a snapshot may hold a few records past
them: read again, they change nothing (an upsert is a replacement, a removal of an absent id
is nothing). Workers on one host may share the directory: every worker holds the same index,
so whichever wrote last wrote a valid snapshot for all.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from aiokafka.structs import TopicPartition

from models.ann import MIN_NORM, ItemIndex, SnapshotError
from schemas import ItemUpsert, Rejection
from stream.runtime.consumer import Decoded, RawRecord, Sends, SupervisedConsumer
from stream.runtime.metrics import WorkerMetrics
from stream.settings import Settings

log = logging.getLogger(__name__)

EXPIRY_SWEEP_S = 10.0  # items live for days: a sweep scans 100k in ~5 ms


class ItemCatalogue(SupervisedConsumer):
    """The items topic, read by every worker into an :class:`ItemIndex` (see the module).

    :attr:`index` is set at start-up (a snapshot's, or an empty one): hold the catalogue, not
    the index. :meth:`synced` says whether it has caught up with the topic once.
    """

    def __init__(self, settings: Settings, bootstrap: str, metrics: WorkerMetrics, *,
                 clock: Callable[[], float] = time.time, **kwargs: Any) -> None:
        self._topic = settings.topic("items")
        super().__init__(settings, bootstrap, metrics, name="item-index",
                         topics={self._topic: ItemUpsert}, group_id=None, fetch_wait_ms=100,
                         max_records=5000, dead_letters=False, **kwargs)
        self.index = ItemIndex(settings.embedding_dim)
        self.snapshot_path = Path(settings.ann_snapshot_dir) / f"{settings.topic_prefix}-items.npz"
        self._max_age_s = settings.item_max_age_s
        self._clock = clock
        self._next: dict[TopicPartition, int] = {}  # after the last record applied or refused
        self._snapshot_offsets: dict[TopicPartition, int] = {}  # of the snapshot loaded
        # Partitions sought to a snapshot offset and not yet read from there: see handle().
        self._resuming: dict[TopicPartition, int] = {}
        self._snapshots = settings.broker_url is not None  # see the module: embedded broker
        self._changed = False  # since the last snapshot
        self._synced = False
        self._maintenance: asyncio.Task[None] | None = None

    # -- reading -------------------------------------------------------------------------

    def check(self, decoded: Decoded[Any]) -> None:
        if np.linalg.norm(decoded.value.embedding) < MIN_NORM:
            raise Rejection("invalid_value", "embedding is all zeros: it has no direction")

    async def handle(self, batch: Sequence[Decoded[Any]]) -> Sends:
        if self._resuming:
            await self._check_resumed(batch)
        cutoff = self._cutoff()
        latest: dict[str, ItemUpsert] = {}  # an id's records share a partition: last wins
        retracted: set[str] = set()
        expired: set[str] = set()
        for decoded in batch:
            record, item = decoded.record, decoded.value
            self._note_read(record)
            latest.pop(item.item_id, None)
            retracted.discard(item.item_id)
            expired.discard(item.item_id)
            if item.kind != "item" or item.metadata.get("expired") is True:
                retracted.add(item.item_id)
            elif _created(item) < cutoff:
                expired.add(item.item_id)
            else:
                latest[item.item_id] = item
        self._remove(retracted, "retracted")
        self._remove(expired, "expired")
        if latest:
            items = list(latest.values())
            self.index.upsert([item.item_id for item in items],
                              np.array([item.embedding for item in items], dtype=np.float32),
                              [_created(item) for item in items])
            self.metrics.item_index_upserts.inc(len(items))
        self.metrics.item_index_items.set(len(self.index))
        return []

    def dead_letter(self, record: RawRecord, rejection: Rejection) -> asyncio.Future[Any]:
        self._note_read(record)  # refused, but read: the snapshot's offsets move past it
        return super().dead_letter(record, rejection)

    async def _check_resumed(self, batch: Sequence[Decoded[Any]]) -> None:
        """On Kafka, a consumer sought past the end of a partition goes back to its start: a
        record below the snapshot's offset shows it."""
        for decoded in batch:
            tp = TopicPartition(decoded.record.topic, decoded.record.partition)
            if tp in self._resuming and decoded.record.offset < self._resuming[tp]:
                await self._drop_snapshot(tp, f"read from offset {decoded.record.offset}")
                return

    async def _confirm_resumed(self) -> None:
        """tansu instead answers such a fetch with nothing, and a high watermark below the
        offset: wait until the first fetch of each resumed partition tells its end."""
        assert self._consumer is not None
        while self._resuming:
            for tp, offset in list(self._resuming.items()):
                end = self._consumer.highwater(tp)
                if end is not None and end < offset:
                    await self._drop_snapshot(tp, f"its end is offset {end}")
                    return
                if end is not None:
                    self._resuming.pop(tp, None)
            await asyncio.sleep(0.05)

    async def _drop_snapshot(self, tp: TopicPartition, evidence: str) -> None:
        """The topic is not the one the snapshot was read from (deleted and made again):
        start empty and read every partition from the start."""
        assert self._consumer is not None
        log.warning("item index: %s/%d was sought to the snapshot's offset %d, but %s: it is "
                    "not the topic the snapshot was read from; reading it all from the start",
                    tp.topic, tp.partition, self._resuming[tp], evidence)
        self.index = ItemIndex(self.index.dim)
        self._next.clear()
        self._resuming.clear()
        await self._consumer.seek_to_beginning(*self._consumer.assignment())

    def _note_read(self, record: RawRecord) -> None:
        tp = TopicPartition(record.topic, record.partition)  # refusals come before the batch:
        self._next[tp] = max(self._next.get(tp, 0), record.offset + 1)
        self._changed = True
        self.metrics.item_index_records.inc()

    def _remove(self, item_ids: set[str], reason: str) -> None:
        if item_ids:
            self.metrics.item_index_removals.labels(reason).inc(self.index.remove(item_ids))

    def _cutoff(self) -> float:
        return self._clock() - self._max_age_s if self._max_age_s > 0 else -math.inf

    def expire(self) -> int:
        """Remove the items that have grown too old since they were read; how many."""
        old = self.index.created_before(self._cutoff())
        self._remove(set(old), "expired")
        if old:
            self._changed = True
            self.metrics.item_index_items.set(len(self.index))
        return len(old)

    def synced(self) -> bool:
        """Whether the index has caught up with the end of every items partition once since
        the start: before, retrieval may miss items that exist."""
        if not self._synced and self._consumer is not None:
            assigned = self._consumer.assignment()
            ends = {tp: self._consumer.highwater(tp) for tp in assigned}
            self._synced = bool(assigned) and not self._resuming and all(
                end is not None and self._next.get(tp, 0) >= end for tp, end in ends.items())
        return self._synced

    # -- snapshot ------------------------------------------------------------------------

    async def on_start(self) -> None:
        await asyncio.to_thread(self._load_snapshot)
        await super().on_start()  # calls assigned(), which seeks to the snapshot's offsets
        self._maintenance = asyncio.ensure_future(self._maintain())

    async def on_stop(self) -> None:
        if self._maintenance is not None:
            self._maintenance.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._maintenance
        await super().on_stop()  # the loop finishes its batch first
        await self.snapshot()

    def _load_snapshot(self) -> None:
        if not self._snapshots:
            log.info("item index: on an embedded broker, which starts empty, so no snapshot")
            return
        if not self.snapshot_path.exists():
            log.info("item index: no snapshot at %s; reading the items topic from the start",
                     self.snapshot_path)
            return
        try:
            index, meta = ItemIndex.load(self.snapshot_path)
            if meta.get("topic") != self._topic or index.dim != self.index.dim:
                raise SnapshotError(f"it is of topic {meta.get('topic')!r} and dimension "
                                    f"{index.dim}, not {self._topic!r} and {self.index.dim}")
            offsets = {TopicPartition(self._topic, int(partition)): int(offset)
                       for partition, offset in meta["offsets"].items()}
        except (SnapshotError, KeyError, TypeError, ValueError) as exc:
            log.warning("item index: snapshot %s not used (%s); reading the items topic from "
                        "the start", self.snapshot_path, exc)
            return
        self.index, self._snapshot_offsets = index, offsets
        self.metrics.item_index_snapshot_ts.set(self.snapshot_path.stat().st_mtime)

    async def assigned(self, partitions: set[TopicPartition]) -> None:
        """Read each partition from the snapshot's offset (the others from the start)."""
        assert self._consumer is not None
        offsets = {tp: offset for tp, offset in self._snapshot_offsets.items()
                   if tp in partitions}
        for tp, offset in offsets.items():
            self._consumer.seek(tp, offset)
            self._next[tp] = offset
        self._resuming = {tp: offset for tp, offset in offsets.items() if offset > 0}
        if not offsets:
            return
        self.metrics.item_index_items.set(len(self.index))
        log.info("item index: %d items from snapshot %s; reading the items topic from its "
                 "offsets %s", len(self.index), self.snapshot_path,
                 {tp.partition: offset for tp, offset in offsets.items()})

    async def snapshot(self) -> None:
        """Write the index and the offsets it holds, if it changed since the last time."""
        if not (self._changed and self._snapshots):
            return
        self._changed = False
        meta = {"topic": self._topic,
                "offsets": {str(tp.partition): offset for tp, offset in self._next.items()}}
        started = time.perf_counter()
        try:
            await asyncio.to_thread(self.index.save, self.snapshot_path, meta)
        except OSError:
            self._changed = True
            log.exception("item index: snapshot to %s failed; the previous one stays",
                          self.snapshot_path)
            return
        self.metrics.item_index_snapshot_seconds.observe(time.perf_counter() - started)
        self.metrics.item_index_snapshot_ts.set(time.time())

    async def _maintain(self) -> None:
        await self._confirm_resumed()
        interval_s = self.settings.ann_snapshot_interval_s
        last_snapshot = time.monotonic()
        while True:
            await asyncio.sleep(min(EXPIRY_SWEEP_S, interval_s))
            try:
                self.expire()
                if time.monotonic() - last_snapshot >= interval_s:
                    last_snapshot = time.monotonic()
                    await self.snapshot()
            except Exception:  # the index still serves; the next tick tries again
                log.exception("item index: expiry or snapshot failed")


def _created(item: ItemUpsert) -> float:
    return item.created_ts if item.created_ts is not None else item.ts
