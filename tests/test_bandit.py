"""Ad-slot bandit (models/bandit.py): exact propensities, constraints on hostile requests, seeded
decisions, the dial, the Bayesian linear update in closed form, and the parameter file."""

from __future__ import annotations

import doctest
import itertools
from collections.abc import Sequence

import numpy as np
import orjson
import pytest

import models.bandit
from models.bandit import (
    CONTEXT_NAMES,
    DIM,
    AdRequest,
    BanditParams,
    SlotDecision,
    action_probabilities,
    decide,
    net_scores,
    slot_contexts,
    update,
    valid_slots,
)

EMBEDDING_DIM = 8
SLOTS = (2, 5, 8, 11, 14)
COLUMN = {name: i for i, name in enumerate(CONTEXT_NAMES)}


def make_request(rng: np.random.Generator, k: int = 20, slots: Sequence[int] = SLOTS,
                 n: int = 20, m: int = 30, ad_ids: Sequence[str] | None = None) -> AdRequest:
    return AdRequest(
        user=np.array([0.05, 0.02, 3.0]), interest=rng.standard_normal(EMBEDDING_DIM),
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


def learnt(revenue_of, loss_of, seed: int = 0, **knobs: float) -> BanditParams:
    rng = np.random.default_rng(seed)
    x = logged_rows(seed)
    noise = 0.01 * rng.standard_normal((2, len(x)))
    trained = update(BanditParams.prior(), x, revenue_of(x) + noise[0], loss_of(x) + noise[1])
    return trained.retuned(**knobs)


def profitable(**knobs: float) -> BanditParams:
    """Ads earn clearly more than the engagement they cost, which is small but positive."""
    return learnt(lambda x: 2.0 + 10.0 * x[:, COLUMN["ad_expected_revenue"]],
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


def test_the_module_example_runs() -> None:
    result = doctest.testmod(models.bandit)
    assert result.attempted > 0 and result.failed == 0


def test_context_rows_follow_the_documented_names() -> None:
    request = AdRequest(
        user=np.array([0.1, 0.2, 0.3]), interest=np.array([3.0, 4.0]), ad_ids=["a", "b"],
        bids=np.array([1.0, 3.0]), click_rates=np.array([0.1, 0.2]),
        conversion_rates=np.array([0.5, 0.25]), embeddings=np.array([[4.0, 3.0], [0.0, -2.0]]),
        organic_values=np.array([5.0, 4.0, 3.0, 2.0, 1.0]), slots=(2,), n=4)
    x = slot_contexts(request, slot=2, ads_above=1)
    assert x.shape == (2, DIM) == (2, len(CONTEXT_NAMES))
    row = dict(zip(CONTEXT_NAMES, x[0], strict=True))
    expected = {
        "bias": 1.0, "user_click_rate": 0.1, "user_ad_click_rate": 0.2, "user_log_activity": 0.3,
        "ad_log_bid": np.log(2.0), "ad_click_rate": 0.1, "ad_conversion_rate": 0.5,
        "ad_affinity": 24.0 / 25.0, "slot_discount": 0.5, "slot_depth": 0.5,
        "ad_expected_revenue": 1.0 * 0.1 * 0.5 * 0.5,
        # One ad above: slot 2 holds organic rank 1 (value 4); the feed's last two positions
        # hold ranks 1 and 2.
        "displaced_value": 4.0, "value_below": 4.0 + 3.0}
    assert row == pytest.approx(expected)
    assert x[1, COLUMN["ad_affinity"]] == pytest.approx(-0.8)


def test_valid_slots_drops_duplicates_and_slots_outside_the_feed() -> None:
    assert valid_slots([5, 3, 3, 20, -1, 19, 5], n=20) == [3, 5, 19]
    assert valid_slots([0, 1], n=0) == []


def test_propensities_are_the_full_distribution_with_its_floor() -> None:
    params = learnt(lambda x: x @ np.linspace(-1, 1, DIM), lambda x: x @ np.linspace(1, -1, DIM),
                    epsilon=0.2, alpha=0.5)
    rng = np.random.default_rng(5)
    slates = 0
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
            greedy = int(np.argmax(np.concatenate(([0.0], net_scores(params, x)))))
            assert d.probabilities[greedy] == pytest.approx(1 - params.epsilon + params.epsilon / k)
            if d.ad_id is not None:
                assert np.array_equal(d.context, x[d.actions.index(d.ad_id) - 1])
                above += 1
            else:
                assert d.context is None
        slates += above > 1
    assert slates > 0  # some slates placed several ads, so later slots were conditioned


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
    assert (x @ params.loss.mean > 0).all()  # every ad costs engagement, as the test assumes
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


def test_posterior_mean_is_the_ridge_solution_and_approaches_the_true_weights() -> None:
    rng = np.random.default_rng(6)
    w_revenue, w_loss = rng.standard_normal(DIM), rng.standard_normal(DIM)
    x = rng.standard_normal((20_000, DIM))
    revenues = x @ w_revenue + 0.3 * rng.standard_normal(len(x))
    losses = x @ w_loss + 0.3 * rng.standard_normal(len(x))
    prior = BanditParams.prior(ridge=2.0)
    few = update(prior, x[:50], revenues[:50], losses[:50])
    params = prior
    for batch in np.array_split(np.arange(len(x)), 7):
        params = update(params, x[batch], revenues[batch], losses[batch])
    assert params.version == "bandit-7" and params.parent == "bandit-6"
    assert params.samples == len(x)
    ridge = np.linalg.solve(2.0 * np.eye(DIM) + x.T @ x, x.T @ revenues)
    assert np.allclose(params.revenue.mean, ridge, rtol=1e-9, atol=1e-12)
    assert np.allclose(params.revenue.precision, 2.0 * np.eye(DIM) + x.T @ x, rtol=1e-12)
    assert np.allclose(params.revenue.covariance @ params.revenue.precision, np.eye(DIM),
                       atol=1e-9)
    for posterior, truth in ((params.revenue, w_revenue), (params.loss, w_loss)):
        assert np.abs(posterior.mean - truth).max() < 0.02
    assert np.abs(params.revenue.mean - w_revenue).max() < np.abs(
        few.revenue.mean - w_revenue).max()


@pytest.mark.parametrize("bad", ["revenue_nan", "loss_inf", "context_nan", "overflow", "shape"])
def test_a_bad_update_raises_and_changes_nothing(bad: str) -> None:
    params = profitable()
    before = params.to_bytes()
    x = logged_rows(seed=12, requests=2)
    revenues, losses = np.ones(len(x)), np.zeros(len(x))
    if bad == "revenue_nan":
        revenues[3] = np.nan
    elif bad == "loss_inf":
        losses[0] = np.inf
    elif bad == "context_nan":
        x[1, 4] = np.nan
    elif bad == "overflow":
        x[0, 0] = 1e200  # finite, but its square is not
    else:
        x = x[:, :-1]
    with pytest.raises(ValueError):
        update(params, x, revenues, losses)
    assert params.to_bytes() == before
    with pytest.raises(ValueError):
        params.revenue.precision[0, 0] = 0.0  # the arrays themselves are read-only


def test_params_round_trip_through_bytes_exactly() -> None:
    params = profitable(epsilon=0.07, alpha=0.3, dial=2.5)
    loaded = BanditParams.from_bytes(params.to_bytes())
    for name in ("version", "parent", "samples", "dial", "epsilon", "alpha"):
        assert getattr(loaded, name) == getattr(params, name)
    for a, b in ((loaded.revenue, params.revenue), (loaded.loss, params.loss)):
        assert np.array_equal(a.precision, b.precision) and np.array_equal(a.b, b.b)
        assert np.array_equal(a.mean, b.mean) and np.array_equal(a.covariance, b.covariance)
    assert loaded.to_bytes() == params.to_bytes()
    request = make_request(np.random.default_rng(8))
    assert [(d.ad_id, d.propensity) for d in decide(loaded, request, np.random.default_rng(1))] \
        == [(d.ad_id, d.propensity) for d in decide(params, request, np.random.default_rng(1))]


def _mutated(change: str) -> bytes:
    body = orjson.loads(BanditParams.prior().to_bytes())
    if change == "format":
        body["format"] = 2
    elif change == "missing":
        del body["loss"]
    elif change == "shape":
        body["revenue"]["b"] = body["revenue"]["b"][:-1]
    elif change == "ragged":
        body["revenue"]["precision"][3] = [1.0]
    elif change == "strings":
        body["loss"]["b"] = ["0"] * DIM
    elif change == "asymmetric":
        body["loss"]["precision"][0][1] = 0.5
    elif change == "not_definite":
        body["loss"]["precision"] = np.zeros((DIM, DIM)).tolist()
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
    return orjson.dumps(body)


@pytest.mark.parametrize("data", [
    b"", b"not json", b"[]", b'{"format": 1}', b'{"format": 1, "dial": 1e999}',
    *(_mutated(c) for c in ("format", "missing", "shape", "ragged", "strings", "asymmetric",
                            "not_definite", "epsilon", "epsilon_text", "dial", "names",
                            "version")),
])
def test_malformed_params_raise_value_error(data: bytes) -> None:
    with pytest.raises(ValueError):
        BanditParams.from_bytes(data)
    assert BanditParams.from_bytes(_mutated("none")).version == "bandit-0"
