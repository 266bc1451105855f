"""The supervised consumer: one mechanism that every role's consume loop runs on.

A role declares the topics it reads (with the record each carries) and a handler for one
decoded batch. The runtime does the rest, the same way for every role:

- it decodes every record once; a record that fails to decode (or the role's ``check``) goes
  to the DLQ with its reason;
- it runs the handler under the rules of :mod:`stream.runtime.failures`: transient failures
  retry with backoff (``/health`` says why), a batch that fails otherwise is retried record by
  record, and a record that keeps failing goes to the DLQ as ``handler_error``; a fatal failure
  stops the loop and calls ``on_fatal``;
- it commits a batch's offsets only once its effects (state, results, dead letters) are
  durable. When a produce fails, it seeks every partition back to its last durable offset and
  reads again, so no later commit skips past the lost sends.

The loop is a pipeline: batch k+1 is fetched and decoded while batch k is handled, and handled
while batch k's effects become durable; acknowledgements and commits stay in batch order. An
effect that must also *start* in order, after the previous batch's (a store write whose offset
marks must only rise), is passed to :meth:`SupervisedConsumer.in_order`.

DESIGN.md measured Faust's per-event stream machinery at ~10k events/s on this broker, against
~300k/s for aiokafka ``getmany()``, so the loop consumes whole batches with aiokafka; Faust
hosts the services for lifecycle and web views.
"""

from __future__ import annotations

import asyncio
import logging
from abc import abstractmethod
from collections import deque
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Generic, Literal, NamedTuple, TypeAlias, TypeVar

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, ConsumerRebalanceListener
from aiokafka.errors import CommitFailedError, KafkaError
from aiokafka.structs import ConsumerRecord, TopicPartition
from mode import Service
from tenacity import AsyncRetrying, RetryCallState, retry_if_exception, wait_exponential_jitter

from schemas import Record, Rejection, decode
from stream.runtime.clients import kafka_consumer, started_producer
from stream.runtime.dlq import encoded_dead_letter
from stream.runtime.failures import Failure, LoopFailed, classify
from stream.runtime.health import ConsumerHealth
from stream.runtime.metrics import WorkerMetrics
from stream.settings import Settings

log = logging.getLogger(__name__)

R = TypeVar("R", bound=Record)
T = TypeVar("T")
RawRecord: TypeAlias = "ConsumerRecord[bytes, bytes]"
Sends = list[asyncio.Future[Any]]
MAX_FETCH_WAIT_MS = 500  # see SupervisedConsumer._adapt_fetch_wait
# Batches whose effects may still be in flight while the next one is handled: enough to ride
# out a slow fetch or store call without stalling the other side (a bound, so memory is too).
PIPELINE_DEPTH = 4
READY_POLL_S = 0.05  # how often a loop not yet ready_to_read asks again


class Decoded(NamedTuple, Generic[R]):  # a tuple: one per record, 20k to a batch
    record: RawRecord
    value: R


@dataclass
class _Batch:
    decoded: list[Decoded[Any]] = field(default_factory=list)
    rejected: list[tuple[RawRecord, Rejection]] = field(default_factory=list)
    offsets: dict[TopicPartition, int] = field(default_factory=dict)
    unread: dict[TopicPartition, int] = field(default_factory=dict)  # after this batch


def _on_retry(health: ConsumerHealth, what: str) -> Callable[[RetryCallState], None]:
    def note(state: RetryCallState) -> None:
        error = state.outcome.exception() if state.outcome else None
        health.retrying(f"{what}: {type(error).__name__}: {error}")
        log.warning("%s: %s failed (attempt %d), retrying: %s", health.name, what,
                    state.attempt_number, error)
    return note


