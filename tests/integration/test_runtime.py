"""The supervised runtime on the real broker and Redis: poison, fatal errors, failed sends."""

from __future__ import annotations

import asyncio
import logging
import time
import urllib.error
import urllib.request
from collections.abc import Sequence
from typing import Any

import orjson
import pytest
import redis
import redis.asyncio as aioredis
from aiokafka import AIOKafkaProducer
from aiokafka.errors import KafkaTimeoutError

from schemas import Event
from stream.demo import WorkerProcess
from stream.features.role import FeatureService
from stream.features.store import MemoryStore
from stream.runtime.consumer import Decoded, Sends, SupervisedConsumer
from stream.runtime.environment import ensure_topics
from stream.runtime.failures import LoopFailed
from stream.runtime.metrics import WorkerMetrics
from stream.settings import Settings
from tests.integration.harness import open_test_store, publish, read_dead_letters, wait_until

pytestmark = pytest.mark.integration

NOW = time.time()


def events(n: int, user: str = "u1", poison_at: int | None = None) -> list[tuple[str, bytes]]:
    return [(user, orjson.dumps({"event_id": f"e{k}", "user_id": "poison" if k == poison_at
                                 else user, "item_id": f"i{k % 3}", "type": "click",
                                 "ts": NOW - 60 + k})) for k in range(n)]


class Recorder(SupervisedConsumer):
    """Records what it handles; raises on the 'poison' user, and can fail one send."""

    def __init__(self, settings: Settings, fail_send_at: int | None = None,
                 **kwargs: Any) -> None:
        super().__init__(settings, str(settings.broker_url), WorkerMetrics(), name="recorder",
                         topics={settings.topic("events"): Event},
                         group_id=f"{settings.topic_prefix}-recorder", fetch_wait_ms=5,
                         max_records=7, **kwargs)
        self.handled: list[int] = []
        self.commits: list[int] = []
        self._fail_send_at = fail_send_at

    async def handle(self, batch: Sequence[Decoded[Any]]) -> Sends:
        if any(d.value.user_id == "poison" for d in batch):
            raise ValueError("this record breaks the handler")
        self.handled += [d.record.offset for d in batch]
        sends: Sends = []
        if self._fail_send_at in self.handled:
            self._fail_send_at = None
            failed: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
            failed.set_exception(KafkaTimeoutError("injected: the broker did not acknowledge"))
            sends.append(failed)
        return sends


async def test_a_poison_record_goes_to_the_dlq_and_the_loop_goes_on(settings: Settings) -> None:
    ensure_topics(str(settings.broker_url), settings)
    settings = settings.model_copy(update={"partitions": 1, "handler_attempts": 2})
    recorder = Recorder(settings)
    await recorder.start()
    try:
        await publish(settings, "events", events(20, poison_at=9))
        await wait_until(lambda: len(recorder.handled) == 19)
        assert recorder.health.ready
    finally:
        await recorder.stop()
    assert sorted(set(recorder.handled)) == [k for k in range(20) if k != 9]
    [letter] = await read_dead_letters(settings, 1)
    assert (letter.reason, letter.offset) == ("handler_error", 9)
    assert "failed 2 times: ValueError: this record breaks the handler" in letter.detail


async def test_a_failed_send_commits_nothing_past_it_and_is_read_again(
        settings: Settings) -> None:
    ensure_topics(str(settings.broker_url), settings)
    settings = settings.model_copy(update={"partitions": 1, "commit_interval_ms": 0})
    recorder = Recorder(settings, fail_send_at=10)
    await recorder.start()
    assert recorder._consumer is not None
    real_commit = recorder._consumer.commit
    committed_before_retry: list[int] = []

    async def watching_commit(offsets: dict[Any, int]) -> None:
        if recorder.handled.count(10) < 2:
            committed_before_retry.extend(offsets.values())
        await real_commit(offsets)

    recorder._consumer.commit = watching_commit  # type: ignore[method-assign]
    try:
        await publish(settings, "events", events(30))
        await wait_until(lambda: 29 in recorder.handled)
        await wait_until(lambda: recorder._to_commit == {} and recorder._durable != {})
        assert recorder.health.ready  # the retried sends went through: polling again
    finally:
        await recorder.stop()
    assert max(committed_before_retry, default=0) <= 10  # never past the failed batch's start
    assert set(recorder.handled) == set(range(30))
    assert recorder.handled.count(10) == 2  # read again after the rewind


