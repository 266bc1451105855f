"""Environment set-up shared by the benches, so that each bench file holds only what it measures:
a run's own names, a private Redis, the broker and its topics, worker processes (from
``stream.runtime.worker_process``), following a topic, a consumer group's progress, pausing a
child, and the statistics helpers.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import signal
import subprocess
import tempfile
import time
import uuid
from collections.abc import AsyncIterator, Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TypeAlias

import numpy as np
import redis
from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.structs import ConsumerRecord
from kafka import TopicPartition as KafkaTopicPartition
from kafka.admin import NewTopic
from kafka.errors import KafkaError, TopicAlreadyExistsError

from stream.errors import BenchFailed
from stream.features.redis_store import RedisStore
from stream.runtime.broker import free_port
from stream.runtime.clients import kafka_admin
from stream.runtime.environment import broker, open_store
from stream.runtime.processes import die_with_parent, stop_process
from stream.settings import Settings

Record: TypeAlias = ConsumerRecord[bytes, bytes]


def run_settings(settings: Settings, kind: str) -> Settings:
    """A topic prefix, Redis namespace and consumer groups of this run alone: a configured broker
    or Redis may hold earlier runs' data, and the groups' default names are shared."""
    prefix = f"bench-{kind}-{uuid.uuid4().hex[:8]}"
    return settings.model_copy(update={"topic_prefix": prefix,
                                       "features_group": f"{prefix}-features",
                                       "scoring_group": f"{prefix}-scoring"})


# -- a private Redis ---------------------------------------------------------------------------


class RedisServer:
    """A ``redis-server`` of our own on a free loopback port, to kill and restart on purpose.

    ``durable``: an append-only file fsynced before every reply (``appendfsync always``), so a
    SIGKILL loses nothing that was acknowledged and a restart on the same port reloads it.
    Otherwise nothing is persisted."""

    def __init__(self, directory: Path, durable: bool = False) -> None:
        binary = shutil.which("redis-server")
        if binary is None:
            raise BenchFailed("redis-server is not installed (Debian: apt-get install "
                              "redis-server)")
        self.port = free_port()
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.log_path = directory / "redis.log"
        self.args = [binary, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "",
                     "--dir", str(directory), "--logfile", str(self.log_path),
                     "--appendonly", "yes" if durable else "no", "--appendfsync", "always"]
        self.process: subprocess.Popen[bytes] | None = None

    def __enter__(self) -> RedisServer:
        self.launch()
        self.wait_ready()
        return self

    def __exit__(self, *exc: object) -> None:
        if self.process is not None and self.process.poll() is None:
            stop_process(self.process, timeout_s=10)

    def launch(self) -> None:
        """Start the server and return at once (from a thread that outlives it)."""
        self.process = subprocess.Popen(self.args, stdout=subprocess.DEVNULL,
                                        stderr=subprocess.DEVNULL, preexec_fn=die_with_parent)

    def wait_ready(self, timeout_s: float = 30.0) -> None:
        """Until it answers PING (a restarted one first reloads its append-only file)."""
        client = redis.Redis.from_url(self.url, socket_connect_timeout=0.5)
        deadline = time.monotonic() + timeout_s
        try:
            while True:
                try:
                    client.ping()
                    return
                except (redis.RedisError, OSError) as exc:
                    if self.process is None or self.process.poll() is not None:
                        raise BenchFailed(f"redis-server exited; see {self.log_path}") from exc
                    if time.monotonic() > deadline:
                        raise BenchFailed(f"redis-server did not answer within {timeout_s:.0f}s;"
                                          f" see {self.log_path}") from exc
                    time.sleep(0.02)
        finally:
            client.close()

    def kill(self) -> None:
        """SIGKILL: whatever was not yet on disk is gone, as in a crash."""
        assert self.process is not None
        self.process.kill()
        self.process.wait()


# -- broker, topics, store -------------------------------------------------------------------


@dataclass(frozen=True)
class Environment:
    """Settings that point at this environment's broker, Redis and names."""

    settings: Settings
    bootstrap: str
    redis: RedisServer


