"""Every Kafka client of the worker is made here, so durability and security settings reach all.

Producers wait for every in-sync replica (``acks=all``) and are idempotent where the broker
supports it: the embedded tansu (memory-only build) answers ``InitProducerId`` with an unknown
error, so a producer that cannot start idempotent starts again without, and says so once. A
duplicate that a producer retry writes is harmless anyway: the feature store drops it by
``event_id``, and a result carries its request id.
"""

from __future__ import annotations

import logging
from typing import Any

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from aiokafka.errors import KafkaError

from stream.settings import Settings

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


def kafka_producer(settings: Settings, bootstrap: str, **options: Any) -> AIOKafkaProducer:
    return AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all",
                            max_batch_size=PRODUCER_BATCH_BYTES, **options)


def kafka_consumer(settings: Settings, bootstrap: str, *topics: str,
                   **options: Any) -> AIOKafkaConsumer:
    return AIOKafkaConsumer(*topics, bootstrap_servers=bootstrap, enable_auto_commit=False,
                            **options)
