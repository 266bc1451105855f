"""The echo: the broker's floor. The scoring role's fetch wait, produce and commit, minus decode
and scoring, in a child process of its own (``python -m bench.scoring echo ...``)."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path

from aiokafka import TopicPartition

from bench.harness import signal_child
from stream.errors import BenchFailed
from stream.runtime.clients import kafka_consumer, kafka_producer
from stream.runtime.processes import stop_process
from stream.settings import Settings

ECHO_TOPICS = ("echo-requests", "echo-results")


def echo_topic(settings: Settings, suffix: str) -> str:
    """The echo's topics, beside the run's own (``Settings.topic`` knows only the record topics)."""
    assert suffix in ECHO_TOPICS
    return f"{settings.topic_prefix}.{suffix}"


class EchoService:
    """Each request's bytes go straight to the echo results topic, and offsets commit once the
    copies are acknowledged, as the worker's do.

    It takes every partition by manual assignment and commits to its group as a standalone
    consumer: no group membership, so it can be paused for any length of time without a
    rebalance. The worker keeps the usual membership and is paused for a few seconds at most."""

    def __init__(self, settings: Settings, bootstrap: str) -> None:
        self._in = echo_topic(settings, ECHO_TOPICS[0])
        self._out = echo_topic(settings, ECHO_TOPICS[1])
        self._max_records = settings.scoring_batch_max_requests
        self._consumer = kafka_consumer(settings, bootstrap,
                                        group_id=f"{settings.topic_prefix}-echo",
                                        auto_offset_reset="earliest",
                                        fetch_max_wait_ms=settings.scoring_wait_ms)
        self._producer = kafka_producer(settings, bootstrap, linger_ms=1)

    async def run(self, stop: asyncio.Event) -> None:
        await self._producer.start()
        await self._consumer.start()
        try:
            partitions = self._consumer.partitions_for_topic(self._in) or {0}
            self._consumer.assign([TopicPartition(self._in, p) for p in sorted(partitions)])
            while not stop.is_set():
                batch = await self._consumer.getmany(timeout_ms=200,
                                                     max_records=self._max_records)
                pending = [await self._producer.send(self._out, record.value, key=record.key)
                           for records in batch.values() for record in records]
                await asyncio.gather(*pending)
                if batch:
                    await self._consumer.commit(
                        {tp: records[-1].offset + 1 for tp, records in batch.items()})
        finally:
            await self._consumer.stop()
            await self._producer.stop()


class EchoProcess:
    """:class:`EchoService` in a child process of its own, like the worker."""

    def __init__(self, settings: Settings, bootstrap: str) -> None:
        self.args = [sys.executable, "-m", "bench.scoring", "echo", bootstrap,
                     settings.topic_prefix, str(settings.scoring_wait_ms),
                     str(settings.scoring_batch_max_requests), str(settings.partitions)]
        handle, name = tempfile.mkstemp(prefix="streamrank-echo-", suffix=".log")
        os.close(handle)
        self.log_path = Path(name)
        self.process: subprocess.Popen[bytes] | None = None

    def __enter__(self) -> EchoProcess:
        with open(self.log_path, "wb") as log_file:
            self.process = subprocess.Popen(self.args, stdout=log_file,
                                            stderr=subprocess.STDOUT)
        return self

    def __exit__(self, *exc: object) -> None:
        assert self.process is not None
        signal_child(self.process, signal.SIGCONT)
        stop_process(self.process, timeout_s=15)
        self.log_path.unlink(missing_ok=True)

    def check(self) -> None:
        """Raise when the echo died: its answers would never come."""
        if self.process is None or self.process.poll() is not None:
            raise BenchFailed(f"the echo process exited; see {self.log_path}")


def echo_main(argv: Sequence[str]) -> None:
    """The child: ``BOOTSTRAP PREFIX WAIT_MS MAX_RECORDS PARTITIONS``, until SIGTERM."""
    bootstrap, prefix, wait_ms, max_records, partitions = argv
    settings = Settings(broker_url=bootstrap, topic_prefix=prefix,
                        scoring_wait_ms=int(wait_ms), scoring_batch_max_requests=int(max_records),
                        partitions=int(partitions))

    async def serve() -> None:
        stop = asyncio.Event()
        for signum in (signal.SIGTERM, signal.SIGINT):
            asyncio.get_running_loop().add_signal_handler(signum, stop.set)
        await EchoService(settings, bootstrap).run(stop)

    asyncio.run(serve())
