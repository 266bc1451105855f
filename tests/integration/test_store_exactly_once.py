"""The feature write is exact on the real Redis and on a local three-node Redis Cluster."""

from __future__ import annotations

import socket
import subprocess
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import redis
import redis.asyncio as aioredis

from models.features import ItemMeta
from stream.features.redis_store import RedisStore
from stream.features.store import Applied, EventBatch, FeatureStore, MemoryStore
from stream.features.watermarks import Origin
from stream.runtime.broker import free_port
from tests.test_exactly_once import T0, batch, stream_of

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def cluster_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """Three masters, no replicas, started and torn down by this module."""
    ports = [_cluster_port() for _ in range(3)]
    processes = []
    for port in ports:
        directory = tmp_path_factory.mktemp(f"node{port}")
        processes.append(subprocess.Popen(
            ["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--cluster-enabled",
             "yes", "--cluster-config-file", str(Path(directory) / "nodes.conf"), "--save", "",
             "--appendonly", "no", "--dir", str(directory)], stdout=subprocess.DEVNULL))
    try:
        for port in ports:
            _wait_for_ping(port)
        subprocess.run(["redis-cli", "--cluster", "create",
                        *(f"127.0.0.1:{p}" for p in ports), "--cluster-replicas", "0",
                        "--cluster-yes"], check=True, capture_output=True, timeout=30)
        _wait_for_cluster(ports[0])
        yield f"redis://127.0.0.1:{ports[0]}/0"
    finally:
        for process in processes:
            process.kill()
            process.wait()


def _cluster_port() -> int:
    """A free port whose cluster bus port (port + 10000) is free and valid too."""
    while True:
        port = free_port()
        if port + 10_000 <= 65_535 and _free(port + 10_000):
            return port


def _free(port: int) -> bool:
    with socket.socket() as sock:
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def _wait_for_ping(port: int) -> None:
    client = redis.Redis(port=port)
    deadline = time.monotonic() + 10
    while True:
        try:
            client.ping()
            return
        except redis.ConnectionError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.05)


def _wait_for_cluster(port: int) -> None:
    client = redis.Redis(port=port)
    deadline = time.monotonic() + 20
    while client.execute_command("CLUSTER INFO").get("cluster_state") != "ok":
        assert time.monotonic() < deadline, "the local cluster did not come up"
        time.sleep(0.1)


async def _snapshot(store: FeatureStore) -> list[tuple[object, ...]]:
    fetched = await store.fetch_many([(f"u{u}", [f"i{i}" for i in range(9)]) for u in range(6)])
    return [(f.user, *f.items, *f.item_meta, tuple(f.history)) for f in fetched]


@pytest.mark.parametrize("where", ["redis", "cluster"])
async def test_replays_of_any_shape_write_what_memory_writes(
        where: str, redis_url: str, request: pytest.FixtureRequest) -> None:
    url = request.getfixturevalue("cluster_url") if where == "cluster" else redis_url
    store = await RedisStore.connect(url, f"x{uuid.uuid4().hex[:8]}", cluster=where == "cluster",
                                     dedup_ttl_s=86_400, history_length=50, ttl_s=3600,
                                     slots=16 if where == "cluster" else 1)
    memory = MemoryStore(86_400, 50)
    events = stream_of(60, seed=4)
    metas = {f"i{i}": ItemMeta(T0, 0.5, i == 3, np.full(32, i, np.float32)).pack()
             for i in range(9)}
    try:
        for target in (store, memory):
            await target.apply(EventBatch(metas=metas))
            assert await target.apply(batch(events, 0, 60)) == Applied(60, 0, [])
        # A crash after part of the batches, a replay cut elsewhere, and a producer duplicate.
        for start in range(5, 60, 11):
            applied = await store.apply(batch(events, start, min(start + 11, 60)))
            assert applied.events == 0
        assert await store.apply(EventBatch([events[7]], [Origin(0, 500)])) == Applied(
            0, 0, [events[7].event_id])
        assert await _snapshot(store) == await _snapshot(memory)
        assert await store.counts() == await memory.counts()
    finally:
        await store.drop()
        await store.close()


async def test_values_of_another_layout_are_never_read(redis_url: str) -> None:
    """A new value layout names new keys: what an older one left behind neither breaks the
    script nor leaks into features (it expires by its own TTL)."""
    namespace = f"x{uuid.uuid4().hex[:8]}"
    client = aioredis.Redis.from_url(redis_url)
    store = await RedisStore.connect(redis_url, namespace, dedup_ttl_s=86_400,
                                     history_length=50, ttl_s=3600)
    try:
        old_key = store.prefix(0, "u").replace(store.prefix(0, "u").split(":")[2], "f1")
        await client.set(old_key + "u0", b"an older layout's value")
        events = stream_of(10)
        assert (await store.apply(batch(events, 0, 10))).events == 10
        assert (await store.fetch("u0", [])).user != b"an older layout's value"
    finally:
        await client.aclose()
        await store.drop()
        await store.close()
