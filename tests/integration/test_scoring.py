"""Event-driven scoring through a real worker process, the embedded broker and real Redis."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import orjson
import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition

from schemas import DeadLetter, Outcome, RankingResult, decode
from stream.demo import WorkerProcess
from stream.scoring.model_kind import publish_model
from stream.scoring.ranker import ModelSlot
from stream.settings import Settings
from tests.integration.harness import (
    publish,
    read_dead_letters,
    read_records,
    serving_settings,
    wait_until,
)

pytestmark = pytest.mark.integration

NOW = time.time()
ITEMS = [f"i{n}" for n in range(40)]
OUTCOME_WINDOW_S = 2.0


@pytest.fixture(scope="module")
def worker(bootstrap: str, redis_url: str,
           serving_models: tuple[Path, Path]) -> Iterator[tuple[WorkerProcess, Settings]]:
    settings = serving_settings(bootstrap, redis_url, serving_models[0], "score", partitions=2,
                                feature_log_rate=1.0, outcome_window_s=OUTCOME_WINDOW_S)
    rng = np.random.default_rng(0)
    catalogue = [(item, orjson.dumps({"item_id": item, "ts": NOW,
                                      "embedding": rng.normal(size=32).tolist()}))
                 for item in ITEMS]
    history = [("u1", orjson.dumps({"event_id": f"h{n}", "user_id": "u1", "item_id": item,
                                    "type": kind, "ts": NOW - 60 + n}))
               for n, (item, kind) in enumerate([("i1", "click"), ("i2", "impression"),
                                                 ("i3", "like"), ("i1", "impression")])]
    asyncio.run(publish(settings, "items", catalogue))
    asyncio.run(publish(settings, "events", history))
    with WorkerProcess(settings, bootstrap) as process:
        process.wait_for(lambda s: s["events_processed"] == len(history)
                         and s["items_upserted"] == len(ITEMS), timeout_s=30)
        yield process, settings


def request(user: str = "u1", candidates: list[str] | None = None, **extra: Any) -> bytes:
    return orjson.dumps({"request_id": uuid.uuid4().hex, "user_id": user, "ts": time.time(),
                         "candidates": ITEMS[:25] if candidates is None else candidates,
                         "n": 10, **extra})


class Rankings:
    """Follows the rankings topic from its current end, like a client of streamrank."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.results: dict[str, RankingResult] = {}
        self._consumer = AIOKafkaConsumer(bootstrap_servers=settings.broker_url,
                                          group_id=None, fetch_max_wait_ms=5)

    async def __aenter__(self) -> Rankings:
        await self._consumer.start()
        topic = self.settings.topic("rankings")
        partitions = [TopicPartition(topic, p) for p in range(self.settings.partitions)]
        self._consumer.assign(partitions)
        await self._consumer.seek_to_end(*partitions)
        for partition in partitions:
            await self._consumer.position(partition)
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self._consumer.stop()

    async def collect(self, request_ids: set[str], timeout_s: float = 30.0) -> None:
        deadline = time.monotonic() + timeout_s
        while not request_ids <= self.results.keys() and time.monotonic() < deadline:
            for records in (await self._consumer.getmany(timeout_ms=100)).values():
                for record in records:
                    result = decode(record.value or b"", RankingResult)
                    self.results[result.request_id] = result
        assert request_ids <= self.results.keys(), "some requests got no result"