@contextlib.contextmanager
def environment(settings: Settings, kind: str, durable_redis: bool = False
                ) -> Iterator[Environment]:
    """A fresh broker (unless one is configured) with this run's topics, and a private Redis
    on a free port; all of it gone afterwards."""
    settings = run_settings(settings, kind)
    with tempfile.TemporaryDirectory(prefix=f"streamrank-{kind}-") as directory, \
            RedisServer(Path(directory), durable_redis) as server:
        settings = settings.model_copy(update={"redis_url": server.url})
        with broker(settings) as bootstrap:
            try:
                yield Environment(settings, bootstrap, server)
            finally:
                delete_topics(settings, bootstrap)


def create_topics(bootstrap: str, settings: Settings, names: Sequence[str]) -> None:
    """Topics beside the record topics that ``ensure_topics`` makes (a bench's own)."""
    admin = kafka_admin(settings, bootstrap, client_id="streamrank-bench")
    try:
        with contextlib.suppress(TopicAlreadyExistsError):
            admin.create_topics([NewTopic(name, settings.partitions,
                                          settings.replication_factor) for name in names])
    finally:
        admin.close()


def delete_topics(settings: Settings, bootstrap: str) -> None:
    """A configured broker keeps this run's topics otherwise (an embedded one just goes)."""
    if not settings.broker_url:
        return
    with contextlib.suppress(KafkaError):
        admin = kafka_admin(settings, bootstrap, client_id="streamrank-bench")
        try:
            ours = [t for t in admin.list_topics()
                    if t.startswith(settings.topic_prefix + ".")]
            if ours:
                admin.delete_topics(ours)
        finally:
            admin.close()


async def open_run_store(settings: Settings) -> RedisStore:
    """The store the worker of this run writes, under the run's namespace."""
    store = await open_store(settings)
    assert isinstance(store, RedisStore), "a bench reads the Redis its worker wrote"
    return store


async def drop_store(settings: Settings) -> None:
    store = await open_run_store(settings)
    try:
        await store.drop()
    finally:
        await store.close()


# -- processes ---------------------------------------------------------------------------------


async def until_healthy(status: Callable[[], int | None], alive: Callable[[], bool],
                        timeout_s: float, what: str) -> None:
    """Poll ``status`` off the event loop until it says 200; fail if the process died."""
    deadline = time.monotonic() + timeout_s
    while await asyncio.to_thread(status) != 200:
        if not alive():
            raise BenchFailed(f"{what} exited before it was healthy")
        if time.monotonic() > deadline:
            raise BenchFailed(f"{what} was not healthy within {timeout_s:.0f}s")
        await asyncio.sleep(0.05)


def signal_child(process: subprocess.Popen[bytes] | None, signum: signal.Signals) -> None:
    """``signum`` to a child, and to its own children when it leads a process group (a worker
    of several processes: see ``WorkerProcess``)."""
    if process is not None and process.poll() is None:
        if os.getpgid(process.pid) == process.pid:
            os.killpg(process.pid, signum)
        else:
            os.kill(process.pid, signum)


@contextlib.contextmanager
def paused(process: subprocess.Popen[bytes] | None, enabled: bool = True) -> Iterator[None]:
    """SIGSTOP a child (ours) for the block, so its idle polling stays off the measurement."""
    if not enabled:
        yield
        return
    signal_child(process, signal.SIGSTOP)
    try:
        yield
    finally:
        signal_child(process, signal.SIGCONT)


# -- following a topic, and a group's progress --------------------------------------------------


async def assigned_consumer(bootstrap: str, topic: str, from_end: bool, fetch_wait_ms: int
                            ) -> AIOKafkaConsumer:
    """A consumer of every partition of ``topic``, in no group, at its start or its end."""
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, group_id=None,
                                enable_auto_commit=False, fetch_max_wait_ms=fetch_wait_ms,
                                max_partition_fetch_bytes=8 * 1024 * 1024)
    await consumer.start()
    await consumer.topics()
    partitions = [TopicPartition(topic, p)
                  for p in sorted(consumer.partitions_for_topic(topic) or {0})]
    consumer.assign(partitions)
    if from_end:
        await consumer.seek_to_end(*partitions)
    else:
        await consumer.seek_to_beginning(*partitions)
    for partition in partitions:
        await consumer.position(partition)
    return consumer


