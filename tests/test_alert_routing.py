"""Which subscriptions an alert goes to: globs, minimum severity and detectors."""

from __future__ import annotations

from typing import Any

import pytest

from schemas import DriftAlert, DriftSubscription
from schemas.examples import EXAMPLES
from stream.drift.routing import matches, routes


def alert(signal: str, severity: str = "critical", detector: str = "adwin") -> DriftAlert:
    return DriftAlert.model_validate({**EXAMPLES["drift-alerts"], "signal": signal,
                                      "severity": severity, "detector": detector,
                                      "alert_id": f"{signal}-{severity}-{detector}"})


def subscription(subscription_id: str, **fields: Any) -> DriftSubscription:
    return DriftSubscription.model_validate(
        {**EXAMPLES["subscriptions"], "subscription_id": subscription_id, **fields})


SUBSCRIPTIONS = [
    subscription("everything", signals=["*"], min_severity="info"),
    subscription("calibration", signals=["calibration.*"]),  # warning and up by default
    subscription("critical-kswin", signals=["feature.*", "score.*"], min_severity="critical",
                 detectors=["kswin"]),
    subscription("click-labels", signals=["label_rate.click"], detectors=["adwin", "kswin"]),
    subscription("case", signals=["Calibration.*"], min_severity="info"),
]


@pytest.mark.parametrize(("signal", "severity", "detector", "expected"), [
    ("calibration.click", "critical", "adwin", ["everything", "calibration"]),
    ("calibration.click", "warning", "page_hinkley", ["everything", "calibration"]),
    ("calibration.click", "info", "adwin", ["everything"]),
    ("feature.sim_max", "critical", "kswin", ["everything", "critical-kswin"]),
    ("feature.sim_max", "warning", "kswin", ["everything"]),
    ("score.click", "critical", "adwin", ["everything"]),
    ("label_rate.click", "warning", "kswin", ["everything", "click-labels"]),
    ("label_rate.click", "warning", "page_hinkley", ["everything"]),
    ("label_rate.clicks", "critical", "adwin", ["everything"]),  # a glob, not a prefix
])
def test_an_alert_goes_to_exactly_the_subscriptions_it_matches(
        signal: str, severity: str, detector: str, expected: list[str]) -> None:
    routed = routes(alert(signal, severity, detector), SUBSCRIPTIONS)
    assert [s.subscription_id for s in routed] == expected


def test_any_one_glob_is_enough_and_globs_are_case_sensitive() -> None:
    either = subscription("either", signals=["score.like", "feature.sim_?ax"], min_severity="info")
    assert matches(alert("feature.sim_max"), either)
    assert matches(alert("score.like"), either)
    assert not matches(alert("score.click"), either)
    assert not matches(alert("calibration.click"), SUBSCRIPTIONS[-1])


def test_no_subscriptions_route_nothing() -> None:
    assert routes(alert("calibration.click"), []) == []
