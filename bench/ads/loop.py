"""The closed loop, in process: the same request draws for every arm, each arm's feeds played
by the world on the arm's own random stream, and every arm scored by the world's exact
expectations rather than by its samples.

The organic feed is the world's perfect ranking (candidates by true click probability), so the
bench measures the ad policy alone, not the ranker's errors; the values handed to the policy
are those true probabilities. Requests tick a virtual clock at ``RATE_PER_S``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Protocol

import numpy as np

from bench.ads.counters import Counters
from models.bandit import AdRequest, SlotDecision
from models.world import Engagement, RequestDraw, World

RATE_PER_S = 1.0  # requests per virtual second
START_TS = 1_700_000_000.0  # the first request's timestamp: fixed, so runs repeat


@dataclass(frozen=True)
class Request:
    """One draw, shared by every arm: its shown ranking and the truth without ads."""

    elapsed_s: float
    draw: RequestDraw  # candidates: the shown items, best first
    organic_values: np.ndarray  # the shown items' true P(click | examined)
    engagement_never: float  # expected organic engagement with no ads

    @property
    def ts(self) -> float:
        return START_TS + self.elapsed_s

    @property
    def ranked(self) -> np.ndarray:
        return self.draw.candidates


def draw_requests(world: World, n: int, seed: int) -> list[Request]:
    rng = np.random.default_rng([seed, 0])
    requests = []
    for i in range(n):
        elapsed = i / RATE_PER_S
        draw = world.draw_request(rng, elapsed)
        click = world.probabilities(draw.user, draw.candidates, np.zeros(len(draw.candidates)),
                                    draw.device, elapsed)["click"]
        top = np.argsort(-click, kind="stable")[:world.config.shown]
        shown = replace(draw, candidates=draw.candidates[top])
        requests.append(Request(elapsed, shown, click[top],
                                world.ad_feed_expectations(shown, shown.candidates, {},
                                                           elapsed).engagement))
    return requests


@dataclass(frozen=True)
class Slate:
    """What an arm placed: ads by feed position, and the logged decisions behind them."""

    ads_by_slot: dict[int, int]
    decisions: Sequence[SlotDecision] = ()


class Arm(Protocol):
    uses_features: bool  # False: place() gets no AdRequest (and no counters are kept)

    def place(self, request: Request, ads: AdRequest | None, rng: np.random.Generator
              ) -> Slate: ...

    def observe(self, slate: Slate, engagements: Sequence[Engagement]) -> None: ...


@dataclass(frozen=True)
class ArmRun:
    """Per request, from the world's exact expectations."""

    revenue: np.ndarray
    engagement: np.ndarray
    net: np.ndarray  # revenue - dial * (engagement without ads - engagement)


def play_arm(world: World, requests: Sequence[Request], arm: Arm, slots: Sequence[int],
             dial: float, seed: int, stream: int,
             counters: Counters | None = None) -> ArmRun:
    """Run ``arm`` over ``requests``; ``counters`` carries an arm's features into a next phase."""
    play_rng = np.random.default_rng([seed, stream, 1])
    decide_rng = np.random.default_rng([seed, stream, 2])
    if counters is None:
        counters = Counters(world, START_TS)
    revenue, engagement = np.zeros(len(requests)), np.zeros(len(requests))
    for i, request in enumerate(requests):
        draw = request.draw
        ads = counters.ad_request(draw.user, draw.ads, request.organic_values, slots,
                                  request.ts) if arm.uses_features else None
        slate = arm.place(request, ads, decide_rng)
        events = world.play(play_rng, draw, request.ranked, slate.ads_by_slot,
                            request.elapsed_s)
        if arm.uses_features:
            counters.record(draw.user, events, request.ts)
        arm.observe(slate, events)
        value = world.ad_feed_expectations(draw, request.ranked, slate.ads_by_slot,
                                           request.elapsed_s)
        revenue[i], engagement[i] = value.revenue, value.engagement
    never = np.array([r.engagement_never for r in requests])
    return ArmRun(revenue, engagement, revenue - dial * (never - engagement))
