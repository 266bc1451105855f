"""One step of the interests role, shared with training's log replay: a batch of engagements
in, each engaged user's interests updated in the store.

A user's update is a function of the stored value and the engagements (each counted once by
time and item), so the same batch applied twice changes nothing.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from models.features import POSITIVE_TYPES, item_meta_features
from models.interests import InterestParams, update_interests
from schemas import Event
from stream.features.store import FeatureStore
from stream.interests.state import STATE, UserInterests

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Updated:
    users: int
    unknown_items: int  # engagements whose item had no embedding in the store yet
    unreadable: int  # stored values of another layout, or damaged: started over


def engaged(event: Event, long_dwell_s: float) -> bool:
    """A click, a like, a share, or a dwell of at least ``long_dwell_s``."""
    return event.type in POSITIVE_TYPES or (
        event.type == "dwell" and (event.dwell_s or 0.0) >= long_dwell_s)


async def update_users(store: FeatureStore, events: Sequence[Event], params: InterestParams,
                       long_dwell_s: float, dim: int) -> Updated:
    by_user: dict[str, list[Event]] = {}
    for event in events:
        if engaged(event, long_dwell_s):
            by_user.setdefault(event.user_id, []).append(event)
    if not by_user:
        return Updated(0, 0, 0)
    users = list(by_user)
    fetched = await store.fetch_many([(u, [e.item_id for e in by_user[u]]) for u in users],
                                     STATE)
    updated: dict[str, bytes] = {}
    unknown = unreadable = 0
    for user, features in zip(users, fetched, strict=True):
        value = features.state
        events_of = by_user[user]
        known = np.array([m is not None for m in features.item_meta], dtype=bool)
        unknown += int((~known).sum())
        if not known.any():
            continue
        _, embeddings = item_meta_features(features.item_meta, 0.0, dim)
        now = max(e.ts for e in events_of)  # event time: a replay computes the same
        try:
            state = UserInterests.from_bytes(value) if value else UserInterests.empty(dim)
        except ValueError as exc:
            log.warning("interests of user %r unreadable (%s); rebuilding them", user, exc)
            unreadable += 1
            state = UserInterests.empty(dim)
        state = state.with_engagements(
            np.array([e.ts for e in events_of])[known], embeddings[known],
            [e.item_id for e, k in zip(events_of, known.tolist(), strict=True) if k],
            params.max_history, now - params.max_age_s)
        interests = update_interests(state.interests, state.ts, state.embeddings, now, params)
        updated[user] = UserInterests(interests, state.ts, state.embeddings,
                                      state.item_ids).to_bytes()
    if updated:
        await store.put_states(STATE, updated)
    return Updated(len(updated), unknown, unreadable)
