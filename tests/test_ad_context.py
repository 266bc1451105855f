"""The bandit's request from feature-store rows (models/ad_context.py): Beta-smoothed rates that
start at the priors and follow the evidence, bids from the item upserts, and the interest
vectors' fallbacks."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pytest

from models.ad_context import (
    AD_PRIOR_CLICK_RATE,
    AD_PRIOR_CLICKS,
    AD_PRIOR_CONVERSION_RATE,
    AD_PRIOR_IMPRESSIONS,
    ad_rates,
    ad_request,
    interest_vectors,
    user_columns,
)
from models.bandit import CONTEXT_NAMES, USER_NAMES, slot_contexts
from models.features import (
    FEATURE_NAMES,
    ITEM_FEATURE_NAMES,
    PRIOR_RATES,
    EntityState,
    ItemMeta,
    entity_features,
    event_deltas,
    item_meta_features,
    merge,
)
from models.interests import InterestParams, Interests, update_interests
from schemas import Event
from schemas.records import EventType

T0 = 1_790_000_000.0
WEEK = 604_800.0
DIM = 4
USER = {name: i for i, name in enumerate(FEATURE_NAMES)}
COLUMN = {name: i for i, name in enumerate(CONTEXT_NAMES)}


def events(counts: dict[EventType, int], user: str = "u", item: str = "ad", ts: float = T0
           ) -> list[Event]:
    return [Event(ts=ts, event_id=f"{user}-{item}-{kind}-{k}-{ts}", user_id=user, item_id=item,
                  type=kind)
            for kind, n in counts.items() for k in range(n)]


def states(batches: Sequence[list[Event]]) -> tuple[dict[str, EntityState],
                                                    dict[str, EntityState]]:
    """Users' and items' stored states after the batches, merged as the store merges them."""
    users: dict[str, EntityState] = {}
    items: dict[str, EntityState] = {}
    for batch in batches:
        user_deltas, item_deltas = event_deltas(batch)
        for stored, deltas in ((users, user_deltas), (items, item_deltas)):
            for key, delta in deltas.items():
                stored[key] = merge(stored.get(key, EntityState.empty()), delta)
    return users, items


def user_row(state: EntityState | None, now: float) -> np.ndarray:
    return entity_features([None if state is None else state.pack()], now)[0]


def item_rows(counters: Sequence[EntityState | None], metas: Sequence[ItemMeta | None],
              now: float) -> tuple[np.ndarray, np.ndarray]:
    """Item feature rows as the feature reader builds them: counters, then the meta columns."""
    counter_rows = entity_features([None if c is None else c.pack() for c in counters], now)
    meta_rows, embeddings = item_meta_features([None if m is None else m.pack() for m in metas],
                                               now, DIM)
    rows = np.concatenate([counter_rows, meta_rows], axis=1)
    assert rows.shape == (len(counters), len(ITEM_FEATURE_NAMES))
    return rows, embeddings


def meta(bid: float, axis: int = 0) -> ItemMeta:
    return ItemMeta(created_ts=T0 - 86_400.0, bid=bid, is_ad=True,
                    embedding=np.eye(DIM, dtype=np.float32)[axis])


def test_an_unknown_user_and_ad_get_the_priors_and_earn_nothing() -> None:
    user = user_columns(user_row(None, T0))
    assert user.shape == (len(USER_NAMES),) and user.dtype == np.float64
    assert dict(zip(USER_NAMES, user, strict=True)) == pytest.approx({
        "user_click_rate": PRIOR_RATES["click"], "user_ad_click_rate": AD_PRIOR_CLICK_RATE,
        "user_log_activity": 0.0})
    rows, embeddings = item_rows([None], [None], T0)
    clicks, conversions = ad_rates(rows)
    assert clicks == pytest.approx([AD_PRIOR_CLICK_RATE])
    assert conversions == pytest.approx([AD_PRIOR_CONVERSION_RATE])
    request = ad_request(user_row(None, T0), np.zeros((0, DIM)), ["ad"], rows, embeddings,
                         np.array([1.0, 0.5]), slots=(1,), n=2)
    assert request.bids.tolist() == [0.0]  # no upsert yet: no bid
    x = slot_contexts(request, 1)[0]
    assert x[COLUMN["ad_log_bid"]] == 0.0 and x[COLUMN["ad_expected_revenue"]] == 0.0
    assert x[COLUMN["ad_affinity"]] == 0.0  # nothing known of either side
    assert x[COLUMN["ad_click_rate"]] == pytest.approx(AD_PRIOR_CLICK_RATE)


def test_ad_evidence_moves_the_rates_towards_it_by_the_beta_posterior() -> None:
    _, items = states([
        events({"ad_impression": 1000, "ad_click": 100, "conversion": 50}, item="good"),
        events({"ad_impression": 1000}, item="ignored"),
        events({"ad_impression": 500, "ad_click": 40}, item="unconverted"),
        events({"ad_impression": 2}, item="glimpsed"),
        # Organic events on an ad are not ad evidence.
        events({"impression": 300, "click": 200}, item="organic"),
    ])
    names = ["good", "ignored", "unconverted", "glimpsed", "organic"]
    rows, _ = item_rows([items[n] for n in names], [meta(1.0)] * len(names), T0)
    clicks, conversions = ad_rates(rows)
    expected_clicks = [(h + AD_PRIOR_IMPRESSIONS * AD_PRIOR_CLICK_RATE) / (t + AD_PRIOR_IMPRESSIONS)
                       for h, t in ((100, 1000), (0, 1000), (40, 500), (0, 2), (0, 0))]
    expected_conversions = [
        (h + AD_PRIOR_CLICKS * AD_PRIOR_CONVERSION_RATE) / (t + AD_PRIOR_CLICKS)
        for h, t in ((50, 100), (0, 0), (0, 40), (0, 0), (0, 0))]
    assert clicks == pytest.approx(expected_clicks, rel=1e-5)
    assert conversions == pytest.approx(expected_conversions, rel=1e-5)
    good, ignored, unconverted, glimpsed, organic = zip(clicks, conversions, strict=True)
    assert AD_PRIOR_CLICK_RATE < good[0] < 0.1  # towards 10%, short of it
    assert AD_PRIOR_CONVERSION_RATE < good[1] < 0.5
    assert 0.0 < ignored[0] < glimpsed[0] < AD_PRIOR_CLICK_RATE  # less evidence, less pull
    assert 0.0 < unconverted[1] < AD_PRIOR_CONVERSION_RATE
    assert ignored[1] == pytest.approx(AD_PRIOR_CONVERSION_RATE)  # no clicks, no evidence
    assert organic == pytest.approx((AD_PRIOR_CLICK_RATE, AD_PRIOR_CONVERSION_RATE))


def test_rates_read_the_week_counters_so_week_old_evidence_counts_half() -> None:
    _, items = states([events({"ad_impression": 1000, "ad_click": 100}, item="ad")])
    now = T0 + WEEK
    rows, _ = item_rows([items["ad"]], [meta(1.0)], now)
    clicks, _ = ad_rates(rows)
    assert clicks[0] == pytest.approx(
        (50 + AD_PRIOR_IMPRESSIONS * AD_PRIOR_CLICK_RATE) / (500 + AD_PRIOR_IMPRESSIONS),
        rel=1e-5)


def test_user_columns_follow_the_users_evidence() -> None:
    users, _ = states([
        events({"ad_impression": 200, "ad_click": 30}, user="clicker", item="some-ad"),
        events({"impression": 90, "click": 30}, user="clicker", item="some-item"),
        events({"ad_impression": 400}, user="blind", item="some-ad"),
    ])
    clicker, blind = (user_row(users[u], T0) for u in ("clicker", "blind"))
    clicker_columns = dict(zip(USER_NAMES, user_columns(clicker), strict=True))
    assert clicker_columns["user_ad_click_rate"] == pytest.approx(
        (30 + AD_PRIOR_IMPRESSIONS * AD_PRIOR_CLICK_RATE) / (200 + AD_PRIOR_IMPRESSIONS),
        rel=1e-5)
    assert clicker_columns["user_click_rate"] == clicker[USER["click_rate_7d"]]
    assert clicker_columns["user_click_rate"] > PRIOR_RATES["click"]
    assert clicker_columns["user_log_activity"] == pytest.approx(np.log1p(90.0), rel=1e-6)
    blind_columns = dict(zip(USER_NAMES, user_columns(blind), strict=True))
    assert 0.0 < blind_columns["user_ad_click_rate"] < AD_PRIOR_CLICK_RATE
    assert blind_columns["user_click_rate"] == pytest.approx(PRIOR_RATES["click"])
    assert blind_columns["user_log_activity"] == 0.0  # ad impressions are not activity


def test_the_request_takes_bids_from_the_upserts_and_passes_the_rest_through() -> None:
    users, items = states([events({"ad_impression": 100, "ad_click": 10, "conversion": 2},
                                  item="a1")])
    counters = [items["a1"], None, None, items["a1"]]
    metas = [meta(2.5, axis=0), meta(0.75, axis=1), None, meta(-1.0, axis=2)]
    rows, embeddings = item_rows(counters, metas, T0)
    user = user_row(users["u"], T0)
    interests = np.array([[1.0, 0.0, 0.0, 0.0]])
    organic = np.array([0.9, 0.5, 0.25])
    request = ad_request(user, interests, ["a1", "a2", "a3", "a4"], rows, embeddings, organic,
                         slots=(1, 3), n=5)
    # No upsert yet, or a bid the schema would never pass: the ad never earns.
    assert request.bids.tolist() == [2.5, 0.75, 0.0, 0.0]
    assert request.ad_ids == ("a1", "a2", "a3", "a4")
    click_rates, conversion_rates = ad_rates(rows)
    assert np.array_equal(request.click_rates, click_rates)
    assert np.array_equal(request.conversion_rates, conversion_rates)
    assert np.array_equal(request.user, user_columns(user))
    assert np.array_equal(request.embeddings, embeddings)
    assert np.array_equal(request.interests, interests)
    assert np.array_equal(request.organic_values, organic)
    assert (tuple(request.slots), request.n) == ((1, 3), 5)
    x = slot_contexts(request, 1)
    assert x[:, COLUMN["ad_log_bid"]] == pytest.approx(np.log1p([2.5, 0.75, 0.0, 0.0]))
    assert x[:, COLUMN["ad_affinity"]] == pytest.approx([1.0, 0.0, 0.0, 0.0])
    assert x[0, COLUMN["ad_click_rate"]] > x[1, COLUMN["ad_click_rate"]]  # evidence of 10%


def _interests(medoids: np.ndarray, importance: Sequence[float], as_of: float,
               centroids: np.ndarray | None = None) -> Interests:
    centroids = medoids if centroids is None else centroids
    return Interests(medoids=medoids.astype(np.float32), centroids=centroids.astype(np.float32),
                     importance=np.asarray(importance, dtype=np.float64),
                     sizes=np.ones(len(medoids), np.int64), as_of=as_of, lambda_per_day=0.01,
                     last_full_ts=as_of, last_ts=as_of, at_last_ts=1, pending=0)


def test_interest_vectors_are_the_centroids_then_the_history_mean_then_none() -> None:
    axis = np.eye(DIM)
    history = np.stack([axis[2], axis[2], axis[3]]).astype(np.float32)
    # The centroids, not the medoids (the one member item of each cluster), are the directions.
    centroids = np.array([[0.75, 0.25, 0.0, 0.0], [0.0, 0.5, 0.5, 0.0]])
    interests = _interests(axis[:2], [3.0, 1.0], T0, centroids=centroids)
    vectors = interest_vectors(interests, history, DIM)
    assert vectors.dtype == np.float64 and vectors.shape == (2, DIM)
    assert np.array_equal(vectors, centroids)  # every interest, in order, unweighted
    empty = update_interests(None, np.zeros(0), np.zeros((0, DIM)), T0, InterestParams())
    assert len(empty) == 0
    for none in (None, empty):
        # No interests: the mean of the history, as one row (a float32 history's mean is
        # float32-exact only).
        fallback = interest_vectors(none, history, DIM)
        assert fallback.dtype == np.float64 and fallback.shape == (1, DIM)
        assert fallback[0] == pytest.approx([0.0, 0.0, 2 / 3, 1 / 3], rel=1e-6, abs=0.0)
        unknown = interest_vectors(none, np.zeros((0, DIM), np.float32), DIM)
        assert unknown.shape == (0, DIM) and unknown.dtype == np.float64


def test_a_two_interest_user_likes_an_ad_either_interest_likes() -> None:
    """Affinity is the largest cosine to any interest: the mean of cats and cars would call a
    cat ad lukewarm (cosine 0.7) and make no difference between it and a half-cat one."""
    rng = np.random.default_rng(0)
    cats, cars = np.eye(DIM)[0], np.eye(DIM)[1]
    engaged = np.vstack([cats + 0.1 * rng.standard_normal((6, DIM)),
                         cars + 0.1 * rng.standard_normal((4, DIM))]).astype(np.float32)
    ts = T0 - np.arange(10.0)
    interests = update_interests(None, ts, engaged, now=T0, params=InterestParams())
    assert interests.sizes.tolist() == [6, 4]
    vectors = interest_vectors(interests, engaged, DIM)
    user, _ = states([])
    rows, embeddings = item_rows([None, None], [meta(1.0, axis=0), meta(1.0, axis=2)], T0)
    request = ad_request(user_row(user.get("u"), T0), vectors, ["cat-ad", "other"], rows,
                         embeddings, np.array([0.5]), slots=(1,), n=3)
    affinity = slot_contexts(request, 1)[:, COLUMN["ad_affinity"]]
    assert affinity[0] > 0.95 and abs(affinity[1]) < 0.2
