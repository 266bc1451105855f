"""The synthetic world is the ground truth for every quality number, so pin its promises down."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from models.world import (
    ENGAGEMENT_TASKS,
    Engagement,
    RequestDraw,
    Shift,
    World,
    WorldConfig,
)

ORGANIC_TYPES = {"impression", "click", "like", "share", "hide", "dwell"}
AD_TYPES = {"ad_impression", "ad_click", "conversion"}


@pytest.fixture(scope="module")
def world() -> World:
    return World()


def draws(world: World, n: int, seed: int = 0, elapsed_s: float = 0.0) -> list[RequestDraw]:
    rng = np.random.default_rng(seed)
    return [world.draw_request(rng, elapsed_s) for _ in range(n)]


def oracle_ranking(world: World, draw: RequestDraw, elapsed_s: float = 0.0) -> np.ndarray:
    positions = np.zeros(len(draw.candidates), dtype=np.int64)
    click = world.probabilities(draw.user, draw.candidates, positions, draw.device, elapsed_s)
    return draw.candidates[np.argsort(-click["click"], kind="stable")]


def test_same_seed_same_world_and_traffic() -> None:
    a, b = World(WorldConfig(seed=3)), World(WorldConfig(seed=3))
    np.testing.assert_array_equal(a.item_embeddings, b.item_embeddings)
    np.testing.assert_array_equal(a.ad_bids, b.ad_bids)
    np.testing.assert_array_equal(a.item_quality, b.item_quality)
    da, db = (
        a.draw_request(np.random.default_rng(9), 5.0),
        b.draw_request(np.random.default_rng(9), 5.0),
    )
    np.testing.assert_array_equal(da.candidates, db.candidates)
    assert (da.user, da.device, da.surface) == (db.user, db.device, db.surface)
    ranked = da.candidates[: a.config.shown]
    ads = {2: int(da.ads[0]), 7: int(da.ads[1])}
    assert a.play(np.random.default_rng(1), da, ranked, ads, 5.0) == b.play(
        np.random.default_rng(1), db, ranked, ads, 5.0
    )
    other = World(WorldConfig(seed=4))
    assert not np.array_equal(a.item_embeddings, other.item_embeddings)


def test_shapes_dtypes_and_normalisation(world: World) -> None:
    cfg = world.config
    assert world.item_embeddings.shape == (cfg.n_items, cfg.dim)
    assert world.ad_embeddings.shape == (cfg.n_ads, cfg.dim)
    assert world.item_embeddings.dtype == world.ad_embeddings.dtype == np.float32
    for emb in (world.item_embeddings, world.ad_embeddings):
        np.testing.assert_allclose(np.linalg.norm(emb, axis=1), 1.0, atol=1e-5)
    assert world.ad_bids.dtype == np.float64 and world.ad_bids.shape == (cfg.n_ads,)
    assert np.all(world.ad_bids > 0)
    assert world.item_quality.dtype == np.float64 and world.item_quality.shape == (cfg.n_items,)
    assert world.user_ids[:2] == ["u0", "u1"] and len(world.user_ids) == cfg.n_users
    assert world.item_ids[-1] == f"i{cfg.n_items - 1}" and world.ad_ids[0] == "a0"
    for draw in draws(world, 50):
        assert draw.candidates.dtype == draw.ads.dtype == np.int64
        assert len(np.unique(draw.candidates)) == len(draw.candidates) == cfg.candidates_per_request
        assert len(np.unique(draw.ads)) == len(draw.ads) == cfg.ads_per_request
        assert draw.candidates.max() < cfg.n_items and draw.ads.max() < cfg.n_ads
        assert 0 <= draw.user < cfg.n_users and draw.ad_slots == cfg.ad_slots
        assert draw.device in {"mobile", "desktop", "tablet"}
        assert draw.surface in {"feed", "search", "related"}


def test_probabilities_bounded_and_fall_with_position(world: World) -> None:
    for draw in draws(world, 20):
        item = np.repeat(draw.candidates[:1], world.config.shown)
        positions = np.arange(world.config.shown)
        p = world.probabilities(draw.user, item, positions, draw.device, 0.0)
        assert set(p) == set(ENGAGEMENT_TASKS)
        for values in p.values():
            assert values.shape == (world.config.shown,)
            assert np.all((values >= 0.0) & (values <= 1.0))
        assert np.all(np.diff(p["click"]) < 0)
        assert np.all(p["like"] <= p["click"]) and np.all(p["share"] <= p["click"])
        assert np.all(p["click"] + p["hide"] <= 1.0)


def test_oracle_beats_popularity_and_random(world: World) -> None:
    rng = np.random.default_rng(1)
    shown = world.config.shown
    totals = np.zeros(3)
    for draw in draws(world, 300):
        rankings = (
            oracle_ranking(world, draw),
            world.popularity_ranking(draw),
            rng.permutation(draw.candidates),
        )
        totals += [world.expected_clicks(draw, r[:shown], 0.0) for r in rankings]
    oracle, popularity, random = totals
    assert oracle >= 1.3 * popularity
    assert oracle >= 1.5 * random
    assert popularity > random


def test_base_ctr_is_realistic(world: World) -> None:
    rng = np.random.default_rng(2)
    clicks = impressions = 0
    for draw in draws(world, 300):
        events = world.play(
            rng, draw, world.popularity_ranking(draw)[: world.config.shown], {}, 0.0
        )
        clicks += sum(e.type == "click" for e in events)
        impressions += sum(e.type == "impression" for e in events)
    assert 0.03 <= clicks / impressions <= 0.10


def check_feed(
    events: list[Engagement], world: World, ranked: np.ndarray, ads: dict[int, int]
) -> None:
    """Every event follows its slot's impression, in feed order, of the right kind of thing."""
    seen: dict[int, list[str]] = {}
    for e in events:
        assert e.type in ORGANIC_TYPES | AD_TYPES
        assert not seen or e.position >= max(seen)
        kinds = seen.setdefault(e.position, [])
        if e.position in ads:
            assert e.item_id == world.ad_ids[ads[e.position]] and e.type in AD_TYPES
        else:
            assert e.item_id.startswith("i") and e.type in ORGANIC_TYPES
        first = "ad_impression" if e.position in ads else "impression"
        assert (e.type == first) == (not kinds)
        if e.type in {"dwell", "like", "share"}:
            assert "click" in kinds
        if e.type == "dwell":
            assert e.dwell_s is not None and e.dwell_s > 0
        else:
            assert e.dwell_s is None
        if e.type == "conversion":
            assert "ad_click" in kinds and e.revenue is not None and e.revenue > 0
        else:
            assert e.revenue is None
        assert not (e.type == "hide" and "click" in kinds)
        kinds.append(e.type)
    organic = [e.item_id for e in events if e.type == "impression"]
    assert organic == [world.item_ids[i] for i in ranked[: len(organic)]]


