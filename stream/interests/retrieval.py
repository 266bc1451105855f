"""Retrieval: candidates for a request that brings none (or asks for more with ``retrieve``).

PinnerSage (Pal et al., KDD 2020, section 4): sample up to 3 of the user's interests in
proportion to their importance, query the item index for each (with its centroid:
:func:`models.interests.retrieval_queries` says why), merge by how likely each hit is to be the
next engagement given the interests' importance, dedupe, and drop what the user has just
engaged with. A user with no interests yet gets the trending items.
With source ``trending`` every user gets them: the popularity baseline that interests must beat
(``streamrank demo --retrieval --compare``).

The interests are sampled with a generator seeded by the request id, so the same request gets
the same candidates through Kafka and through ``POST /rank``.
"""

from __future__ import annotations

import time
import zlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

from models.ann import ItemIndex
from models.interests import (
    merge_retrieved,
    retrieval_queries,
    sample_medoids,
)
from schemas import RankingRequest
from stream.features.store import FeatureStore
from stream.interests.state import STATE, UserInterests
from stream.interests.trending import STATE_KEY, STATE_KIND, unpack_top
from stream.runtime.metrics import WorkerMetrics
from stream.settings import RetrievalSource

TRENDING_CACHE_S = 2.0  # the interests role rewrites the list every few seconds


@dataclass(frozen=True)
class Retrieved:
    request: RankingRequest  # with its candidates filled in
    sources: list[str]  # per candidate: request, interest:<rank>, or trending


def wants_retrieval(request: RankingRequest) -> bool:
    return not request.candidates or request.retrieve is not None


class Retriever:
    def __init__(self, store: FeatureStore, index: Callable[[], ItemIndex], default_k: int,
                 metrics: WorkerMetrics, source: RetrievalSource = "interests") -> None:
        """``index``: the item index in use (the catalogue replaces it when it loads a
        snapshot)."""
        self._store = store
        self._source = source
        self._index = index
        self._default_k = default_k
        self._metrics = metrics
        self._trending: tuple[float, list[str]] = (-1e18, [])

    async def retrieve(self, requests: Sequence[RankingRequest]) -> list[Retrieved]:
        """Every request, with candidates retrieved where it wants them (one store read)."""
        wanting = [r for r in requests if wants_retrieval(r)]
        states = dict(zip([r.user_id for r in wanting], await self._store.get_states(
            STATE, [r.user_id for r in wanting]), strict=True)) if wanting else {}
        trending = await self._trending_items() if wanting else []
        return [self._one(r, states.get(r.user_id), trending) if wants_retrieval(r)
                else Retrieved(r, ["request"] * len(r.candidates)) for r in requests]

    def _one(self, request: RankingRequest, value: bytes | None,
             trending: list[str]) -> Retrieved:
        k = request.retrieve if request.retrieve is not None else self._default_k
        given = list(dict.fromkeys(request.candidates))
        try:
            state = UserInterests.from_bytes(value) if value else None
        except ValueError:
            state = None
        engaged = set(state.item_ids) if state is not None else set()
        skip = engaged | set(given)
        found: list[tuple[str, str]] = []
        if (self._source == "interests" and state is not None and state.interests is not None
                and len(state.interests)):
            found = self._from_interests(request, state, k, skip)
        source = "interests" if found else "trending"
        if len(found) < k:  # too few interests, or a thin index: top up with what trends
            taken = skip | {item for item, _ in found}
            found += [(item, "trending") for item in trending if item not in taken][
                :k - len(found)]
        self._metrics.retrieved.labels(source if found else "none").inc()
        candidates = given + [item for item, _ in found]
        sources = ["request"] * len(given) + [s for _, s in found]
        return Retrieved(request.model_copy(update={"candidates": candidates}), sources)

    def _from_interests(self, request: RankingRequest, state: UserInterests, k: int,
                        skip: set[str]) -> list[tuple[str, str]]:
        interests = state.interests
        assert interests is not None
        now = request.ts
        rng = np.random.default_rng(zlib.crc32(request.request_id.encode()))
        picked = sample_medoids(interests, now, rng)
        hits = self._index().search(retrieval_queries(interests, picked), k, exclude=skip)
        merged = merge_retrieved(hits, interests.importance_at(now)[picked].tolist(), k)
        return [(item, f"interest:{int(picked[query])}") for item, query in merged]

    async def _trending_items(self) -> list[str]:
        fetched_at, items = self._trending
        if time.monotonic() - fetched_at > TRENDING_CACHE_S:
            value = (await self._store.get_states(STATE_KIND, [STATE_KEY]))[0]
            index = self._index()
            items = [i for i in unpack_top(value) if i in index] or unpack_top(value)
            self._trending = (time.monotonic(), items)
        return items
