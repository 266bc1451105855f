"""The outcomes role on the real broker: the join, restarts that lose their commits, late
events."""

from __future__ import annotations

import time
from typing import Any

import pytest

from schemas import AdDecision, Event, Outcome, RankedItem, RankingResult, encode
from stream.outcomes.join import joined, outcome_key
from stream.outcomes.role import OutcomesService
from stream.runtime.environment import ensure_topics
from stream.runtime.metrics import WorkerMetrics
from stream.settings import Settings
from tests.integration.harness import publish, read_records, wait_until

pytestmark = pytest.mark.integration

T0 = time.time() - 600
WINDOW = 100.0  # longer than the world lasts: windows close only when a test says so


def ranking(request_id: str, user: str, ts: float) -> RankingResult:
    return RankingResult(
        ts=ts, request_id=request_id, user_id=user,
        items=[RankedItem(item_id=f"i{k}", value=1.0 - k / 10, probs={"click": 0.1})
               for k in range(3)],
        ads=[AdDecision(decision_id=f"{request_id}/1", slot=1, ad_id="a1", propensity=0.25,
                        policy="uniform", policy_version="bandit-0")],
        model_version="m1", stats_version="none", latency_ms=2.0)


def event(event_id: str, user: str, request_id: str | None, type_: str, item_id: str,
          ts: float, position: int | None = None, **fields: Any) -> Event:
    return Event.model_validate({"event_id": event_id, "user_id": user, "item_id": item_id,
                                 "type": type_, "ts": ts, "request_id": request_id,
                                 "position": position, **fields})


def world() -> tuple[list[RankingResult], list[Event]]:
    """Six rankings of two users, each with a click, an ad impression and an ad click on
    some; then, per user, an event far enough ahead to close every window."""
    rankings, events = [], []
    for k in range(6):
        user, ts = f"u{k % 2}", T0 + 10 * k
        rankings.append(ranking(f"r{k}", user, ts))
        events += [event(f"e{k}-i", user, f"r{k}", "impression", "i0", ts + 1, position=0),
                   event(f"e{k}-c", user, f"r{k}", "click", f"i{k % 3}", ts + 2,
                         position=k % 3 + 1)]
        if k % 2 == 0:
            events += [event(f"e{k}-ai", user, f"r{k}", "ad_impression", "a1", ts + 1,
                             position=1),
                       event(f"e{k}-ac", user, f"r{k}", "ad_click", "a1", ts + 3, position=1)]
    return rankings, events


def expected(rankings: list[RankingResult], events: list[Event]) -> dict[Any, Outcome]:
    return {outcome_key(o): o for r in rankings
            for o in joined(r, [e for e in events if e.request_id == r.request_id], WINDOW)}


def closing(user: str, ts: float) -> Event:
    return event(f"close-{user}-{ts}", user, None, "impression", "i9", ts)


async def close_windows(settings: Settings, ts: float) -> None:
    """Move the watermark of both users' partitions to ``ts``."""
    await publish(settings, "events", [(u, encode(closing(u, ts))) for u in ("u0", "u1")])


async def publish_records(settings: Settings, rankings: list[RankingResult],
                          events: list[Event]) -> None:
    await publish(settings, "rankings", [(r.user_id, encode(r)) for r in rankings])
    await publish(settings, "events", [(e.user_id, encode(e)) for e in events])


def outcomes_settings(settings: Settings) -> Settings:
    return settings.model_copy(update={"outcome_window_s": WINDOW})


async def test_rankings_and_events_yield_exactly_the_expected_outcomes(
        settings: Settings) -> None:
    settings = outcomes_settings(settings)
    ensure_topics(str(settings.broker_url), settings)
    rankings, events = world()
    service = OutcomesService(settings, str(settings.broker_url), WorkerMetrics())
    await service.start()
    try:
        await publish_records(settings, rankings, events)
        await close_windows(settings, T0 + 300)
        await wait_until(lambda: service.metrics.total("streamrank_outcomes") == 24)
    finally:
        await service.stop()
    outcomes = await read_records(settings, "outcomes", Outcome)
    assert {outcome_key(o): o for o in outcomes} == expected(rankings, events)
    assert len(outcomes) == 24  # 6 rankings x (3 items + 1 slot), each once
    clicked = {(o.request_id, o.item_id) for o in outcomes
               if o.item_labels is not None and o.item_labels.click}
    assert clicked == {(f"r{k}", f"i{k % 3}") for k in range(6)}
    ads = {o.request_id: o.ad_labels for o in outcomes if o.kind == "ad"}
    assert [k for k in range(6) if ads[f"r{k}"] and ads[f"r{k}"].click] == [0, 2, 4]


async def test_a_restart_that_lost_its_commits_emits_nothing_twice(settings: Settings) -> None:
    settings = outcomes_settings(settings)
    ensure_topics(str(settings.broker_url), settings)
    rankings, events = world()
    first = OutcomesService(settings, str(settings.broker_url), WorkerMetrics())
    await first.start()
    try:
        early = {"r0", "r1", "r2", "r3"}
        await publish_records(settings, rankings[:4],
                              [e for e in events if e.request_id in early])
        # Close r0..r2 only (their windows end by T0 + 120; r3's at T0 + 130).
        await close_windows(settings, T0 + 125)
        await wait_until(lambda: first.metrics.total("streamrank_outcomes") == 12)
    finally:
        await first.stop()
    # As if the worker died before any commit: a group without commits reads from the start.
    settings = settings.model_copy(update={"outcomes_group": f"{settings.group('outcomes')}-2"})
    second = OutcomesService(settings, str(settings.broker_url), WorkerMetrics())
    await second.start()
    try:
        await publish_records(settings, rankings[4:],
                              [e for e in events if e.request_id in {"r4", "r5"}])
        await close_windows(settings, T0 + 300)
        await wait_until(lambda: second.metrics.total("streamrank_outcomes") == 12)
    finally:
        await second.stop()
    outcomes = await read_records(settings, "outcomes", Outcome)
    keys = [outcome_key(o) for o in outcomes]
    assert len(keys) == len(set(keys)) == 24
    assert {outcome_key(o): o for o in outcomes} == expected(rankings, events)


async def test_a_late_event_is_counted_and_not_emitted(settings: Settings) -> None:
    settings = outcomes_settings(settings)
    ensure_topics(str(settings.broker_url), settings)
    service = OutcomesService(settings, str(settings.broker_url), WorkerMetrics())
    await service.start()
    try:
        await publish_records(settings, [ranking("r0", "u0", T0)],
                              [closing("u0", T0 + WINDOW + 1)])
        await wait_until(lambda: service.metrics.total("streamrank_outcomes") == 4)
        await publish(settings, "events", [("u0", encode(
            event("late", "u0", "r0", "click", "i0", T0 + 5, position=0)))])
        await wait_until(
            lambda: service.metrics.total("streamrank_outcome_events_late") == 1)
    finally:
        await service.stop()
    outcomes = await read_records(settings, "outcomes", Outcome, timeout_s=2.0)
    assert len(outcomes) == 4
    assert not any(o.item_labels and o.item_labels.click for o in outcomes)
