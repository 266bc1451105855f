"""What each input record contributes to each drift signal.

Every value is fed to its monitor as it came, one per event (outcome, ranking or logged
request); nothing is averaged over a batch, so a detector's delay counts the same events as
River's alone would (River's ADWIN takes ~0.2 µs a value, cheap next to decoding the record).

A request is the unit of a feature value: its shown items' rows share the user and the
context, so fed row by row they arrive in runs of ten near-equal values, which ADWIN, built for
independent values, reads as changes (measured in the drift bench's control run: 3.2 false
alarms per 10k updates fed by row, all on features). The sampling is upstream: ``feature.*``
sees only the requests whose rows the scoring path logs (``STREAMRANK_FEATURE_LOG_RATE``).

- ``score_mean.<task>``: per ranking, the mean probability of its items;
- ``label_rate.<task>``: per item outcome, 1 if the user did it, else 0;
- ``logloss.<task>``: per item outcome, the log loss of its prediction;
- ``calibration.<task>``: per item outcome, label - prediction (with both kept for the ratio);
- ``feature.<name>``: per logged request, the mean of the feature over its rows.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

import numpy as np

from models.ranking_features import TASK_NAMES
from schemas import FeatureLog, Outcome, RankingResult

EPSILON = 1e-6  # a prediction of exactly 0 or 1 would make an infinite log loss


@dataclass
class SignalBatch:
    """One signal's new values in event-time order, with the event time of each and the
    versions that made them."""

    values: np.ndarray
    ts: np.ndarray
    model_version: str
    stats_version: str
    predictions: np.ndarray | None = None  # calibration only
    labels: np.ndarray | None = None

    def __post_init__(self) -> None:
        # A batch holds each partition's records one run after the other; a monitor fed
        # partition by partition would see time go back at every run, and the values of the
        # earlier regime come back (measured: a step down in one partition, then the next
        # partition's records from before the step, read as a change back up).
        order = np.argsort(self.ts, kind="stable")
        if (order != np.arange(len(order))).any():
            self.values, self.ts = self.values[order], self.ts[order]
            if self.predictions is not None and self.labels is not None:
                self.predictions, self.labels = self.predictions[order], self.labels[order]


@dataclass
class _Columns:
    values: list[float] = field(default_factory=list)
    ts: list[float] = field(default_factory=list)


def from_rankings(rankings: Sequence[RankingResult]) -> dict[str, SignalBatch]:
    rankings = [r for r in rankings if r.items]
    if not rankings:
        return {}
    probs = np.array([[np.mean([item.probs.get(task, np.nan) for item in r.items])
                       for task in TASK_NAMES] for r in rankings])
    ts = np.array([r.ts for r in rankings])
    last = rankings[-1]
    return {f"score_mean.{task}": _batch(probs[:, t], ts, last.model_version, last.stats_version)
            for t, task in enumerate(TASK_NAMES)
            if len(_finite(probs[:, t]))}


def from_outcomes(outcomes: Sequence[Outcome]) -> dict[str, SignalBatch]:
    items = [o for o in outcomes if o.kind == "item" and o.item_labels is not None]
    if not items:
        return {}
    ts = np.array([o.ts for o in items])
    last = items[-1]
    signals: dict[str, SignalBatch] = {}
    for task in TASK_NAMES:
        predicted = np.array([o.probs.get(task, np.nan) for o in items])
        labels = np.array([float(getattr(o.item_labels, task)) for o in items])
        keep = np.isfinite(predicted)
        if not keep.any():
            continue
        p, y, when = np.clip(predicted[keep], EPSILON, 1 - EPSILON), labels[keep], ts[keep]
        versions = (last.model_version, last.stats_version)
        signals[f"label_rate.{task}"] = SignalBatch(y, when, *versions)
        signals[f"logloss.{task}"] = SignalBatch(
            -(y * np.log(p) + (1 - y) * np.log(1 - p)), when, *versions)
        signals[f"calibration.{task}"] = SignalBatch(y - p, when, *versions, p, y)
    return signals


def from_feature_logs(logs: Sequence[FeatureLog], features: Iterable[str],
                      stats_version: str) -> dict[str, SignalBatch]:
    """``stats_version``: the feature log does not carry one; the latest the role saw."""
    wanted = tuple(features)
    columns: dict[str, _Columns] = {}
    for log in logs:
        if not log.rows:
            continue
        means = np.asarray(log.rows).mean(axis=0)
        for i, name in enumerate(log.feature_names):
            if name in wanted:
                column = columns.setdefault(name, _Columns())
                column.values.append(float(means[i]))
                column.ts.append(log.ts)
    if not columns:
        return {}
    last = logs[-1]
    return {f"feature.{name}": _batch(np.array(c.values), np.array(c.ts), last.model_version,
                                      stats_version)
            for name, c in columns.items()}


def _batch(values: np.ndarray, ts: np.ndarray, model_version: str, stats_version: str
           ) -> SignalBatch:
    keep = np.isfinite(values)
    return SignalBatch(values[keep], ts[keep], model_version, stats_version)


def _finite(values: np.ndarray) -> np.ndarray:
    return values[np.isfinite(values)]
