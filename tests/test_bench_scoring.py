"""`streamrank bench scoring` on a tiny run: every figure is there and consistent (no timing bars:
the machine is shared by broker, Redis, worker and the bench)."""

from __future__ import annotations

import itertools
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import redis

from bench.scoring import ScoringBenchConfig, parse_candidates, run_scoring_bench
from bench.scoring.inworker import delta, histogram_quantile, quantiles_ms, stage_buckets
from stream.errors import BenchFailed
from stream.runtime.metrics import SCORING_BUCKETS_S
from stream.settings import Settings

POSITIVE = ("p50_ms", "p99_ms", "echo_p50_ms", "echo_p99_ms", "http_serial_p50_ms",
            "http_serial_p99_ms", "inworker_p99_ms_at_25pct", "max_candidates_per_s",
            "max_requests_per_s", "bare_candidates_per_s", "bare_batched_candidates_per_s",
            "ratio", "latency_rate_per_s", "http_serial_floor_p50_ms",
            "http_serial_floor_p99_ms", "http_serial_vs_floor")
POINT = ("offered_rps", "p50_ms", "p99_ms", "echo_p50_ms", "echo_p99_ms", "inworker_p50_ms",
         "inworker_p99_ms", "http1_p50_ms", "http1_p99_ms", "http8_p50_ms", "http8_p99_ms",
         "produce_ack_p50_ms", "produce_ack_p99_ms", "inworker_produce_p50_ms",
         "inworker_produce_p99_ms")
# All rates in one environment, so the run sets up two: one max pass, one curve.
TINY = ScoringBenchConfig(
    candidates=(40,), repeats=1, throughput_seconds=0.5, offered_pcts=(25, 50),
    fresh_from_pct=100, latency_seconds=0.5, min_latency_requests=20, max_latency_requests=200,
    http_serial_requests=40, bare_seconds=0.1, warmup_requests=8, items=300, users=30,
    events=1000)
# The histogram's resolution: a quantile interpolated inside a bucket is within its width.
BUCKET_RATIO = 1.2


@pytest.mark.xdist_group("cpu-heavy")
@pytest.mark.integration
@pytest.mark.timeout(120)
def test_tiny_scoring_bench_reports_every_figure(bootstrap: str, redis_url: str,
                                                 tmp_path: Path) -> None:
    png = tmp_path / "curve.png"
    report = run_scoring_bench(Settings(broker_url=bootstrap, redis_url=redis_url), TINY, png)

    assert set(report["by_candidates"]) == {"40"}
    entry = report["by_candidates"]["40"]
    for key in POSITIVE:
        assert math.isfinite(entry[key]) and entry[key] > 0, key
    curve = entry["curve"]
    assert [point["offered_pct"] for point in curve] == [25, 50]
    assert curve[0]["offered_rps"] < curve[1]["offered_rps"]
    for point in curve:
        for key in POINT:
            assert math.isfinite(point[key]) and point[key] > 0, (point["offered_pct"], key)
        # The worker's histogram counted exactly the pass's requests ...
        assert point["inworker_requests"] == point["requests"] >= TINY.min_latency_requests
        # ... and its interval lies inside the round trip: in-worker is not above end to end,
        # up to the histogram's resolution.
        assert point["inworker_p99_ms"] <= point["p99_ms"] * BUCKET_RATIO
        assert point["inworker_p50_ms"] <= point["p50_ms"] * BUCKET_RATIO
        # The wait for the ack is part of the in-worker time.
        assert point["inworker_produce_p99_ms"] <= point["inworker_p99_ms"] * BUCKET_RATIO
    assert entry["inworker_p99_ms_at_25pct"] == curve[0]["inworker_p99_ms"]
    assert entry["produce_ack_p99_ms_at_25pct"] == curve[0]["produce_ack_p99_ms"]
    assert entry["inworker_produce_p99_ms_at_25pct"] == curve[0]["inworker_produce_p99_ms"]
    half = curve[1]
    assert (entry["p99_ms"], entry["echo_p99_ms"]) == (half["p99_ms"], half["echo_p99_ms"])
    assert entry["latency_rate_per_s"] == half["offered_rps"]
    assert half["offered_rps"] == pytest.approx(entry["max_requests_per_s"] / 2, rel=0.01)
    # Sign depends on the machine's mood on a tiny run; the relation must hold exactly.
    assert entry["added_p99_ms"] == pytest.approx(entry["p99_ms"] - entry["echo_p99_ms"],
                                                  abs=1e-3)
    assert entry["ratio"] == pytest.approx(
        entry["max_candidates_per_s"] / entry["bare_candidates_per_s"], rel=1e-3, abs=1e-4)
    assert entry["latency_requests"] == entry["echo_requests"] >= 1
    assert entry["http_serial_requests"] == TINY.http_serial_requests
    assert entry["http_serial_vs_floor"] == pytest.approx(
        entry["http_serial_p50_ms"] / entry["http_serial_floor_p50_ms"], rel=1e-2)
    assert entry["bare_batched_rows"] >= 40
    assert set(entry["stages_ms"]) == {"to_worker", "in_worker", "from_worker"}
    assert all(math.isfinite(v) for stage in entry["stages_ms"].values() for v in stage.values())

    assert report["processes"] == 1
    assert report["model_version"].startswith("bench-")
    assert report["provider"] in ("CPUExecutionProvider", "CUDAExecutionProvider")
    assert report["bare_provider"] == report["provider"]  # the bound runs where the worker does
    assert report["worker_imports_torch"] is False
    assert report["png"] == str(png) and png.read_bytes().startswith(b"\x89PNG")
    client = redis.Redis.from_url(redis_url)
    try:
        assert report["topic_prefixes"] == [f"bench-scoring-{report['run_id']}-c40-{phase}"
                                            for phase in ("max0", "at25-50")]
        for prefix in report["topic_prefixes"]:
            assert not list(client.scan_iter(match=f"{prefix}:*", count=1000))
    finally:
        client.close()


