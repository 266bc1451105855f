"""Section ``outcomes``: an outcomes worker killed with SIGKILL and restarted again and again
while a known stream of rankings and their events is produced. Afterwards the outcomes topic
must hold exactly one outcome per shown item and ad slot of every ranking: ``missing`` and
``duplicated`` at 0. ``labels_wrong`` compares each outcome with the closed form, the join of
its ranking with all of that ranking's events (every event lies well within the window)."""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from bench.faults.config import FaultsConfig
from bench.faults.kills import Lives
from bench.harness import Environment, Record, TopicTail, environment, paced
from schemas import AdDecision, Event, Outcome, RankedItem, RankingResult, decode, encode
from stream.outcomes.join import OutcomeKey, joined, outcome_key
from stream.runtime.clients import kafka_producer
from stream.runtime.worker_process import WorkerProcess
from stream.settings import Settings

USERS = 200
ITEMS_SHOWN = 3
EVENT_TYPES = ("impression", "click", "like", "hide", "dwell")
WINDOW_S = 10.0  # event time; every event of a ranking lies within its first 3 s


def outcomes_section(settings: Settings, config: FaultsConfig) -> dict[str, Any]:
    with environment(settings, "faults-outcomes") as env:
        return asyncio.run(_run(env, config))


@dataclass
class Emitted:
    counts: Counter[OutcomeKey] = field(default_factory=Counter)
    outcomes: dict[OutcomeKey, Outcome] = field(default_factory=dict)
    last_arrival: float = float("-inf")

    def on_outcome(self, record: Record, arrived: float) -> None:
        outcome = decode(record.value or b"", Outcome)
        key = outcome_key(outcome)
        self.counts[key] += 1
        self.outcomes[key] = outcome
        self.last_arrival = arrived


@dataclass
class Stream:
    rankings: list[RankingResult] = field(default_factory=list)
    events: dict[str, list[Event]] = field(default_factory=dict)  # request id -> its events

    def expected(self) -> dict[OutcomeKey, Outcome]:
        return {outcome_key(o): o for r in self.rankings
                for o in joined(r, self.events.get(r.request_id, []), WINDOW_S)}


async def _run(env: Environment, config: FaultsConfig) -> dict[str, Any]:
    settings = env.settings
    worker_settings = config.worker_settings(settings, "outcomes").model_copy(
        update={"outcome_window_s": WINDOW_S})
    lives = Lives(WorkerProcess(worker_settings, env.bootstrap))
    emitted, stream = Emitted(), Stream()
    stop = asyncio.Event()
    async with TopicTail(env.bootstrap, settings.topic("outcomes"), emitted.on_outcome) as tail:
        await lives.start()
        publishing = asyncio.ensure_future(_publish(env, config, stream, stop))
        try:
            await lives.kill_repeatedly(
                config.outcome_kills, config.uptime_s, np.random.default_rng(config.seed + 4),
                lambda launched: emitted.last_arrival - lives.t0 > launched,
                lambda: {"outcomes_so_far": sum(emitted.counts.values())})
            stop.set()
            await publishing
            expected = stream.expected()
            deadline = time.monotonic() + config.catch_up_timeout_s
            while not expected.keys() <= emitted.counts.keys() and time.monotonic() < deadline:
                await asyncio.sleep(0.1)
        finally:
            stop.set()
            await asyncio.gather(publishing, return_exceptions=True)
            lives.worker.stop()
        await tail.read_to_end()
    return _figures(expected, emitted, lives)


async def _publish(env: Environment, config: FaultsConfig, stream: Stream,
                   stop: asyncio.Event) -> None:
    """Rankings (each with one ad slot) and 1-4 events each, at ``config.ranking_rate``/s
    until ``stop``; then, on every partition, an event far ahead that closes every window."""
    rng = np.random.default_rng(config.seed + 5)
    settings = env.settings
    producer = kafka_producer(settings, env.bootstrap, linger_ms=5)
    await producer.start()
    try:
        async for k in paced(config.ranking_rate, stop):
            user, ts = f"u{rng.integers(USERS)}", time.time()
            ranking = RankingResult(
                ts=ts, request_id=f"r{k}", user_id=user,
                items=[RankedItem(item_id=f"i{rng.integers(1000)}", value=1.0 / (rank + 1),
                                  probs={"click": 0.1}) for rank in range(ITEMS_SHOWN)],
                ads=[AdDecision(decision_id=f"r{k}/1", slot=1, ad_id="a1", propensity=0.5,
                                policy="uniform", policy_version="bandit-0")],
                model_version="m", stats_version="none", latency_ms=1.0)
            events = [_event(rng, ranking, j) for j in range(int(rng.integers(1, 5)))]
            stream.rankings.append(ranking)
            stream.events[ranking.request_id] = events
            await producer.send(settings.topic("rankings"), encode(ranking), key=user.encode())
            for event in events:
                await producer.send(settings.topic("events"), encode(event), key=user.encode())
        closing_ts = time.time() + 3 * WINDOW_S
        for u in range(USERS):
            closing = Event(ts=closing_ts, event_id=f"close-u{u}", user_id=f"u{u}",
                            item_id="i0", type="impression")
            await producer.send(settings.topic("events"), encode(closing),
                                key=closing.user_id.encode())
        await producer.flush()
    finally:
        await producer.stop()


def _event(rng: np.random.Generator, ranking: RankingResult, j: int) -> Event:
    if rng.random() < 0.2:
        return Event(ts=ranking.ts + 1.0 + j, event_id=f"{ranking.request_id}-e{j}",
                     user_id=ranking.user_id, item_id="a1", type="ad_click",
                     request_id=ranking.request_id, position=1)
    rank = int(rng.integers(ITEMS_SHOWN))
    kind = str(rng.choice(EVENT_TYPES))
    return Event(ts=ranking.ts + 1.0 + j, event_id=f"{ranking.request_id}-e{j}",
                 user_id=ranking.user_id, item_id=ranking.items[rank].item_id,
                 type=kind, request_id=ranking.request_id,  # type: ignore[arg-type]
                 position=rank + (2 if rank >= 1 else 0),
                 dwell_s=5.0 if kind == "dwell" else None)


def _figures(expected: dict[OutcomeKey, Outcome], emitted: Emitted, lives: Lives
             ) -> dict[str, Any]:
    got = emitted.counts
    kills = lives.summary()
    return {
        "kills": kills.pop("kills"),
        "rankings": len({key[1] for key in expected}),
        "outcomes_expected": len(expected),
        "outcomes_emitted": sum(got.values()),
        "missing": sum(1 for key in expected if key not in got),
        "duplicated": sum(n - 1 for n in got.values() if n > 1),
        "unexpected": sum(1 for key in got if key not in expected),
        "labels_wrong": sum(1 for key, outcome in expected.items()
                            if key in emitted.outcomes and emitted.outcomes[key] != outcome),
        "window_s": WINDOW_S,
        "worker_roles": "outcomes",
        **kills,
        "worker_log": str(lives.worker.log_path),
    }
