"""Ad-slot bandit (models/bandit.py): exact propensities, constraints on hostile requests, seeded
decisions, the dial, the three Bayesian linear updates in closed form on the columns each learns
(revenue on the ad's expected revenue and its affinity terms, engagement on where the ad stands),
the engagement loss they learn together, the action values OPE reads, the logged contexts,
offsets, and the parameter file."""

from __future__ import annotations

import doctest
import itertools
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import orjson
import pytest

import models.bandit
from models.bandit import (
    AD_COLUMNS,
    CONTEXT_NAMES,
    DIM,
    USER_NAMES,
    AdRequest,
    BanditParams,
    Feedback,
    SlotDecision,
    action_probabilities,
    action_values,
    decide,
    learn,
    net_scores,
    slot_contexts,
    valid_slots,
    without_ad,
)

EMBEDDING_DIM = 8
SLOTS = (2, 5, 8, 11, 14)
COLUMN = {name: i for i, name in enumerate(CONTEXT_NAMES)}
# The context of "no ad" at a slot is an ad's context there with these columns emptied.
WITHOUT_AD = np.ones(DIM)
WITHOUT_AD[list(AD_COLUMNS)] = 0.0
# What the revenue posterior learns on; the two engagement posteriors learn on WITHOUT_AD.
REVENUE_COLUMNS = ("ad_expected_revenue", "ad_revenue_affinity_2", "ad_revenue_affinity_4")
REVENUE_ONLY = np.zeros(DIM)
REVENUE_ONLY[[CONTEXT_NAMES.index(name) for name in REVENUE_COLUMNS]] = 1.0
# The ad's own columns that no posterior learns on.
UNUSED = [i for i in range(DIM) if REVENUE_ONLY[i] == 0.0 and WITHOUT_AD[i] == 0.0]
Linear = Callable[[np.ndarray], np.ndarray]


def make_request(rng: np.random.Generator, k: int = 20, slots: Sequence[int] = SLOTS,
                 n: int = 20, m: int = 30, ad_ids: Sequence[str] | None = None) -> AdRequest:
    return AdRequest(
        user=np.array([0.05, 0.02, 3.0]), interests=rng.standard_normal((2, EMBEDDING_DIM)),
        ad_ids=[f"a{i}" for i in range(k)] if ad_ids is None else ad_ids,
        bids=rng.lognormal(0.7, 0.5, k), click_rates=rng.uniform(0.0, 0.1, k),
        conversion_rates=rng.uniform(0.0, 0.5, k),
        embeddings=rng.standard_normal((k, EMBEDDING_DIM)),
        organic_values=np.sort(rng.uniform(0.0, 1.0, m))[::-1], slots=slots, n=n)


def logged_rows(seed: int, requests: int = 40) -> np.ndarray:
    """Context rows as the serving path would log them: every ad at every slot."""
    rng = np.random.default_rng(seed)
    return np.vstack([slot_contexts(make_request(rng), slot, ads_above=int(rng.integers(0, 2)))
                      for _ in range(requests) for slot in SLOTS])


def constant(value: float) -> Linear:
    return lambda x: np.full(len(x), value)


def log2(position: float) -> float:
    return float(np.log2(position))


def organic_engagement(x: np.ndarray) -> np.ndarray:
    """Organic engagement from a slot down with no ad there: most of the value below it."""
    return 0.1 + 0.8 * x[:, COLUMN["value_below"]] + 0.3 * x[:, COLUMN["slot_discount"]]


def feedback_of(x: np.ndarray, revenue_of: Linear, loss_of: Linear,
                organic_of: Linear = organic_engagement, seed: int = 0,
                noise: float = 0.01) -> Feedback:
    """Both worlds of every row: the ad shown (its revenue, and the organic engagement below it,
    which is the organic engagement without it less the loss), and no ad (the same slot's row
    with the ad columns empty, and the organic engagement). The model can learn revenue only
    from the revenue columns and engagement only from the columns without the ad, so the
    simulated rewards should depend on those alone."""
    rng = np.random.default_rng(seed)
    without = x * WITHOUT_AD
    organic = organic_of(without)
    jitter = noise * rng.standard_normal((3, len(x)))
    return Feedback(
        contexts=np.vstack([x, without]), placed=np.repeat([True, False], len(x)),
        revenues=np.concatenate([revenue_of(x) + jitter[0], np.zeros(len(x))]),
        engagements=np.concatenate([organic - loss_of(x) + jitter[1], organic + jitter[2]]))


def learnt(revenue_of: Linear, loss_of: Linear, organic_of: Linear = organic_engagement,
           seed: int = 0, **knobs: Any) -> BanditParams:
    trained = learn(BanditParams.prior(),
                    feedback_of(logged_rows(seed), revenue_of, loss_of, organic_of, seed))
    return trained.retuned(**knobs)


def profitable(**knobs: Any) -> BanditParams:
    """Ads earn clearly more than the engagement they cost, which is small but positive:
    revenue rises with the ad's expected revenue (eCPM, so ~0.02 per unit is ~20 per sale) and
    more so where the user likes the ad."""
    return learnt(lambda x: 0.02 * x[:, COLUMN["ad_expected_revenue"]]
                  + 0.005 * x[:, COLUMN["ad_revenue_affinity_2"]],
                  lambda x: 0.05 + 0.01 * x[:, COLUMN["value_below"]], **knobs)


def check_constraints(decisions: list[SlotDecision], request: AdRequest, max_ads: int,
                      min_spacing: int) -> None:
    slots = [d.slot for d in decisions]
    assert slots == sorted(set(slots))
    assert set(slots) <= set(valid_slots(request.slots, request.n))
    placed = [d for d in decisions if d.ad_id is not None]
    assert len(placed) <= max(max_ads, 0)
    assert all(b.slot - a.slot >= min_spacing for a, b in itertools.pairwise(placed))
    assert len({d.ad_id for d in placed}) == len(placed)
    assert {d.ad_id for d in placed} <= set(request.ad_ids)
    for k, d in enumerate(decisions):
        assert d.slot <= len(request.organic_values) + sum(
            e.ad_id is not None for e in decisions[:k])
        assert 0.0 < d.propensity <= 1.0
        assert np.isclose(d.probabilities.sum(), 1.0)
        assert d.context.shape == (DIM,)
        assert d.ad_contexts.shape == (len(d.actions) - 1, DIM)
        if d.ad_id is None:
            assert (d.context[list(AD_COLUMNS)] == 0.0).all()


