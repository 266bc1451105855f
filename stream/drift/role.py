"""The drift role: outcomes, rankings and the feature log in, ``DriftAlert`` records out.

Its monitors (:mod:`models.drift`) are global, one per signal, so the role is meant to run as
one member of its group: a second member would watch only the partitions it got.

**Restarts rebuild the monitors by replay**, not from a snapshot (:mod:`stream.drift.rebuild`
says why): when it is given partitions, and before it feeds anything new, the role reads up to
``STREAMRANK_DRIFT_REPLAY_RECORDS`` of each one's records again from before the committed
offset.
Alerts read back from the drift-alerts topic prime the gate first (:mod:`stream.drift.alerts`),
so a change detected again during or after the replay, in the same direction within the
cooldown, goes out no second time; one the run before never got to alert on still does.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence
from typing import Any

from aiokafka.structs import TopicPartition

from models.drift import AlertGate, MonitorSet
from schemas import DriftAlert, FeatureLog, Outcome, RankingResult, Rejection, decode, encode
from stream.drift import signals
from stream.drift.alerts import drift_alert, prime_from_topic
from stream.drift.rebuild import records_before
from stream.drift.signals import SignalBatch
from stream.runtime.consumer import Decoded, Sends, SupervisedConsumer
from stream.runtime.metrics import WorkerMetrics
from stream.settings import Settings

log = logging.getLogger(__name__)


class DriftService(SupervisedConsumer):
    def __init__(self, settings: Settings, bootstrap: str, metrics: WorkerMetrics,
                 **kwargs: Any) -> None:
        super().__init__(
            settings, bootstrap, metrics, name="drift",
            topics={settings.topic("outcomes"): Outcome,
                    settings.topic("rankings"): RankingResult,
                    settings.topic("feature-log"): FeatureLog},
            group_id=settings.group("drift"),
            fetch_wait_ms=settings.batch_wait_ms,
            max_records=settings.batch_max_records,
            **kwargs)
        self._alerts_topic = settings.topic("drift-alerts")
        self.monitors = MonitorSet(settings.drift_detectors, settings.drift_params)
        self._gate = AlertGate(settings.alert_cooldown_s)
        self._stats_version = ""  # the latest seen; the feature log carries none
        # Per partition, the next offset not yet fed to the monitors: a batch read again
        # after a rewind feeds nothing twice.
        self._fed: dict[TopicPartition, int] = {}
        self._rebuilt: set[TopicPartition] = set()  # see handle
        # Alerts sent and not yet acknowledged. Their records are not read again after a
        # failed send (they were fed), so forget() queues them to be sent again.
        self._unacknowledged: dict[str, DriftAlert] = {}
        self._resend: list[DriftAlert] = []

    async def on_start(self) -> None:
        read = await prime_from_topic(self._gate, self.settings, self.bootstrap)
        log.info("drift: %d alerts read back from %s", read, self._alerts_topic)
        await super().on_start()

    async def handle(self, batch: Sequence[Decoded[Any]]) -> Sends:
        # Nothing new is fed until what came before it, in every partition assigned, is
        # replayed. Checked here, not when partitions are assigned: aiokafka may fetch, and
        # the loop handle, before its assignment callback runs.
        assert self._consumer is not None
        pending = self._consumer.assignment() - self._rebuilt
        sends = await self._rebuild(pending) if pending else []
        resend, self._resend = self._resend, []
        return sends + [self._send(alert) for alert in resend] + self._feed(batch)

    def forget(self) -> None:
        self._resend = list(self._unacknowledged.values())

    def _send(self, alert: DriftAlert) -> asyncio.Future[Any]:
        self._unacknowledged[alert.alert_id] = alert
        sent = asyncio.ensure_future(self.producer.send_and_wait(
            self._alerts_topic, encode(alert), key=alert.signal.encode()))

        def acknowledged(done: asyncio.Future[Any]) -> None:
            if not done.cancelled() and done.exception() is None:
                self._unacknowledged.pop(alert.alert_id, None)

        sent.add_done_callback(acknowledged)
        return sent

    async def _rebuild(self, partitions: set[TopicPartition]) -> Sends:
        consumer = self._consumer
        assert consumer is not None
        committed = {tp: await consumer.committed(tp) or 0 for tp in partitions}
        replayed: list[Decoded[Any]] = []
        async for record in records_before(self.settings, self.bootstrap, committed,
                                           self.settings.drift_replay_records):
            try:
                value = decode(record.value or b"", self._topics[record.topic],
                               self.settings.limits)
            except Rejection:
                continue  # dead-lettered when it was first read
            replayed.append(Decoded(record, value))
        log.info("drift: monitors rebuilt from %d records before the committed offsets of %d "
                 "partitions", len(replayed), len(committed))
        self._rebuilt |= partitions
        return self._feed(replayed)

    def _feed(self, batch: Sequence[Decoded[Any]]) -> Sends:
        rankings, outcomes, logs = [], [], []
        fed = self._fed
        for record, value in batch:
            tp = TopicPartition(record.topic, record.partition)
            if record.offset < fed.get(tp, 0):
                continue
            fed[tp] = record.offset + 1
            if isinstance(value, Outcome):
                outcomes.append(value)
            elif isinstance(value, RankingResult):
                rankings.append(value)
                self._stats_version = value.stats_version
            else:
                logs.append(value)
        new = (signals.from_rankings(rankings) | signals.from_outcomes(outcomes)
               | signals.from_feature_logs(logs, self.settings.drift_features,
                                           self._stats_version))
        return [self._send(alert)
                for name, values in new.items() for alert in self._update(name, values)]

    def _update(self, name: str, new: SignalBatch) -> list[DriftAlert]:
        detections = self.monitors.update(name, new.values, new.predictions, new.labels)
        monitor = self.monitors.monitors[name]
        self.metrics.drift_updates.inc(len(new.values))
        self.metrics.drift_signal.labels(name).set(monitor.estimate)
        alerts = []
        for detection in detections:
            ts = float(new.ts[detection.index])
            if not self._gate.admit(name, detection.direction, ts):
                self.metrics.drift_detections_merged.inc()
                continue
            alert = drift_alert(detection, ts, new.model_version, new.stats_version,
                                self.settings)
            self.metrics.drift_alerts.labels(alert.signal, alert.severity).inc()
            log.warning("drift: %s %s (%s, effect %.3f): mean %.4g -> %.4g", alert.signal,
                        alert.direction, alert.severity, alert.effect_size, alert.before.mean,
                        alert.after.mean)
            alerts.append(alert)
        return alerts