class OrderedRecorder(Recorder):
    """Applies each batch as an ordered effect that waits (up to a second) for the next batch's
    handler to start: so it sees whether handlers overlap effects. Its effect fails on the
    'poison' user, which its handler lets through."""

    def __init__(self, settings: Settings) -> None:
        super().__init__(settings)
        self.applied: list[int] = []
        self.overlapped = 0
        self._next_handled = asyncio.Event()

    async def handle(self, batch: Sequence[Decoded[Any]]) -> Sends:
        self._next_handled.set()
        self._next_handled = asyncio.Event()
        handled_after = self._next_handled
        offsets = [d.record.offset for d in batch]
        poisoned = any(d.value.user_id == "poison" for d in batch)
        return [self.in_order(lambda: self._apply(offsets, poisoned, handled_after))]

    async def _apply(self, offsets: list[int], poisoned: bool, handled_after: asyncio.Event
                     ) -> None:
        try:
            await asyncio.wait_for(handled_after.wait(), timeout=1.0)
            self.overlapped += 1
        except TimeoutError:
            pass  # the last batch: no handler comes after it
        if poisoned:
            raise ValueError("this record breaks the effect")
        self.applied += offsets


async def test_ordered_effects_land_in_batch_order_while_the_next_batch_is_handled(
        settings: Settings) -> None:
    ensure_topics(str(settings.broker_url), settings)
    settings = settings.model_copy(update={"partitions": 1})
    recorder = OrderedRecorder(settings)
    await recorder.start()
    try:
        await publish(settings, "events", events(40))
        await wait_until(lambda: len(recorder.applied) == 40)
    finally:
        await recorder.stop()
    assert recorder.applied == list(range(40))  # each once, in order
    assert recorder.overlapped >= 1  # a handler ran while an effect before it was in flight


async def test_an_effect_that_fails_on_a_record_dead_letters_that_record_only(
        settings: Settings) -> None:
    ensure_topics(str(settings.broker_url), settings)
    settings = settings.model_copy(update={"partitions": 1, "handler_attempts": 2})
    recorder = OrderedRecorder(settings)
    await recorder.start()
    try:
        await publish(settings, "events", events(30, poison_at=12))
        await wait_until(lambda: len(recorder.applied) == 29)
        assert recorder.health.ready
    finally:
        await recorder.stop()
    assert recorder.applied == [k for k in range(30) if k != 12]
    [letter] = await read_dead_letters(settings, 1)
    assert (letter.reason, letter.offset) == ("handler_error", 12)
    assert "ValueError: this record breaks the effect" in letter.detail


async def test_a_store_that_refuses_a_command_stops_the_loop_loudly(
        settings: Settings, caplog: pytest.LogCaptureFixture) -> None:
    ensure_topics(str(settings.broker_url), settings)
    store = await open_test_store(settings, "redis")
    failures: list[LoopFailed] = []
    service = FeatureService(settings, str(settings.broker_url), store, WorkerMetrics(),
                             on_fatal=failures.append)
    client = aioredis.Redis.from_url(str(settings.redis_url))
    prefix = store.prefix(0, "u")  # type: ignore[attr-defined]
    await client.lpush(prefix + "u1", b"not a feature value")  # WRONGTYPE for the script
    await service.start()
    try:
        with caplog.at_level(logging.CRITICAL):
            await publish(settings, "events", events(3))
            await wait_until(lambda: bool(failures), timeout_s=20)
        assert service.health.state == "failed"
        assert "WRONGTYPE" in service.health.reason
        assert not service.health.ready
        assert any("store refused a command" in r.getMessage() for r in caplog.records)
    finally:
        await service.stop()
        await client.delete(prefix + "u1")
        await client.aclose()
        await store.close()