def test_the_module_example_runs() -> None:
    result = doctest.testmod(models.bandit)
    assert result.attempted > 0 and result.failed == 0


def test_context_rows_follow_the_documented_names() -> None:
    request = AdRequest(
        user=np.array([0.1, 0.2, 0.3]), interests=np.array([[3.0, 4.0]]), ad_ids=["a", "b"],
        bids=np.array([1.0, 3.0]), click_rates=np.array([0.1, 0.2]),
        conversion_rates=np.array([0.5, 0.25]), embeddings=np.array([[4.0, 3.0], [0.0, -2.0]]),
        organic_values=np.array([5.0, 4.0, 3.0, 2.0, 1.0]), slots=(2,), n=4)
    x = slot_contexts(request, slot=2, ads_above=1)
    assert x.shape == (2, DIM) == (2, len(CONTEXT_NAMES))
    row = dict(zip(CONTEXT_NAMES, x[0], strict=True))
    ecpm = 1.0 * 0.1 * 0.5 * 0.5 * 1000.0  # bid * click * conversion * discount, per mille
    expected = {
        "bias": 1.0, "user_click_rate": 0.1, "user_ad_click_rate": 0.2, "user_log_activity": 0.3,
        "ad_log_bid": np.log(2.0), "ad_click_rate": 0.1, "ad_conversion_rate": 0.5,
        "ad_affinity": 24.0 / 25.0, "slot_discount": 0.5, "slot_depth": 0.5,
        "ad_expected_revenue": ecpm,
        "ad_revenue_affinity_2": ecpm * np.exp(2.0 * 0.96),
        "ad_revenue_affinity_4": ecpm * np.exp(4.0 * 0.96),
        # One ad above: slot 2 (discount 1/log2(4)) holds organic rank 1 (value 4), and ranks
        # 1 to 4 would take positions 2 to 5, each at its own discount.
        "displaced_value": 4.0 / 2.0,
        "value_below": 4.0 / 2.0 + 3.0 / log2(5) + 2.0 / log2(6) + 1.0 / log2(7)}
    assert row == pytest.approx(expected)
    second = dict(zip(CONTEXT_NAMES, x[1], strict=True))
    ecpm = 3.0 * 0.2 * 0.25 * 0.5 * 1000.0
    assert second["ad_affinity"] == pytest.approx(-0.8)
    assert [second[name] for name in REVENUE_COLUMNS] == pytest.approx(
        [ecpm, ecpm * np.exp(-1.6), ecpm * np.exp(-3.2)])
    # The slot's columns are the same for every ad.
    slot_columns = [COLUMN[name] for name in ("slot_discount", "slot_depth", "displaced_value",
                                              "value_below")]
    assert np.array_equal(x[0, slot_columns], x[1, slot_columns])
    # What "no ad" leaves empty: everything that describes the ad, nothing of the slot.
    assert [CONTEXT_NAMES[i] for i in AD_COLUMNS] == [
        "ad_log_bid", "ad_click_rate", "ad_conversion_rate", "ad_affinity",
        *REVENUE_COLUMNS]
    # Nothing above: slot 2 holds rank 2, and ranks 2 to 4 take positions 2 to 4.
    free = dict(zip(CONTEXT_NAMES, slot_contexts(request, slot=2)[0], strict=True))
    assert free["displaced_value"] == pytest.approx(3.0 / 2.0)
    assert free["value_below"] == pytest.approx(3.0 / 2.0 + 2.0 / log2(5) + 1.0 / log2(6))
    # Past the organic items: nothing displaced, nothing below.
    past = dict(zip(CONTEXT_NAMES, slot_contexts(request, slot=7, ads_above=2)[0], strict=True))
    assert (past["displaced_value"], past["value_below"]) == (0.0, 0.0)


def test_affinity_is_the_largest_cosine_to_any_interest_and_zero_without_interests() -> None:
    embeddings = np.array([[2.0, 0.0], [0.0, 3.0], [1.0, 1.0], [-1.0, -1.0], [1.0, -1.0]])

    def affinity(interests: np.ndarray) -> np.ndarray:
        request = AdRequest(
            user=np.array([0.1, 0.2, 0.3]), interests=interests,
            ad_ids=[f"a{i}" for i in range(len(embeddings))], bids=np.full(5, 1.0),
            click_rates=np.full(5, 0.1), conversion_rates=np.full(5, 0.5),
            embeddings=embeddings, organic_values=np.array([1.0, 0.5]), slots=(0,), n=4)
        x = slot_contexts(request, 0)
        # The affinity terms of revenue follow the affinity.
        ecpm = x[:, COLUMN["ad_expected_revenue"]]
        assert x[:, COLUMN["ad_revenue_affinity_2"]] == pytest.approx(
            ecpm * np.exp(2.0 * x[:, COLUMN["ad_affinity"]]))
        assert x[:, COLUMN["ad_revenue_affinity_4"]] == pytest.approx(
            ecpm * np.exp(4.0 * x[:, COLUMN["ad_affinity"]]))
        return x[:, COLUMN["ad_affinity"]]

    half = 1.0 / np.sqrt(2.0)
    # Two interests, unnormalised: each ad takes the better of its two cosines, not their mean
    # (nor the cosine to the mean of the two directions, which would call [1, 1] a perfect
    # match and [2, 0] lukewarm).
    two = np.array([[5.0, 0.0], [0.0, 0.5]])
    assert affinity(two) == pytest.approx([1.0, 1.0, half, -half, half])
    assert affinity(two[::-1]) == pytest.approx(affinity(two))  # the interests' order is moot
    # One interest: the plain cosine.
    assert affinity(two[:1]) == pytest.approx([1.0, 0.0, half, -half, half])
    # A third interest only ever raises an affinity.
    three = np.vstack([two, [[-1.0, -1.0]]])
    assert affinity(three) == pytest.approx([1.0, 1.0, half, 1.0, half])
    # No interests: affinity 0, so the affinity terms are the expected revenue itself.
    assert affinity(np.zeros((0, 2))).tolist() == [0.0] * 5
    # A zero interest row is no direction: cosine 0 to every ad, not NaN.
    assert affinity(np.array([[0.0, 0.0], [0.0, 1.0]])) == pytest.approx(
        [0.0, 1.0, half, 0.0, 0.0])
    with pytest.raises(ValueError):  # one interest must be a row, not a vector
        affinity(np.array([1.0, 0.0]))