def test_play_emits_well_formed_sessions(world: World) -> None:
    rng = np.random.default_rng(3)
    counts: dict[str, int] = {}
    for draw in draws(world, 400):
        ranked = oracle_ranking(world, draw)[: world.config.shown]
        ads = {slot: int(ad) for slot, ad in zip(draw.ad_slots, draw.ads, strict=False)}
        events = world.play(rng, draw, ranked, ads, 0.0)
        check_feed(events, world, ranked, ads)
        for e in events:
            counts[e.type] = counts.get(e.type, 0) + 1
    # Every event type occurs, so the checks above were exercised.
    assert set(counts) == ORGANIC_TYPES | AD_TYPES
    assert counts["click"] == counts["dwell"]


def test_play_rejects_bad_feeds(world: World) -> None:
    draw = draws(world, 1)[0]
    rng = np.random.default_rng(0)
    with pytest.raises(ValueError):
        world.play(rng, draw, draw.candidates[: world.config.shown + 1], {}, 0.0)
    with pytest.raises(ValueError):
        world.play(rng, draw, draw.candidates[:3], {4: 0}, 0.0)


def test_ads_end_sessions_sooner(world: World) -> None:
    without = with_ads = 0
    for i, draw in enumerate(draws(world, 200)):
        ranked = world.popularity_ranking(draw)[: world.config.shown]
        ads = {slot: int(ad) for slot, ad in zip(draw.ad_slots, draw.ads, strict=False)}
        for feed_ads in ({}, ads):
            events = world.play(np.random.default_rng(i), draw, ranked, feed_ads, 0.0)
            n = sum(e.type == "impression" for e in events)
            if feed_ads:
                with_ads += n
            else:
                without += n
    assert with_ads < 0.95 * without


def test_expected_clicks_matches_play(world: World) -> None:
    draw = draws(world, 1, seed=5)[0]
    ranked = oracle_ranking(world, draw)[: world.config.shown]
    rng = np.random.default_rng(6)
    n = 4000
    clicks = sum(
        e.type == "click" for _ in range(n) for e in world.play(rng, draw, ranked, {}, 0.0)
    )
    expected = world.expected_clicks(draw, ranked, 0.0)
    assert abs(clicks / n - expected) < 4 * np.sqrt(expected / n)


