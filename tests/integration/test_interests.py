"""Interests and retrieval through a real worker: engagements become interests, a request with
no candidates gets the same ones through Kafka and ``POST /rank``, and hostile input changes
no interests."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import orjson
import pytest

from stream.features.redis_store import RedisStore
from stream.interests.state import STATE, UserInterests
from stream.runtime.worker_process import WorkerProcess
from stream.settings import Settings
from tests.integration.harness import publish, read_dead_letters, serving_settings
from tests.integration.test_scoring import Rankings, post_rank

pytestmark = pytest.mark.integration

NOW = time.time()
DIM = 32
NORTH, EAST, SOUTH = np.eye(DIM)[0], np.eye(DIM)[1], -np.eye(DIM)[0]
ENGAGED = [f"n{k}" for k in range(8)] + [f"e{k}" for k in range(8)]


def items() -> list[tuple[str, bytes]]:
    rng = np.random.default_rng(1)
    out = []
    for prefix, direction in (("n", NORTH), ("e", EAST), ("s", SOUTH)):
        for k in range(40):
            vector = direction + 0.1 * rng.normal(size=DIM)
            out.append((f"{prefix}{k}", orjson.dumps({
                "item_id": f"{prefix}{k}", "ts": NOW - 600, "embedding": vector.tolist()})))
    return out


def clicks(user: str, item_ids: list[str], start: float) -> list[tuple[str, bytes]]:
    return [(user, orjson.dumps({"event_id": uuid.uuid4().hex, "user_id": user, "item_id": item,
                                 "type": "click", "ts": start + k}))
            for k, item in enumerate(item_ids)]


@pytest.fixture(scope="module")
def worker(bootstrap: str, redis_url: str,
           serving_models: tuple[Path, Path]) -> Iterator[tuple[WorkerProcess, Settings]]:
    settings = serving_settings(bootstrap, redis_url, serving_models[0], "int", partitions=2,
                                roles="features,scoring,interests", retrieval_k=30,
                                trending_interval_s=1.0)
    asyncio.run(publish(settings, "items", items()))
    with WorkerProcess(settings, bootstrap) as process:
        process.wait_for(lambda s: s["items_upserted"] == 120, timeout_s=30)
        asyncio.run(publish(settings, "events", clicks("u1", ENGAGED, NOW - 300)))
        process.wait_for(lambda s: s["interests_updated"] >= 1
                         and s["events_processed"] >= len(ENGAGED), timeout_s=30)
        yield process, settings


async def stored(settings: Settings, user: str) -> bytes | None:
    store = await RedisStore.connect(str(settings.redis_url), settings.topic_prefix,
                                     dedup_ttl_s=settings.dedup_ttl_s,
                                     history_length=settings.history_length,
                                     ttl_s=settings.feature_ttl_s)
    try:
        return (await store.get_states(STATE, [user]))[0]
    finally:
        await store.close()


def retrieval_request(user: str, **extra: Any) -> bytes:
    return orjson.dumps({"request_id": uuid.uuid4().hex, "user_id": user, "ts": time.time(),
                         "n": 10, **extra})


def test_engagements_become_two_interests(worker: tuple[WorkerProcess, Settings]) -> None:
    _, settings = worker
    value = asyncio.run(stored(settings, "u1"))
    assert value is not None
    state = UserInterests.from_bytes(value)
    assert set(state.item_ids) == set(ENGAGED)
    assert state.interests is not None and len(state.interests) == 2
    directions = {int(np.argmax(np.abs(m))) for m in state.interests.medoids}
    assert directions == {0, 1}


def test_kafka_and_http_retrieve_the_same_candidates(
        worker: tuple[WorkerProcess, Settings]) -> None:
    process, settings = worker
    body = retrieval_request("u1")

    async def via_kafka() -> Any:
        async with Rankings(settings) as rankings:
            await publish(settings, "requests", [("u1", body)])
            request_id = orjson.loads(body)["request_id"]
            await rankings.collect({request_id})
            return rankings.results[request_id]

    kafka = asyncio.run(via_kafka())
    status, http = post_rank(process.port, body)
    assert status == 200, http
    assert [(i.item_id, i.source) for i in kafka.items] == [
        (i["item_id"], i["source"]) for i in http["items"]]
    assert len(kafka.items) == 10
    assert all(i.source.startswith("interest:") for i in kafka.items)
    assert all(i.item_id[0] in "ne" and i.item_id not in ENGAGED for i in kafka.items)


def test_a_user_with_no_interests_gets_trending_items(
        worker: tuple[WorkerProcess, Settings]) -> None:
    process, _ = worker
    status, http = post_rank(process.port, retrieval_request("newcomer"))
    assert status == 200
    assert http["items"] and {i["source"] for i in http["items"]} == {"trending"}
    assert {i["item_id"] for i in http["items"]} <= set(ENGAGED)  # what users engaged with


def test_hostile_events_change_no_interests(worker: tuple[WorkerProcess, Settings]) -> None:
    process, settings = worker
    before = asyncio.run(stored(settings, "u1"))
    unknown = clicks("u1", ["never-upserted"], NOW - 100)
    nan = [("u1", b'{"event_id": "x", "user_id": "u1", "item_id": "n1", "type": "click", '
                  b'"ts": NaN}')]
    stats = process.get("/stats")
    asyncio.run(publish(settings, "events", unknown + nan))
    # Each role that reads events (features, interests) refuses it in its own group.
    letters = asyncio.run(read_dead_letters(settings, expected=2))
    assert [x.reason for x in letters if x.source_topic == settings.topic("events")] == [
        "non_finite"] * 2
    process.wait_for(lambda s: s["events_processed"] > stats["events_processed"], 30)
    time.sleep(1.0)  # the interests role's own group reads the same events
    assert asyncio.run(stored(settings, "u1")) == before
    request = retrieval_request("u1", candidates=["n1", "s1"], retrieve=5)
    status, http = post_rank(process.port, request)
    assert status == 200 and len(http["items"]) == 7
    assert {i["source"] for i in http["items"] if i["item_id"] in ("n1", "s1")} == {"request"}
