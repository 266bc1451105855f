"""What a person reads at the end of ``streamrank demo``: the numbers of the report, no more."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from stream.demo import comparison_summary, summary


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
        "scenario": None, "retrieval": None,
        "ads": {"per_request": 0.83, "revenue_per_request": 0.0213,
                "engagement_cost_per_request": 0.0771},
    }


def _retrieval_report(source: str, ctr: float) -> dict[str, Any]:
    report = {k: v for k, v in _report().items() if k != "served_vs_popularity_by_model"}
    return report | {
        "ctr": {"served": ctr}, "served_ctr_by_model": {"demo-1": ctr - 0.001, "demo-2": ctr},
        "feed_items_mean": 10.0,
        "retrieval": {"source": source, "ctr_served": ctr, "feed_items_mean": 10.0,
                      "requests_by_source": {"interests": 4400, "trending": 100, "none": 0},
                      "interests_updated": 9000}}


def test_summary_carries_the_ctrs_events_dlq_and_versions() -> None:
    text = summary(_report(), Path("out.json"))
    lines = text.splitlines()
    assert "36,000 random feeds" in lines[0] and "240 s" in lines[0]
    assert "4,500 served requests" in lines[1]
    assert lines[2].split()[:2] == ["served", "0.0858"] and "(1.28x popularity)" in lines[2]
    assert [line.split()[:2] for line in lines[3:6]] == [
        ["popularity", "0.0670"], ["random", "0.0273"], ["oracle", "0.1062"]]
    assert "391,794 published, 391,791 applied, 3 in the DLQ; 2 requests timed out" in text
    assert "0.83 a request, revenue 0.0213 and organic engagement cost 0.0771 a request" in text
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


def test_summary_of_a_run_with_retrieval_has_only_the_served_ctr() -> None:
    lines = summary(_retrieval_report("interests", 0.0912), None).splitlines()
    assert lines[1] == ("expected CTR per shown item of the 4,500 served feeds, retrieved from "
                        "interests:")
    assert lines[2].split() == ["served", "0.0912"]
    assert lines[3] == ("retrieval: 4,400 requests from interests, 100 from trending, 0 with "
                        "nothing found; 10 items per feed")
    assert not any(name in line for line in lines for name in ("popularity", "oracle"))
    assert "models (served CTR): first demo-1" in lines[-3]
    assert [line.split() for line in lines[-2:]] == [["demo-1", "0.0902"], ["demo-2", "0.0912"]]


def test_comparison_summary_sets_the_two_sources_side_by_side() -> None:
    report = {"retrieval_comparison": {"ctr_served": {"interests": 0.0912, "trending": 0.0800},
                                       "interests_vs_trending": 1.14},
              "runs": {"interests": _retrieval_report("interests", 0.0912),
                       "trending": _retrieval_report("trending", 0.0800)}}
    text = comparison_summary(report, Path("out.json"))
    lines = text.splitlines()
    assert lines[0] == "--- retrieval from interests"
    assert "--- retrieval from trending" in lines
    assert "retrieved from trending:" in text and text.count("full report") == 1
    assert [line.split() for line in lines[-4:-2]] == [["interests", "0.0912"],
                                                       ["trending", "0.0800"]]
    assert lines[-2] == "  interests / trending: 1.140"
    assert lines[-1] == "full report: out.json"
