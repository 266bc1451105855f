"""The Faust app that hosts a worker: lifecycle, services and web views."""

from __future__ import annotations

import logging
from typing import Any

import faust
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from stream.features_service import FeatureService
from stream.metrics import WorkerMetrics
from stream.runtime import describe, open_store
from stream.settings import Settings

log = logging.getLogger(__name__)


def create_app(settings: Settings, bootstrap: str) -> faust.App:
    app = faust.App(
        f"{settings.topic_prefix}-worker",
        broker=f"kafka://{bootstrap}",
        store="memory://",
        topic_partitions=settings.partitions,
        web_host=settings.web_host,
        web_port=settings.web_port,
        broker_session_timeout=settings.consumer_session_timeout_ms / 1000,
        broker_rebalance_timeout=settings.consumer_rebalance_timeout_ms / 1000,
        broker_heartbeat_interval=settings.consumer_session_timeout_ms / 10_000,
        autodiscover=False,
    )
    metrics = WorkerMetrics()
    state: dict[str, Any] = {}

    @app.task
    async def start_features() -> None:
        store = await open_store(settings)
        state["store"] = store
        state["features"] = await app.add_runtime_dependency(
            FeatureService(settings, bootstrap, store, metrics, loop=app.loop))
        log.info("streamrank worker ready; %s", describe(bootstrap, settings))

    @app.page("/health")
    async def health(web: Any, request: Any) -> Any:
        service = state.get("features")
        ready = service is not None and service.started and not service.should_stop
        return web.json({"ready": ready}, status=200 if ready else 503)

    @app.page("/stats")
    async def stats(web: Any, request: Any) -> Any:
        counts = await state["store"].counts() if "store" in state else {"users": 0, "items": 0}
        return web.json({
            "events_processed": int(metrics.total("streamrank_events_processed")),
            "items_upserted": int(metrics.total("streamrank_items_upserted")),
            "duplicates": int(metrics.total("streamrank_duplicate_events")),
            "dlq": int(metrics.total("streamrank_rejected")),
            "users_with_features": counts["users"],
            "items_with_features": counts["items"],
        })

    @app.page("/metrics")
    async def prometheus(web: Any, request: Any) -> Any:
        return web.bytes(generate_latest(metrics.registry), content_type=CONTENT_TYPE_LATEST)

    return app
