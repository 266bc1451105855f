"""The online feature store: Redis in production, in memory by default, one interface.

Each entity is one packed value (see :mod:`models.features`), so a whole candidate list comes
back in one read. A micro-batch of events is applied exactly once:

1. **claim**: each event id is remembered with the origin (partition, offset) it was first read
   at. An id already remembered at another origin is a duplicate that the producer sent, and is
   dropped; the same record read again (a replay) is not a duplicate. So the verdict is the same
   however often a batch is replayed.
2. **write**: the remaining events are combined into one delta per user and per item, each
   written together with its offset marks (:mod:`stream.features.watermarks`): a replayed delta
   is skipped, and a half-replayed one is rebuilt from the events above the marks.
"""

from __future__ import annotations

import time
from abc import ABC, abstractmethod
from collections import deque
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import NamedTuple

from models.features import (
    POSITIVE_TYPES,
    EntityState,
    PackedDeltas,
    engagement_history,
    history_entry,
    merge,
    packed_event_deltas,
)
from schemas import Event
from stream.features.watermarks import (
    Marks,
    Origin,
    Ranges,
    Verdict,
    above,
    advanced,
    batch_ranges,
    judge,
)


@dataclass
class EventBatch:
    """What one micro-batch applies: events with the place each was read, and item facts."""

    events: list[Event] = field(default_factory=list)
    origins: list[Origin] = field(default_factory=list)
    metas: dict[str, bytes] = field(default_factory=dict)


class EntityWrite(NamedTuple):  # a tuple: a batch makes ~15k of them
    entity_id: str
    delta: bytes  # a packed EntityState
    ranges: Ranges
    events: int  # how many events the delta holds
    history: tuple[bytes, ...] = ()  # users: packed engagement entries, oldest first


@dataclass(frozen=True)
class Conflict:
    """A write the store refused because part of its delta is already applied."""

    kind: str  # "user" or "item"
    entity_id: str
    marks: Marks


@dataclass
class Written:
    """What a write round did: the entities it refused, and those it found applied before."""

    conflicts: list[Conflict]
    replayed: list[str]  # ids of users whose delta was in the store already


@dataclass(frozen=True)
class Applied:
    events: int  # events applied now
    replayed: int  # events skipped because the store held them already (a replay)
    duplicates: list[str]  # ids of events dropped as duplicates sent by a producer


@dataclass(frozen=True)
class FetchedFeatures:
    user: bytes | None
    items: list[bytes | None]
    item_meta: list[bytes | None]
    history: list[bytes]  # packed engagement entries, newest first
    state: bytes | None = None  # the user's state of the kind asked for, if any


Lookup = tuple[str, Sequence[str]]  # user id, candidate item ids
Deltas = tuple[PackedDeltas, PackedDeltas]  # of users, of items


