"""The scoring role: ranking requests in, ranked results out, micro-batched under load.

Its group starts at the latest offset, and a request older than ``STREAMRANK_REQUEST_TTL_S``
goes to the DLQ as ``expired``: an answer nobody waits for any more is load, not service, and a
new scoring group must not re-score every request the topic retains.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence
from functools import partial
from typing import Any

from schemas import RankingRequest, Rejection
from stream.runtime.consumer import Decoded, Sends, SupervisedConsumer
from stream.runtime.metrics import WorkerMetrics
from stream.scoring.feature_log import feature_log
from stream.scoring.ranker import Ranked, Ranker, Received
from stream.settings import Settings


class ScoringService(SupervisedConsumer):
    """Whatever requests arrived since the last poll are scored together in one model run."""

    def __init__(self, settings: Settings, bootstrap: str, ranker: Ranker,
                 metrics: WorkerMetrics, **kwargs: Any) -> None:
        super().__init__(
            settings, bootstrap, metrics, name="scoring",
            topics={settings.topic("requests"): RankingRequest},
            group_id=settings.group("scoring"),
            fetch_wait_ms=settings.scoring_wait_ms,
            max_records=settings.scoring_batch_max_requests,
            # A ranking leaves when it is ready: at low load a linger is pure latency (1 ms
            # of it on every request), and under load the producer batches anyway while
            # the previous send is in flight.
            linger_ms=0,
            offset_reset="latest",
            **kwargs)
        self.ranker = ranker
        self._rankings_topic = settings.topic("rankings")
        self._feature_log_topic = settings.topic("feature-log")

    def check(self, decoded: Decoded[Any]) -> None:
        request: RankingRequest = decoded.value
        age = time.time() - request.ts
        if age > self.settings.request_ttl_s:
            raise Rejection("expired", f"the request waited {age:.1f} s, longer than "
                            f"STREAMRANK_REQUEST_TTL_S={self.settings.request_ttl_s:g}")

    async def handle(self, batch: Sequence[Decoded[Any]]) -> Sends:
        arrived = time.perf_counter()
        results = await self.ranker.rank([Received(d.value, arrived) for d in batch])
        sends: Sends = []
        for result in results:
            sends += await self.publish(result, arrived)
            self.metrics.observe_ranking(result.model_version, result.latency_ms)
        return sends

    async def publish(self, result: Ranked, received_at: float) -> Sends:
        """The ranking and its feature log, keyed by user; ``POST /rank`` logs its ad
        decisions through here too, so no decision goes unlogged. When the broker acks the
        ranking, its produce and total latencies (from ``received_at``, a perf_counter()) are
        recorded, off the loop's path: the runtime awaits the sends, not this."""
        key = result.user_id.encode()
        sends: Sends = []
        # The outcomes role joins a request's feature log before or after its ranking.
        logged = feature_log(result, self.settings.feature_log_rate)
        if logged is not None:
            sends.append(await self.producer.send(self._feature_log_topic, logged, key=key))
        sending = time.perf_counter()
        ranking = await self.producer.send(self._rankings_topic, result.encode(), key=key)
        ranking.add_done_callback(partial(self._acked, received_at, sending))
        sends.append(ranking)
        if result.ads is not None:
            self.metrics.ad_decisions.inc(len(result.ads.decisions))
        return sends

    def _acked(self, received_at: float, sending: float, ranking: asyncio.Future[Any]) -> None:
        if ranking.cancelled() or ranking.exception() is not None:
            return  # not delivered: the runtime reads the request again
        acked = time.perf_counter()
        latency = self.metrics.scoring_latency
        latency.observe("produce", acked - sending)
        latency.observe("total", acked - received_at)
