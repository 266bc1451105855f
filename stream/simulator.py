"""The simulator client: plays the synthetic world's users against a running streamrank.

It publishes the catalogue, then ranking requests at a target rate, and for each one the
engagements the world samples for the feed that was shown. Until a ranker serves results
(the scoring issue) the feed is a uniformly random ranking, logged as such with its propensity,
so the logs can train and evaluate a first model.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO

import numpy as np
import orjson
from aiokafka import AIOKafkaProducer

from models.world import RequestDraw, World
from schemas import Event, ItemUpsert, Limits, RankingRequest, Record, encode
from schemas.codec import validate
from stream.settings import Settings


@dataclass
class SimulationReport:
    items: int = 0
    requests: int = 0
    events: int = 0
    seconds: float = 0.0


class Simulator:
    def __init__(self, settings: Settings, bootstrap: str, world: World, seed: int = 0,
                 log_path: Path | None = None) -> None:
        self.settings = settings
        self.bootstrap = bootstrap
        self.world = world
        self.rng = np.random.default_rng(seed)
        self.log_path = log_path
        self.report = SimulationReport()

    async def run(self, rate: float, seconds: float) -> SimulationReport:
        """Play ``rate`` requests/s for ``seconds`` (0 = until cancelled)."""
        producer = AIOKafkaProducer(bootstrap_servers=self.bootstrap, linger_ms=5)
        await producer.start()
        log_file = self.log_path.open("ab") if self.log_path else None
        started = time.monotonic()
        try:
            await self._publish_catalogue(producer)
            for due in _schedule(rate, seconds, started):
                delay = due - time.monotonic()
                if delay > 0:
                    await asyncio.sleep(delay)
                await self._play_one(producer, time.monotonic() - started, log_file)
            await producer.flush()
        finally:
            self.report.seconds = time.monotonic() - started
            await producer.stop()
            if log_file is not None:
                log_file.close()
        return self.report

    async def _send(self, producer: AIOKafkaProducer, suffix: str, key: str,
                    record: Record) -> None:
        await producer.send(self.settings.topic(suffix), encode(record), key=key.encode())

    async def _publish_catalogue(self, producer: AIOKafkaProducer) -> None:
        world, now = self.world, time.time()
        catalogue = [(world.item_ids, world.item_embeddings, None),
                     (world.ad_ids, world.ad_embeddings, world.ad_bids)]
        for ids, embeddings, bids in catalogue:
            for index, item_id in enumerate(ids):
                upsert = validate({
                    "ts": now, "item_id": item_id, "kind": "item" if bids is None else "ad",
                    "embedding": embeddings[index].tolist(), "created_ts": now,
                    "bid": None if bids is None else float(bids[index]),
                }, ItemUpsert, self.settings.limits)
                await self._send(producer, "items", item_id, upsert)
                self.report.items += 1

    async def _play_one(self, producer: AIOKafkaProducer, elapsed_s: float,
                        log_file: IO[bytes] | None) -> None:
        world, now = self.world, time.time()
        draw = world.draw_request(self.rng, elapsed_s)
        user_id = world.user_ids[draw.user]
        request = _request(world, draw, now, self.settings.limits)
        await self._send(producer, "requests", user_id, request)
        self.report.requests += 1

        ranked = self.rng.permutation(draw.candidates)[: world.config.shown]
        ads_by_slot = {slot: int(self.rng.choice(draw.ads)) for slot in draw.ad_slots}
        engagements = world.play(self.rng, draw, ranked, ads_by_slot, elapsed_s)
        events = [
            Event(ts=now, event_id=uuid.uuid4().hex, user_id=user_id, item_id=e.item_id,
                  type=e.type, request_id=request.request_id, position=e.position,  # type: ignore[arg-type]
                  dwell_s=e.dwell_s, revenue=e.revenue)
            for e in engagements
        ]
        for event in events:
            await self._send(producer, "events", user_id, event)
        self.report.events += len(events)
        if log_file is not None:
            log_file.write(orjson.dumps({
                "request": request.model_dump(mode="json"),
                "served": {"policy": "random", "items": [world.item_ids[i] for i in ranked],
                           "ads": {str(s): world.ad_ids[a] for s, a in ads_by_slot.items()}},
                "events": [e.model_dump(mode="json", exclude_none=True) for e in events],
            }) + b"\n")


def _request(world: World, draw: RequestDraw, now: float, limits: Limits) -> RankingRequest:
    return validate({
        "ts": now, "request_id": uuid.uuid4().hex, "user_id": world.user_ids[draw.user],
        "context": {"device": draw.device, "surface": draw.surface},
        "candidates": [world.item_ids[i] for i in draw.candidates],
        "ad_candidates": [world.ad_ids[i] for i in draw.ads],
        "ad_slots": list(draw.ad_slots), "n": world.config.shown,
    }, RankingRequest, limits)


def _schedule(rate: float, seconds: float, started: float) -> Iterator[float]:
    """Due times of requests at a steady ``rate``; endless when ``seconds`` is 0."""
    interval = 1.0 / rate
    index = 0
    while seconds <= 0 or index * interval < seconds:
        yield started + index * interval
        index += 1
