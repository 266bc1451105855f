"""The rolling window behind ``/stats``' per-stage percentiles, and the stage histogram."""

from __future__ import annotations

import numpy as np
import pytest
from prometheus_client import CollectorRegistry, generate_latest

from stream.runtime.latency import RollingPercentiles, StageLatency


def test_percentiles_are_the_nearest_ranks_within_a_bins_width() -> None:
    values = np.random.default_rng(0).lognormal(mean=-7, sigma=1.0, size=5000)
    window = RollingPercentiles(window_s=60)
    for k, value in enumerate(values):
        window.add(now=100.0 + k / 1000, seconds=float(value))

    p = window.percentiles(now=106.0)

    ranked = np.sort(values)
    assert p.n == 5000
    assert p.p50 == pytest.approx(ranked[2499], rel=0.011)  # rank ceil(0.5 n), 1-based
    assert p.p99 == pytest.approx(ranked[4949], rel=0.011)
    assert p.p50 <= p.p99


def test_a_batch_counts_once_per_request() -> None:
    window = RollingPercentiles()
    window.add(now=5.0, seconds=0.002, count=63)
    window.add(now=5.0, seconds=0.5)

    p = window.percentiles(now=5.0)

    assert p.n == 64
    assert p.p50 == pytest.approx(0.002, rel=0.011)
    assert p.p99 == pytest.approx(0.5, rel=0.011)  # rank 64 of 64


def test_only_the_last_window_counts_and_old_seconds_are_dropped() -> None:
    window = RollingPercentiles(window_s=60)
    window.add(now=0.5, seconds=1.0, count=10)
    window.add(now=30.2, seconds=0.001)

    assert window.percentiles(now=59.9).n == 11
    assert window.percentiles(now=60.5) == (pytest.approx(0.001, rel=0.011),
                                            pytest.approx(0.001, rel=0.011), 1)
    window.add(now=200.0, seconds=0.003)  # a new second prunes what the window left behind
    assert len(window._rows) == 1
    assert window.percentiles(now=200.0).n == 1


def test_empty_and_extreme_values() -> None:
    window = RollingPercentiles()
    assert window.percentiles(now=1.0) == (0.0, 0.0, 0)
    window.add(now=1.0, seconds=0.0)  # a clock that did not move
    window.add(now=1.0, seconds=1e6)  # clamped into the last bin, never an error
    p = window.percentiles(now=1.0)
    assert (p.n, p.p50) == (2, 1e-6)
    assert p.p99 > 100


def test_stage_latency_exposes_every_stage_and_reports_milliseconds() -> None:
    registry = CollectorRegistry()
    latency = StageLatency(registry, "x_latency_seconds", "doc", ("a", "b"), (0.001, 0.01))
    latency.observe("a", 0.004, count=3)

    text = generate_latest(registry).decode()

    assert 'x_latency_seconds_count{stage="a"} 3.0' in text
    assert 'x_latency_seconds_count{stage="b"} 0.0' in text  # there before any observation
    report = latency.report_ms()
    assert report["a"]["n"] == 3 and report["a"]["p50"] == pytest.approx(4.0, rel=0.011)
    assert report["b"] == {"p50": 0.0, "p99": 0.0, "n": 0}


def test_the_docstring_example_holds() -> None:
    import doctest

    import stream.runtime.latency

    assert doctest.testmod(stream.runtime.latency).failed == 0
