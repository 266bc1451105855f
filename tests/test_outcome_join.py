"""The prediction-outcome join on event time: labels, windows, late events, replays."""

from __future__ import annotations

import orjson
import pytest

from schemas import (
    AdDecision,
    Event,
    FeatureLog,
    Outcome,
    RankedItem,
    RankingResult,
    Rejection,
    decode,
)
from stream.outcomes.join import PartitionJoin, outcome_key

T0 = 1_790_000_000.0
WINDOW = 60.0


def ranking(request_id: str, ts: float = T0, ads: bool = True) -> RankingResult:
    return RankingResult(
        ts=ts, request_id=request_id, user_id="u1",
        items=[RankedItem(item_id=f"i{k}", value=0.5 - k / 10, probs={"click": 0.1 * (k + 1)})
               for k in range(3)],
        ads=[AdDecision(decision_id=f"{request_id}/1", slot=1, ad_id="a7", propensity=0.5,
                        policy="linucb", policy_version="bandit-3")] if ads else [],
        model_version="m1", stats_version="bn1", latency_ms=1.0)


def event(event_id: str, type_: str, item_id: str, ts: float, request_id: str | None = "r1",
          position: int | None = None, **fields: float) -> Event:
    return Event.model_validate({"event_id": event_id, "user_id": "u1", "item_id": item_id,
                                 "type": type_, "ts": ts, "request_id": request_id,
                                 "position": position, **fields})


def tick(ts: float) -> Event:
    """An event of no request: it only moves the watermark."""
    return event(f"tick{ts}", "impression", "i9", ts, request_id=None)


def test_a_ranking_closes_once_with_each_item_and_slot_labelled() -> None:
    join = PartitionJoin(WINDOW)
    join.add_ranking(ranking("r1"), offset=0)
    for offset, e in enumerate([
            event("e1", "impression", "i0", T0 + 1, position=0),
            event("e2", "ad_impression", "a7", T0 + 1, position=1),
            event("e3", "click", "i1", T0 + 2, position=2),
            event("e4", "dwell", "i1", T0 + 3, position=2, dwell_s=12.5),
            event("e5", "hide", "i2", T0 + 4, position=3),
            event("e6", "ad_click", "a7", T0 + 5, position=1),
            event("e7", "conversion", "a7", T0 + 6, position=1, revenue=2.5)]):
        join.add_event(e, offset)
    assert join.close() == []  # the window is open
    join.add_event(tick(T0 + WINDOW), 9)
    outcomes = join.close()
    assert [(o.kind, o.item_id, o.position, o.seq) for o in outcomes] == [
        ("item", "i0", 0, 0), ("item", "i1", 1, 1), ("item", "i2", 2, 2), ("ad", "a7", 1, 3)]
    labels = [o.item_labels for o in outcomes[:3]]
    assert [(lab.click, lab.hide, lab.dwell_s) for lab in labels if lab] == [
        (False, False, 0.0), (True, False, 12.5), (False, True, 0.0)]
    assert outcomes[1].probs == {"click": 0.2} and outcomes[1].model_version == "m1"
    ad = outcomes[3].ad_labels
    assert ad is not None
    assert (ad.impression, ad.click, ad.revenue, ad.engagements_after, ad.session_ended) == (
        True, True, 2.5, 1, False)
    assert outcomes[3].propensity == 0.5
    assert join.close() == []  # emitted once


def test_a_late_event_is_counted_and_not_emitted() -> None:
    join = PartitionJoin(WINDOW)
    join.add_ranking(ranking("r1"), offset=0)
    join.add_event(tick(T0 + WINDOW + 1), 0)
    [first, *_] = join.close()
    assert first.item_labels is not None and not first.item_labels.click
    join.add_event(event("e1", "click", "i0", T0 + 5, position=0), 1)  # in window, read late
    assert join.close() == []
    assert join.counts.late == 1


def test_events_read_before_their_ranking_are_joined() -> None:
    join = PartitionJoin(WINDOW)
    join.add_event(event("e1", "click", "i2", T0 + 1, position=2), 0)
    assert join.holds() == {"events": 0}
    join.add_ranking(ranking("r1", ads=False), offset=5)
    assert join.holds() == {"rankings": 5, "events": 0}  # the event is part of its state
    join.add_event(event("e2", "like", "i1", T0 + 2, position=1), 1)
    assert join.holds() == {"rankings": 5, "events": 0}
    join.add_event(tick(T0 + WINDOW), 1)
    outcomes = join.close()
    assert [o.item_labels.click for o in outcomes if o.item_labels] == [False, False, True]
    assert [o.item_labels.like for o in outcomes if o.item_labels] == [False, True, False]
    assert join.holds() == {}


