"""Alert delivery: every drift alert to every subscription that matches it, at least once.

A consumer group of its own (``STREAMRANK_ALERT_DELIVERY_GROUP``) reads ``drift-alerts``, so
delivery never holds up the monitors that publish them, and each alert goes out from one
worker of the group. Each matching subscription gets the alert through its own lane
(:mod:`stream.drift.lanes`), so a slow or dead receiver delays only its own alerts.

**At least once.** An alert's offset is committed only once each of its deliveries has
finished: delivered, or dead-lettered as ``delivery_failed`` after
``STREAMRANK_WEBHOOK_ATTEMPTS`` attempts (:meth:`AlertDelivery.holds`). Deliveries finish
out of order and minutes after the alert was read, so the lanes call
:meth:`~stream.runtime.consumer.SupervisedConsumer.release` as each finishes, and the
consumer reads on meanwhile. A crash before the commit delivers those alerts again: a
receiver drops repeats by ``alert_id`` (in the body, and in ``X-Streamrank-Alert-Id``).

The group starts at the earliest offset, so alerts published before delivery first ran are
delivered too, to the subscriptions that exist when they are read.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Coroutine, Mapping, Sequence
from typing import Any

from aiokafka.structs import TopicPartition
from tenacity import (
    AsyncRetrying,
    RetryCallState,
    retry_if_exception,
    stop_after_attempt,
    wait_exponential,
)

from schemas import DriftAlert, DriftSubscription, Rejection, encode
from stream.drift.lanes import Job, Lane
from stream.drift.routing import routes
from stream.drift.subscriptions import SubscriptionRegistry
from stream.drift.webhooks import DeliveryError, post_alert
from stream.runtime.consumer import Decoded, Sends, SupervisedConsumer
from stream.runtime.failures import Failure, classify
from stream.runtime.metrics import WorkerMetrics
from stream.settings import Settings

log = logging.getLogger(__name__)

BACKOFF_FIRST_S = 1.0  # then doubling, up to STREAMRANK_WEBHOOK_BACKOFF_MAX_S
SYNC_TIMEOUT_S = 30.0  # for the registry to read its topic once, before the first routing


class AlertDelivery(SupervisedConsumer):
    """Routes each alert to its subscriptions' lanes; commits it once they are done with it."""

    def __init__(self, settings: Settings, bootstrap: str, registry: SubscriptionRegistry,
                 metrics: WorkerMetrics, **kwargs: Any) -> None:
        super().__init__(settings, bootstrap, metrics, name="alert-delivery",
                         topics={settings.topic("drift-alerts"): DriftAlert},
                         group_id=settings.group("alert-delivery"), fetch_wait_ms=100,
                         max_records=500, **kwargs)
        self._registry = registry
        self._lanes: dict[str, Lane] = {}
        # Per partition, the offsets of alerts read whose deliveries are not all finished,
        # and how many are left.
        self._unfinished: dict[TopicPartition, dict[int, int]] = {}
        self._stopping_lanes = False
        self._background: set[asyncio.Future[None]] = set()  # referenced until done

    async def on_stop(self) -> None:
        # Deliveries in flight stop here; their alerts are not committed, so they come again.
        self._stopping_lanes = True
        await self._close_lanes()
        await super().on_stop()

    # -- the consumer's side -------------------------------------------------------------

    async def handle(self, batch: Sequence[Decoded[Any]]) -> Sends:
        # Routing before the registry has read every subscription would skip some for good.
        await self._registry.wait_synced(SYNC_TIMEOUT_S)
        subscriptions = self._registry.all()
        for decoded in batch:
            record = decoded.record
            tp = TopicPartition(record.topic, record.partition)
            unfinished = self._unfinished.setdefault(tp, {})
            matched = routes(decoded.value, subscriptions)
            if not matched or record.offset in unfinished:  # nothing to do, or queued already
                continue
            unfinished[record.offset] = len(matched)
            for subscription in matched:
                self._queue(Job(subscription.subscription_id, decoded.value, record))
        return []

    def holds(self) -> Mapping[TopicPartition, int]:
        return {tp: min(offsets) for tp, offsets in self._unfinished.items() if offsets}

    def forget(self) -> None:
        # The alerts come again and are routed again; deliveries in flight may finish twice.
        self._unfinished.clear()
        lanes, self._lanes = self._lanes, {}
        for lane in lanes.values():
            self._in_background(lane.close())

    def _queue(self, job: Job) -> None:
        if self._stopping_lanes:
            return  # held, so read again after the restart
        lane = self._lanes.get(job.subscription_id)
        if lane is None:
            lane = self._lanes[job.subscription_id] = Lane(self._deliver, self._finished)
        if not lane.put(job):
            self._in_background(self._refuse_queued(job))

    async def _refuse_queued(self, job: Job) -> None:
        subscription = self._registry.get(job.subscription_id)
        sink = subscription.sink.kind if subscription else "unknown"
        await self._give_up(job, sink, "its queue is full: the receiver has been failing")
        self._finished(job)

    def _in_background(self, work: Coroutine[Any, Any, None]) -> None:
        task = asyncio.ensure_future(work)
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    def _finished(self, job: Job) -> None:
        tp = TopicPartition(job.record.topic, job.record.partition)
        unfinished = self._unfinished.get(tp, {})
        left = unfinished.get(job.record.offset)
        if left is None:
            return  # forgotten meanwhile
        if left > 1:
            unfinished[job.record.offset] = left - 1
            return
        del unfinished[job.record.offset]
        self.release()

    async def _close_lanes(self) -> None:
        lanes, self._lanes = self._lanes, {}
        await asyncio.gather(*(lane.close() for lane in lanes.values()))

    # -- one delivery --------------------------------------------------------------------

    async def _deliver(self, job: Job) -> None:
        """Deliver ``job`` to its subscription as it is now (a subscription deleted since the
        alert was routed gets nothing), or dead-letter it. Never raises."""
        subscription = self._registry.get(job.subscription_id)
        if subscription is None:
            return
        sink = subscription.sink.kind
        retrying = AsyncRetrying(
            stop=stop_after_attempt(self.settings.webhook_attempts),
            wait=wait_exponential(multiplier=BACKOFF_FIRST_S,
                                  max=self.settings.webhook_backoff_max_s),
            retry=retry_if_exception(lambda e: isinstance(e, DeliveryError) and not e.final),
            before_sleep=lambda state: self._retried(sink, job, state), reraise=True)
        try:
            async for attempt in retrying:
                with attempt:
                    await self._send(subscription, job.alert)
        except DeliveryError as exc:
            attempts = retrying.statistics.get("attempt_number", 1)
            await self._give_up(job, sink, f"{exc} (attempt {attempts} of "
                                           f"{self.settings.webhook_attempts})")
        except Exception as exc:  # a bug of ours: the alert is not lost, it is dead-lettered
            log.exception("alert delivery: %s to %s failed", job.alert.alert_id,
                          job.subscription_id)
            await self._give_up(job, sink, f"{type(exc).__name__}: {exc}")
        else:
            self.metrics.alert_deliveries.labels(sink, "delivered").inc()

    async def _send(self, subscription: DriftSubscription, alert: DriftAlert) -> None:
        sink, body = subscription.sink, encode(alert)
        timeout_s = self.settings.webhook_timeout_s
        if sink.kind == "webhook":
            await post_alert(sink.url, sink.secret, alert.alert_id, body,
                             allow=self.settings.webhook_allow, timeout_s=timeout_s)
            return
        try:
            async with asyncio.timeout(timeout_s):
                await self.producer.send_and_wait(sink.topic, body, key=alert.signal.encode())
        except TimeoutError:
            raise DeliveryError(f"topic {sink.topic}: no acknowledgement within {timeout_s:g} s",
                                final=False) from None
        except Exception as exc:
            raise DeliveryError(f"topic {sink.topic}: {type(exc).__name__}: {exc}",
                                final=classify(exc) is not Failure.TRANSIENT) from None

    def _retried(self, sink: str, job: Job, state: RetryCallState) -> None:
        self.metrics.alert_deliveries.labels(sink, "retried").inc()
        error = state.outcome.exception() if state.outcome else None
        log.info("alert %s to subscription %s: attempt %d failed (%s), retrying",
                 job.alert.alert_id, job.subscription_id, state.attempt_number, error)

    async def _give_up(self, job: Job, sink: str, why: str) -> None:
        """Dead-letter ``job`` as ``delivery_failed``, trying while the broker is unavailable
        (the alert's offset is held until then), and count it."""
        detail = f"subscription {job.subscription_id}: {why}"
        log.warning("alert %s not delivered: %s", job.alert.alert_id, detail)
        retrying = AsyncRetrying(wait=wait_exponential(multiplier=0.1, max=5.0), reraise=True,
                                 retry=retry_if_exception(
                                     lambda e: classify(e) is Failure.TRANSIENT))
        async for attempt in retrying:
            with attempt:
                await self.dead_letter(job.record, Rejection("delivery_failed", detail[:2000]))
        self.metrics.alert_deliveries.labels(sink, "failed").inc()
        self.metrics.alert_delivery_failures.labels(job.subscription_id).inc()
