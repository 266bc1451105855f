"""The feature path end to end: embedded broker -> feature service -> real Redis (and memory)."""

from __future__ import annotations

import asyncio
import base64
import time
from typing import Any

import numpy as np
import orjson
import pytest
import redis.asyncio as aioredis
from aiokafka import AIOKafkaProducer

from models.features import (
    CHANNEL_INDEX,
    FEATURE_NAMES,
    HALF_LIVES_S,
    ITEM_FEATURE_NAMES,
    PRIOR_IMPRESSIONS,
    PRIOR_RATES,
    USER_FEATURE_NAMES,
    EntityState,
    ItemMeta,
)
from schemas import Event
from stream.features.reader import FeatureReader
from stream.features.redis_store import RedisStore
from stream.features.store import Applied, EventBatch, FeatureStore
from stream.features.watermarks import Origin
from stream.settings import Settings
from tests.integration.harness import (
    feature_service,
    open_test_store,
    publish,
    read_dead_letters,
    wait_until,
)

pytestmark = pytest.mark.integration

NOW = time.time()
T0 = NOW - 7200.0


def event(event_id: str, user: str, item: str, kind: str, ts: float,
          **extra: Any) -> tuple[str, bytes]:
    return user, orjson.dumps({"event_id": event_id, "user_id": user, "item_id": item,
                               "type": kind, "ts": ts, **extra})


def item(item_id: str, dim: int = 32, **extra: Any) -> tuple[str, bytes]:
    return item_id, orjson.dumps({"item_id": item_id, "ts": T0, "created_ts": T0 - 3600,
                                  "embedding": [0.25] * dim, **extra})


def decayed(times: list[float], now: float) -> np.ndarray:
    return np.array([sum(0.5 ** ((now - t) / h) for t in times) for h in HALF_LIVES_S])


KNOWN_SEQUENCE = [
    event("k1", "u1", "i1", "impression", T0),
    event("k2", "u1", "i2", "impression", T0 + 10),
    event("k3", "u1", "i1", "click", T0 + 60),
    event("k4", "u1", "i1", "dwell", T0 + 120, dwell_s=42.0),
    event("k5", "u1", "i2", "hide", T0 + 3600),
    event("k6", "u2", "i1", "impression", T0 + 4000),
    event("k7", "u2", "i2", "like", T0 + 4100),
    event("k8", "u2", "i9", "click", T0 + 4200),  # never upserted: no embedding to remember
]


@pytest.mark.parametrize("store_kind", ["redis", "memory"])
async def test_known_sequence_yields_closed_form_features(settings: Settings,
                                                          store_kind: str) -> None:
    store = await open_test_store(settings, store_kind)
    async with feature_service(settings, store) as (_, metrics):
        await publish(settings, "items", [item("i1"), item("i2", kind="ad", bid=0.5)])
        await publish(settings, "events", KNOWN_SEQUENCE)
        await wait_until(lambda: metrics.total("streamrank_events_processed") == 8
                         and metrics.total("streamrank_items_upserted") == 2)

    fetched = await store.fetch("u1", ["i1", "i2", "never-seen"])
    assert fetched.user is not None
    user = EntityState.unpack(fetched.user)
    now = NOW
    counters = user.decayed_to(now)
    expected = {
        "impression": decayed([T0, T0 + 10], now),
        "click": decayed([T0 + 60], now),
        "dwell": decayed([T0 + 120], now),
        "dwell_s": 42.0 * decayed([T0 + 120], now),
        "hide": decayed([T0 + 3600], now),
        "like": np.zeros(3),
    }
    for channel, values in expected.items():
        np.testing.assert_allclose(counters[CHANNEL_INDEX[channel]], values, rtol=1e-5,
                                   err_msg=channel)
    assert user.first_ts == T0
    assert user.last_ts == T0 + 3600
    assert user.last_click_ts == T0 + 60

    assert fetched.items[0] is not None
    item1 = EntityState.unpack(fetched.items[0]).decayed_to(now)
    np.testing.assert_allclose(item1[CHANNEL_INDEX["impression"]],
                               decayed([T0, T0 + 4000], now), rtol=1e-5)

    features = await FeatureReader(store, settings.embedding_dim).fetch(
        "u1", ["i1", "i2", "never-seen"], now=now)
    user_row = dict(zip(USER_FEATURE_NAMES, features.user, strict=True))
    impressions_1d = decayed([T0, T0 + 10], now)[1]
    clicks_1d = decayed([T0 + 60], now)[1]
    assert user_row["user_click_rate_1d"] == pytest.approx(
        (clicks_1d + PRIOR_IMPRESSIONS * PRIOR_RATES["click"])
        / (impressions_1d + PRIOR_IMPRESSIONS), rel=1e-5)
    assert user_row["user_log_since_last"] == pytest.approx(np.log1p(now - (T0 + 3600)),
                                                            rel=1e-5)
    assert features.items.shape == (3, len(ITEM_FEATURE_NAMES))
    assert features.known.tolist() == [True, True, False]
    np.testing.assert_allclose(features.embeddings[0], 0.25)
    np.testing.assert_allclose(features.embeddings[2], 0.0)
    item_rows = [dict(zip(ITEM_FEATURE_NAMES, row, strict=True)) for row in features.items]
    assert item_rows[1]["item_is_ad"] == 1.0 and item_rows[1]["item_bid"] == 0.5
    assert item_rows[0]["item_log_item_age"] == pytest.approx(np.log1p(now - (T0 - 3600)),
                                                              rel=1e-5)
    assert item_rows[2]["item_known"] == 0.0
    assert len(FEATURE_NAMES) + 4 == len(ITEM_FEATURE_NAMES)
    assert features.history_ts.tolist() == [T0 + 60]
    np.testing.assert_allclose(features.history, [[0.25] * settings.embedding_dim])
    other = await FeatureReader(store, settings.embedding_dim).fetch("u2", [], now=now)
    assert other.history_ts.tolist() == [T0 + 4100]
    assert await store.counts() == {"users": 2, "items": 3}
    await _cleanup(store)


