"""Decayed-counter algebra: closed form, exact merges, order independence."""

from __future__ import annotations

import math

import numpy as np
import pytest

from models.features import (
    CHANNEL_INDEX,
    FEATURE_NAMES,
    HALF_LIVES_S,
    PRIOR_IMPRESSIONS,
    PRIOR_RATES,
    EntityState,
    combine,
    entity_features,
    event_deltas,
    merge,
    packed_event_deltas,
)
from schemas import Event

T0 = 1_790_000_000.0
CLICK = CHANNEL_INDEX["click"]
IMPRESSION = CHANNEL_INDEX["impression"]


def closed_form(times: list[float], now: float) -> np.ndarray:
    return np.array([sum(0.5 ** ((now - t) / h) for t in times) for h in HALF_LIVES_S])


def test_combined_delta_matches_closed_form() -> None:
    times = [T0, T0 + 600, T0 + 5000]
    delta = combine(["u"] * 3, np.full(3, CLICK), np.ones(3), np.array(times))["u"]
    assert delta.ref_ts == T0 + 5000
    assert delta.first_ts == T0
    assert delta.last_click_ts == T0 + 5000
    now = T0 + 9000
    np.testing.assert_allclose(delta.decayed_to(now)[CLICK], closed_form(times, now), rtol=1e-12)


def test_merge_of_split_batches_equals_one_batch() -> None:
    rng = np.random.default_rng(1)
    times = np.sort(rng.uniform(T0, T0 + 86_400, 40))
    channels = rng.integers(0, 4, 40)
    amounts = np.ones(40)
    whole = combine(["k"] * 40, channels, amounts, times)["k"]
    order = rng.permutation(40)
    parts = [combine(["k"] * 10, channels[i], amounts[i], times[i])["k"]
             for i in np.split(order, 4)]
    merged = parts[0]
    for part in parts[1:]:
        merged = merge(merged, part)
    assert merged.ref_ts == whole.ref_ts
    assert merged.first_ts == whole.first_ts
    np.testing.assert_allclose(merged.counters, whole.counters, rtol=1e-12)


def test_late_event_is_decayed_not_grown() -> None:
    stored = combine(["k"], np.array([CLICK]), np.ones(1), np.array([T0 + 3600.0]))["k"]
    late = combine(["k"], np.array([CLICK]), np.ones(1), np.array([T0]))["k"]
    merged = merge(stored, late)
    assert merged.ref_ts == T0 + 3600
    np.testing.assert_allclose(merged.counters[CLICK], 1 + 0.5 ** (3600 / np.array(HALF_LIVES_S)))


def test_pack_round_trip_keeps_float32_precision() -> None:
    state = combine(["k"], np.array([CLICK]), np.array([3.0]), np.array([T0]))["k"]
    restored = EntityState.unpack(state.pack())
    assert restored.ref_ts == state.ref_ts  # float64 header: exact to the microsecond
    np.testing.assert_allclose(restored.counters, state.counters, rtol=1e-6)
    with pytest.raises(ValueError, match="bytes"):
        EntityState.unpack(state.pack()[:-1])


def test_unknown_entity_gets_the_prior_rates() -> None:
    row = dict(zip(FEATURE_NAMES, entity_features([None], T0)[0], strict=True))
    assert row["known"] == 0.0
    assert row["click_rate_1d"] == pytest.approx(PRIOR_RATES["click"])
    assert all(math.isfinite(v) for v in row.values())


def test_rates_are_smoothed_towards_the_prior() -> None:
    n = 10
    times = np.full(2 * n, T0)
    channels = np.array([IMPRESSION] * n + [CLICK] * n)
    state = combine(["k"] * (2 * n), channels, np.ones(2 * n), times)["k"]
    row = dict(zip(FEATURE_NAMES, entity_features([state.pack()], T0)[0], strict=True))
    expected = (n + PRIOR_IMPRESSIONS * PRIOR_RATES["click"]) / (n + PRIOR_IMPRESSIONS)
    assert row["click_rate_1h"] == pytest.approx(expected, rel=1e-6)
    assert row["log_since_last_click"] == 0.0


def test_packed_deltas_are_the_packed_event_deltas_with_their_event_counts() -> None:
    rng = np.random.default_rng(3)
    types = ["impression", "click", "dwell", "like", "ad_click"]
    events = [Event(ts=T0 + k, event_id=f"e{k}", user_id=f"u{rng.integers(5)}",
                    item_id=f"i{rng.integers(9)}", type=types[k % len(types)],
                    dwell_s=4.5 if k % len(types) == 2 else None,
                    revenue=0.25 if k % len(types) == 4 else None) for k in range(60)]
    for packed, states, attribute in zip(packed_event_deltas(events), event_deltas(events),
                                         ("user_id", "item_id"), strict=True):
        assert packed.keys == list(states)
        assert [packed.value(row) for row in range(len(packed.keys))] == [
            state.pack() for state in states.values()]
        assert packed.events.tolist() == [
            sum(getattr(e, attribute) == key for e in events) for key in packed.keys]