def test_without_ad_empties_exactly_the_ad_columns() -> None:
    x = logged_rows(seed=21, requests=3)
    original = x.copy()
    empty = without_ad(x)
    assert np.array_equal(x, original)  # a new array, the rows untouched
    assert empty.shape == x.shape
    assert (empty[:, list(AD_COLUMNS)] == 0.0).all()
    kept = [i for i in range(DIM) if i not in AD_COLUMNS]
    assert np.array_equal(empty[:, kept], x[:, kept])
    assert (x[:, list(AD_COLUMNS)] != 0.0).any(axis=0).all()  # there was something to empty
    assert np.array_equal(without_ad(x[0]), x[0] * WITHOUT_AD)  # one row, or many


def test_the_no_ad_context_is_the_slot_without_an_ad() -> None:
    request = AdRequest(
        user=np.array([0.1, 0.2, 0.3]), interests=np.array([[3.0, 4.0]]), ad_ids=["a", "b"],
        bids=np.array([1.0, 3.0]), click_rates=np.array([0.1, 0.2]),
        conversion_rates=np.array([0.5, 0.25]), embeddings=np.array([[4.0, 3.0], [0.0, -2.0]]),
        organic_values=np.array([5.0, 4.0, 3.0, 2.0, 1.0]), slots=(0, 2), n=4)
    user = dict(zip(USER_NAMES, request.user, strict=True))
    no_ad = {name: 0.0 for name in CONTEXT_NAMES} | {"bias": 1.0, **user}
    # Slot 0, nothing above: it would push down every organic item, rank j to position j,
    # each at its discount 1 / log2(position + 2).
    first = no_ad | {"slot_discount": 1.0, "slot_depth": 0.0, "displaced_value": 5.0,
                     "value_below": 5.0 + 4.0 / log2(3) + 3.0 / 2.0 + 2.0 / log2(5)
                     + 1.0 / log2(6)}
    # Slot 2 (discount 1/2) below no ad holds rank 2, and ranks 2-4 take positions 2-4; below
    # an ad it holds rank 1, and ranks 1-4 take positions 2-5.
    free = no_ad | {"slot_discount": 0.5, "slot_depth": 0.5, "displaced_value": 3.0 / 2.0,
                    "value_below": 3.0 / 2.0 + 2.0 / log2(5) + 1.0 / log2(6)}
    below_an_ad = free | {"displaced_value": 4.0 / 2.0,
                          "value_below": 4.0 / 2.0 + 3.0 / log2(5) + 2.0 / log2(6)
                          + 1.0 / log2(7)}
    seen = set()
    for seed in range(40):
        decisions = decide(BanditParams.prior(epsilon=1.0), request, np.random.default_rng(seed),
                           max_ads=1, min_spacing=1)
        assert [d.slot for d in decisions] == [0, 2]
        top, second = decisions
        if top.ad_id is None:
            assert dict(zip(CONTEXT_NAMES, top.context, strict=True)) == pytest.approx(first)
            assert np.array_equal(top.context, without_ad(top.ad_contexts)[0])
        assert top.ad_contexts.shape == (2, DIM)
        assert np.array_equal(top.ad_contexts, slot_contexts(request, 0))
        if second.ad_id is None:
            expected = free if top.ad_id is None else below_an_ad
            assert dict(zip(CONTEXT_NAMES, second.context, strict=True)) == pytest.approx(
                expected)
        if top.ad_id is not None:  # max_ads is reached: "no ad" is all there is, and certain
            assert (second.actions, second.propensity) == ((None,), 1.0)
            assert second.ad_contexts.shape == (0, DIM)
        seen.add((top.ad_id is None, second.ad_id is None))
    assert {(True, True), (False, True)} <= seen


def test_valid_slots_drops_duplicates_and_slots_outside_the_feed() -> None:
    assert valid_slots([5, 3, 3, 20, -1, 19, 5], n=20) == [3, 5, 19]
    assert valid_slots([0, 1], n=0) == []


def test_propensities_are_the_full_distribution_with_its_floor() -> None:
    params = learnt(lambda x: x @ (0.02 * np.linspace(-1, 1, DIM) * REVENUE_ONLY),
                    lambda x: x @ (np.linspace(1, -1, DIM) * WITHOUT_AD), epsilon=0.2, alpha=0.5)
    rng = np.random.default_rng(5)
    slates = no_ad = 0
    for seed in range(60):
        request = make_request(rng, k=6)
        decisions = decide(params, request, np.random.default_rng(seed), max_ads=3,
                           min_spacing=3)
        above = 0
        for d in decisions:
            k = len(d.actions)
            assert d.actions[0] is None
            assert d.probabilities.sum() == pytest.approx(1.0, abs=1e-12)
            assert (d.probabilities >= params.epsilon / k - 1e-15).all()
            assert d.propensity == d.probabilities[d.actions.index(d.ad_id)]
            # The distribution is the documented one on the feasible ads' context rows.
            rows = [request.ad_ids.index(a) for a in d.actions[1:]]
            x = slot_contexts(request, d.slot, above)[rows]
            assert np.array_equal(d.probabilities, action_probabilities(params, x))
            # ... and those rows are logged with the decision, for off-policy evaluation.
            assert d.ad_contexts.shape == (k - 1, DIM)
            assert np.array_equal(d.ad_contexts, x)
            greedy = int(np.argmax(np.concatenate(([0.0], net_scores(params, x)))))
            assert d.probabilities[greedy] == pytest.approx(1 - params.epsilon + params.epsilon / k)
            assert d.context.shape == (DIM,)
            if d.ad_id is not None:
                assert np.array_equal(d.context, x[d.actions.index(d.ad_id) - 1])
                above += 1
            else:
                # "No ad": the slot's row (below the same ads) with the ad columns empty.
                no_ad += 1
                assert (d.context[list(AD_COLUMNS)] == 0.0).all()
                assert np.array_equal(d.context,
                                      slot_contexts(request, d.slot, above)[0] * WITHOUT_AD)
            for array in (d.context, d.ad_contexts, d.probabilities):
                assert not array.flags.writeable
        slates += above > 1
    assert slates > 0  # some slates placed several ads, so later slots were conditioned
    assert no_ad > 0


