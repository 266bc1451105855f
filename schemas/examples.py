"""One valid example message per topic: shown in the docs and checked by the tests."""

from __future__ import annotations

from typing import Any

EXAMPLE_TS = 1_790_000_000.0  # 2026-09-21, within every plausible-timestamp window

EXAMPLES: dict[str, dict[str, Any]] = {
    "items": {
        "schema_version": 1, "ts": EXAMPLE_TS, "item_id": "i42", "kind": "ad",
        "embedding": [0.1] * 32, "created_ts": EXAMPLE_TS, "bid": 0.8,
        "metadata": {"advertiser": "acme"},
    },
    "events": {
        "schema_version": 1, "ts": EXAMPLE_TS, "event_id": "e-7f3a", "user_id": "u7",
        "item_id": "i42", "type": "click", "request_id": "r-19", "position": 3,
    },
    "requests": {
        "schema_version": 1, "ts": EXAMPLE_TS, "request_id": "r-19", "user_id": "u7",
        "context": {"device": "mobile", "surface": "feed"},
        "candidates": ["i1", "i2", "i42"], "ad_candidates": ["a3", "a9"],
        "ad_slots": [2, 6], "n": 10,
    },
    "feature-log": {
        "schema_version": 1, "ts": EXAMPLE_TS, "request_id": "r-19", "user_id": "u7",
        "model_version": "m-20260921-1", "feature_names": ["user_log_click_1h", "item_bid"],
        "item_ids": ["i42"], "rows": [[0.69, 0.8]],
    },
    "outcomes": {
        "schema_version": 1, "ts": EXAMPLE_TS, "request_id": "r-19", "user_id": "u7",
        "seq": 0, "kind": "item", "item_id": "i42", "position": 0,
        "model_version": "m-20260921-1", "stats_version": "bn-3", "window_s": 300.0,
        "probs": {"click": 0.12, "like": 0.03, "share": 0.01, "hide": 0.02}, "value": 0.31,
        "item_labels": {"click": True, "like": False, "share": False, "hide": False,
                        "dwell_s": 12.5},
    },
    "rankings": {
        "schema_version": 1, "ts": EXAMPLE_TS, "request_id": "r-19", "user_id": "u7",
        "items": [{"item_id": "i42", "value": 0.31,
                   "probs": {"click": 0.12, "like": 0.03, "share": 0.01, "hide": 0.02}}],
        "ads": [{"decision_id": "r-19/2", "slot": 2, "ad_id": "a9", "propensity": 0.85,
                 "policy": "epsilon-greedy", "policy_version": "bandit-12"},
                {"decision_id": "r-19/6", "slot": 6, "ad_id": None, "propensity": 0.9,
                 "policy": "epsilon-greedy", "policy_version": "bandit-12"}],
        "model_version": "m-20260921-1", "stats_version": "bn-3", "latency_ms": 4.2,
    },
    "drift-alerts": {
        "schema_version": 1, "ts": EXAMPLE_TS, "alert_id": "calibration.click-adwin-41230",
        "signal": "calibration.click", "detector": "adwin", "severity": "critical",
        "direction": "down", "effect_size": 0.62,
        "before": {"mean": 0.002, "std": 0.27, "n": 40960, "mean_prediction": 0.081,
                   "mean_label": 0.083, "calibration_ratio": 0.976},
        "after": {"mean": -0.041, "std": 0.21, "n": 270, "mean_prediction": 0.082,
                  "mean_label": 0.041, "calibration_ratio": 2.0},
        "update": 41230, "model_version": "m-20260921-1", "stats_version": "bn-3",
    },
    "subscriptions": {
        "schema_version": 1, "ts": EXAMPLE_TS, "subscription_id": "ops-calibration",
        "owner": "ml-platform", "signals": ["calibration.*"], "min_severity": "warning",
        "sink": {"kind": "webhook", "url": "https://ops.example.com/hooks/drift",
                 "secret": "whsec-0123456789abcdef"},
    },
    "model-updates": {
        "schema_version": 1, "ts": EXAMPLE_TS, "model": "ranker", "kind": "model",
        "version": "m-20260921-1", "uri": "file:///models/m-20260921-1/model.onnx",
        "sha256": "0" * 64,
    },
    "dlq": {
        "schema_version": 1, "ts": EXAMPLE_TS, "reason": "non_finite",
        "detail": "NaN is not a finite number", "source_topic": "streamrank.events",
        "partition": 0, "offset": 1234, "original_b64": "eyJ0cyI6IE5hTn0=",
    },
}
