"""Retrieval as the interests bench scores it: the merge of several queries' hits, exact
search, popularity and recall. The pure half of the bench (numpy only), unit-tested alone."""

from __future__ import annotations

from collections import Counter
from collections.abc import Collection, Iterable, Sequence

import numpy as np

Hits = Sequence[tuple[str, float]]  # (item id, cosine), best first, as ItemIndex.search returns


def merge_best(per_query: Sequence[Hits], k: int) -> list[str]:
    """The ``k`` items of several queries' hits with the best cosine to any query, deduped.

    Why one list at ``k`` per query is enough: an item among the merged top ``k`` has fewer
    than ``k`` items above it on the query that gives it its best cosine, so it is in that
    query's own top ``k``. The same holds for any prefix, so the top ``K`` of a merge at ``k``
    is the merge at ``K``: one search at the largest K gives the whole recall curve.
    """
    best: dict[str, float] = {}
    for hits in per_query:
        for item_id, cosine in hits:
            if cosine > best.get(item_id, -np.inf):
                best[item_id] = cosine
    return sorted(best, key=lambda item_id: -best[item_id])[:k]


def recall_at(retrieved: Sequence[Sequence[str]], held_out: Sequence[str], k: int) -> float:
    """Share of users whose held-out engagement is among the first ``k`` retrieved for them."""
    if len(retrieved) != len(held_out):
        raise ValueError(f"{len(retrieved)} retrieved lists for {len(held_out)} users")
    if not held_out:
        return float("nan")
    return sum(item in got[:k] for got, item in zip(retrieved, held_out, strict=True)) / len(
        held_out)


def exact_top_k(unit_items: np.ndarray, unit_queries: np.ndarray, k: int) -> np.ndarray:
    """Row indices of the ``k`` items of largest inner product per query, best first: the
    bound an ANN index is measured against."""
    scores = unit_queries @ unit_items.T
    k = min(k, unit_items.shape[0])
    top = np.argpartition(-scores, k - 1, axis=1)[:, :k]
    order = np.argsort(-np.take_along_axis(scores, top, axis=1), axis=1, kind="stable")
    return np.take_along_axis(top, order, axis=1)


def overlap_recall(approximate: Sequence[Collection[str]], exact: Sequence[Collection[str]]
                   ) -> float:
    """Mean share of each exact list that the approximate list also found."""
    shares = [len(set(a) & set(e)) / len(e) for a, e in zip(approximate, exact, strict=True)
              if len(e)]
    return float(np.mean(shares)) if shares else float("nan")


def most_engaged(histories: Iterable[Sequence[str]]) -> list[str]:
    """Every engaged item, most often engaged first, ties by id: the popularity source."""
    counts = Counter(item for history in histories for item in history)
    return sorted(counts, key=lambda item: (-counts[item], item))


def first_not_in(ranked: Sequence[str], exclude: Collection[str], k: int) -> list[str]:
    """The first ``k`` of ``ranked`` that are not excluded (the user's own history)."""
    blocked = set(exclude)
    return [item for item in ranked if item not in blocked][:k]
