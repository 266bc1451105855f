"""The Faust app that hosts a worker: lifecycle, services and web views."""

from __future__ import annotations

import asyncio
import gc
import logging
import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import faust
from faust.web import Request, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from threadpoolctl import threadpool_limits

from models.value import ValueModel
from stream.ads.learner import ADS_OUTCOMES, AdsLearnerService
from stream.ads.serving import AdPlacer, BanditSlot
from stream.bn.role import BN_RESULTS, BnService
from stream.drift.delivery import AlertDelivery
from stream.drift.role import DriftService
from stream.drift.subscriptions import SubscriptionRegistry
from stream.drift.views import add_subscription_views
from stream.features.reader import FeatureReader
from stream.features.role import FeatureService
from stream.features.store import FeatureStore
from stream.interests.catalogue import ItemCatalogue
from stream.interests.retrieval import Retriever
from stream.interests.role import InterestsService
from stream.outcomes.role import OutcomesService
from stream.runtime.clients import faust_credentials
from stream.runtime.consumer import SupervisedConsumer
from stream.runtime.environment import open_store
from stream.runtime.failures import LoopFailed
from stream.runtime.metrics import WorkerMetrics
from stream.runtime.state_audit import StateAuditService
from stream.runtime.versioned_state import SERVING_READER, VersionedStateService
from stream.runtime.web import WorkerApp
from stream.scoring.ranker import MicroBatcher, ModelSlot, Ranker
from stream.scoring.role import ScoringService
from stream.scoring.state_kinds import serving_kinds
from stream.scoring.views import add_rank_view
from stream.settings import Settings

log = logging.getLogger(__name__)


# A worker whose loop met a failure it cannot survive exits with this code, after a moment in
# which /health already answers 503 with the reason, so a probe sees why before it is gone.
EXIT_LOOP_FAILED = 3
FAILED_EXIT_DELAY_S = 2.0


@dataclass
class Worker:
    """What the web views need from the running services (filled in at start-up)."""

    metrics: WorkerMetrics
    models: ModelSlot
    bandit: BanditSlot
    store: FeatureStore | None = None
    ranker: MicroBatcher | None = None
    scoring: ScoringService | None = None
    subscriptions: SubscriptionRegistry | None = None
    consumers: list[SupervisedConsumer] = field(default_factory=list)

    @property
    def ready(self) -> bool:
        return bool(self.consumers) and all(c.health.ready for c in self.consumers)

    def health(self) -> dict[str, Any]:
        return {"ready": self.ready, "pid": os.getpid(),
                "consumers": {c.health.name: c.health.report() for c in self.consumers}}


def exit_on_loop_failure(failure: LoopFailed) -> None:
    """Stop the whole worker, non-zero, so that the orchestrator restarts it."""
    def leave() -> None:
        logging.shutdown()
        os._exit(EXIT_LOOP_FAILED)
    asyncio.get_running_loop().call_later(FAILED_EXIT_DELAY_S, leave)


