"""Wire contracts of streamrank. Imports nothing else of ours."""

from schemas.codec import REASONS, Rejection, decode, encode
from schemas.limits import Limits
from schemas.records import (
    DETECTORS,
    EVENT_TYPES,
    SCHEMA_VERSION,
    SEVERITIES,
    AdDecision,
    AdLabels,
    AdSlotLog,
    Context,
    DeadLetter,
    DriftAlert,
    DriftSubscription,
    Event,
    FeatureLog,
    ItemLabels,
    ItemUpsert,
    ModelUpdate,
    Outcome,
    RankedItem,
    RankingRequest,
    RankingResult,
    Record,
    WindowStats,
)
from schemas.topics import TOPIC_RECORDS, topic_name

__all__ = [
    "DETECTORS", "EVENT_TYPES", "REASONS", "SCHEMA_VERSION", "SEVERITIES", "TOPIC_RECORDS",
    "AdDecision", "AdLabels", "AdSlotLog",
    "Context", "DeadLetter", "DriftAlert", "DriftSubscription", "Event", "FeatureLog", "ItemLabels",
    "ItemUpsert", "Limits", "ModelUpdate", "Outcome", "RankedItem", "RankingRequest",
    "RankingResult", "Record", "Rejection", "WindowStats", "decode", "encode",
    "topic_name",
]
