"""What ``/health`` says about each consume loop: ready only while every loop is polling."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

# A loop that has not come back to poll for this long is stuck somewhere (a store call that
# hangs, a handler that never returns), even if no exception says so. So is one whose polls
# come back empty this long while its partitions hold records it has not read.
STALL_AFTER_S = 30.0


@dataclass
class ConsumerHealth:
    name: str
    state: str = "starting"  # starting, polling, retrying, failed, stopped
    reason: str = ""
    last_poll: float | None = None  # time.monotonic()
    last_progress: float | None = None  # last poll that returned records, or found none due
    lag: dict[str, int] = field(default_factory=dict)

    def polled(self, lag: dict[str, int], got_records: bool) -> None:
        """A poll came back. It ends ``starting``, but not ``retrying``: only the retried
        call's own success does (see :meth:`recovered`)."""
        self.last_poll = time.monotonic()
        self.lag = lag
        if got_records or not any(lag.values()):
            self.last_progress = self.last_poll
        if self.state == "starting":
            self.state = "polling"

    def recovered(self) -> None:
        if self.state in ("starting", "retrying"):
            self.state, self.reason = "polling", ""

    def retrying(self, reason: str) -> None:
        if self.state != "failed":
            self.state, self.reason = "retrying", reason

    def failed(self, reason: str) -> None:
        self.state, self.reason = "failed", reason

    def stopped(self) -> None:
        if self.state != "failed":
            self.state, self.reason = "stopped", ""

    @property
    def ready(self) -> bool:
        return self.state == "polling" and self._stall() is None

    def _stall(self) -> str | None:
        if self._since(self.last_poll) >= STALL_AFTER_S:
            return f"no poll for {self._since(self.last_poll):.0f} s"
        if self._since(self.last_progress) >= STALL_AFTER_S:
            return (f"{sum(self.lag.values())} records behind and nothing read for "
                    f"{self._since(self.last_progress):.0f} s")
        return None

    @staticmethod
    def _since(moment: float | None) -> float:
        return float("inf") if moment is None else time.monotonic() - moment

    def seconds_since_poll(self) -> float:
        return self._since(self.last_poll)

    def report(self) -> dict[str, Any]:
        stall = self._stall() if self.state == "polling" else None
        return {"state": "stalled" if stall else self.state,
                "reason": stall or self.reason,
                "seconds_since_poll": round(self.seconds_since_poll(), 3)
                if self.last_poll is not None else None,
                "lag": self.lag, "lag_total": sum(self.lag.values())}
