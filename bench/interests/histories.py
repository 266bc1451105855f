"""Engagement histories as the simulator makes them, and the interests the role would hold
after replaying them: the inputs of the interests bench, with no broker.

A history is what the feature store keeps: one entry per click, like or share
(:data:`models.features.POSITIVE_TYPES`), so a liked click counts twice, as it does there.
The feeds are random orders of the world's candidates, as the demo's warm-up serves them: a
served model would already lean on the user's interests and the bench would partly score the
model. The held-out engagement is the next one on an item the user has not engaged before,
since retrieval drops engaged items and a repeat could never be found.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from models.features import POSITIVE_TYPES
from models.interests import InterestParams, Interests, update_interests
from models.world import World

START_TS = 1_700_000_000.0
REQUEST_GAP_S = 3_600.0  # mean time between one user's requests: a history spans days


@dataclass(frozen=True)
class UserHistory:
    user: int
    items: np.ndarray  # int64 indices into the world's items, oldest first
    ts: np.ndarray  # float64 event times, non-decreasing
    held_out: int  # the next engaged item that is not in ``items``


def simulate_histories(world: World, users: Sequence[int], lengths: Sequence[int],
                       rng: np.random.Generator) -> list[UserHistory]:
    """Each user's feeds, one request after another, until ``length`` entries and then the
    next new item; events of a request are a second apart by position, ads placed as the
    simulator places them."""
    index_of = {item_id: row for row, item_id in enumerate(world.item_ids)}
    shown = world.config.shown
    made = []
    for user, length in zip(users, lengths, strict=True):
        items: list[int] = []
        ts: list[float] = []
        held_out, elapsed = -1, 0.0
        while held_out < 0:
            elapsed += float(rng.exponential(REQUEST_GAP_S))
            draw = world.draw_request(rng, elapsed, user=user)
            ranked = rng.permutation(draw.candidates)[:shown]
            ads = {slot: int(rng.choice(draw.ads)) for slot in draw.ad_slots}
            for event in world.play(rng, draw, ranked, ads, elapsed):
                if event.type not in POSITIVE_TYPES:
                    continue
                item = index_of[event.item_id]
                if len(items) < length:
                    items.append(item)
                    ts.append(START_TS + elapsed + event.position)
                elif item not in items:
                    held_out = item
                    break
        made.append(UserHistory(user, np.array(items, np.int64), np.array(ts), held_out))
    return made


def replay(history: UserHistory, embeddings: np.ndarray, params: InterestParams) -> Interests:
    """The interests after every entry in turn, at its event time, as the role folds them in:
    online joins, and a full recluster every ``online_max`` actions."""
    current = None
    for end in range(1, len(history.items) + 1):
        start = max(0, end - params.max_history)  # what the store would still hold
        newest_first = slice(end - 1, start - 1 if start else None, -1)
        current = update_interests(current, history.ts[newest_first],
                                   embeddings[history.items[newest_first]],
                                   now=float(history.ts[end - 1]), params=params)
    if current is None:
        raise ValueError(f"user {history.user} has an empty history")
    return current


def clicked_actions(world: World, user: int, n: int, rng: np.random.Generator
                    ) -> tuple[np.ndarray, np.ndarray]:
    """``n`` engaged items (embeddings, newest first, a minute apart) drawn in proportion to
    the user's true click probability at the top slot: histories of any length for timing."""
    items = np.arange(world.config.n_items)
    click = world.probabilities(user, items, np.zeros_like(items), "mobile", 0.0)["click"]
    chosen = rng.choice(items, size=n, p=click / click.sum())
    ts = START_TS - 60.0 * np.arange(n, dtype=np.float64)
    return ts, world.item_embeddings[chosen]
