"""The README's main job: `streamrank demo` on the embedded default, end to end."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import orjson
import pytest
from redis import Redis

pytestmark = [pytest.mark.integration, pytest.mark.xdist_group("cpu-heavy")]

# The demos run at 50 requests/s: at 100 the demo, its worker and the broker keep 2 cores
# busy on their own (round trips of ~0.3 s at p50), so a suite running beside them pushed
# requests past the simulator's 5 s wait. At 50, two busy loops beside a demo left it 0
# time-outs (p99 1.9 s). The 10 s warm-up keeps the first model's 500 requests.


@pytest.mark.parametrize("redis", [False, True], ids=["memory-store", "redis-store"])
def test_demo_runs_end_to_end_with_clean_input(tmp_path: Path, redis_url: str,
                                               redis: bool) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("STREAMRANK_")}
    if redis:
        env["STREAMRANK_REDIS_URL"] = redis_url
        env["STREAMRANK_TOPIC_PREFIX"] = f"demo{os.getpid()}"
    out = tmp_path / "out.json"
    result = subprocess.run(
        [sys.executable, "-m", "stream.cli", "demo", "--seconds", "12", "--warmup", "10",
         "--retrain-every", "0", "--rate", "50", "--workdir", str(tmp_path / "work"),
         "--json", str(out)],
        env=env, capture_output=True, text=True, timeout=240)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "Traceback" not in result.stderr
    report = orjson.loads(out.read_bytes())
    assert report["dlq"] == 0
    assert report["events_processed"] == report["events_published"] > 0
    # 10 s of warm-up at 50 requests/s, simulated; the first model learns from its second half.
    assert report["warmup"]["requests"] == 500
    assert report["warmup"]["trained_on_requests"] == 250
    assert report["model"]["train_rows"] + report["model"]["holdout_rows"] == 2500
    assert report["users_with_features"] > 100
    assert report["items_with_features"] >= 3000  # the whole catalogue was upserted
    assert report["store"] == ("redis" if redis else "in-memory")
    # The closed loop: a model trained on the warm-up served every later request.
    assert report["served_requests"] > 0 and report["timeouts"] == 0
    assert report["requests_ranked"] >= report["served_requests"]
    # Served rankings were joined with what the users did (windows of 5 s).
    assert report["outcomes"]["count"] > 0
    assert report["training"] == {"source": "log", "first_model_source": "log",
                                  "outcome_rows": 0}  # no retrain in this run
    assert list(report["served_vs_popularity_by_model"]) == [report["model"]["version"]]
    assert set(report["ctr"]) == {"served", "random", "popularity", "oracle"}
    assert report["ctr"]["oracle"] > report["ctr"]["random"] > 0
    assert 0 < report["ndcg10_vs_oracle"] <= 1
    assert set(report["model"]["holdout"]) == {"click", "like", "share", "hide"}
    assert (tmp_path / "work" / report["model"]["version"] / "model.onnx").is_file()
    # A person reads a summary of the same numbers; the JSON went to the file only.
    assert f"served     {report['ctr']['served']:.4f}" in result.stdout
    assert f"{report['dlq']} in the DLQ" in result.stdout
    assert report["model"]["version"] in result.stdout
    assert f"full report: {out}" in result.stdout and "{" not in result.stdout
    assert "feature store: " + ("redis" if redis else "in-memory") in result.stderr
    if redis:
        client = Redis.from_url(redis_url)
        keys = list(client.scan_iter(match=f"{env['STREAMRANK_TOPIC_PREFIX']}:*", count=10_000))
        assert keys, "the demo wrote its features to Redis"
        client.unlink(*keys)
        client.close()


def test_demo_with_retrieval_serves_what_the_worker_retrieved(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("STREAMRANK_")}
    out = tmp_path / "out.json"
    result = subprocess.run(
        [sys.executable, "-m", "stream.cli", "demo", "--retrieval", "--seconds", "12",
         "--warmup", "10", "--retrain-every", "0", "--rate", "50",
         "--workdir", str(tmp_path / "work"), "--json", str(out)],
        env=env, capture_output=True, text=True, timeout=240)
    assert result.returncode == 0, result.stderr[-3000:]
    report = orjson.loads(out.read_bytes())
    retrieval = report["retrieval"]
    assert report["served_requests"] > 0 and report["timeouts"] == 0
    # Every request came without candidates; users the warm-up gave interests got theirs.
    by_source = retrieval["requests_by_source"]
    assert sum(by_source.values()) == report["requests_ranked"] >= report["served_requests"]
    assert by_source["interests"] > 0 and by_source["none"] == 0
    assert retrieval["source"] == "interests" and retrieval["feed_items_mean"] == 10
    # Only the served feed is scored: the world's candidates were never shown.
    assert set(report["ctr"]) == {"served"} and retrieval["ctr_served"] == report["ctr"]["served"]
    assert report["ctr"]["served"] > 0
    assert f"served     {report['ctr']['served']:.4f}" in result.stdout
