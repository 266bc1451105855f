"""The simulator's warm-up and phases, against a recording producer: no broker needed."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import numpy as np
import orjson
import pytest

from models.world import RequestDraw, Shift, World, WorldConfig
from schemas import RankingResult
from schemas.examples import EXAMPLES
from stream.settings import Settings
from stream.simulator import Simulator

RATE = 50.0


class RecordingProducer:
    def __init__(self) -> None:
        self.sent: list[tuple[str, bytes, bytes]] = []

    async def send(self, topic: str, value: bytes, key: bytes) -> None:
        self.sent.append((topic, value, key))

    async def flush(self) -> None:
        pass


class RetrievingWorker(RecordingProducer):
    """Answers every ranking request at once with the same feed, as if its retrieval and
    ranking had found it."""

    def __init__(self, simulator: Simulator, feed: list[str]) -> None:
        super().__init__()
        self.simulator, self.feed = simulator, feed

    async def send(self, topic: str, value: bytes, key: bytes) -> None:
        await super().send(topic, value, key)
        if topic.endswith(".requests"):
            request = orjson.loads(value)
            result = RankingResult.model_validate({
                **EXAMPLES["rankings"], "request_id": request["request_id"],
                "user_id": request["user_id"], "model_version": "v1",
                "items": [{"item_id": i, "value": 0.0, "probs": {}} for i in self.feed]})
            self.simulator._waiting.pop(request["request_id"]).set_result(result)


def offline_simulator(log_path: Path, shifts: tuple[Shift, ...] = (), retrieval: bool = False
                      ) -> tuple[Simulator, RecordingProducer]:
    """A simulator whose producer only records, logging to ``log_path``."""
    world = World(WorldConfig(n_users=50, n_items=300, n_ads=10, dim=8, shifts=shifts))
    simulator = Simulator(Settings(embedding_dim=8), "unused:0", world, log_path=log_path,
                          retrieval=retrieval)
    producer = RecordingProducer()
    simulator._producer = producer  # type: ignore[assignment]
    simulator._log = log_path.open("ab")
    return simulator, producer


def _topic(sent: list[tuple[str, bytes, bytes]], suffix: str) -> list[dict[str, object]]:
    return [orjson.loads(value) for topic, value, _ in sent if topic.endswith("." + suffix)]


def test_warm_up_plays_a_virtual_period_that_ends_now(tmp_path: Path) -> None:
    simulator, producer = offline_simulator(tmp_path / "logs.jsonl")
    before = time.time()
    asyncio.run(simulator.warm_up(200, RATE))
    simulator._log.close()  # type: ignore[union-attr]
    lines = [orjson.loads(line) for line in (tmp_path / "logs.jsonl").read_bytes().splitlines()]
    requests = [line["request"] for line in lines if "request" in line]
    items = _topic(producer.sent, "items")
    events = _topic(producer.sent, "events")

    # 200 requests, stamped 1/RATE apart over the 4 s before the call: not 4 s of waiting.
    stamps = [r["ts"] for r in requests]
    assert len(stamps) == 200 == simulator.report.warmup_requests
    assert stamps == sorted(stamps)
    assert stamps[1] - stamps[0] == pytest.approx(1 / RATE)
    assert before - 200 / RATE <= stamps[0] < stamps[-1] < before
    # The catalogue exists from the start of that period; events happen at their request's time.
    assert len(items) == 310 and {i["created_ts"] for i in items} == {items[0]["ts"]}
    assert items[0]["ts"] <= stamps[0]
    by_request = {r["request_id"]: r["ts"] for r in requests}
    assert events and all(e["ts"] == by_request[e["request_id"]] for e in events)
    assert len(events) == simulator.report.events
    # Logged for training and published for the features, but nobody is asked to rank them.
    assert _topic(producer.sent, "requests") == []
    assert simulator.report.requests == 0
    assert {line["served"]["policy"] for line in lines if "served" in line} == {"random"}


def test_served_and_baselines_are_scored_on_the_same_requests(tmp_path: Path) -> None:
    simulator, _ = offline_simulator(tmp_path / "logs.jsonl")
    world, rng = simulator.world, np.random.default_rng(3)
    for _ in range(20):
        draw = world.draw_request(rng, 0.0)
        # A worker that ranked by true popularity must tie with the popularity baseline.
        simulator._score_against_truth(draw, world.popularity_ranking(draw)[:10], 0.0, "v1")
    quality = simulator.report.quality()
    assert quality["served_requests"] == 20
    assert quality["ctr"]["served"] == quality["ctr"]["popularity"] > 0
    assert quality["served_vs_popularity_by_model"] == {"v1": 1.0}
    assert quality["ctr"]["oracle"] > quality["ctr"]["popularity"]
    simulator._log.close()  # type: ignore[union-attr]


def test_with_retrieval_requests_carry_no_candidates_and_the_served_feed_is_scored(
        tmp_path: Path) -> None:
    simulator, _ = offline_simulator(tmp_path / "logs.jsonl", retrieval=True)
    world = simulator.world
    feed = [5, 17, 250, 3, 99]  # half a feed of items no draw needs to hold
    worker = RetrievingWorker(simulator, [world.item_ids[i] for i in feed])
    simulator._producer = worker  # type: ignore[assignment]
    draws: list[tuple[RequestDraw, float]] = []
    draw_request = world.draw_request

    def recording(rng: np.random.Generator, elapsed_s: float) -> RequestDraw:
        draws.append((draw_request(rng, elapsed_s), elapsed_s))
        return draws[-1][0]

    world.draw_request = recording  # type: ignore[method-assign]
    asyncio.run(simulator.run(RATE, 0.2, "served"))
    simulator._log.close()  # type: ignore[union-attr]

    requests = _topic(worker.sent, "requests")
    assert len(requests) == 10 and all(r["candidates"] == [] for r in requests)
    served = [line["served"] for line in map(orjson.loads, (tmp_path / "logs.jsonl")
                                              .read_bytes().splitlines()) if "served" in line]
    assert served == [{**s, "items": worker.feed, "policy": "v1"} for s in served]
    assert {tuple(s["ads"]) for s in served} == {("2",)}  # slot 7 lies past a feed of 6
    # Only the served feed is scored: the references rank candidates it was not chosen from.
    quality = simulator.report.quality()
    expected = sum(world.expected_clicks(d, np.array(feed), t) for d, t in draws)
    assert quality["ctr"] == {"served": round(expected / (10 * world.config.shown), 5)}
    assert quality["served_ctr_by_model"] == {"v1": quality["ctr"]["served"]}
    assert quality["served_requests"] == 10 and quality["feed_items_mean"] == 5
    assert "ndcg10_vs_oracle" not in quality


def test_the_worlds_clock_counts_traffic_and_marks_the_change_request(tmp_path: Path) -> None:
    """Warm-up, then phases with a pause between: the world sees traffic time, so a change set
    0.1 s into the served traffic (20 requests at 200/s) meets the 21st served request."""
    warmup, rate = 100, 200.0
    change = Shift(warmup / RATE + 0.1, "device_mix", 1.0)
    simulator, _ = offline_simulator(tmp_path / "logs.jsonl", shifts=(change,))
    seen: list[float] = []
    draw_request = simulator.world.draw_request

    def recording(rng: np.random.Generator, elapsed_s: float) -> RequestDraw:
        seen.append(elapsed_s)
        return draw_request(rng, elapsed_s)

    simulator.world.draw_request = recording  # type: ignore[method-assign]

    async def play() -> None:
        await simulator.warm_up(warmup, RATE)
        await simulator.run(rate, 0.075, "random")
        await asyncio.sleep(0.2)  # a retrain's pause: the world's clock stands still
        await simulator.run(rate, 0.075, "random")

    asyncio.run(play())
    simulator._log.close()  # type: ignore[union-attr]
    served = seen[warmup:]
    assert seen[:warmup] == pytest.approx([i / RATE for i in range(warmup)])
    assert served == pytest.approx([2.0 + i / rate for i in range(30)])
    assert simulator.world_s == pytest.approx(2.15)
    assert simulator.report.change_request == 20
    devices = [line["request"]["context"]["device"]
               for line in map(orjson.loads, (tmp_path / "logs.jsonl").read_bytes().splitlines())
               if "request" in line][warmup:]
    assert set(devices[20:]) == {"desktop"} and set(devices[:20]) != {"desktop"}


def test_a_traffic_surge_plays_more_requests_per_second(tmp_path: Path) -> None:
    """Twice the traffic from 0.05 s into the phase: 10 requests at 200/s, then 20 more in the
    next 0.049 s (the last would fall at the phase's end), each at its own world time."""
    warmup, rate = 100, 200.0
    surge = Shift(warmup / RATE + 0.05, "traffic", 2.0)
    simulator, producer = offline_simulator(tmp_path / "logs.jsonl", shifts=(surge,))
    asyncio.run(simulator.warm_up(warmup, RATE))
    asyncio.run(simulator.run(rate, 0.099, "random"))
    simulator._log.close()  # type: ignore[union-attr]
    assert simulator.report.requests == 30 == len(_topic(producer.sent, "requests"))
    assert simulator.report.change_request == 10
    assert simulator.world_s == pytest.approx(warmup / RATE + 0.099)