def create_app(settings: Settings, bootstrap: str) -> faust.App:
    # The serving path's numpy products are small (a request's candidates against a few
    # hundred vectors). BLAS's thread pool makes them slower (measured 0.28 -> 0.10 ms for
    # 1000 x 32 by 32 x 125) and competes with onnxruntime's own intra-op threads.
    threadpool_limits(limits=1, user_api="blas")
    app = WorkerApp(
        f"{settings.topic_prefix}-worker",
        reuse_port=settings.web_reuse_port,
        process_port=settings.process_port,
        broker=f"kafka://{bootstrap}",
        broker_credentials=faust_credentials(settings),
        store="memory://",
        # Faust makes its data and table directories at start even with no tables (the store
        # is memory://): the temp dir takes them, not the directory the worker was run from.
        datadir=Path(tempfile.gettempdir()) / f"{settings.topic_prefix}-worker-data",
        topic_partitions=settings.partitions,
        web_host=settings.web_host,
        web_bind=settings.web_host,  # Faust binds 0.0.0.0 otherwise, whatever web_host says
        web_port=settings.web_port,
        broker_session_timeout=settings.consumer_session_timeout_ms / 1000,
        broker_rebalance_timeout=settings.consumer_rebalance_timeout_ms / 1000,
        broker_heartbeat_interval=settings.consumer_session_timeout_ms / 10_000,
        autodiscover=False,
    )
    worker = Worker(WorkerMetrics(), ModelSlot(settings), BanditSlot(settings))

    @app.task
    async def start_services() -> None:
        store = await open_store(settings)
        worker.store = store
        supervision: dict[str, Any] = {"loop": app.loop, "on_fatal": exit_on_loop_failure}
        roles = settings.role_names
        # Drift-alert subscriptions: every worker reads them, because every worker serves
        # their API; the drift role delivers the alerts.
        worker.subscriptions = SubscriptionRegistry(settings, bootstrap, worker.metrics,
                                                    **supervision)
        worker.consumers.append(worker.subscriptions)
        if "features" in roles:
            worker.consumers.append(
                FeatureService(settings, bootstrap, store, worker.metrics, **supervision))
        if "scoring" in roles:
            reader = FeatureReader(store, settings.embedding_dim, settings.item_cache_ttl_s,
                                   settings.interest_features)
            catalogue = ItemCatalogue(settings, bootstrap, worker.metrics, **supervision)
            retriever = Retriever(store, lambda: catalogue.index, settings.retrieval_k,
                                  worker.metrics, settings.retrieval_source)
            ranker = Ranker(reader, worker.models, ValueModel(settings.value_weights), retriever,
                            AdPlacer(worker.bandit, settings),
                            worker.metrics.scoring_latency)
            worker.ranker = MicroBatcher(ranker, settings.scoring_batch_max_requests,
                                         settings.rank_queue_max)
            if settings.model_manifest is not None:
                await worker.models.load(settings.model_manifest)
            kinds = serving_kinds(worker.models, worker.bandit, settings)
            worker.scoring = ScoringService(settings, bootstrap, ranker, worker.metrics,
                                            **supervision)
            worker.consumers += [
                VersionedStateService(settings, bootstrap, kinds, worker.metrics, **supervision),
                StateAuditService(settings, bootstrap, kinds, worker.metrics, **supervision),
                worker.scoring, catalogue]
        if "outcomes" in roles:
            worker.consumers.append(
                OutcomesService(settings, bootstrap, worker.metrics, **supervision))
        if "interests" in roles:
            worker.consumers.append(
                InterestsService(settings, bootstrap, store, worker.metrics, **supervision))
        if "bn" in roles:
            bn = BnService(settings, bootstrap, worker.metrics, **supervision)
            worker.consumers += [bn.reader, bn]
        if "ads" in roles:
            learner = AdsLearnerService(settings, bootstrap, worker.metrics, **supervision)
            worker.consumers += [learner.reader, learner]
        if "drift" in roles:
            worker.consumers += [
                DriftService(settings, bootstrap, worker.metrics, **supervision),
                AlertDelivery(settings, bootstrap, worker.subscriptions, worker.metrics,
                              **supervision)]
        # Concurrently: each consumer-group join waits out the broker's rebalance delay.
        await asyncio.gather(*(app.add_runtime_dependency(c) for c in worker.consumers))
        # Everything loaded so far (Faust, aiokafka, pydantic schemas, the model) lives as long
        # as the worker: out of the collector's reach, a full collection no longer walks its
        # ~110k objects. Measured on the development machine: 82 ms a full collection, a
        # pause of the serving loop, against under 0.1 ms after the freeze.
        gc.collect()
        gc.freeze()
        log.info("streamrank worker ready: roles %s, serving model %s", ",".join(roles),
                 worker.models.current.version)

    @app.page("/health")
    async def health(web: Any, request: Request) -> Response:
        return web.json(worker.health(), status=200 if worker.ready else 503)

    @app.page("/stats")
    async def stats(web: Any, request: Request) -> Response:
        counts = await worker.store.counts() if worker.store else {"users": 0, "items": 0}
        total = worker.metrics.total
        return web.json({
            "events_processed": int(total("streamrank_events_processed")),
            "items_upserted": int(total("streamrank_items_upserted")),
            "duplicates": int(total("streamrank_duplicate_events")),
            "dlq": int(total("streamrank_rejected")),
            "users_with_features": counts["users"],
            "items_with_features": counts["items"],
            "requests_ranked": int(total("streamrank_requests_ranked")),
            "scoring_latency_ms": worker.metrics.scoring_latency.report_ms(),
            "outcomes_emitted": int(total("streamrank_outcomes")),
            "outcome_events_late": int(total("streamrank_outcome_events_late")),
            "drift_updates": int(total("streamrank_drift_updates")),
            "drift_alerts": int(total("streamrank_drift_alerts")),
            "drift_detections_merged": int(total("streamrank_drift_detections_merged")),
            "interests_updated": int(total("streamrank_interests_updated")),
            "bn_updates": {result: int(total("streamrank_bn_updates", result=result))
                           for result in BN_RESULTS},
            "bn_watchdog_rollbacks": int(total("streamrank_bn_watchdog_rollbacks")),
            "retrieved_requests": int(total("streamrank_retrieved_requests")),
            "retrieved_by_source": {
                source: int(total("streamrank_retrieved_requests", source=source))
                for source in ("interests", "trending", "none")},
            "model_version": worker.models.current.version,
            "stats_version": worker.models.current.stats_version,
            "model_load_failures": int(total("streamrank_state_updates_refused",
                                             reader=SERVING_READER, kind="model")),
            "ad_decisions": int(total("streamrank_ad_decisions")),
            "ads_policy_version": worker.bandit.current.version,
            "ads_learnt": {outcome: int(total("streamrank_ads_outcomes", outcome=outcome))
                           for outcome in ADS_OUTCOMES},
            "ads_versions_published": int(total("streamrank_ads_versions")),
        })

    @app.page("/metrics")
    async def prometheus(web: Any, request: Request) -> Response:
        # aiohttp refuses a charset inside content_type; the exposition format is UTF-8 anyway.
        return web.bytes(generate_latest(worker.metrics.registry),
                         content_type=CONTENT_TYPE_LATEST.split(";")[0] + "; version=0.0.4")

    add_rank_view(app, settings, worker.metrics, lambda: worker.ranker,
                  lambda: worker.scoring)
    add_subscription_views(app, settings, worker.metrics, lambda: worker.subscriptions)

    return app
