"""`streamrank bench faults`: the closed-form comparison that turns stored counters into events
lost and double counted, the recovery figures, and a tiny run of every section."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from bench.faults import parse_sections, run_faults_bench
from bench.faults.closed_form import TOLERANCE, closed_form, compare, tally
from bench.faults.config import FaultsConfig
from bench.faults.event_stream import catch_up_per_s, recovery_s
from models.features import CHANNEL_INDEX, EntityState, event_deltas, merge
from schemas import Event
from stream.settings import Settings

TS = 1_790_000_000.0


def event(k: int, user: str, item: str, kind: str = "impression") -> Event:
    return Event(ts=TS, event_id=f"e{k}", user_id=user, item_id=item,
                 type=kind)  # type: ignore[arg-type]


EVENTS = [event(0, "u1", "i1"), event(1, "u1", "i1", "click"), event(2, "u1", "i2"),
          event(3, "u2", "i1", "like"), event(4, "u2", "i2"), event(5, "u3", "i3", "hide")]


def stored_after(batches: list[list[Event]]) -> tuple[dict[str, bytes], dict[str, bytes]]:
    """What a store holds after applying ``batches`` in order, each merged as the worker does."""
    users: dict[str, bytes] = {}
    items: dict[str, bytes] = {}
    for batch in batches:
        for table, deltas in zip((users, items), event_deltas(batch), strict=True):
            for key, delta in deltas.items():
                old = table.get(key)
                table[key] = delta.pack() if old is None else merge(
                    EntityState.unpack(old), delta).pack()
    return users, items


def test_each_event_once_in_any_batches_matches_the_closed_form() -> None:
    expected = closed_form(EVENTS, ["i1"])
    users, items = stored_after([EVENTS[:2], EVENTS[2:5], EVENTS[5:]])
    report = compare(expected, users, items, {"i1": b"meta"}, TS)
    assert report["events_lost"] == report["events_double_counted"] == 0
    assert report["users"]["entities"] == 3 and report["items"]["entities"] == 3
    assert report["users"]["max_residual"] == 0.0
    assert report["item_upserts_missing"] == 0


def test_a_replayed_batch_counts_its_events_twice_and_a_skipped_one_loses_them() -> None:
    expected = closed_form(EVENTS, [])
    replayed = stored_after([EVENTS[:2], EVENTS[:2], EVENTS[2:]])
    report = compare(expected, *replayed, {}, TS)
    assert (report["events_lost"], report["events_double_counted"]) == (0, 2)
    assert report["users"]["entities_mismatched"] == 1  # u1: both events were its own
    assert report["items"]["entities_mismatched"] == 1  # i1 too

    skipped = stored_after([EVENTS[:3], EVENTS[4:]])  # e3: u2 liked i1
    report = compare(expected, *skipped, {}, TS)
    assert (report["events_lost"], report["events_double_counted"]) == (1, 0)


def test_an_entity_missing_or_unexpected_is_all_lost_or_all_double() -> None:
    expected = closed_form(EVENTS, [])
    users, _ = stored_after([EVENTS])
    missing = {k: v for k, v in users.items() if k != "u1"}
    assert tally(expected.users, missing, TS).events_lost == 3
    extra = users | stored_after([[event(9, "u9", "i9"), event(10, "u9", "i9")]])[0]
    assert tally(expected.users, extra, TS).events_double_counted == 2


def test_a_fraction_of_an_event_is_flagged_inexact_not_counted() -> None:
    expected = closed_form(EVENTS, [])
    users, _ = stored_after([EVENTS])
    state = EntityState.unpack(users["u3"])
    state.counters[CHANNEL_INDEX["hide"]] += 0.4
    result = tally(expected.users, users | {"u3": state.pack()}, TS)
    assert result.events_lost == result.events_double_counted == 0
    assert result.inexact == 1 and result.max_residual > TOLERANCE


def test_a_missing_upsert_is_reported() -> None:
    expected = closed_form(EVENTS, ["i1", "i2"])
    users, items = stored_after([EVENTS])
    assert compare(expected, users, items, {"i1": b"meta", "i2": None}, TS)[
        "item_upserts_missing"] == 1


def test_recovery_is_counted_only_within_the_next_life() -> None:
    # t, committed, produced, waiting: killed at 1.0 and 3.0; back at the edge at 2.5 only.
    samples = [(0.5, 10, 10, 0), (1.5, 10, 30, 20), (2.0, 20, 40, 20), (2.5, 40, 40, 0),
               (3.5, 40, 60, 20), (4.5, 40, 80, 40)]
    assert recovery_s(samples, [1.0, 3.0], backlog=5) == [1.5]
    # Only the intervals that start behind and move count: 10 events in 0.5 s, 20 in 0.5 s.
    assert catch_up_per_s(samples, backlog=5) == 30.0


def test_sections_are_parsed_and_checked() -> None:
    assert parse_sections("scoring, features") == ("scoring", "features")
    for bad in ("", "features,nope"):
        with pytest.raises(ValueError, match="--sections must be"):
            parse_sections(bad)


def test_cli_refuses_an_unknown_section_with_a_clear_error() -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("STREAMRANK_")}
    result = subprocess.run(
        [sys.executable, "-m", "stream.cli", "bench", "faults", "--sections", "features,x"],
        env=env, capture_output=True, text=True, timeout=60)
    assert result.returncode == 2
    assert "error: --sections must be a comma-separated subset" in result.stderr
    assert "Traceback" not in result.stderr


TINY = FaultsConfig(events=2000, kills=1, scoring_kills=1, outage_s=2.0, users=200, items=100,
                    item_upserts=20, outage_lead_s=2.0, uptime_s=(0.1, 0.5),
                    request_rate=50.0, catch_up_timeout_s=60.0)


@pytest.mark.xdist_group("cpu-heavy")
@pytest.mark.integration
@pytest.mark.timeout(180)
def test_tiny_fault_run_finds_every_event_once_and_every_request_answered() -> None:
    report = run_faults_bench(Settings(), ("features", "redis_outage", "scoring"), TINY)

    features, outage, scoring = report["features"], report["redis_outage"], report["scoring"]
    assert features["kills"] == 1 and scoring["kills"] == 1
    for section in (features, outage):
        assert section["caught_up"]
        assert section["events"] == TINY.events
        assert section["users"]["entities"] > 0 and section["items"]["entities"] > 0
        assert section["events_lost"] == section["events_double_counted"] == 0
        assert section["item_upserts_missing"] == 0
    assert outage["outage_s"] >= TINY.outage_s
    assert isinstance(outage["health_503_seen"], bool)
    # Too few events to time the raw bound (it can arrive in one fetch); the pace is known.
    assert features["production_per_s"] > 0 and "throughput_ratio" in features
    assert features["recovery_s"]["kills_recovered"] <= features["kills"]
    assert scoring["requests"] > 0
    assert scoring["requests_unanswered"] == 0
    assert (scoring["requests_answered"] + scoring["requests_expired"]
            == scoring["requests"])
    assert report["bar_met"] == (not report["bar_failures"])
