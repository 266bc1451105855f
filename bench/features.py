"""Feature updates through the real broker into Redis, against raw aiokafka consumption.

Both paths read the same messages of the same topic (a fresh consumer group per pass) and are
timed the same way: from the first consumed message to the last, polled every few ms. Passes
alternate so that machine noise hits both; medians are reported.
"""

from __future__ import annotations

import asyncio
import statistics
import time
import uuid
from collections.abc import Awaitable, Callable
from typing import Any

import numpy as np
import orjson
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer

from stream.errors import BenchFailed
from stream.features.redis_store import RedisStore
from stream.features.role import FeatureService
from stream.runtime.environment import broker
from stream.runtime.gc_policy import tune_for_batches
from stream.runtime.metrics import WorkerMetrics
from stream.settings import Settings

DEFAULT_REDIS = "redis://127.0.0.1:6379/0"
EVENT_MIX = {"impression": 0.70, "click": 0.12, "dwell": 0.08, "like": 0.04, "hide": 0.03,
             "share": 0.01, "ad_impression": 0.015, "ad_click": 0.005}


def run_features_bench(settings: Settings, n_events: int, repeats: int) -> dict[str, Any]:
    run_id = uuid.uuid4().hex[:8]
    settings = settings.model_copy(update={
        "topic_prefix": f"bench-{run_id}",
        "redis_url": settings.redis_url or DEFAULT_REDIS,
    })
    tune_for_batches()  # as the worker does; both paths run in this process
    with broker(settings) as bootstrap:
        return asyncio.run(_bench(settings, bootstrap, n_events, repeats, run_id))


async def _bench(settings: Settings, bootstrap: str, n_events: int, repeats: int,
                 run_id: str) -> dict[str, Any]:
    await _produce_events(settings, bootstrap, n_events)
    feature_rates, raw_rates = [], []
    for attempt in range(repeats):
        raw_rates.append(await raw_pass(settings, bootstrap, n_events, f"{run_id}-raw-{attempt}"))
        feature_rates.append(
            await _feature_pass(settings, bootstrap, n_events, f"{run_id}-feat-{attempt}"))
    events_per_s = statistics.median(feature_rates)
    raw_per_s = statistics.median(raw_rates)
    return {
        "events_per_s": round(events_per_s, 1),
        "raw_consume_per_s": round(raw_per_s, 1),
        "ratio": round(events_per_s / raw_per_s, 4),
        "passes": {"events_per_s": [round(r, 1) for r in feature_rates],
                   "raw_consume_per_s": [round(r, 1) for r in raw_rates]},
        "n_events": n_events,
        "partitions": settings.partitions,
        "batch_max_records": settings.batch_max_records,
        "store": "redis",
        "broker": "configured" if settings.broker_url else "embedded tansu",
    }


async def _produce_events(settings: Settings, bootstrap: str, n_events: int) -> None:
    rng = np.random.default_rng(0)
    types = rng.choice(list(EVENT_MIX), size=n_events, p=list(EVENT_MIX.values()))
    users = rng.integers(0, 20_000, size=n_events)
    items = rng.zipf(1.3, size=n_events) % 50_000
    now = time.time()
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, linger_ms=20,
                                max_batch_size=1 << 20)
    await producer.start()
    try:
        topic = settings.topic("events")
        for i in range(n_events):
            event: dict[str, Any] = {"ts": now - (n_events - i) * 1e-3, "event_id": f"e{i}",
                                     "user_id": f"u{users[i]}", "item_id": f"i{items[i]}",
                                     "type": str(types[i])}
            if event["type"] == "dwell":
                event["dwell_s"] = 12.5
            await producer.send(topic, orjson.dumps(event), key=event["user_id"].encode())
        await producer.flush()
    finally:
        await producer.stop()


async def _timed(count: Callable[[], float], target: int, work: Awaitable[None]) -> float:
    """Rate from the first counted message to ``target``, polling ``count`` every 2 ms."""
    task = asyncio.ensure_future(work)
    try:
        while count() == 0:
            await asyncio.sleep(0.002)
        first_count, first_time = count(), time.perf_counter()
        while count() < target:
            if task.done():
                task.result()
                raise BenchFailed(f"pass ended at {count()} of {target} messages")
            await asyncio.sleep(0.002)
        return (count() - first_count) / (time.perf_counter() - first_time)
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)


async def raw_pass(settings: Settings, bootstrap: str, n_events: int, group: str) -> float:
    """Events/s of a bare aiokafka consumer that only parses each event: the bound."""
    consumer = AIOKafkaConsumer(
        settings.topic("events"), bootstrap_servers=bootstrap, group_id=group,
        enable_auto_commit=False, auto_offset_reset="earliest",
        fetch_max_wait_ms=settings.batch_wait_ms, max_partition_fetch_bytes=8 * 1024 * 1024,
        rebalance_timeout_ms=settings.consumer_rebalance_timeout_ms)
    consumed = 0

    async def consume() -> None:
        nonlocal consumed
        while True:
            batch = await consumer.getmany(timeout_ms=200,
                                           max_records=settings.batch_max_records)
            for records in batch.values():
                for record in records:
                    orjson.loads(record.value)
                consumed += len(records)

    await consumer.start()
    try:
        return await _timed(lambda: consumed, n_events, consume())
    finally:
        await consumer.stop()


async def _feature_pass(settings: Settings, bootstrap: str, n_events: int, group: str) -> float:
    assert settings.redis_url is not None
    store = await RedisStore.connect(
        settings.redis_url, f"bench:{group}", dedup_ttl_s=settings.dedup_ttl_s,
        history_length=settings.history_length, ttl_s=settings.feature_ttl_s)
    metrics = WorkerMetrics()
    service = FeatureService(settings.model_copy(update={"features_group": group}),
                             bootstrap, store, metrics)
    await service.start()
    try:
        return await _timed(lambda: metrics.total("streamrank_events_processed"), n_events,
                            service.wait_until_stopped())
    finally:
        await service.stop()
        await store.drop()
        await store.close()
