"""Where ``streamrank demo --scenario`` puts the change on the world's clock, and what it
reports, without running the demo."""

from __future__ import annotations

import re

import pytest

from models.scenarios import load_scenario
from models.world import Shift
from stream.demo import ScenarioPlan


def test_the_change_lands_after_the_warm_ups_simulated_seconds() -> None:
    plan = ScenarioPlan.place(load_scenario("label_rate"), warmup_s=240.0, rate=150.0,
                              change_after_served_s=15.0)
    # The simulator's world clock has run 36,000 warm-up requests / 150 per s when serving starts.
    assert plan.change_at_s == 255.0
    assert plan.shifts == (Shift(255.0, "label_rate", -0.5),)
    # A warm-up is at least 4 requests, and its clock counts those, not --warmup.
    short = ScenarioPlan.place(load_scenario("covariate"), warmup_s=1.0, rate=0.5,
                               change_after_served_s=0.0)
    assert short.change_at_s == 8.0


def test_the_report_names_the_change_and_what_should_alert() -> None:
    plan = ScenarioPlan.place(load_scenario("stale_calibration"), 240.0, 150.0, 15.0)
    assert plan.report(2250, 1_790_000_000.0) == {
        "name": "stale_calibration", "change_at_s": 255.0, "change_after_served_s": 15.0,
        "change_request": 2250, "change_ts": 1_790_000_000.0,
        "signals": ["calibration.click", "label_rate.click"],
        "incidental": ["label_rate.*", "calibration.*", "feature.*click_rate*", "score_mean.*",
                       "logloss.*"],
        "shifts": [{"at_s": 255.0, "kind": "calibration", "magnitude": 0.7,
                    "duration_s": 10.0}]}


def test_a_plug_in_whose_shifts_fail_is_a_value_error() -> None:
    class Broken:
        name, signals, incidental = "broken", ("x.y",), ()

        def shifts(self, change_at_s: float) -> tuple[Shift, ...]:
            return (Shift(change_at_s, "device_mix", 2.0),)

    expected = re.escape("'broken': shifts() failed: device_mix magnitude")
    with pytest.raises(ValueError, match=expected):
        ScenarioPlan.place(Broken(), 10.0, 10.0, 1.0)
