"""The simulator client: plays the synthetic world's users against a running streamrank.

It publishes the catalogue, then ranking requests at a target rate, and for each one the
engagements the world samples for the feed that was shown. With ``policy="random"`` it shows a
uniformly random feed (exploration data for a first model). With ``policy="served"`` it waits
for the worker's ranking on the rankings topic and shows that. For every served request it
also scores, with the world's true probabilities, what a random and a popularity ranking would
have earned on the same request, so quality is measured against the truth.

With ``retrieval=True`` the served requests carry no candidates: the worker retrieves them
(from the user's interests, or the trending items) and the user sees its ranking of those.
The served feed is still scored against the truth, but the random, popularity and oracle
rankings of the world's drawn candidates no longer describe it, so they are left out; two runs
with different retrieval sources compare instead (``streamrank demo --retrieval --compare``).

:meth:`Simulator.warm_up` plays random feeds on a virtual clock instead: the world is
synthetic, so a first model's training log need not cost its length in real time.

The world's clock (``world_s``, the ``elapsed_s`` the world is asked at) counts traffic, not
wall time: the warm-up's virtual seconds, then each phase's schedule. It stands still between
phases, while a model trains, so a change set at a world time falls on the same request however
long training takes (``streamrank demo --scenario``).
"""

from __future__ import annotations

import asyncio
import itertools
import time
import uuid
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any, Literal

import numpy as np
import orjson
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition

from models.world import Engagement, RequestDraw, World
from schemas import Event, ItemUpsert, Limits, RankingRequest, RankingResult, Record, encode
from schemas.codec import Rejection, decode, validate
from stream.runtime.clients import kafka_consumer, started_producer
from stream.settings import Settings

Policy = Literal["random", "served"]
MAX_IN_FLIGHT = 512


@dataclass
class SimulationReport:
    items: int = 0
    requests: int = 0
    events: int = 0
    seconds: float = 0.0
    served: int = 0
    timeouts: int = 0
    expected_clicks: dict[str, float] = field(
        default_factory=lambda: {"served": 0.0, "random": 0.0, "popularity": 0.0, "oracle": 0.0})
    shown: int = 0
    ndcg10_sum: float = 0.0
    # Per served model version: expected clicks of its rankings and of popularity, and shown.
    by_model: dict[str, list[float]] = field(default_factory=dict)
    round_trip_ms: list[float] = field(default_factory=list)
    retrieval: bool = False  # served requests carried no candidates: only "served" is scored
    feed_items: int = 0  # items in the served feeds, of the shown slots
    warmup_requests: int = 0  # played by warm_up(), on a virtual clock; not in requests
    warmup_wall_s: float = 0.0
    # Index (0-based, among the requests of run()) of the first one played at or after the
    # world's first shift; None while there is none.
    change_request: int | None = None
    change_ts: float | None = None  # wall time then: the change's event time
    # On the served requests, from the world's expectations: what the placed ads earned, the
    # organic engagement they cost against the same feed with none, and how many were placed.
    ad_revenue: float = 0.0
    ad_engagement_cost: float = 0.0
    ads_placed: int = 0

    def quality(self) -> dict[str, Any]:
        """CTRs per shown item from the world's true probabilities, on the served requests.
        With retrieval, the served feeds' alone, per model version too, and how full they
        were."""
        shown = max(self.shown, 1)
        trips = np.asarray(self.round_trip_ms or [np.nan])
        names = ["served"] if self.retrieval else list(self.expected_clicks)
        quality: dict[str, Any] = {
            "ctr": {name: round(float(self.expected_clicks[name]) / shown, 5) for name in names},
            "served_requests": self.served,
            "timeouts": self.timeouts,
            "round_trip_ms": {"p50": round(float(np.nanpercentile(trips, 50)), 2),
                              "p99": round(float(np.nanpercentile(trips, 99)), 2)},
            "ads": {"per_request": round(self.ads_placed / max(self.served, 1), 4),
                    "revenue_per_request": round(self.ad_revenue / max(self.served, 1), 5),
                    "engagement_cost_per_request": round(
                        self.ad_engagement_cost / max(self.served, 1), 5)},
        }
        if self.retrieval:
            return quality | {
                "feed_items_mean": round(self.feed_items / max(self.served, 1), 2),
                "served_ctr_by_model": {
                    version: round(served / max(slots, 1), 5)
                    for version, (served, _, slots) in self.by_model.items()}}
        return quality | {
            "ndcg10_vs_oracle": round(float(self.ndcg10_sum) / max(self.served, 1), 4),
            "served_vs_popularity_by_model": {
                version: round(served / popularity, 4)
                for version, (served, popularity, _) in self.by_model.items()}}


