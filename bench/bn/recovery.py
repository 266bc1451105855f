"""How much of a shift's cost the adaptive arm wins back, and how soon: the figures of one
scenario, from the three arms' click predictions on the same rows after the change."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from models.metrics import log_loss

WINDOW = 2000  # requests per point of the recovery curve
STEP = 500


@dataclass(frozen=True)
class ArmPredictions:
    """Per shown row after the change, in served order: the truth and each arm's click."""

    request: np.ndarray  # int [rows]: requests since the change
    truth: np.ndarray
    frozen: np.ndarray
    adaptive: np.ndarray
    retrained: np.ndarray

    def losses(self, rows: slice | np.ndarray = slice(None)) -> dict[str, float]:
        return {arm: log_loss(self.truth[rows], getattr(self, arm)[rows])
                for arm in ("frozen", "adaptive", "retrained")}


def recovery(losses: dict[str, float]) -> float:
    """(frozen - adaptive) / (frozen - retrained): 1 is as good as retraining, 0 no better
    than the trained statistics, below 0 worse."""
    gap = losses["frozen"] - losses["retrained"]
    return (losses["frozen"] - losses["adaptive"]) / gap if gap > 0 else 0.0


def curve(arms: ArmPredictions) -> list[dict[str, float]]:
    """Log loss of each arm over sliding windows of requests after the change."""
    last = int(arms.request.max()) + 1
    points = []
    for start in range(0, max(last - WINDOW, 0) + 1, STEP):
        rows = (arms.request >= start) & (arms.request < start + WINDOW)
        losses = arms.losses(rows)
        points.append({"end_request": start + WINDOW, **{k: round(v, 6)
                                                          for k, v in losses.items()},
                       "recovery": round(recovery(losses), 4)})
    return points


def events_to_recover(points: list[dict[str, float]], final: float) -> int | None:
    """Requests after the change until every later window recovers at least 90% of the final
    recovery; None when the final recovery is not positive (nothing to reach)."""
    if final <= 0:
        return None
    for k, point in enumerate(points):
        if all(p["recovery"] >= 0.9 * final for p in points[k:]):
            return int(point["end_request"])
    return None
