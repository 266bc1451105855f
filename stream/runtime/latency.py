"""Per-stage latency: a Prometheus histogram for dashboards, and the last minute's percentiles
for ``/stats``, both cheap enough to record on the serving path for every request."""

from __future__ import annotations

import math
import time
from collections import Counter, deque
from collections.abc import Iterable
from typing import NamedTuple

from prometheus_client import CollectorRegistry, Histogram

# Bins of the rolling window: each 2% wider than the one before, from 1 us (anything faster
# counts as 1 us) to ~240 s, so a percentile read back is within 1% of the true value.
_BIN_RATIO = 1.02
_LOG_RATIO = math.log(_BIN_RATIO)
_SMALLEST_S = 1e-6
_BINS = 1000


class Percentiles(NamedTuple):
    p50: float
    p99: float
    n: int


class RollingPercentiles:
    """Percentiles of the observations of the last ``window_s`` seconds.

    Observations are counted per second in log-spaced bins, so recording one is a logarithm
    and a dict update whatever the rate, and memory is bounded by ``window_s`` rows of at most
    ``_BINS`` counts (a deque of raw values would hold 600k floats per minute at 10k/s).
    Time is passed in, so the class is pure:

    >>> window = RollingPercentiles(window_s=60)
    >>> for k in range(1, 101):
    ...     window.add(now=1000.0, seconds=k / 1000)
    >>> p = window.percentiles(now=1030.0)
    >>> p.n, abs(p.p50 / 0.050 - 1) < 0.01, abs(p.p99 / 0.099 - 1) < 0.01  # within 1%
    (100, True, True)
    >>> window.percentiles(now=1061.0).n  # a minute later, forgotten
    0
    """

    def __init__(self, window_s: float = 60.0) -> None:
        self.window_s = window_s
        self._rows: deque[tuple[int, dict[int, int]]] = deque()  # (second, {bin: count})

    def add(self, now: float, seconds: float, count: int = 1) -> None:
        """Record ``count`` observations of ``seconds`` made at ``now`` (a monotonic time)."""
        second = int(now)
        rows = self._rows
        if not rows or rows[-1][0] != second:
            while rows and rows[0][0] <= second - self.window_s:
                rows.popleft()
            rows.append((second, {}))
        row = rows[-1][1]
        b = _bin(seconds)
        row[b] = row.get(b, 0) + count

    def percentiles(self, now: float) -> Percentiles:
        """p50 and p99 (nearest rank, 0 when empty) and the count, over the last window."""
        counts: Counter[int] = Counter()
        for second, row in self._rows:
            if second > now - self.window_s:
                counts.update(row)
        n = sum(counts.values())
        return Percentiles(_quantile(counts, n, 0.5), _quantile(counts, n, 0.99), n)


def _bin(seconds: float) -> int:
    if seconds <= _SMALLEST_S:
        return 0
    return min(int(math.log(seconds / _SMALLEST_S) / _LOG_RATIO), _BINS - 1)


def _quantile(counts: Counter[int], n: int, q: float) -> float:
    """The value of the bin holding the observation of rank ceil(q n): its geometric centre."""
    if n == 0:
        return 0.0
    rank = max(math.ceil(q * n), 1)
    seen = 0
    for b in sorted(counts):
        seen += counts[b]
        if seen >= rank:
            return _SMALLEST_S * _BIN_RATIO ** (b + 0.5) if b else _SMALLEST_S
    raise AssertionError("unreachable: the ranks add up to n")


class StageLatency:
    """One histogram labelled by stage, and a rolling window per stage.

    A stage that runs once for a batch of requests is recorded once per request of the batch,
    with the batch's duration: the histogram then counts requests, like the other stages, and
    says what each request waited for."""

    def __init__(self, registry: CollectorRegistry, name: str, documentation: str,
                 stages: Iterable[str], buckets: Iterable[float],
                 window_s: float = 60.0) -> None:
        histogram = Histogram(name, documentation, ["stage"], registry=registry,
                              buckets=tuple(buckets))
        self.stages = tuple(stages)
        # Bound once: ``labels()`` per observation would cost a lock and a dict lookup.
        self._histograms = {stage: histogram.labels(stage) for stage in self.stages}
        self._windows = {stage: RollingPercentiles(window_s) for stage in self.stages}

    def observe(self, stage: str, seconds: float, count: int = 1) -> None:
        histogram = self._histograms[stage]
        for _ in range(count):
            histogram.observe(seconds)
        self._windows[stage].add(time.monotonic(), seconds, count)

    def report_ms(self) -> dict[str, dict[str, float]]:
        """``{stage: {p50, p99, n}}`` over the window, in milliseconds, for ``/stats``."""
        now = time.monotonic()
        report: dict[str, dict[str, float]] = {}
        for stage, window in self._windows.items():
            p = window.percentiles(now)
            report[stage] = {"p50": round(p.p50 * 1000, 3), "p99": round(p.p99 * 1000, 3),
                             "n": p.n}
        return report
