"""The ad oracle is what every ad policy is scored against, so it must be exactly what play()
samples, and best_ads must be the best placement there is."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from models.world import World, WorldConfig

SLOTS = (2, 5, 8, 11)


@pytest.fixture(scope="module")
def world() -> World:
    return World(WorldConfig(n_users=200, n_items=500, shown=12, ad_slots=SLOTS))


def shown(world: World, seed: int) -> tuple:
    draw = world.draw_request(np.random.default_rng(seed), 0.0)
    click = world.probabilities(draw.user, draw.candidates, np.zeros(len(draw.candidates)),
                                draw.device, 0.0)["click"]
    return draw, draw.candidates[np.argsort(-click)[:world.config.shown]]


def test_without_ads_it_is_feed_probabilities(world: World) -> None:
    draw, ranked = shown(world, 1)
    truth = world.feed_probabilities(draw, ranked, 0.0)
    value = world.ad_feed_expectations(draw, ranked, {}, 0.0)
    assert value.revenue == 0.0
    assert value.engagement == pytest.approx(
        sum(truth[t].sum() for t in ("click", "like", "share")), rel=1e-12)


def test_it_matches_the_average_of_play(world: World) -> None:
    draw, ranked = shown(world, 2)
    placement = {0: int(draw.ads[0]), 5: int(draw.ads[1]), 8: int(draw.ads[2])}
    value = world.ad_feed_expectations(draw, ranked, placement, 0.0)
    rng = np.random.default_rng(3)
    revenue, engaged = [], []
    for _ in range(20_000):
        events = world.play(rng, draw, ranked, placement, 0.0)
        revenue.append(sum(e.revenue or 0.0 for e in events if e.type == "conversion"))
        engaged.append(sum(e.type in ("click", "like", "share") for e in events))
    for mean, samples in ((value.revenue, revenue), (value.engagement, engaged)):
        error = np.std(samples) / np.sqrt(len(samples))
        assert abs(np.mean(samples) - mean) < 4 * error


def brute_force(world: World, draw, ranked, dial: float, max_ads: int, spacing: int) -> float:
    best = -np.inf
    for k in range(max_ads + 1):
        for chosen in itertools.combinations(SLOTS, k):
            if any(b - a < spacing for a, b in itertools.pairwise(chosen)):
                continue
            for ads in itertools.permutations(draw.ads.tolist(), k):
                value = world.ad_feed_expectations(draw, ranked,
                                                   dict(zip(chosen, ads, strict=True)), 0.0)
                best = max(best, value.revenue + dial * value.engagement)
    return best


@pytest.mark.parametrize(("seed", "dial", "max_ads", "spacing"),
                         [(4, 0.0, 2, 3), (5, 0.05, 3, 3), (6, 0.2, 3, 4), (7, 0.02, 2, 6)])
def test_best_ads_is_the_best_placement(world: World, seed: int, dial: float, max_ads: int,
                                        spacing: int) -> None:
    draw, ranked = shown(world, seed)
    placement = world.best_ads(draw, ranked, SLOTS, dial, max_ads, spacing, 0.0)
    assert len(placement) <= max_ads and set(placement) <= set(SLOTS)
    assert len(set(placement.values())) == len(placement)
    assert set(placement.values()) <= set(draw.ads.tolist())
    value = world.ad_feed_expectations(draw, ranked, placement, 0.0)
    assert value.revenue + dial * value.engagement == pytest.approx(
        brute_force(world, draw, ranked, dial, max_ads, spacing), rel=1e-12)


def test_a_huge_dial_places_nothing_and_no_dial_fills_the_cap(world: World) -> None:
    draw, ranked = shown(world, 8)
    assert world.best_ads(draw, ranked, SLOTS, 1e9, 3, 3, 0.0) == {}
    assert len(world.best_ads(draw, ranked, SLOTS, 0.0, 3, 3, 0.0)) == 3
