"""The watchdog: every adapted version is on probation against its parent.

Once ``needed`` labelled outcomes with their feature rows have arrived after a version was
promoted, both the version and its parent score those same rows, and the version is rolled
back if its click log loss is worse by more than the margin. Paired on the same rows, the
comparison cannot mistake a change of traffic between two periods for a better or worse
version; rolling back (instead of scoring a shadow copy before promotion) serves the adapted
statistics at once, which is when a shift needs them, and bounds the cost of a bad version by
``needed`` outcomes.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from models.bn import BnStats, Verdict, judge
from stream.bn.versions import AdaptedModel

MAX_ON_PROBATION = 4  # the oldest is dropped unjudged when versions come faster than labels


@dataclass
class Probation:
    version: BnStats
    parent: BnStats
    rows: list[np.ndarray] = field(default_factory=list)
    clicks: list[float] = field(default_factory=list)


class Watchdog:
    def __init__(self, needed: int, margin: float) -> None:
        self.needed = needed
        self.margin = margin
        self.open: list[Probation] = []

    def watch(self, version: BnStats, parent: BnStats) -> None:
        self.open.append(Probation(version, parent))
        del self.open[:-MAX_ON_PROBATION]

    def add(self, row: np.ndarray, click: float) -> None:
        for probation in self.open:
            probation.rows.append(row)
            probation.clicks.append(click)

    def due(self) -> list[Probation]:
        due = [p for p in self.open if len(p.clicks) >= self.needed]
        self.open = [p for p in self.open if len(p.clicks) < self.needed]
        return due

    def clear(self) -> None:
        self.open = []


def verdict(model: AdaptedModel, probation: Probation, margin: float) -> Verdict:
    """Blocking (two sessions are built): run it off the loop."""
    rows = np.asarray(probation.rows, dtype=np.float32)
    click = model.scorer.task_names.index("click")
    probs = model.scorer.with_stats(probation.version).score(rows)[:, click]
    parent_probs = model.scorer.with_stats(probation.parent).score(rows)[:, click]
    return judge(probation.version.version, probation.parent.version,
                 np.asarray(probation.clicks), probs, parent_probs, margin)