def test_label_rate_shift_scales_clicks_from_at_s() -> None:
    base = World(WorldConfig(seed=11))
    shifted = World(WorldConfig(seed=11, shifts=(Shift(100.0, "label_rate", 0.5),)))
    draw = draws(base, 1)[0]
    items, zeros = draw.candidates, np.zeros(len(draw.candidates), dtype=np.int64)

    def clicks(w: World, t: float) -> np.ndarray:
        return w.probabilities(draw.user, items, zeros, draw.device, t)["click"]

    np.testing.assert_array_equal(clicks(shifted, 99.9), clicks(base, 99.9))
    np.testing.assert_allclose(clicks(shifted, 100.0), np.minimum(1.0, 1.5 * clicks(base, 100.0)))
    assert clicks(shifted, 100.0).mean() > 1.4 * clicks(base, 100.0).mean()


def test_traffic_shift_packs_more_requests_into_a_second_and_changes_nothing_else() -> None:
    surge = World(WorldConfig(seed=11, shifts=(Shift(10.0, "traffic", 4.0),)))
    base = World(WorldConfig(seed=11))
    assert [surge.traffic_scale(t) for t in (0.0, 9.9, 10.0, 1e6)] == [1.0, 1.0, 4.0, 4.0]
    times = list(itertools.islice(surge.request_times(2.0, 8.0), 9))
    np.testing.assert_allclose(times, [8.0, 8.5, 9.0, 9.5, 10.0, 10.125, 10.25, 10.375, 10.5])
    draw = draws(base, 1)[0]
    feed = draw.candidates[:10]
    # The same users, engaging as they did.
    assert [d.user for d in draws(surge, 5, seed=1, elapsed_s=20.0)] == \
        [d.user for d in draws(base, 5, seed=1)]
    np.testing.assert_array_equal(surge.feed_probabilities(draw, feed, 20.0)["click"],
                                  base.feed_probabilities(draw, feed, 0.0)["click"])


def test_feed_probabilities_are_per_slot_and_sum_to_expected_clicks(world: World) -> None:
    draw = draws(world, 1, seed=6)[0]
    feed = world.feed_probabilities(draw, draw.candidates[:10], 0.0)
    per_impression = world.probabilities(draw.user, draw.candidates[:10], np.arange(10),
                                         draw.device, 0.0)
    assert set(feed) == set(ENGAGEMENT_TASKS)
    np.testing.assert_allclose(feed["hide"][0], per_impression["hide"][0])  # always reached
    assert np.all(feed["click"][1:] < per_impression["click"][1:])  # later slots may not be
    assert feed["click"].sum() == pytest.approx(world.expected_clicks(draw, draw.candidates[:10],
                                                                      0.0))


def test_new_interest_shift_adds_an_interest() -> None:
    cfg = WorldConfig(seed=12, shifts=(Shift(50.0, "new_interest"),))
    world = World(cfg)
    for user in range(0, cfg.n_users, 97):
        before, after = world.interests(user, 49.0), world.interests(user, 50.0)
        assert len(after) == len(before) + 1
        np.testing.assert_array_equal(after[:-1], before)
        assert (before @ after[-1]).max() < 0.9  # the new interest is not an old one
        near = np.argsort(-(world.item_embeddings @ after[-1]))[:20]
        zeros = np.zeros(len(near), dtype=np.int64)
        p_before = world.probabilities(user, near, zeros, "mobile", 49.0)["click"]
        p_after = world.probabilities(user, near, zeros, "mobile", 50.0)["click"]
        assert p_after.mean() > 1.5 * p_before.mean()
    again = World(cfg)
    np.testing.assert_array_equal(again.interests(3, 60.0), world.interests(3, 60.0))


def test_covariate_shift_moves_interests_and_candidates() -> None:
    cfg = WorldConfig(seed=13, shifts=(Shift(10.0, "covariate"),))
    world, base = World(cfg), World(WorldConfig(seed=13))
    np.testing.assert_array_equal(world.interests(0, 9.0), base.interests(0, 9.0))
    moved = np.sum(world.interests(0, 10.0) * base.interests(0, 10.0), axis=1)
    assert np.all(moved < 0.95)
    before = draws(world, 1, seed=1, elapsed_s=9.0)[0]
    after = draws(world, 1, seed=1, elapsed_s=10.0)[0]
    assert before.user == after.user
    assert len(np.intersect1d(before.candidates, after.candidates)) < 0.8 * len(before.candidates)


SMALL = {"n_users": 100, "n_items": 400, "n_ads": 10, "candidates_per_request": 30}