async def test_reader_reuses_item_features_for_the_ttl_and_users_never(
        settings: Settings) -> None:
    store = await open_test_store(settings, "redis")
    reader = FeatureReader(store, settings.embedding_dim, item_cache_ttl_s=1.0)

    offsets = iter(range(100))

    async def write(clicks: int) -> None:
        events = [Event(event_id=f"w{next(offsets)}", user_id="u1", item_id="i1", type="click",
                        ts=NOW) for _ in range(clicks)]
        applied = await store.apply(EventBatch(events, [Origin(0, int(e.event_id[1:]))
                                                        for e in events]))
        assert (applied.events, applied.duplicates) == (clicks, [])

    item_clicks = ITEM_FEATURE_NAMES.index("item_log_click_1h")
    user_clicks = USER_FEATURE_NAMES.index("user_log_click_1h")
    await write(1)
    first = await reader.fetch("u1", ["i1"], now=NOW)
    await write(2)  # merged: 3 clicks now
    within = await reader.fetch("u1", ["i1"], now=NOW + 0.5)
    after = await reader.fetch("u1", ["i1"], now=NOW + 1.5)
    assert within.items[0, item_clicks] == first.items[0, item_clicks]
    assert after.items[0, item_clicks] > within.items[0, item_clicks]
    assert within.user[user_clicks] > first.user[user_clicks]  # users are read fresh
    repeated = await reader.fetch("u1", ["i1", "never-seen", "i1"], now=NOW + 3.0)
    assert repeated.known.tolist() == [True, False, True]
    assert repeated.items[0, item_clicks] == repeated.items[2, item_clicks] > 0
    await _cleanup(store)


async def test_scripts_cost_no_extra_round_trip_and_survive_a_redis_that_lost_them(
        settings: Settings) -> None:
    """The store calls its Lua scripts by SHA: no ``SCRIPT EXISTS`` before each pipeline,
    and after a ``SCRIPT FLUSH`` (what a restarted Redis looks like) writes and reads still
    work, each write counted exactly once."""
    assert settings.redis_url is not None
    admin = aioredis.Redis.from_url(settings.redis_url)
    store = await open_test_store(settings, "redis")
    memory = await open_test_store(settings, "memory")

    async def script_checks() -> int:
        stats = await admin.info("commandstats")
        return int(stats.get("cmdstat_script|exists", {}).get("calls", 0))

    meta = EventBatch(metas={"i1": ItemMeta(NOW, 0.0, False, np.ones(32, np.float32)).pack()})
    click = Event(event_id="s1", user_id="u1", item_id="i1", type="click", ts=NOW)
    update = EventBatch([click], [Origin(0, 7)])
    try:
        await admin.script_flush()
        checks = await script_checks()
        for target in (store, memory):
            await target.apply(meta)
            assert await target.apply(update) == Applied(1, 0, [])
        fetched = await store.fetch("u1", ["i1"])
        assert len(fetched.history) == 1
        # Read again from the same offset: a replay, skipped; from another: a duplicate.
        assert await store.apply(update) == Applied(0, 1, [])
        assert await store.apply(EventBatch([click], [Origin(0, 8)])) == Applied(0, 0, ["s1"])
        assert await script_checks() == checks
        expected = await memory.fetch("u1", ["i1"])
        assert (fetched.user, fetched.items, fetched.history) == (
            expected.user, expected.items, expected.history)
    finally:
        await admin.aclose()
        await memory.close()
        await _cleanup(store)