def test_histogram_quantile_interpolates_inside_the_bucket_like_prometheus() -> None:
    inf = math.inf
    # 100 observations: 10 up to 1 ms, 80 in (1, 2], 8 in (2, 4], 2 above 4 ms.
    buckets = [(0.001, 10.0), (0.002, 90.0), (0.004, 98.0), (inf, 100.0)]
    assert histogram_quantile(0.05, buckets) == pytest.approx(0.0005)  # (0, 1], from 0
    assert histogram_quantile(0.5, buckets) == pytest.approx(0.0015)  # 40 of 80 into (1, 2]
    assert histogram_quantile(0.9, buckets) == pytest.approx(0.002)  # the bucket's top
    assert histogram_quantile(0.95, buckets) == pytest.approx(0.00325)  # 5 of 8 into (2, 4]
    assert histogram_quantile(0.99, buckets) == pytest.approx(0.004)  # +Inf: last bound
    assert math.isnan(histogram_quantile(0.5, [(0.001, 0.0), (inf, 0.0)]))
    with pytest.raises(ValueError, match="Inf"):
        histogram_quantile(0.5, [(0.001, 1.0), (0.002, 2.0)])


def test_in_worker_quantiles_come_from_the_difference_of_two_scrapes() -> None:
    def page(counts: dict[str, int]) -> str:
        lines = ["# HELP streamrank_scoring_latency_seconds x",
                 "# TYPE streamrank_scoring_latency_seconds histogram"]
        for stage, extra in (("total", counts), ("model", {"0.001": 500})):
            cumulative = 0
            for le in (*(repr(b) for b in (0.001, 0.002, 0.004)), "+Inf"):
                cumulative += extra.get(le, 0)
                lines.append(f'streamrank_scoring_latency_seconds_bucket{{le="{le}",'
                             f'stage="{stage}"}} {cumulative}')
        return "\n".join(lines) + "\n"

    before = stage_buckets(page({"0.001": 1000}))  # warm-up: all fast
    after = stage_buckets(page({"0.001": 1000, "0.002": 50, "0.004": 50}))
    observed = delta(after, before)
    assert observed[math.inf] == 100
    # Only the pass's 100: rank 50 tops (1, 2] ms, rank 99 is 49/50 into (2, 4] ms.
    assert quantiles_ms(observed) == (2.0, 3.96)
    # Another stage is read from its own series: the model's 500, all in the first bucket.
    assert stage_buckets(page({}), "model")[math.inf] == 500
    with pytest.raises(BenchFailed, match="produce"):
        stage_buckets(page({}), "produce")


def test_scoring_buckets_are_log_spaced_from_a_tenth_of_a_ms_past_a_second() -> None:
    assert SCORING_BUCKETS_S[0] == 1e-4 and SCORING_BUCKETS_S[-1] >= 1.0
    ratios = [b / a for a, b in itertools.pairwise(SCORING_BUCKETS_S)]
    assert all(ratio == pytest.approx(BUCKET_RATIO, rel=1e-3) for ratio in ratios)


def test_offered_pcts_must_name_the_points_the_report_reads() -> None:
    assert ScoringBenchConfig().environment_groups() == [(10, 25), (50,), (75,)]
    for bad in ((25, 75), (50, 25), (0, 25, 50), (25, 50, 120)):
        with pytest.raises(ValueError, match="offered_pcts"):
            ScoringBenchConfig(offered_pcts=bad)


def test_candidates_option_is_parsed_and_bounded() -> None:
    assert parse_candidates("100, 500,1000", 1000) == (100, 500, 1000)
    for bad in ("", "a,b", "0", "1001"):
        with pytest.raises(ValueError, match="--candidates"):
            parse_candidates(bad, 1000)


@pytest.mark.parametrize(("args", "message"), [
    (["--candidates", "0,5000"], "error: --candidates must be between 1 and 1000"),
    (["--processes", "0"], "--processes"),
])
def test_cli_refuses_bad_options_with_a_clear_error(args: list[str], message: str) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("STREAMRANK_")}
    result = subprocess.run(
        [sys.executable, "-m", "stream.cli", "bench", "scoring", *args],
        env=env, capture_output=True, text=True, timeout=60)
    assert result.returncode == 2
    assert message in result.stderr
    assert "Traceback" not in result.stderr
