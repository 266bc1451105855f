"""The scoring agent: ranking requests in, ranked results out, micro-batched under load."""

from __future__ import annotations

import asyncio
import time
from typing import Any

from aiokafka import TopicPartition

from schemas import RankingRequest, Rejection, decode
from stream.features.store import through_outages
from stream.runtime.consumer import Batch, BatchConsumer, next_offsets
from stream.runtime.metrics import WorkerMetrics
from stream.scoring.ranker import Ranker, Received, check_rankable
from stream.settings import Settings


class ScoringService(BatchConsumer):
    """Whatever requests arrived since the last poll are scored together in one model run."""

    def __init__(self, settings: Settings, bootstrap: str, ranker: Ranker,
                 metrics: WorkerMetrics, **kwargs: Any) -> None:
        super().__init__(
            settings, bootstrap, metrics,
            topics=(settings.topic("requests"),),
            group_id=settings.scoring_group,
            fetch_wait_ms=settings.scoring_wait_ms,
            max_records=settings.scoring_batch_max_requests,
            **kwargs)
        self.ranker = ranker
        self._rankings_topic = settings.topic("rankings")
        self._acking: asyncio.Task[None] | None = None

    async def handle(self, batch: Batch) -> None:
        arrived = time.perf_counter()
        received: list[Received] = []
        pending: list[asyncio.Future[object]] = []
        for records in batch.values():
            for record in records:
                try:
                    request = decode(record.value or b"", RankingRequest, self.settings.limits)
                    check_rankable(request)
                    received.append(Received(request, arrived))
                except Rejection as rejection:
                    pending.append(await self.dead_letter(record, rejection))
        if received:
            results = await through_outages(lambda: self.ranker.rank(received),
                                            "feature fetch for scoring")
            for result in results:
                pending.append(await self.producer.send(
                    self._rankings_topic, result.encode(), key=result.user_id.encode()))
                self.metrics.observe_ranking(result.model_version, result.latency_ms)
        # Fetch the next batch while this one's sends are acknowledged; commits stay in order.
        self._acking = asyncio.ensure_future(
            self._ack_then_commit(self._acking, pending, next_offsets(batch)))

    async def _ack_then_commit(self, previous: asyncio.Task[None] | None,
                               pending: list[asyncio.Future[object]],
                               offsets: dict[TopicPartition, int]) -> None:
        await asyncio.gather(*pending)
        if previous is not None:
            await previous
        await self.commit(offsets)

    async def drain(self) -> None:
        if self._acking is not None:
            await self._acking
            self._acking = None