@pytest.mark.parametrize(("case", "request_args", "max_ads", "min_spacing", "most_ads"), [
    ("more slots than ads", {"k": 2, "slots": range(20)}, 10, 1, 2),
    ("duplicate slots", {"slots": (3, 3, 3, 6, 6)}, 3, 1, 2),
    ("slots past n", {"slots": (5, 20, 25, -1, 10_000), "n": 20}, 3, 1, 1),
    ("max_ads = 0", {}, 0, 1, 0),
    ("negative max_ads", {}, -2, 1, 0),
    ("no ads", {"k": 0}, 3, 1, 0),
    ("min_spacing beyond the feed", {"slots": range(20)}, 3, 50, 1),
    ("repeated ad ids", {"k": 3, "ad_ids": ["x", "x", "x"], "slots": range(10)}, 5, 1, 1),
    ("short feed", {"m": 2, "slots": (1, 2, 3, 4, 9)}, 5, 1, 4),
])
def test_constraints_hold_on_hostile_requests(case: str, request_args: dict, max_ads: int,
                                              min_spacing: int, most_ads: int) -> None:
    rng = np.random.default_rng(0)
    counts = []
    for policy in (BanditParams.prior(epsilon=1.0), profitable(epsilon=0.0),
                   profitable(epsilon=0.5)):
        for seed in range(100):
            request = make_request(rng, **request_args)
            decisions = decide(policy, request, np.random.default_rng(seed), max_ads=max_ads,
                               min_spacing=min_spacing)
            check_constraints(decisions, request, max_ads, min_spacing)
            counts.append(sum(d.ad_id is not None for d in decisions))
    assert max(counts) == most_ads  # the constraint binds: the policies push against it


def test_short_feed_stops_at_its_end_and_no_ads_means_certain_none() -> None:
    rng = np.random.default_rng(1)
    # Two organic items: with an ad at 1 the feed is item, ad, item, so slot 4 lies past it;
    # with no ad at 1 it ends at position 1 already.
    request = make_request(rng, m=2, slots=(1, 4, 9))
    short = decide(profitable(epsilon=0.0), request, rng, max_ads=5, min_spacing=1)
    assert [(d.slot, d.ad_id is not None) for d in short] == [(1, True)]
    short = decide(profitable(epsilon=0.0, dial=1e4), request, rng, max_ads=5, min_spacing=1)
    assert [(d.slot, d.ad_id is not None) for d in short] == [(1, False)]
    none = decide(profitable(epsilon=0.5), make_request(rng, k=0), rng)
    assert [(d.ad_id, d.propensity, d.actions) for d in none] == [(None, 1.0, (None,))] * 5


def test_same_seed_same_decisions_and_other_seeds_explore() -> None:
    params = profitable(epsilon=0.5)
    request = make_request(np.random.default_rng(2))

    def slate(seed: int) -> list[tuple[int, str | None, float]]:
        return [(d.slot, d.ad_id, d.propensity)
                for d in decide(params, request, np.random.default_rng(seed))]

    first, again = (decide(params, request, np.random.default_rng(7)) for _ in range(2))
    assert slate(7) == slate(7)
    assert all(np.array_equal(a.probabilities, b.probabilities) for a, b in zip(
        first, again, strict=True))
    slates = {tuple(slate(seed)) for seed in range(50)}
    assert len(slates) > 10
    assert any(d[1] is None for s in slates for d in s) and any(
        d[1] is not None for s in slates for d in s)
    greedy = {tuple(s) for s in (
        [(d.slot, d.ad_id) for d in decide(params.retuned(epsilon=0.0), request,
                                           np.random.default_rng(seed))]
        for seed in range(20))}
    assert len(greedy) == 1  # without the floor, the seed changes nothing


def test_profitable_ads_are_placed_and_a_huge_dial_places_none() -> None:
    params = profitable(epsilon=0.0)
    rng = np.random.default_rng(3)
    for _ in range(20):
        request = make_request(rng)
        placed = decide(params, request, rng, max_ads=3, min_spacing=3)
        assert [d.ad_id is not None for d in placed] == [True, True, True, False, False]
        assert all(d.propensity == 1.0 for d in placed)
        # The first ad is the best by the model's net reward.
        best = int(np.argmax(net_scores(params, slot_contexts(request, SLOTS[0]))))
        assert placed[0].ad_id == request.ad_ids[best]
        refused = decide(params.retuned(dial=1e4), request, rng, max_ads=3, min_spacing=3)
        assert all(d.ad_id is None for d in refused)


def test_ads_placed_fall_as_the_dial_rises_on_a_fixed_context_set() -> None:
    params = profitable(epsilon=0.0)
    x = logged_rows(seed=11)
    # every ad costs engagement, as the test assumes
    assert (params.engagement_loss(x) > 0).all()
    shown = [int(sum(action_probabilities(params.retuned(dial=dial), row[None])[1] == 1.0
                     for row in x))
             for dial in (0.0, 1.0, 10.0, 20.0, 30.0, 40.0, 60.0, 100.0, 1e4)]
    assert shown[0] == len(x) and shown[-1] == 0
    assert all(a >= b for a, b in itertools.pairwise(shown))
    assert len(set(shown)) > 3  # a gradual trade-off, not a switch


