"""Drift monitors: one River detector per signal, with what an alert needs to say about it.

River has the detectors (ADWIN, Bifet & Gavaldà 2007; Page-Hinkley; KSWIN, Raab et al. 2020)
but nothing around them: which values the change separated, how large it is, and whether two
alarms are one change (ADWIN raises several for one shift, river#574). This module adds that
around River's own update, and writes no detector of its own.

A :class:`Monitor` keeps its signal's most recent values in a ring next to the detector. When
the detector fires, the values since its previous detection are split where the change most
likely happened (:func:`change_point`) into ``before`` and ``after``. The effect size of the
change is
Cohen's d, or the log of the ratio of the means where both are positive (a click rate that
halves is a large change however noisy the clicks are).

>>> import numpy as np
>>> monitor = Monitor("label_rate.click", "adwin", {"delta": 0.002, "clock": 1})
>>> rng = np.random.default_rng(0)
>>> step = np.concatenate([rng.normal(0.0, 1.0, 2000), rng.normal(1.0, 1.0, 500)])
>>> detections = monitor.update(step)
>>> [(d.direction, 2000 <= d.update < 2100) for d in detections][:1]
[('up', True)]
"""

from __future__ import annotations

import fnmatch
import math
from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np
from river import drift
from river.base import DriftDetector

DETECTOR_CLASSES: dict[str, type[DriftDetector]] = {
    "adwin": drift.ADWIN, "page_hinkley": drift.PageHinkley, "kswin": drift.KSWIN}
DEFAULT_DETECTOR = "adwin"
HISTORY = 1 << 15  # values kept per signal for the statistics of an alert
MIN_SIDE = 5  # values on each side of a change, as ADWIN's min_window_length
KSWIN_SEED = 42  # KSWIN samples its reference window: seeded, a replay detects the same


def make_detector(name: str, params: Mapping[str, float]) -> DriftDetector:
    """A River detector by name; integer parameters (ADWIN's ``clock``) come as numbers."""
    cls = DETECTOR_CLASSES[name]
    kwargs: dict[str, float | int] = {
        key: int(value) if float(value).is_integer() and key in _INTEGER_PARAMS else value
        for key, value in params.items()}
    if name == "kswin":
        kwargs.setdefault("seed", KSWIN_SEED)
    return cls(**kwargs)


_INTEGER_PARAMS = {"clock", "max_buckets", "min_window_length", "grace_period",
                   "min_instances", "window_size", "stat_size", "seed"}


@dataclass(frozen=True)
class Side:
    """A signal's values on one side of a change; calibration signals add what the residuals
    came from: mean prediction, mean label and their ratio."""

    mean: float
    std: float
    n: int
    mean_prediction: float | None = None
    mean_label: float | None = None

    @property
    def calibration_ratio(self) -> float | None:
        """Mean prediction / mean label: 1 is calibrated, 2 predicts twice what happens."""
        if self.mean_prediction is None or not self.mean_label:
            return None
        return self.mean_prediction / self.mean_label


@dataclass(frozen=True)
class Detection:
    signal: str
    detector: str
    update: int  # the signal's values seen up to and including the one that fired
    index: int  # that value's position in the array passed to Monitor.update
    before: Side
    after: Side

    @property
    def direction(self) -> str:
        return "up" if self.after.mean >= self.before.mean else "down"

    @property
    def effect_size(self) -> float:
        return effect_size(self.before, self.after)


def effect_size(before: Side, after: Side) -> float:
    """Cohen's d with the pooled standard deviation, or the absolute log ratio of the means
    (of the calibration ratios, for a calibration signal) where both are positive, whichever
    is larger."""
    pooled_n = before.n + after.n - 2
    pooled = math.sqrt(((before.n - 1) * before.std ** 2 + (after.n - 1) * after.std ** 2)
                       / pooled_n) if pooled_n > 0 else 0.0
    delta = abs(after.mean - before.mean)
    d = delta / pooled if pooled > 0 else (math.inf if delta > 0 else 0.0)
    old, new = before.calibration_ratio, after.calibration_ratio
    if old is None or new is None:
        old, new = before.mean, after.mean
    if old > 0 and new > 0:
        d = max(d, abs(math.log(new / old)))
    return d if math.isfinite(d) else 1e6


