"""The synthetic world a run ranks in: a catalogue and user histories written through the real
store API, and a pool of encoded ranking requests over it."""

from __future__ import annotations

import itertools
import time
from collections.abc import Iterator
from dataclasses import dataclass, field

import numpy as np

from bench.scoring.config import RESULT_N, ScoringBenchConfig
from models.features import ItemMeta
from schemas import Event, RankingRequest, encode
from stream.features.store import EventBatch
from stream.features.watermarks import Origin
from stream.runtime.environment import open_store
from stream.settings import Settings

ENGAGEMENT_MIX = {"impression": 0.70, "click": 0.12, "dwell": 0.08, "like": 0.05, "hide": 0.03,
                  "share": 0.02}
_PLACEHOLDER = "REQUEST-ID-PLACEHOLDER"


@dataclass(frozen=True)
class Catalogue:
    item_ids: list[str]
    user_ids: list[str]


async def populate_store(settings: Settings, config: ScoringBenchConfig) -> Catalogue:
    """Items (metas with embeddings) and user/item history, written through the store API."""
    assert settings.redis_url is not None
    rng = np.random.default_rng(config.seed)
    now = time.time()
    item_ids = [f"i{k}" for k in range(config.items)]
    user_ids = [f"u{k}" for k in range(config.users)]
    embeddings = rng.standard_normal((config.items, settings.embedding_dim)).astype(np.float32)
    embeddings /= np.linalg.norm(embeddings, axis=1, keepdims=True)
    ages = rng.uniform(0, 30 * 86_400, size=config.items)
    metas = {item_id: ItemMeta(now - ages[k], 0.0, False, embeddings[k]).pack()
             for k, item_id in enumerate(item_ids)}
    types = rng.choice(list(ENGAGEMENT_MIX), size=config.events, p=list(ENGAGEMENT_MIX.values()))
    users = rng.integers(0, config.users, size=config.events)
    items = rng.zipf(1.3, size=config.events) % config.items
    stamps = now - rng.uniform(0, 7 * 86_400, size=config.events)
    events = [
        Event(ts=float(stamps[k]), event_id=f"bench-e{k}", user_id=user_ids[users[k]],
              item_id=item_ids[items[k]], type=str(types[k]),  # type: ignore[arg-type]
              dwell_s=12.5 if types[k] == "dwell" else None)
        for k in range(config.events)
    ]
    store = await open_store(settings)
    try:
        await store.apply(EventBatch(metas=metas))
        for start in range(0, len(events), 5000):
            chunk = events[start:start + 5000]
            applied = await store.apply(EventBatch(
                chunk, [Origin(0, start + k) for k in range(len(chunk))]))
            assert not applied.duplicates, "event ids of a fresh namespace were seen before"
    finally:
        await store.close()
    return Catalogue(item_ids, user_ids)


@dataclass
class Requests:
    """Encoded requests for one candidates size: a pool of bodies built once, each sent under
    a fresh id, so that the load generator does not encode while it paces."""

    candidates: int
    bodies: list[tuple[bytes, bytes]]  # key, encoded RankingRequest with a placeholder id
    tag: str
    _ids: Iterator[int] = field(default_factory=itertools.count)
    _next: Iterator[tuple[bytes, bytes]] | None = None

    @classmethod
    def build(cls, catalogue: Catalogue, candidates: int, rng: np.random.Generator,
              tag: str, pool: int = 256) -> Requests:
        bodies = []
        for _ in range(pool):
            user = catalogue.user_ids[int(rng.integers(len(catalogue.user_ids)))]
            chosen = rng.choice(len(catalogue.item_ids), size=candidates, replace=False)
            request = RankingRequest(ts=time.time(), request_id=_PLACEHOLDER, user_id=user,
                                     candidates=[catalogue.item_ids[i] for i in chosen],
                                     n=RESULT_N)
            bodies.append((user.encode(), encode(request)))
        return cls(candidates, bodies, tag)

    def next(self) -> tuple[str, bytes, bytes]:
        """A fresh request id, the key and the body carrying that id."""
        if self._next is None:
            self._next = itertools.cycle(self.bodies)
        key, body = next(self._next)
        request_id = f"{self.tag}-{next(self._ids)}"
        return request_id, key, body.replace(_PLACEHOLDER.encode(), request_id.encode(), 1)
