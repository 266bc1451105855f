"""The records a restarted drift role reads again to rebuild its monitors.

The monitors live in memory. A snapshot would need River's detectors pickled into a store, and
unpickling what a topic holds is code execution for whoever can write to it; the inputs are
retained anyway. So a drift role given partitions first reads up to ``records`` records of
each before its committed offset, with a consumer of its own, and feeds nothing newer until
then: the monitors see the values in the order they came.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Mapping

from aiokafka.structs import ConsumerRecord, TopicPartition

from stream.runtime.clients import READ_TO_END_WAIT_MS, kafka_consumer
from stream.settings import Settings


async def records_before(settings: Settings, bootstrap: str,
                         committed: Mapping[TopicPartition, int], records: int
                         ) -> AsyncIterator[ConsumerRecord[bytes, bytes]]:
    """Up to ``records`` records before each committed offset, per partition, oldest first
    within a partition; a partition whose earlier records are gone gives what is left."""
    todo = {tp: end for tp, end in committed.items() if end > 0 and records > 0}
    if not todo:
        return
    consumer = kafka_consumer(settings, bootstrap, group_id=None, enable_auto_commit=False,
                              auto_offset_reset="earliest",
                              fetch_max_wait_ms=READ_TO_END_WAIT_MS)
    await consumer.start()
    try:
        consumer.assign(list(todo))
        for tp, end in todo.items():
            # Below the log start, the fetch resets to the earliest retained offset. (The
            # embedded tansu answers ListOffsets wrongly, so seek_to_beginning is not asked.)
            consumer.seek(tp, max(end - records, 0))
        while todo and (batch := await consumer.getmany(timeout_ms=2 * READ_TO_END_WAIT_MS)):
            for tp, fetched in batch.items():
                stop = todo.get(tp)
                if stop is None:
                    continue
                for record in fetched:
                    if record.offset >= stop:
                        break
                    yield record
                if fetched[-1].offset >= stop - 1:
                    del todo[tp]
                    consumer.pause(tp)
    finally:
        await consumer.stop()
