"""`streamrank bench scoring` on a tiny run: every figure is there and consistent (no timing bars:
the machine is shared by broker, Redis, worker and the bench)."""

from __future__ import annotations

import math
import os
import subprocess
import sys

import pytest
import redis

from bench.scoring import ScoringBenchConfig, parse_candidates, run_scoring_bench
from stream.settings import Settings

pytestmark = pytest.mark.integration

POSITIVE = ("p50_ms", "p99_ms", "echo_p50_ms", "echo_p99_ms", "http_p50_ms", "http_p99_ms",
            "max_candidates_per_s", "max_requests_per_s", "bare_candidates_per_s",
            "bare_batched_candidates_per_s", "ratio", "latency_rate_per_s")
TINY = ScoringBenchConfig(
    candidates=(40,), repeats=1, throughput_seconds=0.5, latency_seconds=0.5,
    min_latency_requests=20, max_latency_requests=200, http_seconds=0.5, http_requests=60,
    bare_seconds=0.1, warmup_requests=8, items=300, users=30, events=1000)


@pytest.mark.timeout(120)
def test_tiny_scoring_bench_reports_every_figure(bootstrap: str, redis_url: str) -> None:
    report = run_scoring_bench(Settings(broker_url=bootstrap, redis_url=redis_url), TINY)

    assert set(report["by_candidates"]) == {"40"}
    entry = report["by_candidates"]["40"]
    for key in POSITIVE:
        assert math.isfinite(entry[key]) and entry[key] > 0, key
    # Sign depends on the machine's mood on a tiny run; the relation must hold exactly.
    assert math.isfinite(entry["added_p99_ms"])
    assert entry["added_p99_ms"] == pytest.approx(entry["p99_ms"] - entry["echo_p99_ms"],
                                                  abs=1e-3)
    assert entry["ratio"] == pytest.approx(
        entry["max_candidates_per_s"] / entry["bare_candidates_per_s"], rel=1e-3, abs=1e-4)
    assert entry["latency_requests"] == entry["echo_requests"] >= 1
    assert 0 < entry["http_requests"] <= TINY.http_requests
    assert entry["bare_batched_rows"] >= 40
    assert set(entry["stages_ms"]) == {"to_worker", "in_worker", "from_worker"}
    assert all(math.isfinite(v) for stage in entry["stages_ms"].values() for v in stage.values())

    assert report["model_version"].startswith("bench-")
    assert report["provider"] in ("CPUExecutionProvider", "CUDAExecutionProvider")
    assert report["bare_provider"] == report["provider"]  # the bound runs where the worker does
    assert report["worker_imports_torch"] is False
    client = redis.Redis.from_url(redis_url)
    try:
        assert report["topic_prefixes"] == [f"bench-scoring-{report['run_id']}-c40-{phase}"
                                            for phase in ("max0", "latency0")]
        for prefix in report["topic_prefixes"]:
            assert not list(client.scan_iter(match=f"{prefix}:*", count=1000))
    finally:
        client.close()


def test_candidates_option_is_parsed_and_bounded() -> None:
    assert parse_candidates("100, 500,1000", 1000) == (100, 500, 1000)
    for bad in ("", "a,b", "0", "1001"):
        with pytest.raises(ValueError, match="--candidates"):
            parse_candidates(bad, 1000)


def test_cli_refuses_bad_candidates_with_a_clear_error() -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("STREAMRANK_")}
    result = subprocess.run(
        [sys.executable, "-m", "stream.cli", "bench", "scoring", "--candidates", "0,5000"],
        env=env, capture_output=True, text=True, timeout=60)
    assert result.returncode == 2
    assert "error: --candidates must be between 1 and 1000" in result.stderr
    assert "Traceback" not in result.stderr
