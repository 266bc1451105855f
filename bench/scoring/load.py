"""Load through the broker: a producer sending the request pool, saturating or paced open loop,
and a follower of a results topic that times each request id's answer."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass, field

import numpy as np
import orjson
from aiokafka import AIOKafkaProducer

from bench.harness import Record, TopicTail
from bench.scoring.catalogue import Requests
from bench.scoring.config import BENCH_FETCH_WAIT_MS
from schemas import RankingResult
from schemas.codec import decode
from stream.errors import BenchFailed


def ranking_id(value: bytes) -> tuple[str, RankingResult | None]:
    """A worker's answer: its request id and the result."""
    result = decode(value, RankingResult)
    return result.request_id, result


def echoed_id(value: bytes) -> tuple[str, RankingResult | None]:
    """The echo's answer: the request itself, so only its id."""
    return str(orjson.loads(value)["request_id"]), None


@dataclass
class Results:
    """Follows a results topic from its end and times each request id's answer.

    A result's arrival is stamped when its fetch returns, before it is decoded, so the decoding
    of the others in that fetch does not count against it."""

    bootstrap: str
    topic: str
    parse: Callable[[bytes], tuple[str, RankingResult | None]]
    alive: Callable[[], None]  # raises when the process answering this topic died
    sent: dict[str, float] = field(default_factory=dict)  # time.monotonic() at send
    sent_wall: dict[str, float] = field(default_factory=dict)  # time.time() at send
    latencies_ms: list[float] = field(default_factory=list)
    arrivals: list[float] = field(default_factory=list)
    results: list[RankingResult] = field(default_factory=list)
    # Per worker result, in ms: send to the worker's receipt of its batch (broker in, queueing
    # behind the worker's previous batch), receipt to result (its own latency_ms), result to
    # arrival here (produce, broker out, our fetch). Wall clocks of one machine.
    stages: list[tuple[float, float, float]] = field(default_factory=list)
    on_arrival: Callable[[], None] | None = None
    _tail: TopicTail | None = None

    async def __aenter__(self) -> Results:
        self._tail = TopicTail(self.bootstrap, self.topic, self._arrived, from_end=True,
                               fetch_wait_ms=BENCH_FETCH_WAIT_MS)
        await self._tail.__aenter__()
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self._tail is not None:
            await self._tail.__aexit__(*exc)

    def _arrived(self, record: Record, arrived: float) -> None:
        request_id, result = self.parse(record.value or b"")
        sent = self.sent.pop(request_id, None)
        sent_wall = self.sent_wall.pop(request_id, None)
        if sent is None or sent_wall is None:
            return  # a straggler of an earlier pass
        self.latencies_ms.append((arrived - sent) * 1000.0)
        self.arrivals.append(arrived)
        if result is not None:
            self.results.append(result)
            received = result.ts - result.latency_ms / 1000.0
            arrived_wall = time.time() - (time.monotonic() - arrived)
            self.stages.append(((received - sent_wall) * 1000.0, result.latency_ms,
                                (arrived_wall - result.ts) * 1000.0))
        if self.on_arrival is not None:
            self.on_arrival()

    def reset(self) -> None:
        self.latencies_ms, self.arrivals, self.results, self.stages = [], [], [], []

    async def wait_all(self, timeout_s: float) -> None:
        deadline = time.monotonic() + timeout_s
        while self.sent:
            if time.monotonic() > deadline:
                raise BenchFailed(f"{len(self.sent)} requests got no answer on {self.topic} "
                                  f"within {timeout_s:.0f}s")
            if self._tail is not None:
                self._tail.check()
            self.alive()
            await asyncio.sleep(0.005)


class Load:
    """A producer of the request pool to one topic, answered on the ``results`` it follows."""

    def __init__(self, producer: AIOKafkaProducer, topic: str, results: Results,
                 requests: Requests) -> None:
        self.producer, self.topic, self.results, self.requests = (producer, topic, results,
                                                                  requests)
        # Each request's send until the broker's ack, in ms: the floor under the worker's
        # own ``produce`` stage, and so under its in-worker latency, at this rate.
        self.acks_ms: list[float] = []

    async def send(self) -> None:
        request_id, key, body = self.requests.next()
        self.results.sent_wall[request_id] = time.time()
        self.results.sent[request_id] = sent = time.monotonic()
        ack = await self.producer.send(self.topic, body, key=key)
        ack.add_done_callback(lambda _: self.acks_ms.append((time.monotonic() - sent) * 1e3))

    async def warm(self, requests: int) -> None:
        """A few requests answered end to end: the group is joined, the path is warm."""
        for _ in range(requests):
            await self.send()
        await self.results.wait_all(90.0)
        self.results.reset()

    async def saturate(self, window: int, seconds: float) -> tuple[float, float, int]:
        """Candidates/s with ``window`` requests in flight, from the first answer back until
        sending stops; the mean micro-batch the worker ran; the requests sent."""
        results = self.results
        slots = asyncio.Semaphore(window)
        results.on_arrival = slots.release
        results.reset()
        sent = 0
        end = time.monotonic() + seconds
        try:
            while time.monotonic() < end:
                await slots.acquire()
                await self.send()
                sent += 1
            stopped = time.monotonic()
            await results.wait_all(60.0)
        finally:
            results.on_arrival = None
        arrivals = np.asarray(results.arrivals)
        first = arrivals[0]
        counted = int(np.count_nonzero((arrivals > first) & (arrivals <= stopped)))
        if counted == 0:  # a very short pass: everything came back in the first fetch
            counted, stopped = len(arrivals), arrivals[-1] + 1e-3
        return (counted * self.requests.candidates / (stopped - first),
                mean_batch(results.results), sent)

    async def paced(self, rate: float, count: int) -> list[float]:
        """Open loop at ``rate`` requests/s; round trips in ms."""
        self.results.reset()
        self.acks_ms = []
        start = time.monotonic() + 0.01
        for index in range(count):
            delay = start + index / rate - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
            await self.send()
        await self.results.wait_all(60.0)
        return list(self.results.latencies_ms)


@contextlib.asynccontextmanager
async def producing(bootstrap: str) -> AsyncIterator[AIOKafkaProducer]:
    """The bench's producer: no linger, so a paced request leaves when it is due."""
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, linger_ms=0,
                                max_request_size=8 * 1024 * 1024)
    await producer.start()
    try:
        yield producer
    finally:
        await producer.stop()


def mean_batch(results: Sequence[RankingResult]) -> float:
    """Mean requests per worker micro-batch: the results of one batch share the instant the
    worker received it (``ts - latency_ms``), and batches are at least a model run apart."""
    if not results:
        return 0.0
    received = np.sort([r.ts - r.latency_ms / 1000.0 for r in results])
    batches = 1 + int(np.count_nonzero(np.diff(received) > 2e-4))
    return len(results) / batches