class Simulator:
    def __init__(self, settings: Settings, bootstrap: str, world: World, seed: int = 0,
                 log_path: Path | None = None, result_timeout_s: float = 5.0,
                 retrieval: bool = False) -> None:
        """``retrieval``: served requests carry no candidates; the worker retrieves them."""
        self.settings = settings
        self.bootstrap = bootstrap
        self.world = world
        self.rng = np.random.default_rng(seed)
        self.log_path = log_path
        self.result_timeout_s = result_timeout_s
        self.retrieval = retrieval
        self.report = SimulationReport(retrieval=retrieval)
        self.world_s = 0.0  # the world's clock: seconds of traffic played so far
        self._change_at_s = min((s.at_s for s in world.config.shifts), default=None)
        self._scheduled = 0  # requests of run() so far
        self._producer: AIOKafkaProducer  # started on entry: idempotent where the broker can
        self._rankings: AIOKafkaConsumer | None = None
        self._waiting: dict[str, asyncio.Future[RankingResult]] = {}
        self._log: IO[bytes] | None = None
        self._follower: asyncio.Task[None] | None = None
        self._item_index = {item_id: i for i, item_id in enumerate(world.item_ids)}
        self._ad_index = {ad_id: i for i, ad_id in enumerate(world.ad_ids)}

    async def __aenter__(self) -> Simulator:
        self._producer = await started_producer(self.settings, self.bootstrap, linger_ms=2)
        await self._follow_rankings()
        self._log = self.log_path.open("ab") if self.log_path else None
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self._producer.flush()
        await self._producer.stop()
        if self._follower is not None:
            self._follower.cancel()
            await asyncio.gather(self._follower, return_exceptions=True)
        if self._rankings is not None:
            await self._rankings.stop()
        if self._log is not None:
            self._log.close()

    async def publish_catalogue(self, now: float | None = None) -> None:
        """Upsert every item and ad, created at ``now`` (default: the wall clock)."""
        now = time.time() if now is None else now
        for upsert in catalogue(self.world, now, self.settings.limits):
            await self._send("items", upsert.item_id, upsert)
            self._write_log({"item": upsert.model_dump(mode="json", exclude_none=True)})
            self.report.items += 1
        await self._producer.flush()

    async def run(self, rate: float, seconds: float, policy: Policy) -> SimulationReport:
        """Play ``rate`` requests/s (times the world's traffic scale, which a surge raises) for
        ``seconds`` (0 = until cancelled). Each request meets the world at its scheduled time,
        so the world's clock advances by ``seconds``."""
        in_flight = asyncio.Semaphore(MAX_IN_FLIGHT)
        tasks: set[asyncio.Task[None]] = set()
        phase_start, phase_world_s = time.monotonic(), self.world_s
        try:
            for elapsed in self.world.request_times(rate, phase_world_s):
                offset = elapsed - phase_world_s
                if 0 < seconds <= offset:
                    break
                delay = phase_start + offset - time.monotonic()
                if delay > 0:
                    await asyncio.sleep(delay)
                await in_flight.acquire()
                if (self.report.change_request is None and self._change_at_s is not None
                        and elapsed >= self._change_at_s):
                    self.report.change_request = self._scheduled
                    self.report.change_ts = time.time()
                self._scheduled += 1
                task = asyncio.ensure_future(self._play_one(policy, elapsed))
                tasks.add(task)
                task.add_done_callback(tasks.discard)
                task.add_done_callback(lambda _: in_flight.release())
            if tasks:
                await asyncio.gather(*tasks)
            await self._producer.flush()
            if self._log is not None:
                self._log.flush()
        finally:
            wall_s = time.monotonic() - phase_start
            self.report.seconds += wall_s
            self.world_s = phase_world_s + (seconds or wall_s)
        return self.report

    async def warm_up(self, requests: int, rate: float) -> SimulationReport:
        """Play ``requests`` random feeds as fast as they can be made, stamped as if they had
        been played at ``rate`` requests/s over the period that ends now.

        Their engagements go to the events topic and to the log, so the worker's features and
        the first model's training rows see the same history they would after a real-time
        warm-up. The requests are logged but not sent: no one waits for their rankings. The
        catalogue is published first, created when the warm-up began.
        """
        started = time.monotonic()
        times = list(itertools.islice(self.world.request_times(rate, self.world_s), requests + 1))
        virtual_s = times[-1] - self.world_s
        start = time.time() - virtual_s
        await self.publish_catalogue(now=start)
        for elapsed in times[:-1]:
            draw = self.world.draw_request(self.rng, elapsed)
            request = ranking_request(self.world, draw, start + elapsed,
                                      self.settings.limits)
            ranked = self.rng.permutation(draw.candidates)[: self.world.config.shown]
            await self._play(request, draw, ranked, "random", elapsed, request.ts)
        await self._producer.flush()
        if self._log is not None:
            self._log.flush()
        self.report.warmup_requests += requests
        self.report.warmup_wall_s += time.monotonic() - started
        self.world_s += virtual_s
        return self.report

    async def _send(self, suffix: str, key: str, record: Record) -> None:
        await self._producer.send(self.settings.topic(suffix), encode(record), key=key.encode())

    def _write_log(self, line: dict[str, Any]) -> None:
        if self._log is not None:
            self._log.write(orjson.dumps(line) + b"\n")

    async def _follow_rankings(self) -> None:
        """Follow results from now on; positions are resolved before the first request."""
        topic = self.settings.topic("rankings")
        consumer = kafka_consumer(self.settings, self.bootstrap, group_id=None,
                                  fetch_max_wait_ms=10)
        await consumer.start()
        await consumer.topics()
        partitions = [TopicPartition(topic, p)
                      for p in sorted(consumer.partitions_for_topic(topic) or {0})]
        consumer.assign(partitions)
        await consumer.seek_to_end(*partitions)
        for partition in partitions:
            await consumer.position(partition)
        self._rankings = consumer
        self._follower = asyncio.ensure_future(self._resolve_rankings(consumer))

    async def _resolve_rankings(self, consumer: AIOKafkaConsumer) -> None:
        while True:
            batch = await consumer.getmany(timeout_ms=100)
            for records in batch.values():
                for record in records:
                    try:
                        result = decode(record.value or b"", RankingResult)
                    except Rejection:
                        continue
                    waiter = self._waiting.pop(result.request_id, None)
                    if waiter is not None and not waiter.done():
                        waiter.set_result(result)

    async def _play_one(self, policy: Policy, elapsed: float) -> None:
        world, now = self.world, time.time()
        draw = world.draw_request(self.rng, elapsed)
        request = ranking_request(world, draw, now, self.settings.limits,
                                  candidates=not self.retrieval)
        ranked = self.rng.permutation(draw.candidates)[: world.config.shown]
        served_by = "random"
        ads_by_slot: dict[int, int] | None = None  # None: random ads, as a naive ad server
        if policy == "served":
            waiter = asyncio.get_running_loop().create_future()
            self._waiting[request.request_id] = waiter
            sent = time.perf_counter()
            await self._send("requests", request.user_id, request)
            try:
                result = await asyncio.wait_for(waiter, self.result_timeout_s)
                self.report.round_trip_ms.append((time.perf_counter() - sent) * 1000)
                ranked = np.array([self._item_index[item.item_id] for item in result.items])
                ads_by_slot = {ad.slot: self._ad_index[ad.ad_id] for ad in result.ads
                               if ad.ad_id is not None}
                served_by = result.model_version
                self._score_ads(draw, ranked, ads_by_slot, elapsed)
                self._score_against_truth(draw, ranked, elapsed, served_by)
            except TimeoutError:
                self._waiting.pop(request.request_id, None)
                self.report.timeouts += 1
        else:
            await self._send("requests", request.user_id, request)
        self.report.requests += 1
        await self._play(request, draw, ranked, served_by, elapsed, time.time(), ads_by_slot)

    async def _play(self, request: RankingRequest, draw: RequestDraw, ranked: np.ndarray,
                    served_by: str, elapsed: float, ts: float,
                    ads_by_slot: dict[int, int] | None = None) -> None:
        """Sample the user's engagements with the shown feed, with the ads the worker placed
        (random ones in every reached slot when none was asked); publish and log them."""
        world = self.world
        if ads_by_slot is None:
            ads_by_slot = {slot: int(self.rng.choice(draw.ads))
                           for slot in _slots_reached(draw.ad_slots, len(ranked))}
        events = engagement_events(
            request, world.play(self.rng, draw, ranked, ads_by_slot, elapsed), ts)
        for event in events:
            await self._send("events", request.user_id, event)
        self.report.events += len(events)
        self._write_log({
            "request": request.model_dump(mode="json"),
            "served": {"policy": served_by, "items": [world.item_ids[i] for i in ranked],
                       "ads": {str(s): world.ad_ids[a] for s, a in ads_by_slot.items()}},
            "events": [e.model_dump(mode="json", exclude_none=True) for e in events],
        })

    def _score_ads(self, draw: RequestDraw, ranked: np.ndarray, ads_by_slot: dict[int, int],
                   elapsed: float) -> None:
        with_ads = self.world.ad_feed_expectations(draw, ranked, ads_by_slot, elapsed)
        without = self.world.ad_feed_expectations(draw, ranked, {}, elapsed)
        self.report.ad_revenue += with_ads.revenue
        self.report.ad_engagement_cost += without.engagement - with_ads.engagement
        self.report.ads_placed += len(ads_by_slot)

    def _score_against_truth(self, draw: RequestDraw, served: np.ndarray, elapsed: float,
                             version: str) -> None:
        """Expected clicks of the served feed in ``shown`` slots (a short feed earns less),
        and, without retrieval, of the reference rankings of the same candidates."""
        shown = self.world.config.shown
        clicks = {"served": self.world.expected_clicks(draw, served, elapsed)}
        if not self.retrieval:
            clicks |= self._score_references(draw, served, elapsed)
        for name, value in clicks.items():
            self.report.expected_clicks[name] += value
        per_model = self.report.by_model.setdefault(version, [0.0, 0.0, 0.0])
        per_model[0] += clicks["served"]
        per_model[1] += clicks.get("popularity", 0.0)
        per_model[2] += shown
        self.report.shown += shown
        self.report.served += 1
        self.report.feed_items += len(served)

    def _score_references(self, draw: RequestDraw, served: np.ndarray,
                          elapsed: float) -> dict[str, float]:
        """Expected clicks of a random, the popularity and the oracle ranking of the draw's
        candidates; adds the served ranking's NDCG@10 against the oracle's."""
        world, shown = self.world, self.world.config.shown
        truth = world.probabilities(draw.user, draw.candidates,
                                    np.zeros(len(draw.candidates), dtype=np.int64),
                                    draw.device, elapsed)["click"]
        oracle = draw.candidates[np.argsort(-truth, kind="stable")][:shown]
        rankings = {
            "random": self.rng.permutation(draw.candidates)[:shown],
            "popularity": world.popularity_ranking(draw)[:shown],
            "oracle": oracle,
        }
        gain = dict(zip(draw.candidates.tolist(), truth.tolist(), strict=True))
        discounts = 1.0 / np.log2(np.arange(2, 12))
        dcg = sum(gain[int(i)] * d for i, d in zip(served[:10], discounts, strict=False))
        ideal = sum(gain[int(i)] * d for i, d in zip(oracle[:10], discounts, strict=False))
        self.report.ndcg10_sum += dcg / ideal if ideal > 0 else 0.0
        return {name: world.expected_clicks(draw, ranking, elapsed)
                for name, ranking in rankings.items()}


