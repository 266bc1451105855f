"""What a person reads at the end of ``streamrank demo``: the numbers of the report, no more."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from stream.demo import summary


def _report() -> dict[str, Any]:
    return {
        "seconds": 30.02, "rate": 150.0,
        "warmup": {"requests": 36000, "simulated_s": 240.0, "wall_s": 21.3,
                   "trained_on_requests": 18000},
        "served_requests": 4500, "timeouts": 2, "dlq": 3,
        "events_published": 391794, "events_processed": 391791,
        "ctr": {"served": 0.0858, "random": 0.0273, "popularity": 0.0670, "oracle": 0.1062},
        "model": {"version": "demo-1", "train_rows": 144000,
                  "holdout": {"click": {"auc": 0.7291}}},
        "served_vs_popularity_by_model": {"demo-1": 1.29, "demo-2": 1.24},
        "outcomes": {"count": 52000, "events_late": 0},
        "training": {"source": "topics", "first_model_source": "log", "outcome_rows": 9100},
        "scenario": None,
    }


def test_summary_carries_the_ctrs_events_dlq_and_versions() -> None:
    text = summary(_report(), Path("out.json"))
    lines = text.splitlines()
    assert "36,000 random feeds" in lines[0] and "240 s" in lines[0]
    assert "4,500 served requests" in lines[1]
    assert lines[2].split()[:2] == ["served", "0.0858"] and "(1.28x popularity)" in lines[2]
    assert [line.split()[:2] for line in lines[3:6]] == [
        ["popularity", "0.0670"], ["random", "0.0273"], ["oracle", "0.1062"]]
    assert "391,794 published, 391,791 applied, 3 in the DLQ; 2 requests timed out" in text
    assert "first demo-1 on 144,000 rows (click AUC 0.729)" in text
    assert "52,000 joined; retrains learned from the topics (9,100 served rows" in text
    assert [line.split() for line in lines[-3:-1]] == [["demo-1", "1.29"], ["demo-2", "1.24"]]
    assert lines[-1] == "full report: out.json"


def test_summary_without_a_json_file_or_a_popularity_ctr() -> None:
    report = _report()
    report["ctr"]["popularity"] = 0.0
    text = summary(report, None)
    assert "full report" not in text and "x popularity" not in text


def test_summary_says_when_a_scenario_changed_the_world() -> None:
    report = _report()
    report["scenario"] = {"name": "label_rate", "change_at_s": 255.0,
                          "change_after_served_s": 15.0, "change_request": 2250,
                          "signals": ["label_rate.click", "calibration.click"]}
    lines = summary(report, Path("out.json")).splitlines()
    assert lines[-2] == (
        "scenario label_rate: the world changed 15 s into the served phase (world clock 255 s), "
        "from served request 2,250; expected alerts: label_rate.click, calibration.click")
    report["scenario"]["change_request"] = None
    assert "after the last request" in summary(report, None).splitlines()[-1]
