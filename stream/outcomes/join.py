"""The prediction-outcome join of one input partition, on event time.

A ranking waits for the events of its request until the watermark passes
``ranking.ts + window_s``; then it closes and yields one :class:`Outcome` per shown item and per
ad slot; an item of a request in the feature log carries the row it was scored from. The inputs
(rankings, events, the feature log) are read independently, so one may run ahead (a consumer
catching up reads a minute of events before the rankings of that minute): the watermark is the
latest event time seen on the input that is *behind*, as in Flink. An input with nothing left
unread holds nothing back: whatever it brings next is newer. Events of a request that closed
already are *late*: counted, never emitted. Events and feature rows that arrive before their
ranking wait for it within the window.

The state only holds what the window needs, and ingesting a record twice changes nothing (a
ranking is kept by request id, an event by event id), so a consumer that reads its partition
again after a failure or a restart rebuilds the same state. :meth:`PartitionJoin.holds` says
from which offsets it must read again to do so.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

from schemas import AdLabels, Event, FeatureLog, ItemLabels, Outcome, RankingResult

INPUTS = ("rankings", "events", "feature-log")
POSITIVE = frozenset({"click", "like", "share"})
AD_EVENTS = frozenset({"ad_impression", "ad_click", "conversion"})

# The order in which a partition's outcomes go out: the window's close time, the request, the
# record's place in it. Emission follows it strictly (see PartitionJoin.close), so "emitted
# through key K" says exactly which outcomes went out.
OutcomeKey = tuple[float, str, int]


def outcome_key(outcome: Outcome) -> OutcomeKey:
    return outcome.ts + outcome.window_s, outcome.request_id, outcome.seq


@dataclass
class _Waiting:
    result: RankingResult
    offset: int  # where the ranking was read
    events: dict[str, Event] = field(default_factory=dict)
    offsets: dict[str, int] = field(default_factory=dict)  # event id -> where it was read
    features: FeatureLog | None = None
    features_offset: int | None = None


@dataclass
class _Early:
    """Events and the feature rows of a request whose ranking has not been read yet."""

    events: dict[str, Event] = field(default_factory=dict)
    offsets: dict[str, int] = field(default_factory=dict)  # event id -> where it was read
    features: FeatureLog | None = None
    features_offset: int | None = None

    def latest(self) -> float:
        times = [e.ts for e in self.events.values()]
        return max([*times, self.features.ts] if self.features else times)


@dataclass
class JoinCounts:
    late: int = 0  # events of a request whose window had closed
    unmatched: int = 0  # events whose ranking never came within the window
    late_rankings: int = 0  # rankings read after their own window had closed


class PartitionJoin:
    def __init__(self, window_s: float) -> None:
        self.window_s = window_s
        self.watermark = -math.inf
        self._latest = dict.fromkeys(INPUTS, -math.inf)  # per input, the latest event time
        self.emitted_through: OutcomeKey | None = None  # see suppress_through
        self.counts = JoinCounts()
        self._waiting: dict[str, _Waiting] = {}
        self._early: dict[str, _Early] = {}
        self._closed: dict[str, float] = {}  # request id -> close time, kept one window more

    def add_ranking(self, result: RankingResult, offset: int) -> None:
        self._latest["rankings"] = max(self._latest["rankings"], result.ts)
        if result.request_id in self._waiting or result.request_id in self._closed:
            return  # read again
        if result.ts + self.window_s <= self.watermark:
            self.counts.late_rankings += 1
            self._closed[result.request_id] = result.ts + self.window_s
            return
        waiting = _Waiting(result, offset)
        early = self._early.pop(result.request_id, None)
        if early is not None:
            waiting.events.update(early.events)
            waiting.offsets.update(early.offsets)
            waiting.features, waiting.features_offset = early.features, early.features_offset
        self._waiting[result.request_id] = waiting

    def add_feature_log(self, log: FeatureLog, offset: int) -> None:
        self._latest["feature-log"] = max(self._latest["feature-log"], log.ts)
        waiting = self._waiting.get(log.request_id)
        if waiting is not None:
            waiting.features, waiting.features_offset = log, offset
        elif log.request_id not in self._closed:
            early = self._early.setdefault(log.request_id, _Early())
            early.features, early.features_offset = log, offset

    def add_event(self, event: Event, offset: int) -> None:
        self._latest["events"] = max(self._latest["events"], event.ts)
        request_id = event.request_id
        if request_id is None:
            return
        waiting = self._waiting.get(request_id)
        if waiting is not None:
            waiting.events[event.event_id] = event
            waiting.offsets.setdefault(event.event_id, offset)
        elif request_id in self._closed:
            self.counts.late += 1
        else:
            early = self._early.setdefault(request_id, _Early())
            early.events[event.event_id] = event
            early.offsets.setdefault(event.event_id, offset)

    def suppress_through(self, key: OutcomeKey | None) -> None:
        """Outcomes at or before ``key`` went out already (before a restart): never again."""
        if key is not None and (self.emitted_through is None or key > self.emitted_through):
            self.emitted_through = key

    def close(self, caught_up: frozenset[str] = frozenset(INPUTS)) -> list[Outcome]:
        """Outcomes of every window the watermark has passed, in key order, less those that
        went out already. ``caught_up``: the inputs with nothing left unread."""
        behind = [self._latest[name] for name in INPUTS if name not in caught_up]
        self.watermark = max(self.watermark, min(behind) if behind
                             else max(self._latest.values()))
        closing = sorted((w for w in self._waiting.values()
                          if w.result.ts + self.window_s <= self.watermark),
                         key=lambda w: (w.result.ts + self.window_s, w.result.request_id))
        outcomes: list[Outcome] = []
        for waiting in closing:
            # Joined before the state changes: should it raise, the ranking is still waiting.
            ranking = joined(waiting.result, list(waiting.events.values()), self.window_s,
                             waiting.features)
            del self._waiting[waiting.result.request_id]
            self._closed[waiting.result.request_id] = waiting.result.ts + self.window_s
            outcomes += [o for o in ranking if self.emitted_through is None
                         or outcome_key(o) > self.emitted_through]
        self._forget()
        return outcomes

    def holds(self) -> dict[str, int]:
        """Per input, the earliest offset the state still holds: reading again from there
        rebuilds it."""
        offsets: dict[str, list[int]] = {
            "rankings": [w.offset for w in self._waiting.values()],
            "events": [o for offsets in (*(w.offsets for w in self._waiting.values()),
                                         *(e.offsets for e in self._early.values()))
                       for o in offsets.values()],
            "feature-log": [o for o in (*(w.features_offset for w in self._waiting.values()),
                                        *(e.features_offset for e in self._early.values()))
                            if o is not None]}
        return {name: min(held) for name, held in offsets.items() if held}

    def _forget(self) -> None:
        """Bound the state by the window: early events whose ranking never came, and the
        closed requests one window after their close (later events are then unmatched)."""
        horizon = self.watermark - self.window_s
        for request_id in [r for r, t in self._closed.items() if t <= horizon]:
            del self._closed[request_id]
        for request_id, early in list(self._early.items()):
            if early.latest() + self.window_s <= self.watermark:
                self.counts.unmatched += len(early.events)
                del self._early[request_id]

    def __len__(self) -> int:
        return len(self._waiting)


def joined(result: RankingResult, events: list[Event], window_s: float,
           features: FeatureLog | None = None) -> list[Outcome]:
    """One outcome per shown item (by rank) and per ad slot, labelled by ``events`` (those of
    the request within the window); items carry their row of ``features`` when given."""
    rows = {} if features is None else dict(zip(features.item_ids, features.rows, strict=True))
    names = None if features is None else features.feature_names
    close = result.ts + window_s
    events = [e for e in events if e.ts <= close]

    def outcome(seq: int, **fields: Any) -> Outcome:
        return Outcome.model_validate({
            "ts": result.ts, "request_id": result.request_id, "user_id": result.user_id,
            "model_version": result.model_version, "stats_version": result.stats_version,
            "window_s": window_s, "seq": seq, **fields})

    outcomes = [outcome(rank, kind="item", item_id=item.item_id, position=rank,
                        probs=item.probs, value=item.value,
                        item_labels=_item_labels(item.item_id, events),
                        features=rows.get(item.item_id),
                        feature_names=names if item.item_id in rows else None)
                for rank, item in enumerate(result.items)]
    contexts = {} if features is None else {a.decision_id: a.context for a in features.ads}
    ad_names = None if features is None else features.ad_feature_names
    outcomes += [outcome(len(result.items) + k, kind="ad", item_id=ad.ad_id, position=ad.slot,
                         propensity=ad.propensity, policy=ad.policy,
                         policy_version=ad.policy_version, decision_id=ad.decision_id,
                         ad_labels=_ad_labels(ad.ad_id, ad.slot, events),
                         features=contexts.get(ad.decision_id),
                         feature_names=ad_names if ad.decision_id in contexts else None)
                 for k, ad in enumerate(result.ads)]
    return outcomes


def _item_labels(item_id: str, events: list[Event]) -> ItemLabels:
    mine = [e for e in events if e.item_id == item_id and e.type not in AD_EVENTS]
    types = {e.type for e in mine}
    return ItemLabels(click="click" in types, like="like" in types, share="share" in types,
                      hide="hide" in types,
                      dwell_s=sum(e.dwell_s or 0.0 for e in mine if e.type == "dwell"))


def _ad_labels(ad_id: str | None, slot: int, events: list[Event]) -> AdLabels:
    """An ad's earnings and the organic engagement below it; for a slot left empty, the
    organic engagement from the slot down: the items an ad there would have pushed down, so
    the two compare (their difference is what the ad cost)."""
    mine = [e for e in events if ad_id is not None and e.item_id == ad_id
            and e.type in AD_EVENTS]
    first = slot + 1 if ad_id is not None else slot
    below = [e for e in events if e.type not in AD_EVENTS and e.position is not None
             and e.position >= first]
    return AdLabels(impression=any(e.type == "ad_impression" for e in mine),
                    click=any(e.type == "ad_click" for e in mine),
                    revenue=sum(e.revenue or 0.0 for e in mine if e.type == "conversion"),
                    engagements_after=sum(e.type in POSITIVE for e in below),
                    session_ended=not below)