class SupervisedConsumer(Service):
    """Subclasses declare ``topics`` and implement :meth:`handle` for one decoded batch.

    ``group_id=None`` makes a broadcast reader: it takes every partition by manual assignment,
    reads from the start and commits nothing, so every worker sees every message (versioned
    state). ``replay_from_start`` makes a group member read its partitions from the earliest
    retained offset whatever it committed, which is how state kept in process is rebuilt.
    ``dead_letters=False`` counts and logs rejections without sending them: for a broadcast
    reader, which every worker runs from the start at every start, one service of its own
    sends each verdict once instead. ``fetch_wait_ms`` and the producer's ``linger_ms`` trade
    latency for fewer, larger requests to the broker: the latency path sets both low.

    ``tombstones = True`` (a class attribute) is for readers of a compacted topic, where a
    record with a null value deletes its key: such a record reaches :meth:`handle` in its
    place in the batch as ``Decoded(record, None)``, instead of being refused as ``not_json``
    like any other null value.
    """

    tombstones = False

    def __init__(self, settings: Settings, bootstrap: str, metrics: WorkerMetrics, *,
                 name: str, topics: Mapping[str, type[Record]], group_id: str | None,
                 fetch_wait_ms: int, max_records: int, linger_ms: int = 1,
                 offset_reset: Literal["earliest", "latest"] = "earliest",
                 replay_from_start: bool = False,
                 dead_letters: bool = True,
                 on_fatal: Callable[[LoopFailed], None] | None = None,
                 **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.settings = settings
        self.bootstrap = bootstrap
        self.metrics = metrics
        self.health = ConsumerHealth(name)
        self._topics = dict(topics)
        self._group_id = group_id
        self._fetch_wait_ms = fetch_wait_ms
        self._linger_ms = linger_ms
        self._max_records = max_records
        self._offset_reset = offset_reset
        self._replay_from_start = replay_from_start
        self._dead_letters = dead_letters
        self._on_fatal = on_fatal
        self._dlq_topic = settings.topic("dlq")
        self._consumer: AIOKafkaConsumer | None = None
        self._producer: AIOKafkaProducer | None = None
        self._loop_task: asyncio.Task[None] | None = None
        self._in_flight: asyncio.Task[None] | None = None  # the newest batch's handler
        # Batches handled whose effects are not yet acknowledged, oldest first; at most
        # PIPELINE_DEPTH while the next batch is handled.
        self._acks: deque[asyncio.Task[None]] = deque()
        self._last_effect: asyncio.Future[Any] | None = None  # see in_order
        self._careful = False  # see _settle
        # Records left unread in each partition after the batch being handled: a handler
        # reads it before its first await.
        self.unread: dict[TopicPartition, int] = {}
        self._stopping = False
        self._durable: dict[TopicPartition, int] = {}  # next offset after durable effects
        # Next offset after acknowledged batches, before holds(): what release() may commit.
        self._read: dict[TopicPartition, int] = {}
        self._rewinds = 0  # consecutive rewinds, for their backoff
        self._commit_interval_s = settings.commit_interval_ms / 1000
        self._to_commit: dict[TopicPartition, int] = {}
        self._committer: asyncio.Task[None] | None = None
        self._commit_lock = asyncio.Lock()

    @property
    def producer(self) -> AIOKafkaProducer:
        assert self._producer is not None, "service not started"
        return self._producer

    # -- what a role provides ----------------------------------------------------------------

    def check(self, decoded: Decoded[Any]) -> None:
        """Refuse a well-formed record the role cannot use (raise :class:`Rejection`)."""

    @abstractmethod
    async def handle(self, batch: Sequence[Decoded[Any]]) -> Sends:
        """Apply one batch's effects; return the sends that must be acknowledged before its
        offsets commit. Must be idempotent: after a failure the same records come again."""

    def ready_to_read(self) -> bool:
        """False while the role cannot yet judge records (its own state still loading): the
        loop polls this before it reads anything."""
        return True

    def already_applied(self, record: RawRecord) -> bool:
        """A record whose effects the role's own durable state already holds (read again after
        a crash, before its offset committed): skipped undecoded, so nothing about it, not
        even a dead letter, happens twice."""
        return False

    def holds(self) -> Mapping[TopicPartition, int]:
        """The earliest offset of each partition whose record the role still keeps in memory
        only (a join waiting for its window): commits stop there, so a restart reads it
        again and rebuilds that state."""
        return {}

    def release(self) -> None:
        """Commit what :meth:`holds` no longer keeps. A role whose held records are done with
        between batches (an alert delivered minutes after it was read) calls this, so their
        offsets commit without waiting for the next record to arrive."""
        held = self.holds()
        offsets = {tp: min(read, held.get(tp, read)) for tp, read in self._read.items()}
        offsets = {tp: offset for tp, offset in offsets.items()
                   if offset > self._durable.get(tp, -1)}
        if offsets:
            self._durable.update(offsets)
            self._commit(offsets)

    def forget(self) -> None:
        """Drop state kept in memory past the last durable offsets: after a rewind or when
        partitions are taken away, those records come again (here or elsewhere)."""

    async def assigned(self, partitions: set[TopicPartition]) -> None:
        """Called when partitions are assigned. aiokafka may fetch them, and the loop handle
        what it fetched, before this returns: whatever a handler needs first, it awaits.
        A broadcast reader's is called once, with every partition, before its loop starts:
        where it seeks is where it reads from (a state snapshot's offsets)."""

    def in_order(self, effect: Callable[[], Awaitable[T]]) -> asyncio.Future[T]:
        """Start ``effect`` once the effect passed here before it has succeeded; return it
        among the handler's sends. So the handler of batch k+1 runs while batch k's effect is
        in flight, yet the effects land in batch order. Transient failures are retried; when
        an earlier effect failed, this one fails without running, and the loop reads both
        batches again."""
        effect_future = asyncio.ensure_future(self._after(self._last_effect, effect))
        self._last_effect = effect_future
        return effect_future

    async def _after(self, previous: asyncio.Future[Any] | None,
                     effect: Callable[[], Awaitable[T]]) -> T:
        if previous is not None:
            await previous
        result: T = await self._retrying(effect, "ordered effect")
        return result

    # -- lifecycle -----------------------------------------------------------------------------

    async def on_start(self) -> None:
        s = self.settings
        broadcast = self._group_id is None
        self._consumer = kafka_consumer(
            s, self.bootstrap,
            group_id=self._group_id,
            auto_offset_reset="earliest" if broadcast else self._offset_reset,
            fetch_max_wait_ms=self._fetch_wait_ms,
            max_partition_fetch_bytes=8 * 1024 * 1024,
            session_timeout_ms=s.consumer_session_timeout_ms,
            rebalance_timeout_ms=s.consumer_rebalance_timeout_ms,
            heartbeat_interval_ms=max(s.consumer_session_timeout_ms // 10, 100),
        )
        self._producer = await started_producer(s, self.bootstrap, linger_ms=self._linger_ms)
        if not broadcast:  # before start(), which then joins the group before it returns
            self._consumer.subscribe(list(self._topics), listener=_Rebalance(self))
        await self._consumer.start()
        if broadcast:
            await self._consumer.topics()  # loads metadata, so the partitions are known
            partitions = [
                TopicPartition(topic, partition) for topic in self._topics
                for partition in sorted(self._consumer.partitions_for_topic(topic) or {0})]
            self._consumer.assign(partitions)
            await self.assigned(set(partitions))
        self._loop_task = asyncio.ensure_future(self._supervise())

    async def on_stop(self) -> None:
        # Let the loop finish its batch (and commit) before the clients it uses go away.
        self._stopping = True
        if self._loop_task is not None:
            await self._loop_task
        await self._flush_commits()
        if self._committer is not None:
            await self._committer
        if self._consumer is not None:
            await self._consumer.stop()
        if self._producer is not None:
            await self._producer.stop()
        self.health.stopped()

    async def _supervise(self) -> None:
        """The loop never ends quietly: a failure it cannot survive is reported, loudly."""
        try:
            await self._consume()
        except Exception as exc:  # everything not retried or dead-lettered ends up here
            failure = exc if isinstance(exc, LoopFailed) else LoopFailed(
                f"{self.health.name} consumer failed: {type(exc).__name__}: {exc}")
            self.health.failed(str(failure))
            log.critical("%s", failure)
            if self._on_fatal is not None:
                self._on_fatal(failure)

    async def _consume(self) -> None:
        while not (self._stopping or self.ready_to_read()):
            await asyncio.sleep(READY_POLL_S)
        while not self._stopping:
            batch = await self._poll()
            if not await self._settle():
                continue  # rewound: what was just fetched is read again
            if batch.offsets:
                self._in_flight = asyncio.ensure_future(self._process(batch))
        await self._settle(drain=True)

    async def _poll(self) -> _Batch:
        assert self._consumer is not None
        records: dict[TopicPartition, list[RawRecord]] = await self._retrying(
            lambda: self._consumer.getmany(  # type: ignore[union-attr]
                timeout_ms=200, max_records=self._max_records), "poll")
        lag = await self._lag()
        self.health.polled({f"{tp.topic}/{tp.partition}": n for tp, n in lag.items()},
                           got_records=bool(records))
        if self._fetch_wait_ms < MAX_FETCH_WAIT_MS:
            self._adapt_fetch_wait(bool(records), behind=any(lag.values()))
        batch = _Batch(offsets={tp: rs[-1].offset + 1 for tp, rs in records.items() if rs},
                       unread=lag)
        limits, check, kept = self.settings.limits, self.check, batch.decoded  # per record:
        tombstones, already_applied = self.tombstones, self.already_applied
        for tp, partition_records in records.items():
            record_type = self._topics[tp.topic]
            for record in partition_records:
                if already_applied(record):
                    continue
                if tombstones and record.value is None:  # a deletion: see ``tombstones``
                    kept.append(Decoded(record, None))
                    continue
                try:
                    decoded = Decoded(record, decode(record.value or b"", record_type, limits))
                    check(decoded)
                    kept.append(decoded)
                except Rejection as rejection:
                    batch.rejected.append((record, rejection))
        return batch

    def _adapt_fetch_wait(self, got_records: bool, behind: bool) -> None:
        """While records wait unread, double the fetch wait after each empty poll, up to
        :data:`MAX_FETCH_WAIT_MS`, and keep it while they come; once nothing waits, go back to
        the configured wait (so an idle consumer's latency is untouched).

        The embedded tansu scans a partition's record batches on every fetch and answers empty
        when that takes longer than the wait: with the scoring path's 1 ms wait, a worker
        restarted behind a few thousand single-record batches read nothing, for good (the
        faults bench; 0 of 8,000 in 20 s here). On Kafka, which answers as soon as data is
        there, a longer wait costs nothing. aiokafka has no public setter; its fetcher reads
        this attribute for every request."""
        assert self._consumer is not None
        fetcher = self._consumer._fetcher
        if not behind:
            fetcher._fetch_max_wait_ms = self._fetch_wait_ms
        elif not got_records:
            fetcher._fetch_max_wait_ms = min(2 * fetcher._fetch_max_wait_ms + 1,
                                             MAX_FETCH_WAIT_MS)

    async def _settle(self, *, drain: bool = False) -> bool:
        """Wait for the handler in flight, and for acknowledgements until no more than
        :data:`PIPELINE_DEPTH` are pending (none when ``drain``). False when a send failed and
        the loop rewound."""
        if self._in_flight is not None:
            in_flight, self._in_flight = self._in_flight, None
            await in_flight
        keep = 0 if drain else PIPELINE_DEPTH
        try:
            while len(self._acks) > keep or (self._acks and self._acks[0].done()):
                await self._acks[0]
                self._acks.popleft()
        except Exception as exc:
            # The later batches fail too (their acknowledgements wait for this one's), or
            # finish; either way they are read again.
            await asyncio.gather(*self._acks, return_exceptions=True)
            self._acks.clear()
            self._last_effect = None
            failure = classify(exc)
            if failure is Failure.FATAL:
                raise _store_refused(self.health.name, exc) from exc
            if failure is Failure.POISON:
                # An ordered effect failed on something in its batch. Which record is at
                # fault shows once the batch is handled again with each record's effects
                # awaited (and the culprit dead-lettered), so the next batch is.
                self._careful = True
                log.warning("%s: an effect failed (%s: %s); handling the batch again record "
                            "by record", self.health.name, type(exc).__name__, exc)
            else:
                self.health.retrying(f"send failed: {type(exc).__name__}: {exc}")
                log.warning("%s: a send failed, reading again from the last durable offsets: "
                            "%s", self.health.name, exc)
            await self._rewind()
            return False
        return True

    async def _rewind(self) -> None:
        assert self._consumer is not None
        self.forget()
        self._read.clear()
        for tp in self._consumer.assignment():
            offset = self._durable.get(tp)
            if offset is None and self._group_id is not None:
                offset = await self._consumer.committed(tp)
            if offset is not None:
                self._consumer.seek(tp, offset)
            elif self._offset_reset == "latest" and self._group_id is not None:
                await self._consumer.seek_to_end(tp)
            else:
                await self._consumer.seek_to_beginning(tp)
        await asyncio.sleep(self._backoff_s())

    def _backoff_s(self) -> float:
        self._rewinds += 1
        return float(min(0.05 * 2 ** min(self._rewinds, 7), 5.0))

    async def _process(self, batch: _Batch) -> None:
        self.unread = batch.unread
        sends: Sends = [self.dead_letter(record, rejection)
                        for record, rejection in batch.rejected]
        if batch.decoded:
            careful, self._careful = self._careful, False
            sends += await self._handle_batch(batch.decoded, careful)
        held = self.holds()
        offsets = {tp: min(offset, held.get(tp, offset)) for tp, offset in batch.offsets.items()}
        previous = self._acks[-1] if self._acks else None
        self._acks.append(asyncio.ensure_future(
            self._acknowledge(previous, sends, offsets, batch.offsets)))

    async def _acknowledge(self, previous: asyncio.Task[None] | None, sends: Sends,
                           offsets: dict[TopicPartition, int],
                           read: dict[TopicPartition, int]) -> None:
        """Commit ``offsets`` (``read``, less what is held) once the batch's sends and every
        earlier batch's are through."""
        earlier = [previous] if previous is not None else []
        for outcome in await asyncio.gather(*earlier, *sends, return_exceptions=True):
            if isinstance(outcome, BaseException):
                raise outcome
        if self._rewinds:  # the sends went through again after a rewind
            self._rewinds = 0
            self.health.recovered()
        # Never back: release() may have committed past what this batch held when handled.
        offsets = {tp: max(offset, self._durable.get(tp, offset))
                   for tp, offset in offsets.items()}
        self._durable.update(offsets)
        self._read.update(read)
        self._commit(offsets)

    async def _handle_batch(self, decoded: list[Decoded[Any]], careful: bool) -> Sends:
        if len(decoded) == 1:
            return await self._handle_one(decoded[0], careful)
        try:
            return await self._attempt(decoded, careful)
        except LoopFailed:
            raise
        except Exception as exc:
            log.warning("%s: a batch of %d failed (%s: %s); handling its records one by one",
                        self.health.name, len(decoded), type(exc).__name__, exc)
        sends: Sends = []
        for one in decoded:
            sends += await self._handle_one(one, careful)
        return sends

    async def _handle_one(self, decoded: Decoded[Any], careful: bool) -> Sends:
        attempts = self.settings.handler_attempts
        for attempt in range(1, attempts + 1):
            try:
                return await self._attempt([decoded], careful)
            except LoopFailed:
                raise
            except Exception as exc:
                if attempt == attempts:
                    detail = f"failed {attempts} times: {type(exc).__name__}: {exc}"
                    record = decoded.record
                    log.error("%s: %s@%d/%d to the DLQ: %s", self.health.name, record.topic,
                              record.partition, record.offset, detail)
                    return [self.dead_letter(record, Rejection("handler_error", detail[:2000]))]
        raise AssertionError("handler_attempts is at least 1")

    async def _attempt(self, decoded: list[Decoded[Any]], careful: bool) -> Sends:
        """:meth:`handle` with transient failures retried; a fatal one ends the loop.
        ``careful`` also awaits the sends, so that a failed effect counts against these
        records."""
        try:
            sends: Sends = await self._retrying(
                lambda: self._handle_awaited(decoded) if careful else self.handle(decoded),
                "handler")
        except Exception as exc:
            if classify(exc) is Failure.FATAL:
                raise _store_refused(self.health.name, exc) from exc
            raise
        return sends

    async def _handle_awaited(self, decoded: list[Decoded[Any]]) -> Sends:
        outcomes = await asyncio.gather(*await self.handle(decoded), return_exceptions=True)
        for outcome in outcomes:
            if isinstance(outcome, BaseException):
                self._last_effect = None  # nothing else is in flight: the next may start
                raise outcome
        return []

    async def _retrying(self, call: Callable[[], Any], what: str) -> Any:
        """``call()`` until it succeeds or fails with something not transient. The first try
        runs bare: this wraps every poll, and a retry policy object per poll costs CPU."""
        try:
            return await call()
        except Exception as exc:
            if classify(exc) is not Failure.TRANSIENT:
                raise
            self.health.retrying(f"{what}: {type(exc).__name__}: {exc}")
            log.warning("%s: %s failed, retrying: %s", self.health.name, what, exc)
        retrying = AsyncRetrying(
            retry=retry_if_exception(lambda e: classify(e) is Failure.TRANSIENT),
            wait=wait_exponential_jitter(initial=0.05, max=5.0),
            before_sleep=_on_retry(self.health, what), reraise=True)
        async for attempt in retrying:
            with attempt:
                result = await call()
        self.health.recovered()
        return result

    def dead_letter(self, record: RawRecord, rejection: Rejection) -> asyncio.Future[Any]:
        """Send ``record`` to the DLQ; the runtime commits past it once this is acknowledged."""
        self.metrics.rejected.labels(record.topic, rejection.reason).inc()
        log.debug("rejected %s@%s/%s: %s", record.topic, record.partition, record.offset,
                  rejection)
        if not self._dead_letters:
            sent: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
            sent.set_result(None)
            return sent
        return asyncio.ensure_future(self.producer.send_and_wait(
            self._dlq_topic, encoded_dead_letter(record, rejection), key=record.key))

    async def _lag(self) -> dict[TopicPartition, int]:
        """Records in each partition not yet read: its high watermark (as of the last fetch)
        minus the consumer's position (no round trip while the position is known)."""
        assert self._consumer is not None
        lag = {}
        for tp in self._consumer.assignment():
            end = self._consumer.highwater(tp)
            if end is not None:
                lag[tp] = max(end - await self._consumer.position(tp), 0)
        return lag

    # -- commits ---------------------------------------------------------------------------

    def _commit(self, offsets: dict[TopicPartition, int]) -> None:
        """Commit ``offsets``, whose effects are durable, within ``commit_interval_ms``.

        Offsets that arrive while a commit is in flight or resting are merged into the next
        one, so a busy service sends one commit request per interval instead of one per batch:
        on Kafka each commit is a replicated write to ``__consumer_offsets``. In a bare
        consumer on the embedded broker at 300 single-record batches/s, committing every batch
        cost ~6% of a core in the client and ~5% in the broker.
        """
        if self._group_id is None:
            return
        self._to_commit.update(offsets)
        if self._committer is None or self._committer.done():
            self._committer = asyncio.ensure_future(self._commit_pending())

    async def _commit_pending(self) -> None:
        while self._to_commit:
            await self._commit_now()
            if not self._stopping:
                await asyncio.sleep(self._commit_interval_s)

    async def _commit_now(self) -> None:
        assert self._consumer is not None
        async with self._commit_lock:  # one at a time, so a late older commit never wins
            offsets, self._to_commit = self._to_commit, {}
            # Partitions given away since: their new owner commits them.
            owned = self._consumer.assignment()
            offsets = {tp: offset for tp, offset in offsets.items() if tp in owned}
            try:
                if offsets:
                    await self._consumer.commit(offsets)
            except (CommitFailedError, KafkaError) as exc:
                # Partitions moved meanwhile: the new owner replays from its last commit, and
                # every handler is idempotent under replay.
                log.warning("%s: offset commit failed: %s", self.health.name, exc)

    async def _flush_commits(self) -> None:
        if self._to_commit:
            await self._commit_now()

    async def _partitions_revoked(self) -> None:
        """Finish and commit what is in flight before the partitions change hands."""
        try:
            await self._settle(drain=True)
        except Exception as exc:  # the loop sees it again on its next settle or poll
            log.warning("%s: batch in flight failed during a rebalance: %s", self.health.name,
                        exc)
        await self._flush_commits()
        self._durable.clear()
        self._read.clear()
        self.forget()

    async def _partitions_assigned(self, assigned: set[TopicPartition]) -> None:
        assert self._consumer is not None
        if self._offset_reset == "latest":
            await self._pin_start(assigned)
        if self._replay_from_start and assigned:
            await self._consumer.seek_to_beginning(*assigned)
            log.info("%s: state is kept in memory, so it is rebuilt by replaying %d "
                     "partition(s) from the earliest retained offset", self.health.name,
                     len(assigned))
        await self.assigned(assigned)


    async def _pin_start(self, assigned: set[TopicPartition]) -> None:
        """Commit where a group that starts at the latest offset starts, before it reads:
        otherwise a crash before its first commit would restart at a later "latest" and
        skip what arrived in between."""
        assert self._consumer is not None
        start = {}
        for tp in assigned:
            if await self._consumer.committed(tp) is None:
                start[tp] = await self._consumer.position(tp)
        if start:
            await self._consumer.commit(start)


def _store_refused(name: str, exc: Exception) -> LoopFailed:
    return LoopFailed(f"{name} consumer stopped: the store refused a command "
                      f"({type(exc).__name__}: {exc})")


class _Rebalance(ConsumerRebalanceListener):
    def __init__(self, consumer: SupervisedConsumer) -> None:
        self._consumer = consumer

    async def on_partitions_revoked(self, revoked: set[TopicPartition]) -> None:
        await self._consumer._partitions_revoked()

    async def on_partitions_assigned(self, assigned: set[TopicPartition]) -> None:
        await self._consumer._partitions_assigned(assigned)
