"""The store's exactly-once rule on pure data: marks, verdicts, and replays of any shape."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from models.features import CHANNELS, HALF_LIVES_S, EntityState
from schemas import Event
from stream.features.store import Applied, EventBatch, MemoryStore
from stream.features.watermarks import (
    Origin,
    Verdict,
    above,
    batch_ranges,
    judge,
    pack_marks,
    unpack_marks,
)

T0 = 1_790_000_000.0


def stream_of(n: int, seed: int = 0) -> list[Event]:
    rng = np.random.default_rng(seed)
    kinds = ["impression", "click", "like", "hide", "share"]
    return [Event(event_id=f"e{k}", user_id=f"u{rng.integers(6)}", item_id=f"i{rng.integers(9)}",
                  type=kinds[rng.integers(len(kinds))], ts=T0 + k)  # type: ignore[arg-type]
            for k in range(n)]


def batch(events: list[Event], start: int, stop: int) -> EventBatch:
    return EventBatch(events[start:stop], [Origin(k % 2, k) for k in range(start, stop)])


async def state(store: MemoryStore) -> np.ndarray:
    """Every entity's counters decayed to one time: merges grouped differently round float32
    differently, so values are compared within rounding, not byte for byte."""
    fetched = await store.fetch_many([(f"u{u}", [f"i{i}" for i in range(9)]) for u in range(6)])
    values = [v for f in fetched for v in (f.user, *f.items)]
    empty = np.zeros((len(CHANNELS), len(HALF_LIVES_S)))
    return np.stack([EntityState.unpack(v).decayed_to(T0 + 100) if v else empty
                     for v in values])


def test_verdicts() -> None:
    assert judge({}, {0: (5, 9)}) is Verdict.FRESH
    assert judge({0: 4}, {0: (5, 9)}) is Verdict.FRESH
    assert judge({0: 9}, {0: (5, 9)}) is Verdict.APPLIED
    assert judge({0: 12}, {0: (5, 9)}) is Verdict.APPLIED
    assert judge({0: 7}, {0: (5, 9)}) is Verdict.CONFLICT
    # One partition new, the other applied: part of the delta is in, so it is rebuilt.
    assert judge({0: 9}, {0: (5, 9), 1: (6, 8)}) is Verdict.CONFLICT


def test_marks_round_trip_and_ranges() -> None:
    marks = {0: 12, 3: 2**40}
    assert unpack_marks(pack_marks(marks)) == marks
    with pytest.raises(ValueError, match="whole"):
        unpack_marks(b"\x00" * 5)
    origins = [Origin(0, 4), Origin(1, 7), Origin(0, 2), Origin(0, 9)]
    assert batch_ranges(origins) == {0: (2, 9), 1: (7, 7)}
    assert above({0: (2, 9), 1: (7, 7)}, {0: 5, 1: 7}) == {0: (6, 9)}


@pytest.mark.parametrize("cuts", [[0, 10, 25, 40], [0, 17, 40], [0, 3, 5, 31, 40]])
async def test_replays_with_other_batch_boundaries_apply_each_event_once(cuts: list[int]) -> None:
    """A crash can leave any prefix applied and the replay can cut batches anywhere."""
    events = stream_of(40)
    once = MemoryStore(86_400, 50)
    await once.apply(batch(events, 0, 40))

    replayed = MemoryStore(86_400, 50)
    for start, stop in itertools.pairwise(cuts):
        await replayed.apply(batch(events, start, stop))
    # Replay from 4 in batches of 7: each overlaps what was applied in a different place.
    results = [await replayed.apply(batch(events, s, min(s + 7, 40))) for s in range(4, 40, 7)]
    assert sum(r.events for r in results) == 0
    assert sum(r.replayed for r in results) == 36
    np.testing.assert_allclose(await state(replayed), await state(once), rtol=1e-5, atol=1e-6)


async def test_a_producer_duplicate_is_dropped_and_its_replay_stays_dropped() -> None:
    events = stream_of(5)
    store = MemoryStore(86_400, 50)
    assert await store.apply(batch(events, 0, 5)) == Applied(5, 0, [])
    again = EventBatch([events[2]], [Origin(0, 99)])  # the same id at a new offset
    assert await store.apply(again) == Applied(0, 0, ["e2"])
    assert await store.apply(again) == Applied(0, 0, ["e2"])
    user = (await store.fetch(events[2].user_id, [])).user
    assert user is not None
    counts = EntityState.unpack(user).counters.sum()
    assert counts > 0
    assert (await store.apply(batch(events, 0, 5))) == Applied(0, 5, [])
    assert EntityState.unpack((await store.fetch(events[2].user_id, [])).user or b"") \
        .counters.sum() == counts
