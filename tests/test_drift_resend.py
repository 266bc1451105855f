"""An alert whose send failed goes out again after the rewind, though its records, already
fed to the monitors, are skipped when read again."""

from __future__ import annotations

import asyncio
from typing import Any

from schemas import DriftAlert, decode
from schemas.examples import EXAMPLES
from stream.drift.role import DriftService
from stream.runtime.metrics import WorkerMetrics
from stream.settings import Settings


class FlakyProducer:
    """Fails its first send, as a broker that drops a connection would."""

    def __init__(self) -> None:
        self.sent: list[bytes] = []

    async def send_and_wait(self, topic: str, value: bytes, key: bytes) -> None:
        if not self.sent and not getattr(self, "failed", False):
            self.failed = True
            raise ConnectionError("broker went away")
        self.sent.append(value)


class NoPartitions:
    def assignment(self) -> set[Any]:
        return set()


async def test_a_failed_alert_is_sent_again_after_the_rewind() -> None:
    service = DriftService(Settings(), "127.0.0.1:1", WorkerMetrics())
    producer = FlakyProducer()
    service._producer = producer  # type: ignore[assignment]
    service._consumer = NoPartitions()  # type: ignore[assignment]
    alert = DriftAlert.model_validate(EXAMPLES["drift-alerts"])
    first = service._send(alert)
    await asyncio.gather(first, return_exceptions=True)
    assert producer.sent == []
    service.forget()  # what the runtime does before it reads the batch again
    sends = await service.handle([])
    await asyncio.gather(*sends)
    assert [decode(v, DriftAlert).alert_id for v in producer.sent] == [alert.alert_id]
    assert service._unacknowledged == {}
    service.forget()
    assert await service.handle([]) == []  # acknowledged: nothing to send again
