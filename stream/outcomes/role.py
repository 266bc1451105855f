"""The outcomes role: rankings, events and the feature log in, one outcome per shown item and
ad slot out.

All three inputs are keyed by user, so a user's ranking, its events and its feature rows sit
on the same partition number of each topic, and its outcomes go to that partition of the
outcomes topic.
Each partition has its own join (:mod:`stream.outcomes.join`), kept in memory and bounded by
the window. Its records are committed only once their ranking's outcomes are acknowledged
(:meth:`holds`), so a restart, kill -9 included, reads them again and rebuilds the join; and the
outcomes that went out before are read back first and never emitted twice
(:mod:`stream.outcomes.emitted`).
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping, Sequence
from typing import Any

from aiokafka.structs import RecordMetadata, TopicPartition

from schemas import Event, FeatureLog, Outcome, RankingResult, encode
from stream.outcomes.emitted import EmittedLog
from stream.outcomes.join import INPUTS, JoinCounts, OutcomeKey, PartitionJoin, outcome_key
from stream.runtime.consumer import Decoded, Sends, SupervisedConsumer
from stream.runtime.metrics import WorkerMetrics
from stream.settings import Settings


class OutcomesService(SupervisedConsumer):
    """Consumes ``rankings``, ``events`` and ``feature-log``; publishes ``outcomes``."""

    def __init__(self, settings: Settings, bootstrap: str, metrics: WorkerMetrics,
                 **kwargs: Any) -> None:
        self._inputs = {name: settings.topic(name) for name in INPUTS}
        super().__init__(
            settings, bootstrap, metrics, name="outcomes",
            topics={self._inputs["rankings"]: RankingResult, self._inputs["events"]: Event,
                    self._inputs["feature-log"]: FeatureLog},
            group_id=settings.group("outcomes"),
            fetch_wait_ms=settings.batch_wait_ms,
            max_records=settings.batch_max_records,
            **kwargs)
        self._outcomes = settings.topic("outcomes")
        self._joins: dict[int, PartitionJoin] = {}
        self._emitted_log = EmittedLog(settings, bootstrap)
        self._acked: dict[int, OutcomeKey] = {}  # per partition, see forget
        self._to_recover: set[int] = set()  # see assigned

    async def on_start(self) -> None:
        await self._emitted_log.start()
        await super().on_start()

    async def on_stop(self) -> None:
        await super().on_stop()
        await self._emitted_log.stop()

    async def assigned(self, partitions: set[TopicPartition]) -> None:
        # aiokafka may fetch, and the loop handle, before this callback returns: the next
        # handler reads the outcomes back before anything else (and retries it as it retries
        # itself). The read back ends at the first empty fetch, which holds only while this
        # worker emits nothing there.
        self._to_recover |= {tp.partition for tp in partitions}

    async def _recover(self) -> None:
        last = await self._emitted_log.last_keys(self._to_recover)
        for number in self._to_recover:
            self._join(number).suppress_through(last.get(number))
        self._to_recover = set()

    def forget(self) -> None:
        # The records come again; what went out meanwhile must not go out twice.
        self._joins = {}
        for number, key in self._acked.items():
            self._join(number).suppress_through(key)

    def holds(self) -> Mapping[TopicPartition, int]:
        return {TopicPartition(self._inputs[name], number): offset
                for number, join in self._joins.items()
                for name, offset in join.holds().items()}

    async def handle(self, batch: Sequence[Decoded[Any]]) -> Sends:
        unread = self.unread  # before the first await
        if self._to_recover:
            await self._recover()
        before = self._counts()
        touched: set[int] = set()
        for record, value in batch:
            join = self._join(record.partition)
            if isinstance(value, RankingResult):
                join.add_ranking(value, record.offset)
            elif isinstance(value, Event):
                join.add_event(value, record.offset)
            else:
                join.add_feature_log(value, record.offset)
            touched.add(record.partition)
        sends: Sends = []
        for number in sorted(touched):
            join = self._joins[number]
            # A partition not fetched yet (no high watermark, so no lag) may hold anything.
            caught_up = frozenset(
                name for name, topic in self._inputs.items()
                if unread.get(TopicPartition(topic, number)) == 0)
            for outcome in join.close(caught_up):
                sends.append(asyncio.ensure_future(self._emit(number, outcome)))
        self._count(before, self._counts())
        if sends:
            sends.append(asyncio.ensure_future(self._checkpoint(list(sends))))
        return sends

    async def _emit(self, number: int, outcome: Outcome) -> None:
        sent: RecordMetadata = await self.producer.send_and_wait(
            self._outcomes, encode(outcome), key=outcome.user_id.encode(), partition=number)
        key = outcome_key(outcome)
        if number not in self._acked or key > self._acked[number]:
            self._acked[number] = key
        self._emitted_log.acknowledged(number, sent.offset)
        self.metrics.outcomes.labels(outcome.kind).inc()

    async def _checkpoint(self, emitted: Sends) -> None:
        await asyncio.gather(*emitted)
        await self._emitted_log.checkpoint()

    def _count(self, before: JoinCounts, after: JoinCounts) -> None:
        # Nothing awaits between the two counts, so no forget() can reset them in between.
        self.metrics.outcomes_late.inc(after.late - before.late)
        self.metrics.outcomes_dropped.labels("unmatched_event").inc(
            after.unmatched - before.unmatched)
        self.metrics.outcomes_dropped.labels("late_ranking").inc(
            after.late_rankings - before.late_rankings)

    def _counts(self) -> JoinCounts:
        counts = [join.counts for join in self._joins.values()]
        return JoinCounts(sum(c.late for c in counts), sum(c.unmatched for c in counts),
                          sum(c.late_rankings for c in counts))

    def _join(self, number: int) -> PartitionJoin:
        join = self._joins.get(number)
        if join is None:
            join = self._joins[number] = PartitionJoin(self.settings.outcome_window_s)
        return join
