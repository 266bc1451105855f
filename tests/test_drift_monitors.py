"""Drift monitors around River: detections on known steps, their statistics, the gate."""

from __future__ import annotations

import math

import numpy as np
import pytest

from models.drift import AlertGate, Monitor, MonitorSet, Side, effect_size
from schemas import FeatureLog, Outcome
from schemas.examples import EXAMPLES
from stream.drift.signals import from_feature_logs, from_outcomes

ADWIN = {"delta": 0.002, "clock": 32}


def step(before: np.ndarray, after: np.ndarray) -> np.ndarray:
    return np.concatenate([before, after])


def test_adwin_finds_a_gaussian_mean_step_and_reports_both_sides() -> None:
    rng = np.random.default_rng(1)
    series = step(rng.normal(0.0, 1.0, 5000), rng.normal(1.0, 1.0, 2000))
    detections = Monitor("feature.x", "adwin", ADWIN).update(series)
    first = detections[0]
    assert 5000 < first.update < 5200  # DESIGN.md measured ~46 samples for 1 sigma
    assert first.direction == "up"
    assert first.before.mean == pytest.approx(0.0, abs=0.1)
    assert first.after.mean == pytest.approx(1.0, abs=0.35)
    assert first.before.n > 4000 and first.after.n >= 1
    assert first.effect_size > 0.5


def test_adwin_finds_a_bernoulli_rate_step_down() -> None:
    rng = np.random.default_rng(2)
    series = step(rng.random(20_000) < 0.3, rng.random(5000) < 0.1).astype(float)
    first = Monitor("label_rate.click", "adwin", ADWIN).update(series)[0]
    assert 20_000 < first.update < 20_600
    assert first.direction == "down"
    assert first.before.mean == pytest.approx(0.3, abs=0.02)
    # The rate fell to a third: |log(0.1 / 0.3)| = 1.1, critical whatever the noise.
    assert first.effect_size > 0.7


def test_a_stationary_series_raises_nothing() -> None:
    rng = np.random.default_rng(3)
    assert Monitor("feature.x", "adwin", ADWIN).update(rng.normal(0.0, 1.0, 50_000)) == []


def test_feeding_in_pieces_detects_at_the_same_update_as_at_once() -> None:
    rng = np.random.default_rng(4)
    series = step(rng.normal(0.0, 1.0, 3000), rng.normal(-2.0, 1.0, 3000))
    whole = [d.update for d in Monitor("s.x", "adwin", ADWIN).update(series)]
    monitor = Monitor("s.x", "adwin", ADWIN)
    pieces = [d.update for part in np.array_split(series, 37) for d in monitor.update(part)]
    assert whole == pieces and whole


def test_an_array_longer_than_the_history_is_fed_in_chunks() -> None:
    rng = np.random.default_rng(5)
    series = step(rng.normal(0.0, 1.0, 3000), rng.normal(3.0, 1.0, 1000))
    monitor = Monitor("s.x", "adwin", ADWIN, history=1024)
    first = monitor.update(series)[0]
    assert monitor.updates == 4000
    assert 3000 < first.update < 3100
    assert first.before.n + first.after.n == 1024 - 1024 // 4
    assert first.after.mean > 2.5 and abs(first.before.mean) < 0.3


@pytest.mark.parametrize("detector,params", [
    ("page_hinkley", {"threshold": 200.0}),
    ("kswin", {"alpha": 0.0001}),
])
def test_other_river_detectors_can_be_chosen(detector: str, params: dict[str, float]) -> None:
    rng = np.random.default_rng(6)
    series = step(rng.normal(0.0, 1.0, 3000), rng.normal(3.0, 1.0, 1000))
    detections = Monitor("s.x", detector, params).update(series)
    assert detections and detections[0].detector == detector
    assert detections[0].update > 3000 and detections[0].direction == "up"


def test_calibration_reports_prediction_label_and_their_ratio() -> None:
    rng = np.random.default_rng(7)
    predictions = np.full(30_000, 0.2)
    rates = np.where(np.arange(30_000) < 20_000, 0.2, 0.1)  # users click half as much
    labels = (rng.random(30_000) < rates).astype(float)
    monitor = Monitor("calibration.click", "adwin", ADWIN, paired=True)
    first = monitor.update(labels - predictions, predictions, labels)[0]
    assert first.direction == "down" and first.update > 20_000
    assert first.before.calibration_ratio == pytest.approx(1.0, abs=0.05)
    assert first.after.calibration_ratio == pytest.approx(2.0, abs=0.6)
    assert first.after.mean_prediction == pytest.approx(0.2)