def test_optimism_tries_ads_the_mean_would_not() -> None:
    request = make_request(np.random.default_rng(4))
    rng = np.random.default_rng(0)
    mean_only = decide(BanditParams.prior(epsilon=0.0), request, rng)
    optimistic = decide(BanditParams.prior(epsilon=0.0, alpha=1.0), request, rng)
    assert all(d.ad_id is None for d in mean_only)
    assert any(d.ad_id is not None for d in optimistic)



def test_the_learnt_engagement_loss_is_organic_without_the_ad_less_engagement_below_it() -> None:
    def loss_of(x: np.ndarray) -> np.ndarray:  # where the ad stands, not which ad it is
        return 0.05 + 0.02 * x[:, COLUMN["value_below"]] + 0.1 * x[:, COLUMN["displaced_value"]]

    def revenue_of(x: np.ndarray) -> np.ndarray:
        return 0.01 * x[:, COLUMN["ad_expected_revenue"]] \
            + 0.002 * x[:, COLUMN["ad_revenue_affinity_4"]]

    params = learnt(revenue_of, loss_of, dial=3.0)
    x = logged_rows(seed=11)  # rows it did not learn from
    truth = loss_of(x)
    # The loss is learnt from two regressions whose targets are many times larger.
    assert np.abs(params.engagement_loss(x) - truth).max() < 0.15 * truth.min()
    # ... each on the columns without the ad: an ad's own features cannot excuse its loss.
    for posterior in (params.organic, params.ad_engagement):
        assert (posterior.mean[list(AD_COLUMNS)] == 0.0).all()
    assert np.allclose(params.engagement_loss(x),
                       x @ (params.organic.mean - params.ad_engagement.mean),
                       rtol=1e-12, atol=1e-12)
    assert np.array_equal(params.engagement_loss(x), params.engagement_loss(without_ad(x)))
    # Revenue is learnt on the revenue columns alone, and approaches the truth.
    assert (params.revenue.mean[REVENUE_ONLY == 0.0] == 0.0).all()
    assert np.allclose(params.expected_revenue(x), x @ params.revenue.mean, rtol=1e-12,
                       atol=1e-12)
    assert np.abs(params.expected_revenue(x) - revenue_of(x)).max() < 0.01
    assert (params.expected_revenue(without_ad(x)) == 0.0).all()  # no ad earns nothing
    # The net reward is revenue less dial times that loss, and "no ad" nets 0.
    assert np.allclose(net_scores(params, x),
                       params.expected_revenue(x) - 3.0 * params.engagement_loss(x),
                       rtol=1e-9, atol=1e-9)
    # Without the organic world the loss would be mistaken: what is learnt below an ad alone is
    # mostly the organic engagement, not what the ad cost.
    assert np.abs(-(x @ params.ad_engagement.mean) - truth).max() > 10 * truth.max()


def test_posterior_means_are_the_ridge_solutions_on_their_rows_and_approach_the_truth() -> None:
    rng = np.random.default_rng(6)
    w_revenue, w_below, w_organic = rng.standard_normal((3, DIM))
    # The truth the model can learn: revenue of the revenue columns, engagement of the rest.
    w_revenue, w_below, w_organic = w_revenue * REVENUE_ONLY, w_below * WITHOUT_AD, \
        w_organic * WITHOUT_AD
    x = rng.standard_normal((20_000, DIM))
    placed = rng.random(len(x)) < 0.4
    # Every row keeps all its columns, the rows without an ad sloppy ad columns too: learn
    # must mask each posterior's rows itself, not trust the log.
    revenues = np.where(placed, x @ w_revenue + 0.3 * rng.standard_normal(len(x)), 0.0)
    engagements = np.where(placed, x @ w_below, x @ w_organic) \
        + 0.3 * rng.standard_normal(len(x))
    prior = BanditParams.prior(ridge=2.0)
    few = learn(prior, Feedback(x[:50], placed[:50], revenues[:50], engagements[:50]))
    params = prior
    for batch in np.array_split(np.arange(len(x)), 7):
        params = learn(params, Feedback(x[batch], placed[batch], revenues[batch],
                                        engagements[batch]))
    assert params.version == "bandit-7" and params.parent == "bandit-6"
    assert params.samples == len(x)
    for posterior, rows, y in ((params.revenue, x[placed] * REVENUE_ONLY, revenues[placed]),
                               (params.ad_engagement, x[placed] * WITHOUT_AD,
                                engagements[placed]),
                               (params.organic, x[~placed] * WITHOUT_AD, engagements[~placed])):
        precision = 2.0 * np.eye(DIM) + rows.T @ rows
        assert np.allclose(posterior.precision, precision, rtol=1e-12)
        assert np.allclose(posterior.b, rows.T @ y, rtol=1e-9, atol=1e-9)
        assert np.allclose(posterior.mean, np.linalg.solve(precision, rows.T @ y), rtol=1e-9,
                           atol=1e-12)
        assert np.allclose(posterior.covariance @ posterior.precision, np.eye(DIM), atol=1e-9)
    for posterior, truth in ((params.revenue, w_revenue), (params.ad_engagement, w_below),
                             (params.organic, w_organic)):
        assert np.abs(posterior.mean - truth).max() < 0.02
    assert np.abs(params.engagement_loss(x) - x @ (w_organic - w_below)).max() \
        < 0.1 * np.abs(x @ (w_organic - w_below)).mean()
    assert np.abs(params.expected_revenue(x) - x @ w_revenue).max() \
        < 0.1 * np.abs(x @ w_revenue).mean()
    assert np.abs(params.revenue.mean - w_revenue).max() < np.abs(
        few.revenue.mean - w_revenue).max()
    # A batch that showed no ad teaches revenue and the engagement below ads nothing, and one
    # that showed only ads teaches the organic model nothing.
    none = learn(prior, Feedback(x[~placed], placed[~placed], revenues[~placed],
                                 engagements[~placed]))
    only = learn(prior, Feedback(x[placed], placed[placed], revenues[placed],
                                 engagements[placed]))
    for posterior in (none.revenue, none.ad_engagement, only.organic):
        assert np.array_equal(posterior.precision, prior.revenue.precision)
        assert np.array_equal(posterior.b, np.zeros(DIM))
    assert np.allclose(only.revenue.mean, params.revenue.mean, rtol=1e-9, atol=1e-12)
    assert np.allclose(only.ad_engagement.mean, params.ad_engagement.mean, rtol=1e-9,
                       atol=1e-12)
    assert np.allclose(none.organic.mean, params.organic.mean, rtol=1e-9, atol=1e-12)


