"""Alert delivery latency: an alert produced to ``drift-alerts`` until a local webhook receiver
has verified its signature, and until it is on a subscriber's Kafka topic, through the worker's
delivery consumer. The alerts are published straight to the topic, paced, as the drift role
publishes them, so the percentiles rest on enough alerts to mean something."""

from __future__ import annotations

import asyncio
import time
import uuid
from typing import Any

import orjson
from aiohttp import web

from bench.harness import Record, TopicTail, create_topics, percentile, run_settings
from schemas import DriftAlert, encode
from schemas.examples import EXAMPLES
from stream.drift.client import SubscriptionsApi
from stream.drift.signatures import SIGNATURE_HEADER, TIMESTAMP_HEADER, verify_signature
from stream.runtime.broker import free_port
from stream.runtime.clients import started_producer
from stream.runtime.worker_process import WorkerProcess
from stream.settings import Settings

SECRET = "bench-secret-0123456789"


class Receiver:
    """Verifies each delivery as a subscriber would, and notes when it did."""

    def __init__(self) -> None:
        self.verified: dict[str, float] = {}
        self.refused = 0

    async def handle(self, request: web.Request) -> web.Response:
        body = await request.read()
        if not verify_signature(SECRET, request.headers.get(TIMESTAMP_HEADER, ""), body,
                                request.headers.get(SIGNATURE_HEADER, ""), time.time()):
            self.refused += 1
            return web.Response(status=401)
        self.verified.setdefault(orjson.loads(body)["alert_id"], time.time())
        return web.Response(status=204)


def run_delivery(settings: Settings, bootstrap: str, alerts: int, rate: float
                 ) -> dict[str, Any]:
    run = run_settings(settings, "delivery").model_copy(update={
        "broker_url": bootstrap, "roles": "drift", "webhook_allow": ["127.0.0.1"]})
    sink = f"{run.topic_prefix}-sink"
    create_topics(bootstrap, run, [sink])
    with WorkerProcess(run, bootstrap) as worker:
        return asyncio.run(_measure(run, bootstrap, worker, sink, alerts, rate))


async def _measure(settings: Settings, bootstrap: str, worker: WorkerProcess, sink: str,
                   alerts: int, rate: float) -> dict[str, Any]:
    receiver = Receiver()
    app = web.Application()
    app.router.add_post("/hook", receiver.handle)
    runner = web.AppRunner(app)
    await runner.setup()
    port = free_port()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    api = SubscriptionsApi(f"http://127.0.0.1:{worker.port}", None)
    for sub_id, target in (("bench-hook", {"kind": "webhook", "secret": SECRET,
                                           "url": f"http://127.0.0.1:{port}/hook"}),
                           ("bench-kafka", {"kind": "kafka", "topic": sink})):
        await asyncio.to_thread(api.subscribe, orjson.dumps({
            "subscription_id": sub_id, "owner": "bench", "signals": ["*"],
            "min_severity": "info", "sink": target}))
    on_sink: dict[str, float] = {}

    def arrived(record: Record, _: float) -> None:
        on_sink.setdefault(orjson.loads(record.value or b"{}")["alert_id"], time.time())

    produced: dict[str, float] = {}
    producer = await started_producer(settings, bootstrap, linger_ms=0)
    try:
        async with TopicTail(bootstrap, sink, arrived):
            started = time.monotonic()
            for k in range(alerts):
                await asyncio.sleep(max(started + k / rate - time.monotonic(), 0))
                alert = DriftAlert.model_validate({
                    **EXAMPLES["drift-alerts"], "ts": time.time(),
                    "alert_id": f"bench-{uuid.uuid4().hex[:12]}"})
                produced[alert.alert_id] = time.time()
                await producer.send_and_wait(settings.topic("drift-alerts"), encode(alert),
                                             key=alert.signal.encode())
            deadline = time.monotonic() + 60
            while (len(receiver.verified) < alerts or len(on_sink) < alerts) \
                    and time.monotonic() < deadline:
                await asyncio.sleep(0.1)
    finally:
        await producer.stop()
        await runner.cleanup()
    return {"alerts": alerts, "rate": rate,
            "webhook_verified": len(receiver.verified), "webhook_refused": receiver.refused,
            "kafka_received": len(on_sink),
            **_latency("webhook", produced, receiver.verified),
            **_latency("kafka", produced, on_sink)}


def _latency(sink: str, produced: dict[str, float], arrived: dict[str, float]
             ) -> dict[str, float]:
    ms = [1000 * (arrived[k] - produced[k]) for k in produced if k in arrived]
    return {f"{sink}_p50_ms": percentile(ms, 50), f"{sink}_p99_ms": percentile(ms, 99)}