def test_effect_size_is_cohens_d_or_the_log_ratio_of_positive_means() -> None:
    before, after = Side(0.0, 1.0, 100), Side(0.5, 1.0, 100)
    assert effect_size(before, after) == pytest.approx(0.5)
    rates = Side(0.1, math.sqrt(0.09), 1000), Side(0.05, math.sqrt(0.0475), 1000)
    assert effect_size(*rates) == pytest.approx(math.log(2))


def test_gate_merges_one_change_and_admits_a_change_back() -> None:
    gate = AlertGate(cooldown_s=600)
    assert gate.admit("label_rate.click", "down", 1000.0)
    assert not gate.admit("label_rate.click", "down", 1300.0)  # the same change
    assert gate.admit("label_rate.click", "up", 1400.0)  # a change back
    assert gate.admit("label_rate.click", "up", 2100.0)  # a cooldown later: a new change
    assert gate.admit("score_mean.click", "down", 1000.0)  # per signal


def test_gate_primed_with_a_sent_alert_refuses_its_replayed_detection() -> None:
    gate = AlertGate(cooldown_s=600)
    gate.remember("calibration.click", "down", 5000.0)
    assert not gate.admit("calibration.click", "down", 4990.0)  # detected a bit earlier
    assert gate.admit("calibration.click", "up", 4990.0)


def test_monitor_set_picks_the_detector_of_the_first_matching_glob() -> None:
    monitors = MonitorSet({"feature.*": "kswin", "*.click": "page_hinkley"},
                          {"kswin": {"alpha": 0.001}})
    assert monitors.detector_for("feature.sim_max") == "kswin"
    assert monitors.detector_for("label_rate.click") == "page_hinkley"
    assert monitors.detector_for("label_rate.like") == "adwin"
    monitors.update("feature.sim_max", np.zeros(10))
    assert monitors.monitors["feature.sim_max"].detector.alpha == 0.001  # type: ignore[attr-defined]


def test_outcome_signals_follow_their_closed_form() -> None:
    base = EXAMPLES["outcomes"]
    clicked = Outcome.model_validate({**base, "probs": {"click": 0.2, "like": 0.1,
                                                        "share": 0.1, "hide": 0.1}})
    ignored = Outcome.model_validate({**base, "seq": 1, "probs": {"click": 0.4},
                                      "item_labels": {"click": False}})
    ad = Outcome.model_validate({**base, "seq": 2, "kind": "ad", "item_labels": None,
                                 "ad_labels": {"impression": True}})
    got = from_outcomes([clicked, ignored, ad])
    assert got["label_rate.click"].values.tolist() == [1.0, 0.0]
    assert got["logloss.click"].values == pytest.approx([-math.log(0.2), -math.log(0.6)])
    assert got["calibration.click"].values == pytest.approx([0.8, -0.4])
    assert got["calibration.click"].predictions == pytest.approx([0.2, 0.4])
    assert len(got["label_rate.like"].values) == 1  # the second has no like prediction


def test_a_logged_request_is_one_feature_value_the_mean_of_its_rows() -> None:
    base = EXAMPLES["feature-log"]
    log = FeatureLog.model_validate({**base, "feature_names": ["sim_max", "item_bid"],
                                     "item_ids": ["i1", "i2"], "rows": [[0.2, 1.0], [0.6, 3.0]]})
    got = from_feature_logs([log, log], ["sim_max"], "bn-1")
    assert list(got) == ["feature.sim_max"]
    assert got["feature.sim_max"].values == pytest.approx([0.4, 0.4])
    assert got["feature.sim_max"].stats_version == "bn-1"


def test_a_signal_batch_is_in_event_time_order() -> None:
    base = EXAMPLES["outcomes"]
    late = Outcome.model_validate({**base, "ts": base["ts"] + 10, "probs": {"click": 0.3},
                                   "item_labels": {"click": True}})
    early = Outcome.model_validate({**base, "seq": 1, "probs": {"click": 0.6},
                                    "item_labels": {"click": False}})
    calibration = from_outcomes([late, early])["calibration.click"]
    assert calibration.ts.tolist() == [base["ts"], base["ts"] + 10]
    assert calibration.values == pytest.approx([-0.6, 0.7])
    assert calibration.predictions == pytest.approx([0.6, 0.3])
