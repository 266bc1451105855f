"""JSON Schema export, for the docs and for clients written in other languages."""

from __future__ import annotations

from pathlib import Path

import orjson

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

EXPORTED: tuple[type[Record], ...] = (
    ItemUpsert, Event, RankingRequest, RankingResult, FeatureLog, Outcome,
    DriftAlert, DriftSubscription, ModelUpdate, DeadLetter,
)


def json_schema(record_type: type[Record]) -> dict[str, object]:
    schema = record_type.model_json_schema(mode="validation")
    schema["$schema"] = "https://json-schema.org/draft/2020-12/schema"
    schema["$id"] = f"streamrank/{record_type.__name__}.v1.json"
    return schema


def export_schemas(directory: Path) -> list[Path]:
    directory.mkdir(parents=True, exist_ok=True)
    written = []
    for record_type in EXPORTED:
        path = directory / f"{record_type.__name__}.v1.json"
        path.write_bytes(orjson.dumps(json_schema(record_type), option=orjson.OPT_INDENT_2))
        written.append(path)
    return written
