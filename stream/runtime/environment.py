"""Resolving the broker and the store: embedded defaults, or configured services that must work."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import redis
from kafka.admin import NewTopic
from kafka.errors import KafkaError, TopicAlreadyExistsError

from schemas import TOPIC_RECORDS
from stream.errors import BrokerUnavailable, StoreUnavailable
from stream.features.redis_store import RedisStore
from stream.features.store import FeatureStore, MemoryStore
from stream.redaction import redact_url
from stream.runtime.broker import check_reachable, embedded_broker
from stream.runtime.clients import kafka_admin
from stream.settings import Settings


@contextlib.contextmanager
def broker(settings: Settings) -> Iterator[str]:
    """The configured broker (checked), or an embedded tansu for the duration of the block."""
    if settings.broker_url:
        check_reachable(settings.broker_url)
        ensure_topics(settings.broker_url, settings)
        yield settings.broker_url
        return
    with embedded_broker() as bootstrap:
        ensure_topics(bootstrap, settings)
        yield bootstrap


def ensure_topics(bootstrap: str, settings: Settings) -> None:
    """Create any missing streamrank topic; a broker that cannot be reached is an error."""
    try:
        admin = kafka_admin(settings, bootstrap)
    except KafkaError as exc:
        raise BrokerUnavailable(f"Kafka broker at {bootstrap} is not reachable: {exc}") from exc
    try:
        existing = set(admin.list_topics())
        missing = [
            NewTopic(settings.topic(suffix), settings.partitions, settings.replication_factor)
            for suffix in TOPIC_RECORDS if settings.topic(suffix) not in existing
        ]
        if missing:
            with contextlib.suppress(TopicAlreadyExistsError):
                admin.create_topics(missing)
    finally:
        admin.close()


def check_store(settings: Settings) -> None:
    """Fail fast, before any worker starts, when a configured Redis is not reachable."""
    if not settings.redis_url:
        return
    client = redis.Redis.from_url(settings.redis_url, socket_connect_timeout=3)
    try:
        client.ping()
    except (redis.RedisError, OSError) as exc:
        raise StoreUnavailable(
            f"Redis at {redact_url(settings.redis_url)} is not reachable: {exc}") from exc
    finally:
        client.close()


async def open_store(settings: Settings) -> FeatureStore:
    if settings.redis_url:
        return await RedisStore.connect(
            settings.redis_url, settings.topic_prefix, cluster=settings.redis_cluster,
            dedup_ttl_s=settings.dedup_ttl_s, history_length=settings.history_length,
            ttl_s=settings.feature_ttl_s, slots=settings.redis_key_slots)
    return MemoryStore(settings.dedup_ttl_s, settings.history_length)


def describe(bootstrap: str, settings: Settings) -> str:
    where = "configured Kafka" if settings.broker_url else "embedded tansu"
    store = f"redis {redact_url(settings.redis_url)}" if settings.redis_url else "in-memory"
    return f"broker: {where} at {bootstrap}; feature store: {store}"