class FeatureStore(ABC):
    """Interface shared by the Redis and in-memory stores; the exactly-once steps live here."""

    description: str

    async def apply(self, batch: EventBatch, deltas: Deltas | None = None) -> Applied:
        """Apply ``batch`` exactly once, however often it (or an overlapping batch) is replayed.

        ``deltas``: the batch's :func:`packed_event_deltas`, when built ahead: they need no
        store, so the features role builds batch k+1's while batch k is applied.
        """
        history_items = [e.item_id for e in batch.events if e.type in POSITIVE_TYPES]
        duplicates, metas = await self._claim(batch, history_items)
        if batch.metas:
            await self._put_metas(batch.metas)
        metas = {**metas, **batch.metas}
        kept = [k for k in range(len(batch.events)) if k not in duplicates]
        events = [batch.events[k] for k in kept]
        origins = [batch.origins[k] for k in kept]
        ranges = batch_ranges(origins)
        users, items = entity_writes(events, ranges, metas,
                                     None if duplicates else deltas)
        replayed = 0
        while users or items:
            written = await self._write(users, items)
            sizes = {w.entity_id: w.events for w in users}
            replayed += sum(sizes[user_id] for user_id in written.replayed)
            rebuilt = [_rebuilt(c, events, origins, ranges, metas) for c in written.conflicts]
            users = [w for kind, w in rebuilt if kind == "user" and w.events]
            items = [w for kind, w in rebuilt if kind == "item" and w.events]
            replayed += sum(sizes[w.entity_id] - w.events for kind, w in rebuilt
                            if kind == "user")
        return Applied(len(kept) - replayed, replayed,
                       [batch.events[k].event_id for k in sorted(duplicates)])

    @abstractmethod
    async def _claim(self, batch: EventBatch, history_items: Sequence[str]
                     ) -> tuple[set[int], dict[str, bytes]]:
        """Indices of duplicate events, and the stored metas of ``history_items``."""

    @abstractmethod
    async def _put_metas(self, metas: Mapping[str, bytes]) -> None:
        """Replace item facts (idempotent, so replays need no marks)."""

    @abstractmethod
    async def _write(self, users: Sequence[EntityWrite], items: Sequence[EntityWrite]
                     ) -> Written:
        """Merge fresh deltas, skip applied ones, and report those and the conflicting ones."""

    @abstractmethod
    async def fetch_many(self, lookups: Sequence[Lookup], state_kind: str | None = None
                         ) -> list[FetchedFeatures]:
        """Everything several requests need, in one round trip: with ``state_kind``, each
        user's state of that kind too (a second round trip would cost the serving path as
        much Python again as the first)."""

    async def fetch(self, user_id: str, item_ids: Sequence[str]) -> FetchedFeatures:
        return (await self.fetch_many([(user_id, item_ids)]))[0]

    @abstractmethod
    async def get_states(self, kind: str, ids: Sequence[str]) -> list[bytes | None]:
        """Other roles' packed per-entity state (``kind``: e.g. ``"interests"``), by id."""

    @abstractmethod
    async def put_states(self, kind: str, values: Mapping[str, bytes]) -> None:
        """Write other roles' packed per-entity state; it expires with the features' TTL."""

    @abstractmethod
    async def counts(self) -> dict[str, int]:
        """Number of users and items that have features."""

    async def close(self) -> None:
        return None


def entity_writes(events: Sequence[Event], ranges: Ranges, metas: Mapping[str, bytes],
                  deltas: Deltas | None = None) -> tuple[list[EntityWrite], list[EntityWrite]]:
    """One write per user and per item touched by ``events``, all for offsets ``ranges``."""
    users, items = deltas or packed_event_deltas(events)
    histories: dict[str, list[bytes]] = {}
    for user_id, item_id, ts in engagement_history(events):
        meta = metas.get(item_id)
        if meta is not None:  # an engagement with an item not yet upserted has no embedding
            histories.setdefault(user_id, []).append(history_entry(ts, meta))
    user_events, item_events = users.events.tolist(), items.events.tolist()
    return ([EntityWrite(k, users.value(row), ranges, user_events[row],
                         tuple(histories.get(k, ()))) for row, k in enumerate(users.keys)],
            [EntityWrite(k, items.value(row), ranges, item_events[row])
             for row, k in enumerate(items.keys)])


def _rebuilt(conflict: Conflict, events: Sequence[Event], origins: Sequence[Origin],
             ranges: Ranges, metas: Mapping[str, bytes]) -> tuple[str, EntityWrite]:
    """The conflicting entity's write, from its events above its marks only (it may hold
    none, when the store has all of them already)."""
    attribute = "user_id" if conflict.kind == "user" else "item_id"
    mine = [e for e, o in zip(events, origins, strict=True)
            if getattr(e, attribute) == conflict.entity_id
            and o.offset > conflict.marks.get(o.partition, -1)]
    users, items = entity_writes(mine, above(ranges, conflict.marks), metas)
    written = users if conflict.kind == "user" else items
    empty = EntityWrite(conflict.entity_id, b"", {}, 0)
    return conflict.kind, written[0] if written else empty