def catalogue(world: World, now: float, limits: Limits) -> Iterator[ItemUpsert]:
    """Every item, then every ad, of the world as upserts created at ``now``."""
    for ids, embeddings, bids in [(world.item_ids, world.item_embeddings, None),
                                  (world.ad_ids, world.ad_embeddings, world.ad_bids)]:
        for index, item_id in enumerate(ids):
            yield validate({
                "ts": now, "item_id": item_id, "kind": "item" if bids is None else "ad",
                "embedding": embeddings[index].tolist(), "created_ts": now,
                "bid": None if bids is None else float(bids[index]),
            }, ItemUpsert, limits)


def engagement_events(request: RankingRequest, engagements: Sequence[Engagement], ts: float
                      ) -> list[Event]:
    """What the user did with the request's feed, as events at ``ts``."""
    return [
        Event(ts=ts, event_id=uuid.uuid4().hex, user_id=request.user_id,
              item_id=e.item_id, type=e.type,  # type: ignore[arg-type]
              request_id=request.request_id, position=e.position, dwell_s=e.dwell_s,
              revenue=e.revenue)
        for e in engagements
    ]


def ranking_request(world: World, draw: RequestDraw, now: float, limits: Limits,
                    candidates: bool = True) -> RankingRequest:
    """The draw as a ranking request; without ``candidates``, the worker retrieves them."""
    return validate({
        "ts": now, "request_id": uuid.uuid4().hex, "user_id": world.user_ids[draw.user],
        "context": {"device": draw.device, "surface": draw.surface},
        "candidates": [world.item_ids[i] for i in draw.candidates] if candidates else [],
        "ad_candidates": [world.ad_ids[i] for i in draw.ads],
        "ad_slots": list(draw.ad_slots), "n": world.config.shown,
    }, RankingRequest, limits)


def _slots_reached(ad_slots: tuple[int, ...], items: int) -> list[int]:
    """The ad slots a feed of ``items`` organic items reaches: a retrieved feed may be short,
    and an ad cannot stand past the feed's end."""
    reached: list[int] = []
    for slot in sorted(ad_slots):
        if slot <= items + len(reached):
            reached.append(slot)
    return reached