async def _cleanup(store: FeatureStore) -> None:
    if isinstance(store, RedisStore):
        await store.drop()
    await store.close()


async def _snapshot(store: FeatureStore, users: list[str], items: list[str]) -> list[Any]:
    per_user = [await store.fetch(u, items) for u in users]
    return [(f.user, f.items, f.item_meta) for f in per_user]


async def test_replay_after_restart_changes_nothing(settings: Settings) -> None:
    rng = np.random.default_rng(3)
    users = [f"u{i}" for i in range(20)]
    items = [f"i{i}" for i in range(30)]
    kinds = ["impression", "click", "like", "hide", "share"]
    events = [event(f"r{n}", str(rng.choice(users)), str(rng.choice(items)),
                    str(rng.choice(kinds)), T0 + n) for n in range(300)]
    store = await open_test_store(settings, "redis")

    async with feature_service(settings, store) as (_, metrics):
        await publish(settings, "events", events[:200])
        await wait_until(lambda: metrics.total("streamrank_events_processed") == 200)

    # Same group after a restart: resumes after the committed offsets, replays nothing.
    async with feature_service(settings, store) as (_, metrics):
        await publish(settings, "events", events[200:])
        await wait_until(lambda: metrics.total("streamrank_events_processed") == 100)
        assert metrics.total("streamrank_duplicate_events") == 0
    before = await _snapshot(store, users, items)

    # Offsets lost (a new group starts from the beginning): every event replays, none counts.
    replaying = settings.model_copy(update={"features_group": "replayer"})
    async with feature_service(replaying, store) as (_, metrics):
        await wait_until(lambda: metrics.total("streamrank_events_replayed") == 300)
        # The same events published again (a producer retry) are duplicates.
        await publish(settings, "events", events[:50])
        await wait_until(lambda: metrics.total("streamrank_duplicate_events") == 50)
        assert metrics.total("streamrank_events_processed") == 0
    assert await _snapshot(store, users, items) == before
    await _cleanup(store)


BAD_EVENTS: list[tuple[str, bytes]] = [
    ("not_json", b"{definitely not json"),
    ("wrong_type", b'"just a string"'),
    ("missing_field", orjson.dumps({"event_id": "b1", "user_id": "u1", "type": "click",
                                    "ts": T0})),
    ("unknown_field", event("b2", "u1", "i1", "click", T0, coupon="x")[1]),
    ("wrong_type", event("b3", "u1", "i1", "click", T0, position="3")[1]),
    ("non_finite", event("b4", "u1", "i1", "dwell", T0)[1].replace(b"}", b',"dwell_s":NaN}')),
    ("non_finite", event("b5", "u1", "i1", "dwell", T0)[1].replace(b"}", b',"dwell_s":1e999}')),
    ("invalid_value", event("b6", "u1", "i1", "dwell", T0, dwell_s=1e300)[1]),
    ("absurd_timestamp", event("b7", "u1", "i1", "click", -1.0)[1]),
    ("absurd_timestamp", event("b8", "u1", "i1", "click", NOW * 1000)[1]),
    ("unknown_event_type", event("b9", "u1", "i1", "superlike", T0)[1]),
    ("unsupported_version", event("b10", "u1", "i1", "click", T0, schema_version=9)[1]),
]
BAD_ITEMS: list[tuple[str, bytes]] = [
    ("embedding_length", item("i1", dim=5)[1]),
    ("list_too_long", item("i1", metadata={f"k{i}": i for i in range(40)})[1]),
    ("invalid_value", item("i1", embedding=[1e30] * 32)[1]),
]


