"""Resolving the broker and the store: embedded defaults, or configured services that must work."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator

import redis
from kafka.admin import ConfigResource, ConfigResourceType, KafkaAdminClient, NewTopic
from kafka.errors import KafkaError, TopicAlreadyExistsError

from schemas import TOPIC_RECORDS
from stream.errors import BrokerUnavailable, StoreUnavailable
from stream.features.redis_store import RedisStore
from stream.features.store import FeatureStore, MemoryStore
from stream.redaction import redact_url
from stream.runtime.broker import check_reachable, embedded_broker
from stream.runtime.clients import kafka_admin
from stream.settings import Settings

log = logging.getLogger(__name__)


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


# model-updates holds versions, not a stream of events. Compacted and keyed by kind, it keeps
# the newest version of each kind for good. One partition makes "newest" the offset order and
# gives the state audit one owner. The lag keeps a week of older versions to fall back on
# when the newest cannot be loaded. tansu (embedded) accepts and reports these configs; its
# memory engine never removes a record, which the readers do not rely on.
STATE_TOPIC = "model-updates"
# Topics that hold the latest value per key: one partition each, compacted.
COMPACTED_TOPICS = (STATE_TOPIC, "subscriptions")
STATE_TOPIC_CONFIG = {"cleanup.policy": "compact", "min.compaction.lag.ms": str(7 * 86_400_000)}


def ensure_topics(bootstrap: str, settings: Settings) -> None:
    """Create any missing streamrank topic; a broker that cannot be reached is an error."""
    try:
        admin = kafka_admin(settings, bootstrap)
    except KafkaError as exc:
        raise BrokerUnavailable(f"Kafka broker at {bootstrap} is not reachable: {exc}") from exc
    try:
        existing = set(admin.list_topics())
        missing = [_new_topic(suffix, settings)
                   for suffix in TOPIC_RECORDS if settings.topic(suffix) not in existing]
        if missing:
            with contextlib.suppress(TopicAlreadyExistsError):
                admin.create_topics(missing)
        if settings.topic(STATE_TOPIC) in existing:
            _check_state_topic(admin, settings.topic(STATE_TOPIC))
    finally:
        admin.close()


def _new_topic(suffix: str, settings: Settings) -> NewTopic:
    if suffix in COMPACTED_TOPICS:
        return NewTopic(settings.topic(suffix), 1, settings.replication_factor,
                        topic_configs=STATE_TOPIC_CONFIG)
    return NewTopic(settings.topic(suffix), settings.partitions, settings.replication_factor)


def _check_state_topic(admin: KafkaAdminClient, topic: str) -> None:
    """A model-updates topic made before it was compacted still works, but its history grows
    for ever and may hold versions keyed by model name: say how to fix it."""
    try:
        configs = admin.describe_configs([ConfigResource(ConfigResourceType.TOPIC, topic)],
                                         config_filter="all")["topic"][topic]
    except (KafkaError, KeyError) as exc:  # e.g. no DescribeConfigs permission
        log.warning("could not check the cleanup policy of topic %s: %r", topic, exc)
        return
    policy = configs.get("cleanup.policy", {}).get("value", "delete")
    if "compact" not in policy.split(","):
        log.warning("topic %s has cleanup.policy=%s, not compact: recreate it (streamrank "
                    "creates it compacted, with one partition) and publish the current model "
                    "again", topic, policy)


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
