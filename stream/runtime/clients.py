"""Every Kafka client of the worker is made here, so durability and security settings reach all.

Producers wait for every in-sync replica (``acks=all``) and are idempotent where the broker
supports it: the embedded tansu (memory-only build) answers ``InitProducerId`` with an unknown
error, so idempotence is on for a configured broker and off for the embedded one. A duplicate
that a producer retry writes is harmless anyway: the feature store skips it by offset and by
``event_id``, and a result carries its request id.
"""

from __future__ import annotations

from typing import Any

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer

from stream.settings import Settings

# A full batch waits for the previous produce request to its broker to be answered; aiokafka's
# 16 KB default filled several times per scoring micro-batch (64 results of ~2.2 KB). 256 KB
# holds a whole micro-batch even on one partition, and stays under Kafka's default 1 MB
# message.max.bytes.
PRODUCER_BATCH_BYTES = 256 * 1024


def kafka_producer(settings: Settings, bootstrap: str, **options: Any) -> AIOKafkaProducer:
    return AIOKafkaProducer(
        bootstrap_servers=bootstrap, acks="all",
        enable_idempotence=settings.broker_url is not None,
        max_batch_size=PRODUCER_BATCH_BYTES, **options)


def kafka_consumer(settings: Settings, bootstrap: str, *topics: str,
                   **options: Any) -> AIOKafkaConsumer:
    return AIOKafkaConsumer(*topics, bootstrap_servers=bootstrap, enable_auto_commit=False,
                            **options)