class MemoryStore(FeatureStore):
    """The default store: state lives in the worker, so it is rebuilt by a replay from the
    earliest retained offset at start-up (the features role does that)."""

    description = "in-memory"

    def __init__(self, dedup_ttl_s: float, history_length: int) -> None:
        self._dedup_ttl_s = dedup_ttl_s
        self._history_length = history_length
        self._seen: dict[str, tuple[str, float]] = {}  # event id -> origin token, expiry
        self._values: dict[str, dict[str, tuple[bytes, Marks]]] = {"user": {}, "item": {}}
        self._history: dict[str, deque[bytes]] = {}
        self._meta: dict[str, bytes] = {}
        self._states: dict[str, dict[str, bytes]] = {}

    async def _claim(self, batch: EventBatch, history_items: Sequence[str]
                     ) -> tuple[set[int], dict[str, bytes]]:
        now = time.monotonic()
        self._forget_expired(now)
        duplicates = set()
        for index, (event, origin) in enumerate(zip(batch.events, batch.origins, strict=True)):
            token = origin.token()
            seen = self._seen.setdefault(event.event_id, (token, now + self._dedup_ttl_s))
            if seen[0] != token:
                duplicates.add(index)
        return duplicates, {i: self._meta[i] for i in history_items if i in self._meta}

    def _forget_expired(self, now: float) -> None:
        # dicts keep insertion order and expiries are appended in time order: trim from the front.
        while self._seen:
            oldest = next(iter(self._seen))
            if self._seen[oldest][1] > now:
                break
            del self._seen[oldest]

    async def _put_metas(self, metas: Mapping[str, bytes]) -> None:
        self._meta.update(metas)

    async def _write(self, users: Sequence[EntityWrite], items: Sequence[EntityWrite]
                     ) -> Written:
        written = Written([], [])
        for kind, writes in (("user", users), ("item", items)):
            table = self._values[kind]
            for write in writes:
                value, marks = table.get(write.entity_id, (None, {}))
                verdict = judge(marks, write.ranges)
                if verdict is Verdict.CONFLICT:
                    written.conflicts.append(Conflict(kind, write.entity_id, marks))
                elif verdict is Verdict.APPLIED and kind == "user":
                    written.replayed.append(write.entity_id)
                elif verdict is Verdict.FRESH:
                    merged = write.delta if value is None else merge(
                        EntityState.unpack(value), EntityState.unpack(write.delta)).pack()
                    table[write.entity_id] = merged, advanced(marks, write.ranges)
                    if write.history:
                        history = self._history.setdefault(
                            write.entity_id, deque(maxlen=self._history_length))
                        history.extendleft(write.history)
        return written

    async def fetch_many(self, lookups: Sequence[Lookup], state_kind: str | None = None
                         ) -> list[FetchedFeatures]:
        users, items = self._values["user"], self._values["item"]
        states = self._states.get(state_kind, {}) if state_kind is not None else {}
        return [
            FetchedFeatures(
                _value(users.get(user_id)),
                [_value(items.get(i)) for i in item_ids],
                [self._meta.get(i) for i in item_ids],
                list(self._history.get(user_id, ())),
                states.get(user_id),
            )
            for user_id, item_ids in lookups
        ]

    async def get_states(self, kind: str, ids: Sequence[str]) -> list[bytes | None]:
        states = self._states.get(kind, {})
        return [states.get(i) for i in ids]

    async def put_states(self, kind: str, values: Mapping[str, bytes]) -> None:
        self._states.setdefault(kind, {}).update(values)

    async def counts(self) -> dict[str, int]:
        return {"users": len(self._values["user"]),
                "items": len(self._values["item"].keys() | self._meta.keys())}


def _value(entry: tuple[bytes, Marks] | None) -> bytes | None:
    return None if entry is None else entry[0]