def test_device_mix_shift_sets_the_desktop_share_and_keeps_the_rest_in_proportion() -> None:
    world = World(WorldConfig(seed=14, **SMALL, shifts=(Shift(10.0, "device_mix", 0.6),)))
    n = 3000

    def shares(elapsed_s: float) -> dict[str, float]:
        devices = [d.device for d in draws(world, n, seed=2, elapsed_s=elapsed_s)]
        return {d: devices.count(d) / n for d in ("mobile", "desktop", "tablet")}

    before, after = shares(9.9), shares(10.0)
    # P(mobile), P(desktop), P(tablet): (0.6, 0.3, 0.1) before, (0.4 * 6/7, 0.6, 0.4 / 7) after.
    for share, expected in [(before["desktop"], 0.3), (after["desktop"], 0.6),
                            (after["mobile"], 0.4 * 6 / 7), (after["tablet"], 0.4 / 7)]:
        assert abs(share - expected) < 4 * np.sqrt(expected * (1 - expected) / n)
    # Nothing else about the requests moves: the same users, the same candidates.
    same = zip(draws(world, 20, seed=3, elapsed_s=9.9), draws(world, 20, seed=3, elapsed_s=10.0),
               strict=True)
    for a, b in same:
        assert a.user == b.user and a.surface == b.surface
        np.testing.assert_array_equal(a.candidates, b.candidates)


def test_surface_mix_shift_sets_the_search_share_and_keeps_the_rest_in_proportion() -> None:
    world = World(WorldConfig(seed=14, **SMALL, shifts=(Shift(10.0, "surface_mix", 0.8),)))
    n = 3000
    surfaces = [d.surface for d in draws(world, n, seed=2, elapsed_s=10.0)]
    # P(feed), P(search), P(related): (0.7, 0.2, 0.1) before, (0.2 * 7/8, 0.8, 0.2 / 8) after.
    for surface, expected in [("feed", 0.2 * 7 / 8), ("search", 0.8), ("related", 0.2 / 8)]:
        share = surfaces.count(surface) / n
        assert abs(share - expected) < 4 * np.sqrt(expected * (1 - expected) / n)


def test_calibration_ramp_moves_the_click_logit_but_not_the_order() -> None:
    ramp = Shift(100.0, "calibration", 0.8, duration_s=20.0)
    world = World(WorldConfig(seed=15, **SMALL, shifts=(ramp,)))
    base = World(WorldConfig(seed=15, **SMALL))
    draw = draws(base, 1, seed=4)[0]
    zeros = np.zeros(len(draw.candidates), dtype=np.int64)

    def logit(w: World, t: float) -> np.ndarray:
        p = w.probabilities(draw.user, draw.candidates, zeros, draw.device, t)["click"]
        return np.log(p / (1.0 - p))

    for t, offset in [(99.9, 0.0), (100.0, 0.0), (110.0, 0.4), (120.0, 0.8), (500.0, 0.8)]:
        np.testing.assert_allclose(logit(world, t) - logit(base, t), offset, atol=1e-9)
    assert ramp.ramp(105.0) == 0.25 and Shift(1.0, "calibration", 0.8).ramp(1.0) == 1.0
    # Every request's true order stays, while its click rate rises by a third or more.
    for d in draws(world, 30, seed=5):
        np.testing.assert_array_equal(oracle_ranking(world, d, 99.0),
                                      oracle_ranking(world, d, 130.0))
    p = {t: world.probabilities(draw.user, draw.candidates, zeros, draw.device, t)["click"]
         for t in (99.0, 130.0)}
    assert p[130.0].mean() > 1.5 * p[99.0].mean()
    # What follows a click (like, share) is as likely per click as before.
    shifted, unshifted = (w.probabilities(draw.user, draw.candidates, zeros, draw.device, 130.0)
                          for w in (world, base))
    for after_click in ("like", "share"):
        np.testing.assert_allclose(shifted[after_click] / shifted["click"],
                                   unshifted[after_click] / unshifted["click"])


@pytest.mark.parametrize(("shift", "message"), [
    (dict(kind="device_mix", magnitude=1.2), "desktop share"),
    (dict(kind="surface_mix", magnitude=-0.1), "search share"),
    (dict(kind="calibration", duration_s=-1.0), "duration_s"),
    (dict(kind="label_rate", magnitude=-0.5, duration_s=5.0), "other kinds are steps"),
    (dict(kind="surge"), "unknown shift kind"),
    (dict(kind="traffic", magnitude=0.0), "request rate"),
])
def test_bad_shifts_are_refused(shift: dict[str, object], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        Shift(0.0, **shift)  # type: ignore[arg-type]


def test_each_users_interest_weights_match_their_interests_and_sum_to_one() -> None:
    world = World(WorldConfig(n_users=20, n_items=500, seed=4))
    for user in range(20):
        weights = world.interest_weights(user, 0.0)
        assert len(weights) == len(world.interests(user, 0.0)) >= 1
        assert weights.sum() == pytest.approx(1.0) and (weights > 0).all()
