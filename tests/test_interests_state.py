"""The interests role's per-user value: engagements counted once, bounded, packed."""

from __future__ import annotations

import numpy as np
import pytest

from models.interests import InterestParams, update_interests
from stream.interests.state import UserInterests

DIM = 4


def engagements(count: int, start: float = 1.79e9) -> tuple[np.ndarray, np.ndarray, list[str]]:
    rng = np.random.default_rng(count)
    return (start + np.arange(count, dtype=np.float64),
            rng.normal(size=(count, DIM)).astype(np.float32), [f"i{k}" for k in range(count)])


def test_engagements_come_newest_first_and_once_however_often_they_are_read() -> None:
    ts, emb, ids = engagements(5)
    once = UserInterests.empty(DIM).with_engagements(ts, emb, ids, 50, 0.0)
    twice = once.with_engagements(ts, emb, ids, 50, 0.0)
    assert twice is once  # a replay adds nothing
    assert once.item_ids == ("i4", "i3", "i2", "i1", "i0")
    assert once.ts.tolist() == sorted(ts.tolist(), reverse=True)
    np.testing.assert_array_equal(once.embeddings[0], emb[4])


def test_the_history_keeps_the_newest_within_its_cap_and_age() -> None:
    ts, emb, ids = engagements(10)
    kept = UserInterests.empty(DIM).with_engagements(ts, emb, ids, 4, oldest_ts=ts[2])
    assert kept.item_ids == ("i9", "i8", "i7", "i6")
    young = UserInterests.empty(DIM).with_engagements(ts, emb, ids, 50, oldest_ts=ts[7])
    assert young.item_ids == ("i9", "i8", "i7")


def test_the_value_round_trips_with_and_without_interests() -> None:
    ts, emb, ids = engagements(6)
    state = UserInterests.empty(DIM).with_engagements(ts, emb, ids, 50, 0.0)
    interests = update_interests(None, state.ts, state.embeddings, float(ts[-1]),
                                 InterestParams())
    for value in (state, UserInterests(interests, state.ts, state.embeddings, state.item_ids)):
        back = UserInterests.from_bytes(value.to_bytes())
        assert back.item_ids == value.item_ids
        np.testing.assert_array_equal(back.embeddings, value.embeddings)
        assert back.to_bytes() == value.to_bytes()


def test_a_value_that_does_not_add_up_is_refused() -> None:
    ts, emb, ids = engagements(3)
    packed = UserInterests.empty(DIM).with_engagements(ts, emb, ids, 50, 0.0).to_bytes()
    with pytest.raises(ValueError, match="version"):
        UserInterests.from_bytes(b"\x09" + packed[1:])
    with pytest.raises(ValueError, match="item ids"):
        UserInterests.from_bytes(packed[:-3])