class Monitor:
    """One signal: a River detector fed value by value, and the recent values behind it.

    ``update`` takes a whole array: River's detectors are Cython (ADWIN takes ~0.2 µs a value
    here), so the cost that matters is Python's per call, and the ring is written once per
    array, not once per value. Calibration signals pass the predictions and labels too.
    """

    def __init__(self, signal: str, detector: str, params: Mapping[str, float],
                 history: int = HISTORY, paired: bool = False) -> None:
        self.signal = signal
        self.detector_name = detector
        self.detector = make_detector(detector, params)
        self.updates = 0
        self._history = history
        self._values = np.zeros(history)
        self._pairs = np.zeros((2, history)) if paired else None  # predictions, labels
        self._last_detection = 0  # the update that fired last

    @property
    def estimate(self) -> float:
        """The signal's current level: the mean of its latest values since the last change."""
        count = min(self.updates - self._last_detection, self._history, 1000)
        return float(self._recent(count).mean()) if count else math.nan

    def update(self, values: np.ndarray, predictions: np.ndarray | None = None,
               labels: np.ndarray | None = None) -> list[Detection]:
        detections = []
        chunk = self._history // 4  # a chunk never overwrites the values its stats need
        for start in range(0, len(values), chunk):
            end = start + chunk
            pairs = None if predictions is None or labels is None else (
                predictions[start:end], labels[start:end])
            detections += self._update(values[start:end], pairs, offset=start)
        return detections

    def _update(self, values: np.ndarray, pairs: tuple[np.ndarray, np.ndarray] | None,
                offset: int) -> list[Detection]:
        first = self.updates
        self._write(values, pairs)
        detections = []
        detector = self.detector
        for i, value in enumerate(values.tolist()):
            detector.update(value)
            if detector.drift_detected:
                detections.append(self._detection(first + i + 1, offset + i))
                self._last_detection = first + i + 1
        self.updates = first + len(values)
        return detections

    def _write(self, values: np.ndarray, pairs: tuple[np.ndarray, np.ndarray] | None) -> None:
        positions = (self.updates + np.arange(len(values))) % self._history
        self._values[positions] = values
        if self._pairs is not None and pairs is not None:
            self._pairs[0, positions], self._pairs[1, positions] = pairs

    def _detection(self, update: int, index: int) -> Detection:
        # The values of the array being fed (at most a chunk) may have overwritten the oldest.
        kept = self._history - self._history // 4
        n = min(update - self._last_detection, kept)
        start = update - n
        n_before = change_point(self._values[np.arange(start, update) % self._history])
        return Detection(self.signal, self.detector_name, update, index,
                         before=self._side(start, n_before),
                         after=self._side(start + n_before, n - n_before))

    def _side(self, start: int, count: int) -> Side:
        if count <= 0:
            return Side(math.nan, 0.0, 0)
        positions = np.arange(start, start + count) % self._history
        values = self._values[positions]
        prediction = label = None
        if self._pairs is not None:
            prediction = float(self._pairs[0, positions].mean())
            label = float(self._pairs[1, positions].mean())
        return Side(float(values.mean()), float(values.std()), count, prediction, label)

    def _recent(self, count: int) -> np.ndarray:
        positions = np.arange(self.updates - count, self.updates) % self._history
        return self._values[positions]


def change_point(values: np.ndarray, min_side: int = MIN_SIDE) -> int:
    """Where a detected change most likely happened, as the count of values before it: the
    maximum-likelihood split for a shift in the mean, ``|S_k - k/n S_n| / sqrt(k(n - k)/n)``
    (the standardised CUSUM, Page 1954), with at least ``min_side`` values on each side. The
    detectors say *that* a change happened; ADWIN's window after a detection still holds
    values from before it, so the split is located here."""
    n = len(values)
    if n < 2 * min_side:
        return n // 2
    k = np.arange(1, n)
    sums = np.cumsum(values - values.mean())[:-1]
    score = np.abs(sums) / np.sqrt(k * (n - k) / n)
    score[: min_side - 1] = score[n - min_side:] = -1.0
    return int(np.argmax(score)) + 1


class AlertGate:
    """One change, one alert: a detection of a signal in the direction of its last alert,
    within ``cooldown_s`` of it (event time, either side), is the same change; ADWIN raises
    several alarms for one shift, and a restarted role detects again what it alerted before.
    A change back, in the other direction, is a new alert at once."""

    def __init__(self, cooldown_s: float) -> None:
        self.cooldown_s = cooldown_s
        self._last: dict[str, tuple[str, float]] = {}  # signal -> (direction, ts)

    def admit(self, signal: str, direction: str, ts: float) -> bool:
        last = self._last.get(signal)
        if last is not None and last[0] == direction and abs(ts - last[1]) < self.cooldown_s:
            return False
        self.remember(signal, direction, ts)
        return True

    def remember(self, signal: str, direction: str, ts: float) -> None:
        """An alert already sent (read back at start-up)."""
        last = self._last.get(signal)
        if last is None or ts >= last[1]:
            self._last[signal] = (direction, ts)


class MonitorSet:
    """The monitors of every signal, made on a signal's first value: the detector is the one
    of the first glob in ``detectors`` that matches the signal (``adwin`` when none does),
    with its parameters from ``params``. Calibration signals keep predictions and labels."""

    def __init__(self, detectors: Mapping[str, str] | None = None,
                 params: Mapping[str, Mapping[str, float]] | None = None) -> None:
        self._detectors = dict(detectors or {})
        self._params = {name: dict(p) for name, p in (params or {}).items()}
        self.monitors: dict[str, Monitor] = {}

    def detector_for(self, signal: str) -> str:
        return next((name for glob, name in self._detectors.items()
                     if fnmatch.fnmatchcase(signal, glob)), DEFAULT_DETECTOR)

    def update(self, signal: str, values: np.ndarray, predictions: np.ndarray | None = None,
               labels: np.ndarray | None = None) -> list[Detection]:
        monitor = self.monitors.get(signal)
        if monitor is None:
            detector = self.detector_for(signal)
            monitor = self.monitors[signal] = Monitor(
                signal, detector, self._params.get(detector, {}),
                paired=predictions is not None)
        return monitor.update(values, predictions, labels)
