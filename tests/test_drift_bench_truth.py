"""The drift bench's scoring against a known change, on hand-made alerts and series."""

from __future__ import annotations

import numpy as np

from bench.drift.truth import Clock, Series, score_scenario
from schemas import DriftAlert
from schemas.examples import EXAMPLES


def alert(signal: str, ts: float) -> DriftAlert:
    # A copy: the clock here starts at 0, which real alerts' timestamps never do.
    return DriftAlert.model_validate(EXAMPLES["drift-alerts"]).model_copy(
        update={"signal": signal, "ts": ts, "alert_id": f"{signal}-{ts}"})


def test_delay_misses_alerts_per_change_and_false_alarms_follow_the_change() -> None:
    clock = Clock(np.arange(1000.0))  # one served request a second
    rng = np.random.default_rng(0)
    step = np.concatenate([rng.random(5000) < 0.3, rng.random(5000) < 0.1]).astype(float)
    series = {"label_rate.click": Series(step, np.linspace(0, 999, 10_000)),
              "feature.sim_max": Series(np.zeros(100), np.linspace(0, 999, 100))}
    alerts = [alert("feature.sim_max", 100.0),  # before the change: false
              alert("label_rate.click", 520.0), alert("label_rate.click", 530.0),
              alert("score_mean.click", 560.0),  # incidental
              alert("feature.device_mobile", 600.0)]  # unrelated: false
    scored = score_scenario(alerts, series, clock, change_ts=500.0,
                            expected=("label_rate.click",), incidental=("score_mean.*",))
    assert scored["delay"] == 21  # requests 500..520
    assert scored["missed"] == 0
    assert scored["alerts_per_change"] == 2.0
    assert scored["false_alarms"] == 2
    assert scored["false_alarm_signals"] == ["feature.device_mobile", "feature.sim_max"]
    alone = scored["adwin_alone_delay"]
    assert isinstance(alone, int) and 0 < alone < 100  # ADWIN finds 0.3 -> 0.1 quickly


def test_no_alert_on_an_expected_signal_after_the_change_is_a_miss() -> None:
    clock = Clock(np.arange(100.0))
    scored = score_scenario([alert("label_rate.click", 10.0)], {}, clock, change_ts=50.0,
                            expected=("label_rate.click",), incidental=())
    assert scored["missed"] == 1 and scored["delay"] is None and scored["false_alarms"] == 1
