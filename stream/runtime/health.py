"""What ``/health`` says about each consume loop: ready only while every loop is polling."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

# A loop that has not come back to poll for this long is stuck somewhere (a store call that
# hangs, a handler that never returns), even if no exception says so.
STALL_AFTER_S = 30.0


@dataclass
class ConsumerHealth:
    name: str
    state: str = "starting"  # starting, polling, retrying, failed, stopped
    reason: str = ""
    last_poll: float | None = None  # time.monotonic()
    lag: dict[str, int] = field(default_factory=dict)

    def polled(self, lag: dict[str, int]) -> None:
        """A poll came back. It ends ``starting``, but not ``retrying``: only the retried
        call's own success does (see :meth:`recovered`)."""
        self.last_poll = time.monotonic()
        self.lag = lag
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
        return self.state == "polling" and self.seconds_since_poll() < STALL_AFTER_S

    def seconds_since_poll(self) -> float:
        return float("inf") if self.last_poll is None else time.monotonic() - self.last_poll

    def report(self) -> dict[str, Any]:
        stalled = self.state == "polling" and not self.ready
        return {"state": "stalled" if stalled else self.state,
                "reason": f"no poll for {self.seconds_since_poll():.0f} s" if stalled
                else self.reason,
                "seconds_since_poll": round(self.seconds_since_poll(), 3)
                if self.last_poll is not None else None,
                "lag": self.lag, "lag_total": sum(self.lag.values())}
