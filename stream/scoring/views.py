"""``POST /rank``: the requests topic's scoring path, answered synchronously over HTTP.

Refusals come as ``{"error": reason, "detail": ...}``: the DLQ's reasons for a bad body (400),
and these, which only HTTP has: ``unauthorized`` (401),
``overloaded`` (429, with ``Retry-After``), ``starting`` and ``unavailable`` (503).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Mapping

import faust
from aiokafka.errors import KafkaError
from faust.web import Request, Response, View
from redis.exceptions import RedisError

from schemas import RankingRequest, Rejection, decode
from stream.runtime.access import authorized
from stream.runtime.metrics import WorkerMetrics
from stream.scoring.ranker import MicroBatcher, Overloaded, Ranked, Received
from stream.scoring.role import ScoringService
from stream.settings import Settings

# A micro-batch takes milliseconds; a second is the smallest wait ``Retry-After`` can say.
RETRY_AFTER_S = 1


def add_rank_view(app: faust.App, settings: Settings, metrics: WorkerMetrics,
                  batcher: Callable[[], MicroBatcher | None],
                  scoring: Callable[[], ScoringService | None]) -> None:
    """Register ``POST /rank``; ``batcher`` gives the worker's micro-batcher once it started,
    and ``scoring`` the role that logs a ranking with ad decisions on the rankings topic."""

    @app.page("/rank")
    class Rank(View):
        async def post(self, request: Request) -> Response:
            if not authorized(request.headers.get("Authorization"), settings.api_token):
                return self._refuse(401, "unauthorized", "POST /rank needs the header "
                                    "'Authorization: Bearer <STREAMRANK_API_TOKEN>'",
                                    {"WWW-Authenticate": 'Bearer realm="streamrank"'})
            ranker = batcher()
            if ranker is None:
                return self._refuse(503, "starting", "worker not ready")
            if ranker.full:  # shed before reading and validating the body
                return self._overloaded(ranker)
            try:
                ranking_request = decode(await request.read(), RankingRequest,
                                         settings.limits)
            except Rejection as rejection:
                metrics.rejected.labels("http", rejection.reason).inc()
                return self.json({"error": rejection.reason, "detail": rejection.detail},
                                 status=400)
            received = Received(ranking_request, time.perf_counter())
            try:
                result = await ranker.rank_one(received)
            except Overloaded:
                return self._overloaded(ranker)
            except (RedisError, OSError) as exc:
                return self._refuse(503, "unavailable", f"feature store unavailable: {exc}")
            if result.ads is not None:
                # Ad decisions are answered only once logged: an unlogged decision is one
                # that neither the learner nor off-policy evaluation will ever see.
                try:  # its total latency is recorded when the broker acks the log
                    await self._log(result, received.at)
                except KafkaError as exc:
                    return self._refuse(503, "unavailable", f"cannot log the ad decisions: "
                                        f"{exc}")
            metrics.observe_ranking(result.model_version, result.latency_ms)
            answer = result.encode()
            if result.ads is None:
                metrics.scoring_latency.observe("total", time.perf_counter() - received.at)
            return self.bytes(answer, content_type="application/json")

        async def _log(self, result: Ranked, received_at: float) -> None:
            service = scoring()
            if service is None:
                raise KafkaError("the scoring role's producer has not started")
            await asyncio.gather(*await service.publish(result, received_at))

        def _overloaded(self, ranker: MicroBatcher) -> Response:
            return self._refuse(429, "overloaded", f"{ranker.queue_max} requests are already "
                                f"waiting to be ranked; retry in {RETRY_AFTER_S} s",
                                {"Retry-After": str(RETRY_AFTER_S)})

        def _refuse(self, status: int, reason: str, detail: str,
                    headers: Mapping[str, str] | None = None) -> Response:
            metrics.http_refused.labels(reason).inc()
            return self.json({"error": reason, "detail": detail}, status=status,
                             headers=dict(headers or {}))