async def test_bad_input_goes_to_dlq_and_leaves_state_untouched(settings: Settings) -> None:
    store = await open_test_store(settings, "redis")
    good_before = event("g1", "u1", "i1", "impression", T0)
    good_after = event("g2", "u1", "i1", "click", T0 + 1)
    # One key for all, so the corpus shares one partition and keeps its order.
    events = [good_before] + [("u1", raw) for _, raw in BAD_EVENTS] + [good_after]
    items = [item("i1")] + [("i1", raw) for _, raw in BAD_ITEMS]

    async with feature_service(settings, store) as (service, metrics):
        await publish(settings, "events", events)
        await publish(settings, "items", items)
        await wait_until(lambda: metrics.total("streamrank_events_processed") == 2
                         and metrics.total("streamrank_rejected") == len(BAD_EVENTS)
                         + len(BAD_ITEMS))
        assert service.started and not service.should_stop

    letters = await read_dead_letters(settings, len(BAD_EVENTS) + len(BAD_ITEMS))
    by_topic = {
        suffix: [letter for letter in letters if letter.source_topic == settings.topic(suffix)]
        for suffix in ("events", "items")
    }
    assert [letter.reason for letter in by_topic["events"]] == [r for r, _ in BAD_EVENTS]
    assert [letter.reason for letter in by_topic["items"]] == [r for r, _ in BAD_ITEMS]
    for letter, (_, raw) in zip(by_topic["events"], BAD_EVENTS, strict=True):
        assert base64.b64decode(letter.original_b64) == raw
        assert letter.detail
    assert [letter.offset for letter in by_topic["events"]] == list(range(1, 1 + len(BAD_EVENTS)))

    fetched = await store.fetch("u1", ["i1"])
    assert fetched.user is not None
    user = EntityState.unpack(fetched.user)
    assert user.ref_ts == T0 + 1
    np.testing.assert_allclose(user.counters[CHANNEL_INDEX["impression"]],
                               decayed([T0], T0 + 1), rtol=1e-6)
    np.testing.assert_allclose(user.counters[CHANNEL_INDEX["click"]], 1.0, rtol=1e-6)
    untouched = [c for c in CHANNEL_INDEX if c not in ("impression", "click")]
    assert all(user.counters[CHANNEL_INDEX[c]].sum() == 0 for c in untouched)
    assert user.first_ts == T0 and user.last_ts == T0 + 1
    features = await FeatureReader(store, settings.embedding_dim).fetch("u1", ["i1"])
    np.testing.assert_allclose(features.embeddings[0], 0.25)  # the good upsert, not a bad one
    await _cleanup(store)


async def test_commits_are_merged_across_batches_and_flushed_on_stop(settings: Settings) -> None:
    events = [event(f"c{n}", f"u{n % 5}", f"i{n % 7}", "impression", T0 + n) for n in range(60)]
    store = await open_test_store(settings, "redis")
    settings = settings.model_copy(update={"commit_interval_ms": 300})
    batches = commits = 0
    async with feature_service(settings, store) as (service, metrics):
        consumer = service._consumer
        assert consumer is not None
        real_commit, real_handle = consumer.commit, service.handle

        async def counting_commit(*args: Any, **kwargs: Any) -> None:
            nonlocal commits
            commits += 1
            await real_commit(*args, **kwargs)

        async def counting_handle(*args: Any, **kwargs: Any) -> Any:
            nonlocal batches
            batches += 1
            return await real_handle(*args, **kwargs)

        consumer.commit = counting_commit  # type: ignore[method-assign]
        service.handle = counting_handle  # type: ignore[method-assign]
        producer = AIOKafkaProducer(bootstrap_servers=settings.broker_url)
        await producer.start()
        try:
            for key, value in events:  # one at a time: many small batches
                await (await producer.send(settings.topic("events"), value, key=key.encode()))
                await asyncio.sleep(0.005)
        finally:
            await producer.stop()
        await wait_until(lambda: metrics.total("streamrank_events_processed") == len(events))
    assert batches >= 10
    assert commits <= batches / 2

    # Stopping committed the rest: the same group resumes at the end and replays nothing.
    async with feature_service(settings, store) as (_, metrics):
        await publish(settings, "events", [event("after", "u1", "i1", "click", T0 + 100)])
        await wait_until(lambda: metrics.total("streamrank_events_processed") == 1)
        assert metrics.total("streamrank_events_replayed") == 0
        assert metrics.total("streamrank_duplicate_events") == 0
    await _cleanup(store)
