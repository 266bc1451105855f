"""In-worker latency from the worker's own histogram: the fetch's handover of a request to the
broker's ack of its ranking (``streamrank_scoring_latency_seconds{stage="total"}``), and the
part of it spent waiting for that ack (``stage="produce"``), which the broker sets.

The bench reads ``/metrics`` just before and just after a paced pass and takes the difference
of the bucket counts, so the figure covers that pass's requests alone; ``/stats``'s percentiles
cover the last minute and would mix passes. Quantiles are read from the buckets as Prometheus's
``histogram_quantile`` reads them, so they match what a dashboard of the same worker shows:

>>> buckets = [(0.001, 10.0), (0.002, 90.0), (0.004, 100.0), (math.inf, 100.0)]
>>> round(histogram_quantile(0.5, buckets), 6)  # rank 50 lies half-way into (1, 2] ms
0.0015
>>> round(histogram_quantile(0.99, buckets), 6)  # rank 99: 9/10 into (2, 4] ms
0.0038
"""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import Callable, Mapping, Sequence

import aiohttp
from prometheus_client.parser import text_string_to_metric_families

from stream.errors import BenchFailed

HISTOGRAM = "streamrank_scoring_latency_seconds"
TOTAL = "total"
PRODUCE = "produce"

Buckets = dict[float, float]  # upper bound (le) -> cumulative count


def histogram_quantile(q: float, buckets: Sequence[tuple[float, float]]) -> float:
    """The ``q`` quantile of cumulative ``(upper bound, count)`` buckets ending with +Inf, as
    Prometheus's ``histogram_quantile``: linear inside the bucket that holds rank ``q * n``
    (from 0 for the first bucket), the last finite bound if that is the +Inf bucket, and NaN
    when nothing was observed."""
    if not 0 <= q <= 1:
        raise ValueError(f"q must be within [0, 1], not {q}")
    ordered = sorted(buckets)
    if len(ordered) < 2 or not math.isinf(ordered[-1][0]):
        raise ValueError("buckets need a finite bound and the +Inf bucket")
    counts = [count for _, count in ordered]
    for k in range(1, len(counts)):  # as Prometheus: tolerate counts read non-atomically
        counts[k] = max(counts[k], counts[k - 1])
    total = counts[-1]
    if total <= 0:
        return math.nan
    rank = q * total
    b = next(k for k, count in enumerate(counts) if count >= rank)
    if b == len(counts) - 1:
        return ordered[-2][0]
    start, end, count = 0.0, ordered[b][0], counts[b]
    if b > 0:
        start = ordered[b - 1][0]
        count -= counts[b - 1]
        rank -= counts[b - 1]
    if end <= 0 or count <= 0:
        return end
    return start + (end - start) * rank / count


def stage_buckets(text: str, stage: str = TOTAL) -> Buckets:
    """One stage's cumulative buckets in one ``/metrics`` page."""
    buckets: Buckets = {}
    for family in text_string_to_metric_families(text):
        if family.name != HISTOGRAM:
            continue
        for sample in family.samples:
            if sample.name.endswith("_bucket") and sample.labels.get("stage") == stage:
                buckets[float(sample.labels["le"])] = sample.value
    if not buckets:
        raise BenchFailed(f"/metrics has no {HISTOGRAM}{{stage={stage!r}}} buckets")
    return buckets


def delta(after: Mapping[float, float], before: Mapping[float, float]) -> Buckets:
    """The buckets of what was observed between two reads."""
    return {le: count - before.get(le, 0.0) for le, count in after.items()}


async def scrape(ports: Sequence[int], stage: str = TOTAL) -> Buckets:
    """One stage's buckets summed over every process of the worker (each answers
    ``/metrics`` alone on its own port)."""
    summed: Buckets = {}
    async with aiohttp.ClientSession() as http:
        for port in ports:
            try:
                async with http.get(f"http://127.0.0.1:{port}/metrics") as response:
                    text = await response.text()
            except aiohttp.ClientError as exc:
                raise BenchFailed(f"no /metrics on port {port}: {exc}") from exc
            for le, count in stage_buckets(text, stage).items():
                summed[le] = summed.get(le, 0.0) + count
    return summed


async def settled(ports: Sequence[int], since: Buckets, expected: int,
                  alive: Callable[[], None], timeout_s: float = 5.0) -> Buckets:
    """The total's buckets once ``expected`` more requests than ``since`` are in, or when
    ``timeout_s`` has passed: a ranking's total is observed by the callback of its ack, which
    may run after the bench has read the ranking."""
    deadline = time.monotonic() + timeout_s
    while True:
        buckets = await scrape(ports)
        if (buckets[math.inf] - since.get(math.inf, 0.0) >= expected
                or time.monotonic() > deadline):
            return buckets
        alive()
        await asyncio.sleep(0.05)


def quantiles_ms(buckets: Mapping[float, float]) -> tuple[float, float]:
    """p50 and p99 in ms, rounded like the bench's other figures."""
    ordered = sorted(buckets.items())
    return (round(histogram_quantile(0.5, ordered) * 1000, 3),
            round(histogram_quantile(0.99, ordered) * 1000, 3))
