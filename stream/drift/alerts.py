"""From a detection to a ``DriftAlert``, and the alerts already sent, read back at start-up.

The drift-alerts topic is the record of what went out. A restarted drift role rebuilds its
monitors by replaying its inputs (:mod:`stream.drift.role`), and detects again some of what it
detected before; reading the alerts back first primes the gate, so those detections are the
same change, within the cooldown, and go out no second time.
"""

from __future__ import annotations

import logging
import uuid

from aiokafka.structs import TopicPartition

from models.drift import AlertGate, Detection, Side
from schemas import DriftAlert, Rejection, WindowStats, decode
from stream.runtime.clients import READ_TO_END_WAIT_MS, kafka_consumer, read_to_end
from stream.settings import Settings

log = logging.getLogger(__name__)


def severity(effect: float, settings: Settings) -> str:
    if effect >= settings.drift_severity_critical:
        return "critical"
    return "warning" if effect >= settings.drift_severity_warning else "info"


def drift_alert(detection: Detection, ts: float, model_version: str, stats_version: str,
                settings: Settings) -> DriftAlert:
    effect = detection.effect_size
    return DriftAlert(
        ts=ts, alert_id=f"{detection.signal}-{uuid.uuid4().hex[:12]}",
        signal=detection.signal, detector=detection.detector,  # type: ignore[arg-type]
        severity=severity(effect, settings),  # type: ignore[arg-type]
        direction=detection.direction,  # type: ignore[arg-type]
        effect_size=round(effect, 6), before=_stats(detection.before),
        after=_stats(detection.after), update=detection.update,
        model_version=model_version, stats_version=stats_version)


def _stats(side: Side) -> WindowStats:
    return WindowStats(mean=_finite(side.mean), std=_finite(side.std), n=side.n,
                       mean_prediction=side.mean_prediction, mean_label=side.mean_label,
                       calibration_ratio=side.calibration_ratio)


def _finite(value: float) -> float:
    return value if value == value else 0.0  # NaN: a side with no values


async def prime_from_topic(gate: AlertGate, settings: Settings, bootstrap: str) -> int:
    """Remember every alert on the drift-alerts topic; returns how many were read."""
    topic = settings.topic("drift-alerts")
    consumer = kafka_consumer(settings, bootstrap, group_id=None, enable_auto_commit=False,
                              auto_offset_reset="earliest",
                              fetch_max_wait_ms=READ_TO_END_WAIT_MS)
    await consumer.start()
    try:
        await consumer.topics()
        consumer.assign([TopicPartition(topic, p)
                         for p in sorted(consumer.partitions_for_topic(topic) or {0})])
        count = 0
        async for _, record in read_to_end(consumer):
            try:
                alert = decode(record.value or b"", DriftAlert, settings.limits)
            except Rejection:
                continue  # not ours to judge: the delivery role dead-letters it
            gate.remember(alert.signal, alert.direction, alert.ts)
            count += 1
    finally:
        await consumer.stop()
    return count
