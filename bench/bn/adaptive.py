"""The adaptive arm: the BN role's own steps (:mod:`models.bn`, :mod:`stream.bn.watchdog`)
replayed over served requests in order, with no broker.

Each request is scored with the statistics published before it; its logged rows then join
the batch of the next update, and its labelled rows the watchdog's probations. What the role
does between these steps (files, topics, hot swap) is the integration tests' business; what
decides quality is here, and it is the same code.
"""

from __future__ import annotations

import zlib
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np

from bench.bn.play import Served
from models.bn import Adapted, BnStats, Guards, Moments, adapt
from models.bn_batch import RowBatch
from models.ranking_features import TASK_NAMES
from models.scorer import OnnxScorer
from stream.bn.versions import AdaptedModel
from stream.bn.watchdog import Watchdog, verdict

CLICK = TASK_NAMES.index("click")


@dataclass
class AdaptiveArm:
    """``log_rate``: the share of requests in the feature log (by request, as serving picks)."""

    model: AdaptedModel
    guards: Guards
    batch: RowBatch
    watchdog: Watchdog
    log_rate: float
    current: BnStats = field(init=False)
    scorer: OnnxScorer = field(init=False)
    caught: Counter[str] = field(default_factory=Counter)  # guards and watchdog, by reason
    versions: list[tuple[int, str]] = field(default_factory=list)  # (request, version) swaps
    _number: int = 0

    def __post_init__(self) -> None:
        self.current = self.model.trained
        self.scorer = self.model.scorer

    def predict(self, served: Sequence[Served]) -> np.ndarray:
        """Click probabilities of every shown row, in order, as the adapting role serves them."""
        click = self.scorer.task_names.index("click")
        out = []
        for request in served:
            out.append(self.scorer.score(request.rows)[:, click])
            if zlib.crc32(str(request.request_index).encode()) < self.log_rate * 2**32:
                self._observe(request)
        return np.concatenate(out)

    def _observe(self, request: Served) -> None:
        self.caught["rows_dropped"] += self.batch.add(request.rows, request.elapsed_s)
        for row, click in zip(request.rows, request.labels[:, CLICK], strict=True):
            self.watchdog.add(row, float(click))
        for probation in self.watchdog.due():
            judged = verdict(self.model, probation, self.watchdog.margin)
            self.caught["watchdog_judged"] += 1
            if judged.worse and probation.version.version == self.current.version:
                self.caught["watchdog_rollback"] += 1
                self._install(probation.parent.layers, request.request_index)
        if self.batch.due():
            result = adapt(self.current, self.model.trained, self.batch.take(), self.guards,
                           self.model.taps)
            self.caught["non_finite_rows"] += result.rows_rejected
            if isinstance(result, Adapted):
                self.caught["channels_held"] += result.channels_held
                parent = self.current
                self._install(result.layers, request.request_index)
                self.watchdog.watch(self.current, parent)
            else:
                self.caught[result.reason] += 1

    def _install(self, layers: Mapping[str, Moments], request: int) -> None:
        self._number += 1
        self.current = self.current.successor(self._number, layers=layers)
        self.scorer = self.model.scorer.with_stats(self.current)
        self.versions.append((request, self.current.version))