def test_masked_posteriors_keep_their_unused_columns_at_the_prior_and_out_of_the_net() -> None:
    ridge, dial = 2.0, 3.0
    prior = BanditParams.prior(ridge=ridge, dial=dial, alpha=1.0)
    # Prior: each posterior's variance counts only on the columns it learns on, and the ad's
    # own columns, which none learns on, carry none.
    assert np.allclose(prior.net_covariance,
                       np.diag(REVENUE_ONLY + 2.0 * dial**2 * WITHOUT_AD) / ridge,
                       rtol=1e-12, atol=0.0)
    assert (prior.net_covariance[UNUSED] == 0.0).all()
    assert (prior.net_covariance[:, UNUSED] == 0.0).all()
    params = learn(prior, feedback_of(logged_rows(seed=22), lambda x: x @ (0.01 * REVENUE_ONLY),
                                      constant(0.1)))
    assert params.alpha == 1.0 and params.dial == dial
    for posterior, mask in ((params.revenue, REVENUE_ONLY), (params.ad_engagement, WITHOUT_AD),
                            (params.organic, WITHOUT_AD)):
        unused, used = np.flatnonzero(mask == 0.0), np.flatnonzero(mask == 1.0)
        # The columns a posterior never learns on stay exactly at the prior, uncoupled ...
        assert np.array_equal(posterior.precision[np.ix_(unused, unused)],
                              ridge * np.eye(len(unused)))
        assert (posterior.precision[np.ix_(unused, used)] == 0.0).all()
        assert (posterior.b[unused] == 0.0).all() and (posterior.mean[unused] == 0.0).all()
        assert np.allclose(posterior.covariance[np.ix_(unused, unused)],
                           np.eye(len(unused)) / ridge, rtol=1e-12, atol=0.0)
        # ... while the columns it learns on moved.
        assert not np.array_equal(posterior.precision[np.ix_(used, used)],
                                  ridge * np.eye(len(used)))
        assert (posterior.b[used] != 0.0).any()
    # The net covariance is the masked covariances' sum: the prior's variance on a posterior's
    # unused columns never enters it.
    assert np.allclose(params.net_covariance,
                       params.revenue.covariance * np.outer(REVENUE_ONLY, REVENUE_ONLY)
                       + dial**2 * (params.ad_engagement.covariance
                                    + params.organic.covariance)
                       * np.outer(WITHOUT_AD, WITHOUT_AD), rtol=1e-12, atol=1e-15)
    assert (params.net_covariance[UNUSED] == 0.0).all()
    assert (params.net_covariance[:, UNUSED] == 0.0).all()
    assert np.allclose(params.net_mean, params.revenue.mean * REVENUE_ONLY - dial * (
        params.organic.mean - params.ad_engagement.mean) * WITHOUT_AD, rtol=1e-12, atol=1e-15)
    # So with optimism on, the ad's own features that no posterior reads change no score.
    x = logged_rows(seed=23, requests=2)
    moved = x.copy()
    moved[:, UNUSED] = np.random.default_rng(0).uniform(-5.0, 5.0, (len(x), len(UNUSED)))
    assert np.array_equal(net_scores(params, moved), net_scores(params, x))
    # ... while a revenue column, and a slot column, do.
    for name in ("ad_revenue_affinity_2", "value_below"):
        other = x.copy()
        other[:, COLUMN[name]] += 1.0
        assert not np.allclose(net_scores(params, other), net_scores(params, x))


def test_action_values_differ_from_no_ad_by_the_net_reward() -> None:
    params = profitable(dial=2.5, alpha=0.7)
    mean_only = params.retuned(alpha=0.0)
    rng = np.random.default_rng(24)
    slates = []
    for _ in range(6):
        request = make_request(rng, k=5)
        for slot in SLOTS:
            x = slot_contexts(request, slot, ads_above=int(rng.integers(0, 2)))
            # "No ad" first: the slot's row without the ad, then each ad's row.
            contexts = np.vstack([without_ad(x[:1]), x])
            values = action_values(params, contexts)
            assert values.shape == (len(x) + 1,)
            # value(ad) - value(no ad) is the net reward's mean, whatever the optimism.
            assert np.allclose(values[1:] - values[0], net_scores(mean_only, x), rtol=1e-9,
                               atol=1e-9)
            assert np.allclose(values[1:] - values[0], x @ params.net_mean, rtol=1e-9,
                               atol=1e-9)
            # Revenue plus dial times the engagement from the slot down, in either world.
            below = x @ (params.ad_engagement.mean * WITHOUT_AD)
            assert np.allclose(values[1:], params.expected_revenue(x) + 2.5 * below, rtol=1e-9,
                               atol=1e-9)
            assert values[0] == pytest.approx(
                2.5 * float(contexts[0] @ (params.organic.mean * WITHOUT_AD)), rel=1e-9)
            # Any row of the slot stands for "no ad": its ad columns are not read.
            assert action_values(params, x)[0] == pytest.approx(values[0], rel=1e-12)
            slates.append(contexts[:4])
    # Batched over leading axes, [..., actions, DIM], the same as one slot at a time.
    batch = np.stack(slates).reshape(3, -1, 4, DIM)
    assert action_values(params, batch).shape == batch.shape[:-1]
    assert np.allclose(action_values(params, batch).reshape(-1, 4),
                       np.stack([action_values(params, c) for c in slates]), rtol=1e-12,
                       atol=1e-12)
    # At the prior every value is 0: "no ad" ties every ad.
    assert (action_values(BanditParams.prior(), np.stack(slates)) == 0.0).all()
    # The contexts are not written to.
    before = np.stack(slates)
    action_values(params, before)
    assert np.array_equal(before, np.stack(slates))


