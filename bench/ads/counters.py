"""An arm's own feature store, in memory: the decayed counters and engagement history the
serving path would read, fed only by the events of the feeds that arm showed.

An ad policy changes what it learns from (an ad never shown gathers no clicks), so each arm
keeps its own counters. They are the store's: :func:`models.features.event_deltas` over a
micro-batch of events, merged into one packed value per user and per ad with
:func:`models.features.merge`, read back with :func:`entity_features` and
:func:`item_meta_features`. Organic items' counters are not kept: the bench ranks by the
world's truth, so nothing reads them.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Sequence

import numpy as np

from models.ad_context import ad_request, interest_vectors
from models.bandit import AdRequest
from models.features import (
    POSITIVE_TYPES,
    EntityState,
    ItemMeta,
    entity_features,
    event_deltas,
    item_meta_features,
    merge,
)
from models.interests import InterestParams, Interests, update_interests
from models.world import Engagement, World
from schemas import Event

BATCH_REQUESTS = 20  # requests per micro-batch: a request sees the events of earlier batches
HISTORY = 50  # recent positive engagements kept per user, as the feature store keeps them


class Counters:
    def __init__(self, world: World, start_ts: float) -> None:
        self.world = world
        self._users: dict[str, bytes] = {}
        self._ads: dict[str, bytes] = {}
        self._ad_ids = frozenset(world.ad_ids)
        self._item_index = {item_id: i for i, item_id in enumerate(world.item_ids)}
        self._metas = [ItemMeta(start_ts, float(bid), True, embedding).pack()
                       for bid, embedding in zip(world.ad_bids, world.ad_embeddings,
                                                 strict=True)]
        self._history: dict[int, deque[tuple[float, int]]] = {}  # (ts, item), oldest first
        self._interests: dict[int, Interests] = {}
        self._interest_params = InterestParams()
        self._pending: list[Event] = []
        self._requests = 0

    def ad_request(self, user: int, ads: np.ndarray, organic_values: np.ndarray,
                   slots: Sequence[int], ts: float) -> AdRequest:
        """The request the serving path would build from these counters at ``ts``."""
        world = self.world
        user_row = entity_features([self._users.get(world.user_ids[user])], ts)[0]
        ad_ids = [world.ad_ids[a] for a in ads]
        meta_rows, embeddings = item_meta_features([self._metas[a] for a in ads], ts,
                                                   world.config.dim)
        rows = np.concatenate([entity_features([self._ads.get(a) for a in ad_ids], ts),
                               meta_rows], axis=1)
        return ad_request(user_row, self._interest_vectors(user, ts), ad_ids, rows, embeddings,
                          organic_values, slots, world.config.shown)

    def _interest_vectors(self, user: int, ts: float) -> np.ndarray:
        """The user's PinnerSage interests from the engagement history, as the interests role
        keeps them (:func:`models.interests.update_interests`)."""
        engaged = self._history.get(user)
        if not engaged:
            return interest_vectors(None, np.zeros((0, self.world.config.dim)),
                                    self.world.config.dim)
        newest_first = list(reversed(engaged))
        history_ts = np.array([t for t, _ in newest_first])
        history = self.world.item_embeddings[[i for _, i in newest_first]]
        interests = update_interests(self._interests.get(user), history_ts, history, ts,
                                     self._interest_params)
        self._interests[user] = interests
        return interest_vectors(interests, history, self.world.config.dim)

    def record(self, user: int, engagements: Sequence[Engagement], ts: float) -> None:
        """Queue one request's events; every BATCH_REQUESTS requests they are applied."""
        user_id = self.world.user_ids[user]
        self._pending += [Event.model_construct(
            ts=ts, event_id="", user_id=user_id, item_id=e.item_id, type=e.type,  # type: ignore[arg-type]
            position=e.position, dwell_s=e.dwell_s, revenue=e.revenue) for e in engagements]
        engaged = [e.item_id for e in engagements if e.type in POSITIVE_TYPES]
        if engaged:
            history = self._history.setdefault(user, deque(maxlen=HISTORY))
            history.extend((ts, self._item_index[item_id]) for item_id in engaged)
        self._requests += 1
        if self._requests % BATCH_REQUESTS == 0:
            self.flush()

    def flush(self) -> None:
        if not self._pending:
            return
        users, items = event_deltas(self._pending)
        self._pending = []
        _merge_into(self._users, users)
        _merge_into(self._ads, {k: v for k, v in items.items() if k in self._ad_ids})


def _merge_into(store: dict[str, bytes], deltas: dict[str, EntityState]) -> None:
    for key, delta in deltas.items():
        stored = store.get(key)
        store[key] = (delta if stored is None else merge(EntityState.unpack(stored), delta)
                      ).pack()
