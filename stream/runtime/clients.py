"""Every Kafka client of the worker is made here, so durability and security settings reach all.

Producers wait for every in-sync replica (``acks=all``) and are idempotent where the broker
supports it: the embedded tansu (memory-only build) answers ``InitProducerId`` with an unknown
error, so a producer that cannot start idempotent starts again without, and says so once. A
duplicate that a producer retry writes is harmless anyway: the feature store drops it by
``event_id``, and a result carries its request id.

Security (``STREAMRANK_KAFKA_*``) is translated here once. aiokafka (our consumers and
producers) and kafka-python (the admin client) take the same option names, so one function
serves both; Faust, which makes clients of its own, takes them as ``broker_credentials``. All get
the same kind of TLS context, so CA, client certificate and hostname checking cannot differ.
"""

from __future__ import annotations

import logging
import ssl
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING, Any

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from aiokafka.errors import KafkaError
from aiokafka.helpers import create_ssl_context
from aiokafka.structs import ConsumerRecord, TopicPartition
from kafka.admin import KafkaAdminClient

from stream.settings import Settings

if TYPE_CHECKING:
    from faust.types.auth import CredentialsT

log = logging.getLogger(__name__)

# A full batch waits for the previous produce request to its broker to be answered; aiokafka's
# 16 KB default filled several times per scoring micro-batch (64 results of ~2.2 KB). 256 KB
# holds a whole micro-batch even on one partition, and stays under Kafka's default 1 MB
# message.max.bytes.
PRODUCER_BATCH_BYTES = 256 * 1024


async def started_producer(settings: Settings, bootstrap: str,
                           **options: Any) -> AIOKafkaProducer:
    """A started producer: idempotent if the broker allows it, ``acks=all`` in any case."""
    producer = kafka_producer(settings, bootstrap, enable_idempotence=True, **options)
    try:
        await producer.start()
        return producer
    except KafkaError as exc:
        await producer.stop()
        if not _warned:
            log.warning("the broker at %s refuses idempotent producers (%s); producing with "
                        "acks=all only", bootstrap, type(exc).__name__)
            _warned.append(bootstrap)
    producer = kafka_producer(settings, bootstrap, **options)
    await producer.start()
    return producer


_warned: list[str] = []


def tls_context(settings: Settings) -> ssl.SSLContext | None:
    """The TLS context for SSL and SASL_SSL (certificate and hostname verified), else None."""
    if not settings.kafka_security_protocol.endswith("SSL"):
        return None
    return create_ssl_context(cafile=settings.kafka_ssl_cafile,
                              certfile=settings.kafka_ssl_certfile,
                              keyfile=settings.kafka_ssl_keyfile)


def _sasl(settings: Settings) -> dict[str, Any]:
    if not settings.kafka_security_protocol.startswith("SASL_"):
        return {}
    assert settings.kafka_sasl_password is not None  # Settings refuses SASL without one
    # Both libraries take the ``sasl_plain_*`` names for SCRAM as well as PLAIN.
    return {"sasl_mechanism": settings.kafka_sasl_mechanism,
            "sasl_plain_username": settings.kafka_sasl_username,
            "sasl_plain_password": settings.kafka_sasl_password.get_secret_value()}


def security_options(settings: Settings) -> dict[str, Any]:
    """Keyword arguments that put an aiokafka or kafka-python client on the configured security
    (kafka-python's own ``ssl_*`` file options are not used: ``ssl_context`` overrides them)."""
    context = tls_context(settings)
    return {"security_protocol": settings.kafka_security_protocol,
            **({"ssl_context": context} if context else {}), **_sasl(settings)}


def faust_credentials(settings: Settings) -> CredentialsT | None:
    """Faust's ``broker_credentials`` for the clients it makes itself."""
    # Imported here: only the worker needs Faust, and it costs the other commands ~0.3 s.
    from faust.auth import SASLCredentials, SSLCredentials

    context = tls_context(settings)
    sasl = _sasl(settings)
    if sasl:
        return SASLCredentials(username=sasl["sasl_plain_username"],
                               password=sasl["sasl_plain_password"],
                               mechanism=sasl["sasl_mechanism"], ssl_context=context)
    return SSLCredentials(context) if context else None


def kafka_producer(settings: Settings, bootstrap: str, **options: Any) -> AIOKafkaProducer:
    return AIOKafkaProducer(**{
        "bootstrap_servers": bootstrap, "acks": "all", "max_batch_size": PRODUCER_BATCH_BYTES,
        **security_options(settings), **options})


def kafka_consumer(settings: Settings, bootstrap: str, *topics: str,
                   **options: Any) -> AIOKafkaConsumer:
    return AIOKafkaConsumer(*topics, **{
        "bootstrap_servers": bootstrap, "enable_auto_commit": False,
        **security_options(settings), **options})


# tansu answers a short fetch empty when it has many record batches to scan: reading a topic to
# its end waits this long per fetch, and stops at the first fetch that brings nothing.
READ_TO_END_WAIT_MS = 500


async def read_to_end(consumer: AIOKafkaConsumer
                      ) -> AsyncIterator[tuple[TopicPartition, ConsumerRecord[bytes, bytes]]]:
    """Every record of the consumer's assignment from its position until a fetch comes back
    empty: the end, for a topic nobody writes meanwhile (the embedded broker's ListOffsets
    answer is wrong, so the end is not asked for). Make the consumer with
    ``fetch_max_wait_ms=READ_TO_END_WAIT_MS``."""
    while batch := await consumer.getmany(timeout_ms=2 * READ_TO_END_WAIT_MS):
        for tp, records in batch.items():
            for record in records:
                yield tp, record


def kafka_admin(settings: Settings, bootstrap: str, **options: Any) -> KafkaAdminClient:
    """kafka-python's admin client (it connects, so a broker that is down raises here)."""
    return KafkaAdminClient(**{
        "bootstrap_servers": bootstrap, "request_timeout_ms": 5000,
        "client_id": "streamrank-admin", **security_options(settings), **options})
