"""What the feature store must hold once every event has been applied exactly once, and how far
a stored state is from it, counted in events.

The closed form is the pure function the store builds every write from,
:func:`models.features.event_deltas`, run once over all the events: merging is an exact sum, so
one batch of everything equals any sequence of batches that applies each event once.

Counters decay, so a raw difference depends on time. Both sides are decayed to the same instant
``at`` (:meth:`EntityState.decayed_to`), and the difference on an event type's count channel is
divided by what one event adds there at ``at``: exactly 1 when the event's ``ts`` is ``at``. The
fault bench gives every event that one ``ts``, so each count is a whole number of events, exact
in float32 up to 2**24. A difference is rounded to whole events; ``max_residual`` says how far
any was from a whole number, and ``inexact`` counts the entities where that exceeds
:data:`TOLERANCE` (something other than whole events moved, e.g. a wrong timestamp).

Counters cannot tell one lost click and one doubled click of the same entity apart (they
cancel); the user and item tallies see different mixes, so a pair that cancels in one shows in
the other. A lost or doubled event moves one user and one item: the bench reports the larger of
the two tallies.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from models.features import CHANNEL_INDEX, HALF_LIVES_S, EntityState, event_deltas
from schemas import EVENT_TYPES, Event

COUNT_CHANNELS = np.array([CHANNEL_INDEX[kind] for kind in EVENT_TYPES])
TOLERANCE = 0.01  # events; float32 sums of whole counts below 2**24 are exact


@dataclass(frozen=True)
class ClosedForm:
    """Packed states of users and items after each event once, and the upserted items."""

    users: dict[str, bytes]
    items: dict[str, bytes]
    upserted: frozenset[str]


def closed_form(events: Sequence[Event], upserted: Sequence[str]) -> ClosedForm:
    users, items = event_deltas(events)
    return ClosedForm({k: v.pack() for k, v in users.items()},
                      {k: v.pack() for k, v in items.items()}, frozenset(upserted))


@dataclass(frozen=True)
class Tally:
    """One kind of entity (users or items) compared with its closed form."""

    entities: int
    events_lost: int
    events_double_counted: int
    entities_mismatched: int
    inexact: int
    max_residual: float

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def tally(expected: Mapping[str, bytes], stored: Mapping[str, bytes | None], at: float
          ) -> Tally:
    """Stored against expected count channels at ``at``, assuming every event's ``ts`` is
    ``at``; an entity missing on either side counts as all zeros there."""
    lost = doubled = mismatched = inexact = 0
    max_residual = 0.0
    for key in expected.keys() | stored.keys():
        want, got = _counts(expected.get(key), at), _counts(stored.get(key), at)
        difference = got - want  # [channels, half-lives]: equal columns when ts == at
        events = np.rint(difference)
        residual = float(np.max(np.abs(difference - events), initial=0.0))
        max_residual = max(max_residual, residual)
        inexact += residual > TOLERANCE
        per_channel = events[:, -1]
        lost += int(-per_channel[per_channel < 0].sum())
        doubled += int(per_channel[per_channel > 0].sum())
        mismatched += bool(np.any(per_channel != 0))
    return Tally(len(expected), lost, doubled, mismatched, inexact, round(max_residual, 6))


def _counts(value: bytes | None, at: float) -> np.ndarray:
    if value is None:
        return np.zeros((len(COUNT_CHANNELS), len(HALF_LIVES_S)))
    return EntityState.unpack(value).decayed_to(at)[COUNT_CHANNELS]


def compare(expected: ClosedForm, users: Mapping[str, bytes | None],
            items: Mapping[str, bytes | None], metas: Mapping[str, bytes | None],
            at: float) -> dict[str, Any]:
    """The figures of a comparison: events lost and double counted (the larger of the user and
    item tallies), each tally, and upserted items whose facts are missing."""
    by_users, by_items = tally(expected.users, users, at), tally(expected.items, items, at)
    return {
        "events_lost": max(by_users.events_lost, by_items.events_lost),
        "events_double_counted": max(by_users.events_double_counted,
                                     by_items.events_double_counted),
        "users": by_users.as_dict(),
        "items": by_items.as_dict(),
        "item_upserts": len(expected.upserted),
        "item_upserts_missing": sum(metas.get(i) is None for i in expected.upserted),
    }
