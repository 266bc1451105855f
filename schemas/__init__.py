"""Wire contracts of streamrank. Imports nothing else of ours."""

from schemas.codec import REASONS, Rejection, decode, encode
from schemas.limits import Limits
from schemas.records import (
    EVENT_TYPES,
    SCHEMA_VERSION,
    AdDecision,
    AdLabels,
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
)
from schemas.topics import TOPIC_RECORDS, topic_name

__all__ = [
    "EVENT_TYPES", "REASONS", "SCHEMA_VERSION", "TOPIC_RECORDS", "AdDecision", "AdLabels",
    "Context", "DeadLetter", "DriftAlert", "DriftSubscription", "Event", "FeatureLog", "ItemLabels",
    "ItemUpsert", "Limits", "ModelUpdate", "Outcome", "RankedItem", "RankingRequest",
    "RankingResult", "Record", "Rejection", "decode", "encode", "topic_name",
]