def test_an_event_whose_ranking_never_comes_is_dropped_after_the_window() -> None:
    join = PartitionJoin(WINDOW)
    join.add_event(event("e1", "click", "i2", T0, request_id="lost"), 0)
    join.add_event(tick(T0 + WINDOW), 1)
    assert join.close() == []
    assert join.counts.unmatched == 1 and join.holds() == {}


def test_a_replay_after_a_restart_emits_nothing_twice() -> None:
    records = [(ranking("r1"), 0), (ranking("r2", ts=T0 + 10), 1),
               (event("e1", "click", "i0", T0 + 1, position=0), 0),
               (tick(T0 + WINDOW + 5), 1), (tick(T0 + WINDOW + 30), 2)]
    first = PartitionJoin(WINDOW)
    emitted = []
    for record, offset in records[:4]:
        (first.add_ranking if isinstance(record, RankingResult) else first.add_event)(
            record, offset)  # type: ignore[arg-type]
        emitted += first.close()
    assert {o.request_id for o in emitted} == {"r1"}
    # A crash after the first two outcomes of r1 went out: the new worker reads it all again.
    emitted = emitted[:2]
    again = PartitionJoin(WINDOW)
    again.suppress_through(outcome_key(emitted[1]))
    for record, offset in records:
        (again.add_ranking if isinstance(record, RankingResult) else again.add_event)(
            record, offset)  # type: ignore[arg-type]
        emitted += again.close()
    keys = [outcome_key(o) for o in emitted]
    assert len(keys) == len(set(keys)) == 8  # r1 and r2: 3 items and one slot each
    assert keys[2:4] == sorted(keys[2:4])


def test_items_carry_the_feature_rows_they_were_scored_from() -> None:
    join = PartitionJoin(WINDOW)
    log = FeatureLog(ts=T0, request_id="r1", user_id="u1", model_version="m1",
                     feature_names=["a", "b"], item_ids=["i2", "i0"],
                     rows=[[0.5, 1.5], [2.0, -1.0]])
    join.add_feature_log(log, offset=3)  # before its ranking: it waits
    join.add_ranking(ranking("r1"), offset=7)
    assert join.holds() == {"rankings": 7, "feature-log": 3}
    join.add_event(tick(T0 + WINDOW), 0)
    outcomes = join.close()
    assert [(o.item_id, o.features) for o in outcomes] == [
        ("i0", [2.0, -1.0]), ("i1", None), ("i2", [0.5, 1.5]), ("a7", None)]
    assert outcomes[0].feature_names == ["a", "b"] and outcomes[1].feature_names is None


def test_hostile_inputs_are_refused_at_decoding_or_join_without_failing() -> None:
    """A ranking whose outcomes could not be valid never enters the join; sums of valid
    events (two conversions at the Amount cap) still make a valid outcome."""
    bad_slot = ranking("r1").model_dump(mode="json")
    bad_slot["ads"][0]["slot"] = -1
    with pytest.raises(Rejection) as refused:
        decode(orjson.dumps(bad_slot), RankingResult)
    assert refused.value.reason == "invalid_value"
    join = PartitionJoin(WINDOW)
    join.add_ranking(ranking("r1"), offset=0)
    for k in range(2):
        join.add_event(event(f"c{k}", "conversion", "a7", T0 + 1, position=1,
                             revenue=1_000_000.0), k)
    join.add_event(tick(T0 + WINDOW), 2)
    ad = join.close()[-1].ad_labels
    assert ad is not None and ad.revenue == 2_000_000.0


def test_an_outcome_row_must_match_its_columns() -> None:
    outcome = {"ts": T0, "request_id": "r1", "user_id": "u1", "seq": 0, "kind": "item",
               "item_id": "i1", "position": 0, "model_version": "m", "stats_version": "s",
               "window_s": 60.0, "features": [0.5, 1.0], "feature_names": ["a"]}
    with pytest.raises(Rejection):
        decode(orjson.dumps(outcome), Outcome)
    decode(orjson.dumps({**outcome, "feature_names": ["a", "b"]}), Outcome)
