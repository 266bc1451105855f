"""A batch-consuming service of the Faust app: one aiokafka consumer, a producer, commits.

DESIGN.md measured Faust's per-event stream machinery at ~10k events/s on this broker, against
~300k/s for aiokafka ``getmany()``. So the high-volume paths (features, scoring) subclass this
and handle whole batches; Faust still hosts them for lifecycle and web views.
"""

from __future__ import annotations

import asyncio
import logging
from abc import abstractmethod

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.errors import CommitFailedError, KafkaError
from aiokafka.structs import ConsumerRecord
from mode import Service

from schemas import Rejection
from stream.runtime.dlq import dead_letter
from stream.runtime.metrics import WorkerMetrics
from stream.settings import Settings

log = logging.getLogger(__name__)

Batch = dict[TopicPartition, list[ConsumerRecord[bytes, bytes]]]
PRODUCER_BATCH_BYTES = 256 * 1024


def next_offsets(batch: Batch) -> dict[TopicPartition, int]:
    return {tp: records[-1].offset + 1 for tp, records in batch.items()}


class BatchConsumer(Service):
    """Subclasses say what to consume and implement :meth:`handle` for one batch.

    ``assign_all=True`` takes every partition by manual assignment instead of joining the
    group: offsets still commit to ``group_id`` when there is one, and with ``group_id=None``
    nothing is committed and every worker reads every message from the start (a broadcast,
    for model updates).
    """

    def __init__(self, settings: Settings, bootstrap: str, metrics: WorkerMetrics, *,
                 topics: tuple[str, ...], group_id: str | None, fetch_wait_ms: int,
                 max_records: int, assign_all: bool = False, **kwargs: object) -> None:
        super().__init__(**kwargs)  # type: ignore[arg-type]
        self.settings = settings
        self.bootstrap = bootstrap
        self.metrics = metrics
        self._topics = topics
        self._group_id = group_id
        self._assign_all = assign_all or group_id is None
        self._fetch_wait_ms = fetch_wait_ms
        self._max_records = max_records
        self._dlq_topic = settings.topic("dlq")
        self._consumer: AIOKafkaConsumer | None = None
        self._producer: AIOKafkaProducer | None = None
        self._loop_task: asyncio.Task[None] | None = None
        self._stopping = False
        self._commit_interval_s = settings.commit_interval_ms / 1000
        self._to_commit: dict[TopicPartition, int] = {}
        self._committer: asyncio.Task[None] | None = None

    @property
    def producer(self) -> AIOKafkaProducer:
        assert self._producer is not None, "service not started"
        return self._producer

    async def on_start(self) -> None:
        s = self.settings
        self._consumer = AIOKafkaConsumer(
            *(() if self._assign_all else self._topics),
            bootstrap_servers=self.bootstrap,
            group_id=self._group_id,
            enable_auto_commit=False,
            auto_offset_reset="earliest",
            fetch_max_wait_ms=self._fetch_wait_ms,
            max_partition_fetch_bytes=8 * 1024 * 1024,
            session_timeout_ms=s.consumer_session_timeout_ms,
            rebalance_timeout_ms=s.consumer_rebalance_timeout_ms,
            heartbeat_interval_ms=max(s.consumer_session_timeout_ms // 10, 100),
        )
        # A full batch waits for the previous produce request to its broker to be answered;
        # aiokafka's 16 KB default filled several times per scoring micro-batch (64 results of
        # ~2.2 KB). 256 KB holds a whole micro-batch even on one partition, and stays under
        # Kafka's default 1 MB message.max.bytes.
        self._producer = AIOKafkaProducer(bootstrap_servers=self.bootstrap, linger_ms=1,
                                          max_batch_size=PRODUCER_BATCH_BYTES)
        await self._producer.start()
        await self._consumer.start()
        if self._assign_all:
            await self._consumer.topics()  # loads metadata, so the partitions are known
            self._consumer.assign([
                TopicPartition(topic, partition) for topic in self._topics
                for partition in sorted(self._consumer.partitions_for_topic(topic) or {0})])
        self._loop_task = asyncio.ensure_future(self._consume())

    async def on_stop(self) -> None:
        # Let the loop finish its batch (and commit) before the clients it uses go away.
        self._stopping = True
        if self._loop_task is not None:
            await self._loop_task
        if self._committer is not None:
            await self._committer
        if self._consumer is not None:
            await self._consumer.stop()
        if self._producer is not None:
            await self._producer.stop()

    async def _consume(self) -> None:
        assert self._consumer is not None
        try:
            while not self._stopping:
                batch: Batch = await self._consumer.getmany(
                    timeout_ms=200, max_records=self._max_records)
                if batch:
                    await self.handle(batch)
        finally:
            await self.drain()

    @abstractmethod
    async def handle(self, batch: Batch) -> None:
        """Process one batch; :meth:`commit` its offsets once its effects are durable."""

    async def drain(self) -> None:
        """Finish work still in flight when the service stops."""

    async def dead_letter(self, record: ConsumerRecord[bytes, bytes],
                          rejection: Rejection) -> asyncio.Future[object]:
        """Send ``record`` to the DLQ; await the returned future before committing past it."""
        self.metrics.rejected.labels(record.topic, rejection.reason).inc()
        log.debug("rejected %s@%s/%s: %s", record.topic, record.partition, record.offset,
                  rejection)
        return await self.producer.send(
            self._dlq_topic, dead_letter(record, rejection), key=record.key)

    async def commit(self, offsets: dict[TopicPartition, int]) -> None:
        """Commit ``offsets``, whose effects are durable, within ``commit_interval_ms``.

        Offsets that arrive while a commit is in flight or resting are merged into the next
        one, so a busy service sends one commit request per interval instead of one per batch:
        on Kafka each commit is a replicated write to ``__consumer_offsets``. In a bare
        consumer on the embedded broker at 300 single-record batches/s, committing every batch
        cost ~6% of a core in the client and ~5% in the broker. Stopping commits what is left
        before the consumer closes.
        """
        if self._group_id is None:
            return
        self._to_commit.update(offsets)
        if self._committer is None or self._committer.done():
            self._committer = asyncio.ensure_future(self._commit_pending())

    async def _commit_pending(self) -> None:
        assert self._consumer is not None
        while self._to_commit:
            offsets, self._to_commit = self._to_commit, {}
            # Partitions given away since: their new owner commits them.
            owned = self._consumer.assignment()
            offsets = {tp: offset for tp, offset in offsets.items() if tp in owned}
            try:
                if offsets:
                    await self._consumer.commit(offsets)
            except (CommitFailedError, KafkaError) as exc:
                # Partitions moved meanwhile: the new owner replays from its last commit. Every
                # handler is idempotent under replay (dedup for features, same request id for
                # scoring).
                log.warning("offset commit failed after a rebalance: %s", exc)
            if not self._stopping:
                await asyncio.sleep(self._commit_interval_s)