async def test_the_in_memory_store_is_rebuilt_by_replay_after_a_restart(
        settings: Settings, caplog: pytest.LogCaptureFixture) -> None:
    ensure_topics(str(settings.broker_url), settings)
    first, second = MemoryStore(86_400, 50), MemoryStore(86_400, 50)
    metrics = WorkerMetrics()
    service = FeatureService(settings, str(settings.broker_url), first, metrics)
    await service.start()
    await publish(settings, "events", events(25, user="u7"))
    await wait_until(lambda: metrics.total("streamrank_events_processed") == 25)
    await service.stop()  # offsets committed: a Redis store would resume after them

    with caplog.at_level(logging.INFO):
        metrics = WorkerMetrics()
        service = FeatureService(settings, str(settings.broker_url), second, metrics)
        await service.start()
        await wait_until(lambda: metrics.total("streamrank_events_processed") == 25)
        await service.stop()
    assert await second.fetch("u7", ["i0", "i1"]) == await first.fetch("u7", ["i0", "i1"])
    assert any("rebuilt by replaying" in r.getMessage() for r in caplog.records)


def test_a_worker_whose_loop_fails_answers_503_then_exits_non_zero(settings: Settings) -> None:
    """The process view: /health turns 503 with the reason, then the worker exits with 3."""
    ensure_topics(str(settings.broker_url), settings)
    settings = settings.model_copy(update={"roles": "features"})
    client = redis.Redis.from_url(str(settings.redis_url))

    async def key_of_u1() -> str:
        store = await open_test_store(settings, "redis")
        await store.close()
        return str(store.prefix(0, "u")) + "u1"  # type: ignore[attr-defined]

    key = asyncio.run(key_of_u1())
    client.lpush(key, b"not a feature value")
    try:
        with WorkerProcess(settings, str(settings.broker_url)) as worker:
            asyncio.run(publish(settings, "events", events(3)))
            url = f"http://127.0.0.1:{worker.port}/health"
            deadline = time.monotonic() + 30
            body = None
            while body is None and time.monotonic() < deadline:
                try:
                    urllib.request.urlopen(url, timeout=2)
                except urllib.error.HTTPError as error:
                    body = orjson.loads(error.read())
                except OSError:
                    pass
                time.sleep(0.05)
            assert body is not None, "/health never answered 503"
            assert body["consumers"]["features"]["state"] == "failed"
            assert "WRONGTYPE" in body["consumers"]["features"]["reason"]
            assert worker.process is not None
            assert worker.process.wait(timeout=30) == 3
    finally:
        client.delete(key)
        client.close()


async def test_a_group_that_starts_at_latest_commits_its_start_before_reading(
        settings: Settings) -> None:
    """Else a kill -9 before its first commit would restart at a later 'latest' and skip the
    requests that arrived in between."""
    ensure_topics(str(settings.broker_url), settings)
    recorder = Recorder(settings, offset_reset="latest")
    await recorder.start()
    try:
        assert recorder._consumer is not None
        await wait_until(lambda: recorder.health.ready)  # the assignment callback has run
        for tp in recorder._consumer.assignment():
            assert await recorder._consumer.committed(tp) is not None
        await publish(settings, "events", events(3))
        await wait_until(lambda: len(recorder.handled) == 3)
    finally:
        await recorder.stop()


async def test_a_consumer_behind_thousands_of_small_batches_catches_up(
        settings: Settings) -> None:
    """The embedded broker answers a 1 ms fetch empty once it has thousands of single-record
    batches to scan: without a wider wait while behind, such a consumer read nothing, ever
    (0 of 3,000 in 20 s), while it looked healthy."""
    ensure_topics(str(settings.broker_url), settings)
    settings = settings.model_copy(update={"partitions": 1})
    producer = AIOKafkaProducer(bootstrap_servers=settings.broker_url, linger_ms=0)
    await producer.start()
    try:
        for key, value in events(3000):  # one record per produce request: one batch each
            await producer.send_and_wait(settings.topic("events"), value, key=key.encode())
    finally:
        await producer.stop()
    recorder = Recorder(settings)
    recorder._fetch_wait_ms = 1  # the scoring path's wait
    await recorder.start()
    try:
        await wait_until(lambda: len(recorder.handled) == 3000, timeout_s=60)
        await wait_until(lambda: recorder.health.ready)
        assert recorder._consumer is not None
        assert recorder._consumer._fetcher._fetch_max_wait_ms == 1  # back once caught up
    finally:
        await recorder.stop()
