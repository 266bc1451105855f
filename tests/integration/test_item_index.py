"""The items catalogue on the embedded broker: what the ANN index holds after upserts,
replacements, retractions and expiry, and a restart from its snapshot reading only the tail."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from schemas import ItemUpsert, encode
from stream.interests.catalogue import ItemCatalogue
from stream.runtime.clients import kafka_admin
from stream.runtime.environment import ensure_topics
from stream.runtime.metrics import WorkerMetrics
from stream.settings import Settings
from tests.integration.harness import publish, wait_until

pytestmark = pytest.mark.integration

DIM = 32
MAX_AGE_S = 3600.0


@pytest.fixture
def settings(bootstrap: str, tmp_path: Path) -> Settings:
    return Settings(broker_url=bootstrap, topic_prefix=f"ann{uuid.uuid4().hex[:8]}",
                    partitions=2, item_max_age_s=MAX_AGE_S, ann_snapshot_dir=tmp_path,
                    ann_snapshot_interval_s=600)


def vector(seed: int) -> list[float]:
    return np.random.default_rng(seed).normal(size=DIM).round(4).tolist()


def upsert(item_id: str, seed: int, **fields: Any) -> tuple[str, bytes]:
    fields.setdefault("ts", time.time())
    return item_id, encode(ItemUpsert(item_id=item_id, embedding=vector(seed), **fields))


@asynccontextmanager
async def catalogue(settings: Settings, **kwargs: Any
                    ) -> AsyncIterator[tuple[ItemCatalogue, WorkerMetrics]]:
    metrics = WorkerMetrics()
    reader = ItemCatalogue(settings, str(settings.broker_url), metrics, **kwargs)
    await reader.start()
    try:
        yield reader, metrics
    finally:
        await reader.stop()


def read(metrics: WorkerMetrics) -> int:
    return int(metrics.total("streamrank_item_index_records_read"))


def nearest(reader: ItemCatalogue, seed: int) -> str:
    return reader.index.search(np.array([vector(seed)]), k=1)[0][0][0]


async def test_the_index_follows_the_topic_and_restarts_from_its_snapshot(
        settings: Settings) -> None:
    ensure_topics(str(settings.broker_url), settings)
    items = [upsert(f"item-{i}", i) for i in range(200)]
    ads = [upsert(f"ad-{i}", 1000 + i, kind="ad", bid=0.5) for i in range(5)]
    zero = ("zero", encode(ItemUpsert(item_id="zero", embedding=[0.0] * DIM, ts=time.time())))
    await publish(settings, "items", [*items, *ads, zero])

    async with catalogue(settings) as (reader, metrics):
        await wait_until(reader.synced)
        assert sorted(reader.index.ids()) == sorted(f"item-{i}" for i in range(200))
        assert nearest(reader, 7) == "item-7"
        assert read(metrics) == 206
        assert metrics.total("streamrank_rejected", reason="invalid_value") == 1

        now = time.time()
        await publish(settings, "items", [
            upsert("item-0", 5000),  # replaced: found by its new vector
            upsert("item-1", 1, created_ts=now - 2 * MAX_AGE_S),  # re-published, too old
            upsert("item-2", 2, metadata={"expired": True}),  # withdrawn by its publisher
            upsert("item-3", 3, kind="ad"),  # now an ad: not a retrieval candidate
            upsert("old-new", 9, created_ts=now - 2 * MAX_AGE_S),  # never goes in
            upsert("aging", 10, created_ts=now - MAX_AGE_S + 60),  # in, for a minute
        ])
        await wait_until(lambda: read(metrics) == 212)
        assert nearest(reader, 5000) == "item-0"
        assert not {"item-1", "item-2", "item-3", "old-new"} & set(reader.index.ids())
        assert metrics.total("streamrank_item_index_removals", reason="expired") == 1
        assert metrics.total("streamrank_item_index_removals", reason="retracted") == 2
        kept = sorted(reader.index.ids())
        assert len(kept) == 198 and "aging" in kept

    assert reader.snapshot_path.exists()  # written at the clean stop
    await publish(settings, "items", [upsert("late-0", 2020), upsert("late-1", 2021)])

    # Restarted two minutes later: "aging" has expired in the meantime.
    async with catalogue(settings, clock=lambda: time.time() + 120) as (restarted, metrics):
        assert len(restarted.index) == 198  # from the snapshot, before reading anything
        await wait_until(restarted.synced)
        assert read(metrics) == 2  # only the tail
        assert restarted.expire() == 1
        assert sorted(restarted.index.ids()) == sorted(
            [*(i for i in kept if i != "aging"), "late-0", "late-1"])
        assert nearest(restarted, 5000) == "item-0" and nearest(restarted, 2021) == "late-1"


async def test_a_snapshot_of_another_topic_is_not_used(settings: Settings) -> None:
    ensure_topics(str(settings.broker_url), settings)
    await publish(settings, "items", [upsert(f"item-{i}", i) for i in range(10)])
    async with catalogue(settings) as (reader, _):
        await wait_until(reader.synced)
    other = settings.model_copy(update={"topic_prefix": f"ann{uuid.uuid4().hex[:8]}"})
    ensure_topics(str(settings.broker_url), other)
    reader.snapshot_path.rename(Path(settings.ann_snapshot_dir) / f"{other.topic_prefix}-items.npz")
    await publish(other, "items", [upsert("only", 1)])
    async with catalogue(other) as (fresh, metrics):
        await wait_until(fresh.synced)
        assert fresh.index.ids() == ["only"] and read(metrics) == 1


async def test_a_snapshot_ahead_of_a_remade_topic_is_dropped(settings: Settings) -> None:
    """The topic was deleted and made again: the snapshot's offsets are past its end."""
    ensure_topics(str(settings.broker_url), settings)
    await publish(settings, "items", [upsert(f"item-{i}", i) for i in range(100)])
    async with catalogue(settings) as (reader, _):
        await wait_until(reader.synced)
    admin = kafka_admin(settings, str(settings.broker_url))
    try:
        admin.delete_topics([settings.topic("items")])
    finally:
        admin.close()
    await asyncio.sleep(0.5)
    ensure_topics(str(settings.broker_url), settings)
    await publish(settings, "items", [upsert(f"new-{i}", 500 + i) for i in range(10)])
    async with catalogue(settings) as (fresh, metrics):
        await wait_until(fresh.synced)
        await wait_until(lambda: len(fresh.index) == 10)
        assert sorted(fresh.index.ids()) == sorted(f"new-{i}" for i in range(10))
        assert read(metrics) == 10


async def test_a_running_catalogue_writes_its_snapshot_every_interval(settings: Settings) -> None:
    settings = settings.model_copy(update={"ann_snapshot_interval_s": 0.2})
    ensure_topics(str(settings.broker_url), settings)
    await publish(settings, "items", [upsert(f"item-{i}", i) for i in range(10)])
    async with catalogue(settings) as (reader, metrics):
        await wait_until(reader.snapshot_path.exists, timeout_s=10)
        assert metrics.registry.get_sample_value(
            "streamrank_item_index_snapshot_timestamp_seconds") == pytest.approx(time.time(), abs=5)
        written = reader.snapshot_path.stat().st_mtime_ns
        await publish(settings, "items", [upsert("late", 99)])
        await wait_until(lambda: reader.snapshot_path.stat().st_mtime_ns > written,
                         timeout_s=10)
        assert "late" in reader.index