def post_rank(port: int, body: bytes) -> tuple[int, dict[str, Any]]:
    http = urllib.request.Request(f"http://127.0.0.1:{port}/rank", data=body, method="POST",
                                  headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(http, timeout=10) as response:
            return response.status, orjson.loads(response.read())
    except urllib.error.HTTPError as error:
        return error.code, orjson.loads(error.read())


async def send_requests(settings: Settings, bodies: list[bytes]) -> None:
    await publish(settings, "requests", [("u1", body) for body in bodies])


def test_kafka_and_http_return_the_same_ranking(
        worker: tuple[WorkerProcess, Settings]) -> None:
    process, settings = worker
    body = request()

    async def via_kafka() -> RankingResult:
        async with Rankings(settings) as rankings:
            await send_requests(settings, [body])
            request_id = orjson.loads(body)["request_id"]
            await rankings.collect({request_id})
            return rankings.results[request_id]

    kafka = asyncio.run(via_kafka())
    status, http = post_rank(process.port, body)
    assert status == 200
    assert kafka.model_version == http["model_version"] != "popularity-fallback"
    assert [i.item_id for i in kafka.items] == [i["item_id"] for i in http["items"]]
    assert len(kafka.items) == 10
    # Same path, a moment apart: only the recency features have decayed in between.
    for ours, theirs in zip(kafka.items, http["items"], strict=True):
        assert ours.value == pytest.approx(theirs["value"], rel=1e-3)
        assert ours.probs == pytest.approx(theirs["probs"], rel=1e-3)
    values = [item.value for item in kafka.items]
    assert values == sorted(values, reverse=True)
    assert http["latency_ms"] >= 0


def test_bad_requests_go_to_the_dlq_and_get_clear_http_errors(
        worker: tuple[WorkerProcess, Settings]) -> None:
    process, settings = worker
    bad = [
        (b"{not json", "not_json"),
        (request(candidates=[f"x{n}" for n in range(1001)]), "list_too_long"),
        (request(coupon="x"), "unknown_field"),
        (request(ts=-1.0), "absurd_timestamp"),
        # Well formed, but older than STREAMRANK_REQUEST_TTL_S (30 s): nobody waits for it.
        (request(ts=time.time() - 120), "expired"),
    ]
    good = request()

    async def run() -> tuple[list[DeadLetter], RankingResult]:
        async with Rankings(settings) as rankings:
            await send_requests(settings, [body for body, _ in bad] + [good])
            good_id = orjson.loads(good)["request_id"]
            await rankings.collect({good_id})
            letters = await read_dead_letters(settings, len(bad))
            return letters, rankings.results[good_id]

    letters, result = asyncio.run(run())
    from_requests = [x for x in letters if x.source_topic == settings.topic("requests")]
    assert [x.reason for x in from_requests] == [reason for _, reason in bad]
    assert len(result.items) == 10

    for body, reason in bad[:-1]:  # a caller of POST /rank is waiting, whatever the ts
        status, error = post_rank(process.port, body)
        assert status == 400
        assert error["error"] == reason and error["detail"]


def test_hot_swap_under_load_fails_no_request(worker: tuple[WorkerProcess, Settings],
                                              serving_models: tuple[Path, Path]) -> None:
    process, settings = worker
    bodies = [request() for _ in range(300)]
    ids = [orjson.loads(body)["request_id"] for body in bodies]

    async def run() -> dict[str, RankingResult]:
        producer = AIOKafkaProducer(bootstrap_servers=settings.broker_url, linger_ms=1)
        await producer.start()
        async with Rankings(settings) as rankings:
            for n, body in enumerate(bodies):
                await producer.send(settings.topic("requests"), body, key=b"u1")
                if n == 100:
                    await publish_model(settings, str(settings.broker_url), serving_models[1])
                await asyncio.sleep(0.02)
            await producer.stop()
            await rankings.collect(set(ids), timeout_s=60)
            return rankings.results

    results = asyncio.run(run())
    versions = [results[i].model_version for i in ids]
    assert process.get("/stats")["requests_ranked"] > 0
    assert versions[0] == "test-v1"
    assert versions[-1] == "test-v2"
    switch = versions.index("test-v2")
    assert set(versions[switch:]) == {"test-v2"}, "once swapped, never back"
    assert all(len(results[i].items) == 10 for i in ids)
    stats = process.get("/stats")
    assert stats["model_version"] == "test-v2"
    assert stats["model_load_failures"] == 0


def test_unloadable_model_update_keeps_the_current_model(
        worker: tuple[WorkerProcess, Settings], serving_models: tuple[Path, Path]) -> None:
    process, settings = worker
    before = process.get("/stats")
    broken = settings.model_dir / f"broken-{uuid.uuid4().hex[:8]}"
    broken.mkdir()
    manifest = orjson.loads(serving_models[0].read_bytes())
    (broken / "manifest.json").write_bytes(orjson.dumps({**manifest, "version": "broken"}))
    (broken / "model.onnx").write_bytes(b"not an onnx model")
    asyncio.run(_publish_raw(settings, broken, manifest["sha256"]))
    asyncio.run(wait_until(lambda: process.get("/stats")["model_load_failures"]
                           == before["model_load_failures"] + 1))
    assert process.get("/stats")["model_version"] == before["model_version"]
    status, ranking = post_rank(process.port, request())
    assert status == 200 and ranking["model_version"] == before["model_version"]


async def _publish_raw(settings: Settings, directory: Path, sha256: str) -> None:
    update = {"ts": time.time(), "model": "ranker", "kind": "model", "version": "broken",
              "uri": directory.resolve().as_uri(), "sha256": sha256}
    await publish(settings, "model-updates", [("model", orjson.dumps(update))])


@pytest.mark.xdist_group("cpu-heavy")
def test_outcomes_carry_the_rows_scored_and_a_model_trained_on_them_serves(
        worker: tuple[WorkerProcess, Settings], serving_models: tuple[Path, Path]) -> None:
    """Last in this module: it publishes a model of its own."""
    _, settings = worker
    bodies = [request(candidates=ITEMS[k:k + 20]) for k in range(12)]
    request_ids = {orjson.loads(body)["request_id"] for body in bodies}

    async def serve_and_engage() -> list[Outcome]:
        async with Rankings(settings) as rankings:
            await send_requests(settings, bodies)
            await rankings.collect(request_ids)
        clicks = [("u1", orjson.dumps({
            "event_id": f"c-{r.request_id}-{k}", "user_id": "u1", "item_id": r.items[k].item_id,
            "type": "click", "ts": time.time(), "request_id": r.request_id, "position": k}))
            for r in rankings.results.values() for k in (0, 3)]
        await publish(settings, "events", clicks)
        await asyncio.sleep(OUTCOME_WINDOW_S + 0.5)  # then an event moves the watermark past
        await publish(settings, "events", [("u1", orjson.dumps({
            "event_id": uuid.uuid4().hex, "user_id": "u1", "item_id": "i0",
            "type": "impression", "ts": time.time()}))])
        outcomes: list[Outcome] = []
        deadline = time.monotonic() + 30
        while len({(o.request_id, o.seq) for o in outcomes
                   if o.request_id in request_ids}) < 120 and time.monotonic() < deadline:
            outcomes = await read_records(settings, "outcomes", Outcome, timeout_s=1.0)
        return [o for o in outcomes if o.request_id in request_ids]

    outcomes = asyncio.run(serve_and_engage())
    assert len(outcomes) == 120 and all(o.features is not None for o in outcomes)
    assert sum(bool(o.item_labels and o.item_labels.click) for o in outcomes) == 24
    # Each logged row is the row the model scored: scoring it again gives the served probs.
    manifests = {m.parent.name: m for m in serving_models}
    for outcome in outcomes[:20]:
        scorer = ModelSlot(settings).build(manifests[outcome.model_version])
        row = np.asarray([outcome.features], dtype=np.float32)
        served = [outcome.probs[task] for task in scorer.task_names]
        assert scorer.score(row)[0].tolist() == pytest.approx(served, rel=1e-5)

    out = serving_models[0].parent.parent / "from-topics"
    trained = subprocess.run(
        [sys.executable, "-m", "stream.cli", "train", "--topics", "--out", str(out),
         "--version", "from-topics", "--epochs", "2"],
        env={**os.environ, **settings.as_env()}, capture_output=True, text=True, timeout=300)
    assert trained.returncode == 0, trained.stderr[-2000:]
    assert orjson.loads(trained.stdout)["train_rows"] > 0
    asyncio.run(publish_model(settings, str(settings.broker_url), out / "manifest.json"))

    async def served_by() -> str:
        for _ in range(50):
            body = request()
            async with Rankings(settings) as rankings:
                await send_requests(settings, [body])
                await rankings.collect({orjson.loads(body)["request_id"]})
            version = next(iter(rankings.results.values())).model_version
            if version == "from-topics":
                return version
            await asyncio.sleep(0.2)
        return version

    assert asyncio.run(served_by()) == "from-topics"


def test_in_worker_latency_by_stage_in_stats_and_metrics(
        worker: tuple[WorkerProcess, Settings]) -> None:
    """Every stage is measured, over the topic and over HTTP; no bound is put on the times."""
    process, settings = worker
    ads: dict[str, Any] = {"ad_candidates": ["i30", "i31", "i32"], "ad_slots": [1, 3]}
    asyncio.run(send_requests(settings, [request(**(ads if k % 2 else {})) for k in range(20)]))
    for body in (request(), request(**ads)):
        assert post_rank(process.port, body)[0] == 200
    stages = ("features", "matrix", "model", "ads", "produce", "total")

    def measured() -> bool:
        latency = process.get("/stats")["scoring_latency_ms"]
        return all(latency[stage]["n"] > 0 for stage in stages)

    asyncio.run(wait_until(measured, timeout_s=30))
    latency = process.get("/stats")["scoring_latency_ms"]
    assert set(latency) == set(stages)
    for stage in stages:
        assert 0 < latency[stage]["p50"] <= latency[stage]["p99"], stage
    # Every request of a batch counts once in the batch stages, and once in total at its ack.
    assert latency["features"]["n"] == latency["matrix"]["n"] == latency["model"]["n"]
    with urllib.request.urlopen(f"http://127.0.0.1:{process.port}/metrics",
                                timeout=5) as response:
        text = response.read().decode()
    for stage in stages:
        assert f'streamrank_scoring_latency_seconds_bucket{{le="0.0001",stage="{stage}"}}' \
            in text, stage
