"""What /health says about one consume loop, on pure state."""

from __future__ import annotations

import time

from stream.runtime.health import STALL_AFTER_S, ConsumerHealth


def test_a_loop_is_ready_only_while_it_polls_and_progresses() -> None:
    health = ConsumerHealth("scoring")
    assert not health.ready and health.report()["state"] == "starting"
    health.polled({"t/0": 0}, got_records=False)
    assert health.ready
    health.retrying("poll: KafkaConnectionError: down")
    health.polled({"t/0": 0}, got_records=False)  # a poll alone does not end a retry
    assert not health.ready and health.report()["reason"].startswith("poll:")
    health.recovered()
    assert health.ready


def test_records_waiting_and_none_read_for_long_is_a_stall() -> None:
    health = ConsumerHealth("scoring")
    health.polled({"t/0": 8000}, got_records=True)
    health.polled({"t/0": 8000}, got_records=False)
    assert health.ready  # just behind, for now
    assert health.last_progress is not None
    health.last_progress -= STALL_AFTER_S + 1
    report = health.report()
    assert not health.ready
    assert report["state"] == "stalled"
    assert report["reason"].startswith("8000 records behind and nothing read for")
    health.polled({"t/0": 0}, got_records=False)  # caught up: nothing is waiting
    assert health.ready


def test_a_loop_that_stops_polling_is_a_stall() -> None:
    health = ConsumerHealth("features")
    health.polled({}, got_records=False)
    assert health.last_poll is not None
    health.last_poll = time.monotonic() - STALL_AFTER_S - 1
    assert not health.ready and health.report()["reason"].startswith("no poll for")
    health.failed("the store refused a command")
    assert health.report() | {"seconds_since_poll": None} == {
        "state": "failed", "reason": "the store refused a command", "seconds_since_poll": None,
        "lag": {}, "lag_total": 0}
