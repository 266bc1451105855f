"""The in-process item feature cache: freshness, refills and bounded growth."""

import numpy as np
import pytest

from stream.features.item_cache import INITIAL_CAPACITY, ItemFeatureCache


def _put(cache: ItemFeatureCache, ids: list[str], value: float, now: float) -> None:
    n = len(ids)
    cache.put(ids, np.full((n, 3), value, dtype=np.float32), np.full((n, 2), value),
              np.ones(n, dtype=bool), now)


def test_rows_are_served_until_the_ttl_and_then_reported_stale() -> None:
    cache = ItemFeatureCache(ttl_s=1.0, n_columns=3, dim=2)
    assert cache.stale(cache.slots(["a"]), now=0.0).tolist() == [True]
    _put(cache, ["a", "b"], 7.0, now=10.0)
    slots = cache.slots(["b", "a", "unknown"])
    assert cache.stale(slots, now=11.0).tolist() == [False, False, True]
    assert cache.stale(slots, now=11.01).tolist() == [True, True, True]
    rows, embeddings, known = cache.gather(slots[:2])
    assert rows.tolist() == [[7.0] * 3] * 2 and embeddings.tolist() == [[7.0] * 2] * 2
    assert known.all()


def test_a_refill_replaces_the_old_row() -> None:
    cache = ItemFeatureCache(ttl_s=1.0, n_columns=3, dim=2)
    _put(cache, ["a"], 1.0, now=0.0)
    _put(cache, ["a"], 2.0, now=5.0)
    rows, _, _ = cache.gather(cache.slots(["a"]))
    assert rows.tolist() == [[2.0] * 3] and len(cache) == 1


def test_a_zero_ttl_rereads_on_every_later_call() -> None:
    cache = ItemFeatureCache(ttl_s=0.0, n_columns=3, dim=2)
    _put(cache, ["a"], 1.0, now=3.0)
    assert not cache.stale(cache.slots(["a"]), now=3.0).any()
    assert cache.stale(cache.slots(["a"]), now=3.5).all()


def test_full_arrays_drop_expired_rows_before_growing() -> None:
    cache = ItemFeatureCache(ttl_s=1.0, n_columns=3, dim=2)
    old = [f"old{i}" for i in range(INITIAL_CAPACITY)]
    _put(cache, old, 1.0, now=0.0)
    _put(cache, ["new"], 2.0, now=100.0)  # full: every old row has expired, so none is kept
    assert len(cache) == 1
    rows, _, _ = cache.gather(cache.slots(["new"]))
    assert rows.tolist() == [[2.0] * 3]
    assert cache.slots(["old0"]).tolist() == [-1]


def test_fresh_rows_survive_and_the_arrays_grow_when_they_fill_them() -> None:
    cache = ItemFeatureCache(ttl_s=1.0, n_columns=3, dim=2)
    ids = [f"i{i}" for i in range(3 * INITIAL_CAPACITY)]
    for start in range(0, len(ids), 100):
        chunk = ids[start:start + 100]
        _put(cache, chunk, float(start), now=0.5)
    assert len(cache) == len(ids)
    rows, _, _ = cache.gather(cache.slots(ids))
    assert rows[:, 0].tolist() == [float(i - i % 100) for i in range(len(ids))]


def test_refilling_expired_rows_of_a_full_cache_with_a_few_new_ones_fits() -> None:
    cache = ItemFeatureCache(ttl_s=1.0, n_columns=3, dim=2)
    expired = [f"e{i}" for i in range(INITIAL_CAPACITY - 24)]
    _put(cache, expired, 1.0, now=0.0)
    _put(cache, [f"f{i}" for i in range(24)], 2.0, now=9.5)  # full now; these stay fresh
    _put(cache, [*expired, "n1", "n2"], 3.0, now=10.0)
    rows, _, _ = cache.gather(cache.slots([*expired, "n1", "f0"]))
    assert rows[:, 0].tolist() == [3.0] * (len(expired) + 1) + [2.0]


def test_negative_ttl_is_refused() -> None:
    with pytest.raises(ValueError, match="ttl_s"):
        ItemFeatureCache(ttl_s=-1.0, n_columns=1, dim=1)
