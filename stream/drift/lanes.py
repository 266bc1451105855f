"""One queue and one task per subscription: a slow or dead receiver delays only its own alerts.

A webhook that times out is tried ``STREAMRANK_WEBHOOK_ATTEMPTS`` times with backoff, which can
take minutes. Were deliveries made one after another, every subscriber would wait that long.
So each subscription has its own lane: alerts for it wait in its queue, in the order read,
and go out one at a time, while the other lanes go on.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from schemas import DriftAlert
from stream.runtime.consumer import RawRecord

log = logging.getLogger(__name__)

# Alerts waiting for one subscription, beyond which more are dead-lettered at once: a receiver
# dead for hours must not grow the worker's memory without bound.
MAX_QUEUED = 1000


@dataclass(frozen=True)
class Job:
    """One alert for one subscription, with the record it was read from (for the DLQ)."""

    subscription_id: str
    alert: DriftAlert
    record: RawRecord


class Lane:
    """Runs ``deliver`` for each job put, one at a time, in order, then ``finished``. A
    ``deliver`` that raises leaves its job unfinished (its alert is held, so read again after
    a restart), and the lane goes on."""

    def __init__(self, deliver: Callable[[Job], Awaitable[None]],
                 finished: Callable[[Job], None]) -> None:
        self._deliver = deliver
        self._finished = finished
        self._queue: asyncio.Queue[Job] = asyncio.Queue(MAX_QUEUED)
        self._task = asyncio.ensure_future(self._run())

    def put(self, job: Job) -> bool:
        """Queue ``job``; False when the lane is full."""
        try:
            self._queue.put_nowait(job)
        except asyncio.QueueFull:
            return False
        return True

    async def _run(self) -> None:
        while True:
            job = await self._queue.get()
            try:
                await self._deliver(job)
            except Exception:
                log.exception("alert %s for subscription %s left undelivered until the next "
                              "start", job.alert.alert_id, job.subscription_id)
                continue
            self._finished(job)

    async def close(self) -> None:
        """Stop at once: what is queued or in flight is read again after a restart."""
        self._task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._task
