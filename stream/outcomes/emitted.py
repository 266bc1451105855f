"""What the outcomes role has emitted already, read back from the outcomes topic itself.

Without Kafka transactions (the embedded tansu has none), a worker killed between an outcome's
acknowledgement and the commit of its inputs emits it again after the restart. So each worker
that takes an input partition first reads the matching outcomes partition back from a
checkpoint, and suppresses every outcome at or before the last one found there
(:meth:`stream.outcomes.join.PartitionJoin.suppress_through`): the topic is the record of what
went out. The checkpoint, an offset per outcomes partition committed under a group of its own,
only bounds how far back that read starts; a stale one costs a longer read, never a duplicate.
"""

from __future__ import annotations

import asyncio
import logging

from aiokafka import AIOKafkaConsumer
from aiokafka.structs import TopicPartition

from schemas import Outcome, Rejection, decode
from stream.outcomes.join import OutcomeKey, outcome_key
from stream.runtime.clients import READ_TO_END_WAIT_MS, kafka_consumer, read_to_end
from stream.settings import Settings

log = logging.getLogger(__name__)


class EmittedLog:
    """Reads the outcomes topic back, and checkpoints how far it is known to reach."""

    def __init__(self, settings: Settings, bootstrap: str) -> None:
        self._topic = settings.topic("outcomes")
        self._consumer: AIOKafkaConsumer = kafka_consumer(
            settings, bootstrap, group_id=f"{settings.group('outcomes')}-emitted",
            enable_auto_commit=False, auto_offset_reset="earliest",
            fetch_max_wait_ms=READ_TO_END_WAIT_MS)
        self._acked: dict[int, int] = {}  # partition -> next offset after the last acknowledged
        self._committing = asyncio.Lock()  # one assignment at a time

    async def start(self) -> None:
        await self._consumer.start()

    async def stop(self) -> None:
        await self._consumer.stop()

    async def last_keys(self, partitions: set[int]) -> dict[int, OutcomeKey]:
        """The greatest outcome key in each outcomes partition, read from its checkpoint."""
        async with self._committing:
            return await self._last_keys(partitions)

    async def _last_keys(self, partitions: set[int]) -> dict[int, OutcomeKey]:
        tps = [TopicPartition(self._topic, p) for p in sorted(partitions)]
        self._consumer.assign(tps)
        for tp in tps:
            committed = await self._consumer.committed(tp)
            if committed:
                self._consumer.seek(tp, committed - 1)  # the last record known then
            else:
                await self._consumer.seek_to_beginning(tp)
        last: dict[int, OutcomeKey] = {}
        read = 0
        async for tp, record in read_to_end(self._consumer):
            read += 1
            try:
                key = outcome_key(decode(record.value or b"", Outcome))
            except Rejection:
                continue  # not ours to judge; the topic's consumers dead-letter it
            if tp.partition not in last or key > last[tp.partition]:
                last[tp.partition] = key
        self._consumer.pause(*tps)  # this consumer only reads at assignment
        log.info("outcomes: read back %d emitted outcome(s) of %d partition(s)", read, len(tps))
        return last

    def acknowledged(self, partition: int, offset: int) -> None:
        self._acked[partition] = max(self._acked.get(partition, 0), offset + 1)

    async def checkpoint(self) -> None:
        """Commit how far each partition's outcomes are known to reach."""
        async with self._committing:
            if not self._acked:
                return
            acked, self._acked = self._acked, {}
            tps = [TopicPartition(self._topic, p) for p in acked]
            self._consumer.assign(tps)  # a commit names assigned partitions only
            self._consumer.pause(*tps)
            await self._consumer.commit({TopicPartition(self._topic, p): offset
                                         for p, offset in acked.items()})
