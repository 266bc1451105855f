"""``streamrank drift replay``: the drift role's monitors on a series from a file.

Users tune a detector on their own history this way: the same :class:`models.drift.MonitorSet`
the role runs, fed the same way (each value as it came), so a parameter that detects a past
incident here detects it in production.
"""

from __future__ import annotations

import csv
import math
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import orjson

from models.drift import MonitorSet
from stream.errors import StreamrankError

MAX_LINE_BYTES = 1 << 16


class BadSeries(StreamrankError):
    """The series file cannot be read as ``{ts, signal, value}`` rows."""


@dataclass(frozen=True)
class Point:
    ts: float
    signal: str
    value: float


def read_series(path: Path) -> Iterator[Point]:
    """JSON lines (``{"ts": ..., "signal": ..., "value": ...}``) or CSV with those columns,
    by suffix; a bad row is an error naming its line, never a silent skip."""
    with path.open("r", encoding="utf-8", newline="") as handle:
        if path.suffix.lower() == ".csv":
            rows: Iterator[Any] = csv.DictReader(handle)
            start = 2  # line 1 is the header
        else:
            rows = (orjson.loads(line) if line.strip() else None for line in handle)
            start = 1
        line = start
        try:
            for row in rows:
                if row is not None:
                    yield _point(row)
                line += 1
        except KeyError as exc:
            raise BadSeries(f"{path}:{line}: missing field {exc}") from exc
        except (orjson.JSONDecodeError, ValueError, TypeError) as exc:
            raise BadSeries(f"{path}:{line}: {exc}") from exc


def _point(row: Mapping[str, Any]) -> Point:
    if not isinstance(row, Mapping):
        raise ValueError("each row must be an object with ts, signal and value")
    value, ts = float(row["value"]), float(row["ts"])
    if not (math.isfinite(value) and math.isfinite(ts)):
        raise ValueError("ts and value must be finite numbers")
    signal = row["signal"]
    if not isinstance(signal, str) or not signal:
        raise ValueError("signal must be a non-empty string")
    return Point(ts, signal, value)


def replay(points: Iterator[Point], detector: str, params: Mapping[str, float]
           ) -> dict[str, Any]:
    """Every detection of every signal, in the order of the file."""
    monitors = MonitorSet({"*": detector}, {detector: params})
    detections = []
    counts: dict[str, int] = {}
    for index, point in enumerate(points):
        counts[point.signal] = counts.get(point.signal, 0) + 1
        for found in monitors.update(point.signal, np.array([point.value])):
            detections.append({
                "index": index, "ts": point.ts, "signal": point.signal,
                "update": found.update, "direction": found.direction,
                "effect_size": round(found.effect_size, 6),
                "before": {"mean": found.before.mean, "std": found.before.std,
                           "n": found.before.n},
                "after": {"mean": found.after.mean, "std": found.after.std,
                          "n": found.after.n}})
    return {"detector": detector, "params": dict(params), "values": counts,
            "detections": detections}