async def paced(rate: float, stop: asyncio.Event) -> AsyncIterator[int]:
    """0, 1, 2, ... at ``rate`` per second (on schedule from the first) until ``stop``."""
    started, k = time.monotonic(), 0
    while not stop.is_set():
        delay = started + k / rate - time.monotonic()
        if delay > 0:
            await asyncio.sleep(delay)
        yield k
        k += 1


class TopicTail:
    """Every record of a topic from its beginning (or only those after its end at the start),
    handed to ``on_record`` with the monotonic time its fetch returned, before any of that
    fetch is handled; :meth:`read_to_end` waits until all that was there has been read."""

    def __init__(self, bootstrap: str, topic: str, on_record: Callable[[Record, float], None],
                 from_end: bool = False, fetch_wait_ms: int = 20) -> None:
        self.bootstrap, self.topic = bootstrap, topic
        self.on_record = on_record
        self._from_end, self._fetch_wait_ms = from_end, fetch_wait_ms
        self._consumer: AIOKafkaConsumer | None = None
        self._task: asyncio.Task[None] | None = None

    async def __aenter__(self) -> TopicTail:
        self._consumer = await assigned_consumer(self.bootstrap, self.topic,
                                                 from_end=self._from_end,
                                                 fetch_wait_ms=self._fetch_wait_ms)
        self._task = asyncio.ensure_future(self._follow())
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
        if self._consumer is not None:
            await self._consumer.stop()

    async def _follow(self) -> None:
        assert self._consumer is not None
        while True:
            batch = await self._consumer.getmany(timeout_ms=100)
            arrived = time.monotonic()
            for records in batch.values():
                for record in records:
                    self.on_record(record, arrived)

    def check(self) -> None:
        """Raise what stopped the follower, if it stopped."""
        if self._task is not None and self._task.done():
            self._task.result()

    async def read_to_end(self, timeout_s: float = 30.0) -> None:
        """Until every partition is read up to the high watermark its latest fetch reported
        (the embedded broker's ListOffsets answer is wrong, its fetch answers are right)."""
        consumer = self._consumer
        assert consumer is not None and self._task is not None
        await asyncio.sleep(0.5)  # a few fetches of the follower: a fresh high watermark
        deadline = time.monotonic() + timeout_s
        while [tp for tp in consumer.assignment()
               if await consumer.position(tp) < (consumer.highwater(tp) or 0)]:
            self.check()
            if time.monotonic() > deadline:
                raise BenchFailed(f"{self.topic} was not read to its end within {timeout_s}s")
            await asyncio.sleep(0.05)


class GroupProgress:
    """A consumer group's committed offsets, per partition.

    Through kafka-python's admin client: aiokafka's fails to parse the embedded broker's
    OffsetFetch answer. Compare them with the offsets the producer was acknowledged (the
    embedded broker answers ListOffsets for the latest offset wrongly; aiokafka's
    ``end_offsets`` got 1 for partitions holding hundreds). The calls block, so async code runs
    them with ``asyncio.to_thread``, one at a time."""

    def __init__(self, settings: Settings, bootstrap: str, group: str,
                 topics: Sequence[str]) -> None:
        self.group = group
        self.partitions = [KafkaTopicPartition(t, p) for t in topics
                           for p in range(settings.partitions)]
        self._admin = kafka_admin(settings, bootstrap, client_id="streamrank-bench-progress")

    def committed(self) -> dict[TopicPartition, int]:
        """The next offset to consume, for each partition the group committed."""
        marks = self._admin.list_group_offsets({self.group: self.partitions})[self.group]
        return {TopicPartition(tp.topic, tp.partition): marks[tp].offset
                for tp in self.partitions if tp in marks and marks[tp].offset >= 0}

    def close(self) -> None:
        self._admin.close()


# -- statistics ----------------------------------------------------------------------------------


def percentile(samples: Sequence[float] | np.ndarray, q: float) -> float:
    """``q``-th percentile rounded to 3 decimals; NaN for no samples."""
    values = np.asarray(samples, dtype=np.float64)
    return round(float(np.percentile(values, q)), 3) if len(values) else float("nan")


def median(samples: Sequence[float] | np.ndarray) -> float:
    return percentile(samples, 50)