def test_logged_decisions_are_learnt_from_as_they_are() -> None:
    params = profitable(epsilon=0.5)
    decisions = [d for seed in range(20) for d in decide(
        params, make_request(np.random.default_rng(100 + seed)), np.random.default_rng(seed))]
    placed = np.array([d.ad_id is not None for d in decisions])
    assert placed.any() and not placed.all()
    feedback = Feedback(np.stack([d.context for d in decisions]), placed,
                        np.where(placed, 1.0, 0.0), np.full(len(placed), 0.5))
    later = learn(params, feedback, offsets={0: len(decisions) - 1})
    assert later.samples == params.samples + len(decisions)
    rows = feedback.contexts[~placed]
    # The "no ad" contexts are logged with their ad columns already empty.
    assert np.array_equal(rows, rows * WITHOUT_AD)
    assert np.allclose(later.organic.precision - params.organic.precision, rows.T @ rows)


@pytest.mark.parametrize("bad", ["revenue_nan", "engagement_inf", "context_nan",
                                 "unshown_context_inf", "overflow", "overflow_unshown",
                                 "revenue_overflow", "below_overflow", "shape",
                                 "short_revenues", "short_placed", "placed_ints",
                                 "placed_matrix"])
def test_a_bad_learn_raises_and_changes_nothing(bad: str) -> None:
    params = learn(profitable(), feedback_of(logged_rows(seed=14, requests=1), constant(1.0),
                                             constant(0.0)), offsets={0: 7})
    before = params.to_bytes()
    x = logged_rows(seed=12, requests=2)
    revenues, engagements = np.ones(len(x)), np.zeros(len(x))
    placed = np.arange(len(x)) % 2 == 0
    placed_arg: np.ndarray = placed
    if bad == "revenue_nan":
        revenues[2] = np.nan
    elif bad == "engagement_inf":
        engagements[1] = np.inf  # a row without an ad
    elif bad == "context_nan":
        x[0, COLUMN["slot_depth"]] = np.nan  # a row with an ad
    elif bad == "unshown_context_inf":
        x[1, COLUMN["ad_log_bid"]] = np.inf  # an ad column, which learn would empty
    elif bad == "overflow":
        x[0, 0] = 1e200  # finite, but its square is not
    elif bad == "overflow_unshown":
        x[1, COLUMN["value_below"]] = 1e200
    elif bad == "revenue_overflow":
        # Through a column revenue learns on (it never reads the bias): the gram is finite, b
        # is not.
        x[0, COLUMN["ad_expected_revenue"]], revenues[0] = 1e10, 1e300
    elif bad == "below_overflow":  # the same for the engagement below a shown ad
        x[0, COLUMN["value_below"]], engagements[0] = 1e10, 1e300
    elif bad == "shape":
        x = x[:, :-1]
    elif bad == "short_revenues":
        revenues = revenues[:-1]
    elif bad == "short_placed":
        placed_arg = placed[:-1]
    elif bad == "placed_ints":
        placed_arg = placed.astype(np.int64)
    else:
        placed_arg = placed[:, None]
    with pytest.raises(ValueError):
        learn(params, Feedback(x, placed_arg, revenues, engagements), offsets={0: 99})
    assert params.to_bytes() == before
    assert params.offsets == {0: 7}
    for posterior in (params.revenue, params.ad_engagement, params.organic):
        with pytest.raises(ValueError):
            posterior.precision[0, 0] = 0.0  # the arrays themselves are read-only


def test_offsets_merge_across_learns_and_survive_retuning_and_bytes() -> None:
    x = logged_rows(seed=13, requests=1)
    feedback = feedback_of(x, constant(1.0), constant(0.0))
    prior = BanditParams.prior()
    assert prior.offsets == {}
    first = learn(prior, feedback, offsets={0: 10, 3: 4})
    second = learn(first, feedback, offsets={3: 9, 5: -1})
    assert prior.offsets == {}
    assert first.offsets == {0: 10, 3: 4}  # learning again never changes a version
    assert second.offsets == {0: 10, 3: 9, 5: -1}
    assert learn(second, feedback).offsets == second.offsets
    assert learn(second, feedback, offsets={}).offsets == second.offsets
    retuned = second.retuned(dial=3.0, epsilon=0.2)
    assert retuned.version == "bandit-3" and retuned.parent == "bandit-2"
    assert retuned.offsets == second.offsets
    numbered = second.retuned(40, alpha=0.5)
    assert (numbered.version, numbered.parent, numbered.alpha, numbered.dial) == (
        "bandit-40", "bandit-2", 0.5, second.dial)
    assert numbered.offsets == second.offsets and numbered.samples == second.samples
    assert learn(numbered, feedback).version == "bandit-41"
    loaded = BanditParams.from_bytes(numbered.to_bytes())
    assert loaded.offsets == second.offsets
    assert all(type(k) is int and type(v) is int for k, v in loaded.offsets.items())
    assert loaded.to_bytes() == numbered.to_bytes()
    for offsets in ({-1: 3}, {8: -2}, {"8": 3}, {8: 1.5}, {8: True}, {np.int64(8): 3},
                    {8: np.int64(3)}):
        with pytest.raises(ValueError):
            learn(second, feedback, offsets=offsets)  # type: ignore[arg-type]
    for number in (-1, 10**18):
        with pytest.raises(ValueError):
            second.retuned(number)


