"""Shared fixtures: the embedded broker and the real Redis, as the standards require."""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator

import pytest
import redis

from stream.broker import embedded_broker
from stream.settings import Settings

REDIS_URL = os.environ.get("STREAMRANK_TEST_REDIS_URL", "redis://127.0.0.1:6379/15")


@pytest.fixture(scope="session")
def bootstrap() -> Iterator[str]:
    with embedded_broker() as address:
        yield address


@pytest.fixture(scope="session")
def redis_url() -> str:
    client = redis.Redis.from_url(REDIS_URL, socket_connect_timeout=2)
    try:
        client.ping()
    except redis.RedisError as exc:  # pragma: no cover - environment problem, not a test result
        pytest.fail(f"the integration tests need Redis at {REDIS_URL}: {exc}")
    finally:
        client.close()
    return REDIS_URL


@pytest.fixture
def settings(bootstrap: str, redis_url: str) -> Settings:
    """Settings on a topic prefix (and Redis namespace) of this test alone."""
    return Settings(
        broker_url=bootstrap,
        redis_url=redis_url,
        topic_prefix=f"t{uuid.uuid4().hex[:10]}",
        partitions=2,
        batch_wait_ms=5,
    )
