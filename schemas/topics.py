"""Topic names (relative to the configurable prefix) and the record each one carries."""

from __future__ import annotations

from schemas.records import (
    DeadLetter,
    DriftAlert,
    DriftSubscription,
    Event,
    FeatureLog,
    ItemUpsert,
    ModelUpdate,
    Outcome,
    RankingRequest,
    RankingResult,
    Record,
)

TOPIC_RECORDS: dict[str, type[Record]] = {
    "items": ItemUpsert,
    "events": Event,
    "requests": RankingRequest,
    "rankings": RankingResult,
    "feature-log": FeatureLog,
    "outcomes": Outcome,
    "drift-alerts": DriftAlert,
    "subscriptions": DriftSubscription,
    "model-updates": ModelUpdate,
    "dlq": DeadLetter,
}


def topic_name(prefix: str, suffix: str) -> str:
    if suffix not in TOPIC_RECORDS:
        raise KeyError(f"unknown topic {suffix!r}; known: {', '.join(TOPIC_RECORDS)}")
    return f"{prefix}.{suffix}"