def test_params_round_trip_through_bytes_exactly() -> None:
    params = learn(profitable(), feedback_of(logged_rows(seed=15, requests=3),
                                             constant(1.0), constant(0.0), seed=15),
                   offsets={0: 120, 7: 3}).retuned(epsilon=0.07, alpha=0.3, dial=2.5)
    loaded = BanditParams.from_bytes(params.to_bytes())
    for name in ("version", "parent", "samples", "dial", "epsilon", "alpha", "offsets"):
        assert getattr(loaded, name) == getattr(params, name)
    for name in ("revenue", "ad_engagement", "organic"):
        a, b = getattr(loaded, name), getattr(params, name)
        assert np.array_equal(a.precision, b.precision) and np.array_equal(a.b, b.b)
        assert np.array_equal(a.mean, b.mean) and np.array_equal(a.covariance, b.covariance)
    # The three posteriors differ, so a file that swapped two of them would not pass.
    assert not np.array_equal(params.ad_engagement.b, params.organic.b)
    assert not np.array_equal(params.revenue.b, params.ad_engagement.b)
    assert np.array_equal(loaded.net_mean, params.net_mean)
    assert loaded.to_bytes() == params.to_bytes()
    request = make_request(np.random.default_rng(8))
    assert [(d.ad_id, d.propensity) for d in decide(loaded, request, np.random.default_rng(1))] \
        == [(d.ad_id, d.propensity) for d in decide(params, request, np.random.default_rng(1))]


def _mutated(change: str) -> bytes:
    body = orjson.loads(learn(BanditParams.prior(), feedback_of(
        logged_rows(seed=16, requests=1), constant(1.0), constant(0.0)), offsets={2: 5}
    ).to_bytes())
    if change == "format":
        body["format"] = 2
    elif change == "missing":
        del body["ad_engagement"]
    elif change == "missing_organic":
        del body["organic"]
    elif change == "old_loss":  # the two-posterior file of the previous layout
        body["loss"] = body.pop("ad_engagement")
        del body["organic"], body["offsets"]
    elif change == "shape":
        body["revenue"]["b"] = body["revenue"]["b"][:-1]
    elif change == "ragged":
        body["revenue"]["precision"][3] = [1.0]
    elif change == "strings":
        body["ad_engagement"]["b"] = ["0"] * DIM
    elif change == "asymmetric":
        body["organic"]["precision"][0][1] += 0.5
    elif change == "not_definite":
        body["ad_engagement"]["precision"] = np.zeros((DIM, DIM)).tolist()
    elif change == "organic_nan":
        body["organic"]["b"][0] = "NaN"
    elif change == "epsilon":
        body["epsilon"] = 1.5
    elif change == "epsilon_text":
        body["epsilon"] = "0.1"
    elif change == "dial":
        body["dial"] = -1.0
    elif change == "names":
        body["context_names"] = body["context_names"][::-1]
    elif change == "version":
        body["version"] = "v1"
    elif change == "offsets_missing":
        del body["offsets"]
    elif change == "offsets_list":
        body["offsets"] = [[2, 5]]
    elif change == "offsets_null":
        body["offsets"] = None
    elif change == "offsets_negative_partition":
        body["offsets"] = {"-2": 5}
    elif change == "offsets_named_partition":
        body["offsets"] = {"p2": 5}
    elif change == "offsets_empty_partition":
        body["offsets"] = {"": 5}
    elif change == "offsets_below":
        body["offsets"] = {"2": -2}
    elif change == "offsets_float":
        body["offsets"] = {"2": 5.0}
    elif change == "offsets_text":
        body["offsets"] = {"2": "5"}
    elif change == "offsets_bool":
        body["offsets"] = {"2": True}
    elif change == "offsets_null_offset":
        body["offsets"] = {"2": None}
    elif change == "offsets_superscript":
        body["offsets"] = {"²": 5}  # a digit to str.isdigit, not to int
    return orjson.dumps(body)


MALFORMED = ("format", "missing", "missing_organic", "old_loss", "shape", "ragged", "strings",
             "asymmetric", "not_definite", "organic_nan", "epsilon", "epsilon_text", "dial",
             "names", "version")
MALFORMED_OFFSETS = ("offsets_missing", "offsets_list", "offsets_null",
                     "offsets_negative_partition", "offsets_named_partition",
                     "offsets_empty_partition", "offsets_below", "offsets_float",
                     "offsets_text", "offsets_bool", "offsets_null_offset",
                     "offsets_superscript")


@pytest.mark.parametrize("data", [
    b"", b"not json", b"[]", b'{"format": 1}', b'{"format": 1, "dial": 1e999}',
    *(_mutated(c) for c in (*MALFORMED, *MALFORMED_OFFSETS)),
])
def test_malformed_params_raise_value_error(data: bytes) -> None:
    with pytest.raises(ValueError):
        BanditParams.from_bytes(data)
    intact = BanditParams.from_bytes(_mutated("none"))
    assert intact.version == "bandit-1" and intact.offsets == {2: 5}


def test_offsets_cannot_be_changed_behind_a_version() -> None:
    mine = {1: 4}
    prior = BanditParams.prior()
    params = BanditParams("bandit-1", prior.revenue, prior.ad_engagement, prior.organic,
                          offsets=mine)
    retuned = params.retuned(dial=2.0)
    mine[1] = -9
    with pytest.raises(TypeError):
        retuned.offsets[2] = 0
    assert params.offsets == {1: 4} and retuned.offsets == {1: 4}


@pytest.mark.parametrize("offsets", [{"1": 7, "01": 3}, {"01": 3}, {"\uff11": 7}])
def test_non_canonical_partitions_in_a_file_raise_value_error(offsets: dict) -> None:
    body = orjson.loads(BanditParams.prior().to_bytes())
    body["offsets"] = offsets
    with pytest.raises(ValueError):
        BanditParams.from_bytes(orjson.dumps(body))


def test_feedback_is_a_snapshot() -> None:
    placed = np.array([True, False])
    feedback = Feedback(np.ones((2, DIM)), placed, np.zeros(2), np.zeros(2))
    placed[1] = True
    assert feedback.placed.tolist() == [True, False]
