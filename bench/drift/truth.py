"""Scoring a run's alerts against the scenario's known change, and River's ADWIN alone on the
same values: the pure half of the drift bench (no broker), unit-tested on its own."""

from __future__ import annotations

import fnmatch
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import numpy as np
from river import drift

from schemas import DriftAlert, FeatureLog, Outcome, RankingResult
from stream.drift import signals


@dataclass(frozen=True)
class Series:
    """One signal's values in event-time order, as they happened: every ranking, every
    outcome, every logged row, before any partitioning, batching or sampling."""

    values: np.ndarray
    ts: np.ndarray


def raw_series(rankings: Sequence[RankingResult], outcomes: Sequence[Outcome],
               logs: Sequence[FeatureLog], features: Iterable[str]) -> dict[str, Series]:
    """The drift role's own signal definitions (:mod:`stream.drift.signals`), on all of a
    run's records sorted by event time."""
    by_ts = sorted(rankings, key=lambda r: r.ts)
    made = (signals.from_rankings(by_ts)
            | signals.from_outcomes(sorted(outcomes, key=lambda o: (o.ts, o.seq)))
            | signals.from_feature_logs(sorted(logs, key=lambda f: f.ts), features, ""))
    return {name: Series(batch.values, batch.ts) for name, batch in made.items()}


def adwin_alone(series: Series) -> list[float]:
    """The event times at which River's ADWIN, default parameters, fires on the series."""
    detector = drift.ADWIN()
    fired = []
    for value, ts in zip(series.values.tolist(), series.ts.tolist(), strict=True):
        detector.update(value)
        if detector.drift_detected:
            fired.append(ts)
    return fired


def matches(signal: str, globs: Iterable[str]) -> bool:
    return any(fnmatch.fnmatchcase(signal, glob) for glob in globs)


@dataclass(frozen=True)
class Clock:
    """Counts served requests between two event times: the unit of a delay."""

    request_ts: np.ndarray  # sorted

    def requests_between(self, start: float, end: float) -> int:
        return int(np.searchsorted(self.request_ts, end, "right")
                   - np.searchsorted(self.request_ts, start, "left"))


def score_scenario(alerts: Sequence[DriftAlert], series: dict[str, Series], clock: Clock,
                   change_ts: float, expected: Sequence[str], incidental: Sequence[str]
                   ) -> dict[str, object]:
    """Delay (in served requests from the change), misses, alerts per change and false
    alarms of the role's alerts, next to ADWIN alone on the raw series of the same signals."""
    targets = [name for name in series if matches(name, expected)]
    after = [a for a in alerts if a.ts >= change_ts]
    ours = {name: min(a.ts for a in after if a.signal == name)
            for name in {a.signal for a in after if a.signal in targets}}
    alone = {}
    for name in targets:
        fired = [ts for ts in adwin_alone(series[name]) if ts >= change_ts]
        if fired:
            alone[name] = fired[0]
    per_signal = [sum(a.signal == name for a in after) for name in ours]
    false_alarms = [a for a in alerts if a.ts < change_ts] + [
        a for a in after if not matches(a.signal, (*expected, *incidental))]
    delay = (clock.requests_between(change_ts, min(ours.values())) if ours else None)
    alone_delay = (clock.requests_between(change_ts, min(alone.values())) if alone else None)
    return {
        "delay": delay,
        "adwin_alone_delay": alone_delay,
        "delay_ratio": (round(delay / max(alone_delay, 1), 3)
                        if delay is not None and alone_delay is not None else None),
        "missed": 0 if ours else 1,
        "alerts_per_change": float(np.mean(per_signal)) if per_signal else 0.0,
        "first_alert": {name: clock.requests_between(change_ts, ts)
                        for name, ts in sorted(ours.items())},
        "adwin_alone_first": {name: clock.requests_between(change_ts, ts)
                              for name, ts in sorted(alone.items())},
        "false_alarms": len(false_alarms),
        "false_alarm_signals": sorted({a.signal for a in false_alarms}),
    }


def false_alarms_alone(series: dict[str, Series]) -> int:
    """ADWIN alone's detections on a run with no change: every one is a false alarm."""
    return sum(len(adwin_alone(s)) for s in series.values())
