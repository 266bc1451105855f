"""Running the feature service against the embedded broker and real Redis, in-process."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any, TypeVar

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer

from schemas import DeadLetter, Record, decode
from stream.features.redis_store import RedisStore
from stream.features.role import FeatureService
from stream.features.store import FeatureStore, MemoryStore
from stream.runtime.environment import ensure_topics
from stream.runtime.metrics import WorkerMetrics
from stream.settings import Settings

R = TypeVar("R", bound=Record)


def serving_settings(bootstrap: str, redis_url: str, manifest: Path, prefix: str,
                     **overrides: Any) -> Settings:
    """Settings of a worker that serves ``manifest`` from its own topics (``prefix`` and a
    random suffix), created here; the model dir is the one the manifests share."""
    settings = Settings(broker_url=bootstrap, redis_url=redis_url, model_manifest=manifest,
                        model_dir=manifest.parent.parent,
                        topic_prefix=f"{prefix}{uuid.uuid4().hex[:8]}",
                        **overrides)
    ensure_topics(bootstrap, settings)
    return settings


async def open_test_store(settings: Settings, kind: str) -> FeatureStore:
    if kind == "memory":
        return MemoryStore(settings.dedup_ttl_s, settings.history_length)
    assert settings.redis_url is not None
    return await RedisStore.connect(
        settings.redis_url, settings.topic_prefix, dedup_ttl_s=settings.dedup_ttl_s,
        history_length=settings.history_length, ttl_s=settings.feature_ttl_s,
        slots=settings.redis_key_slots)


@asynccontextmanager
async def feature_service(settings: Settings, store: FeatureStore
                          ) -> AsyncIterator[tuple[FeatureService, WorkerMetrics]]:
    assert settings.broker_url is not None
    ensure_topics(settings.broker_url, settings)
    metrics = WorkerMetrics()
    service = FeatureService(settings, settings.broker_url, store, metrics)
    await service.start()
    try:
        yield service, metrics
    finally:
        await service.stop()


async def publish(settings: Settings, suffix: str, messages: list[tuple[str, bytes]]) -> None:
    producer = AIOKafkaProducer(bootstrap_servers=settings.broker_url)
    await producer.start()
    try:
        for key, value in messages:
            await producer.send(settings.topic(suffix), value, key=key.encode())
        await producer.flush()
    finally:
        await producer.stop()


async def wait_until(condition: Callable[[], bool | Awaitable[bool]],
                     timeout_s: float = 30.0) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        result = condition()
        if result if isinstance(result, bool) else await result:
            return
        await asyncio.sleep(0.02)
    raise AssertionError(f"condition not met within {timeout_s}s")


async def read_dead_letters(settings: Settings, expected: int,
                            timeout_s: float = 20.0) -> list[DeadLetter]:
    consumer = AIOKafkaConsumer(settings.topic("dlq"), bootstrap_servers=settings.broker_url,
                                auto_offset_reset="earliest", enable_auto_commit=False,
                                group_id=None)
    await consumer.start()
    letters: list[DeadLetter] = []
    try:
        deadline = time.monotonic() + timeout_s
        while len(letters) < expected and time.monotonic() < deadline:
            batch = await consumer.getmany(timeout_ms=200)
            for records in batch.values():
                letters += [decode(r.value or b"", DeadLetter) for r in records]
        # Anything beyond ``expected`` would be a bug too: drain briefly to catch it.
        for records in (await consumer.getmany(timeout_ms=500)).values():
            letters += [decode(r.value or b"", DeadLetter) for r in records]
    finally:
        await consumer.stop()
    return sorted(letters, key=lambda letter: (letter.source_topic, letter.offset))


async def read_records(settings: Settings, suffix: str, record_type: type[R],
                       timeout_s: float = 5.0) -> list[R]:
    """Every record on a topic, read from its start for ``timeout_s``."""
    consumer = AIOKafkaConsumer(settings.topic(suffix), bootstrap_servers=settings.broker_url,
                                auto_offset_reset="earliest", enable_auto_commit=False)
    await consumer.start()
    found: list[R] = []
    try:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            for records in (await consumer.getmany(timeout_ms=200)).values():
                found += [decode(r.value or b"", record_type) for r in records]
    finally:
        await consumer.stop()
    return found
