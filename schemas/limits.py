"""Deployment limits that validation enforces; the runtime builds them from settings."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field

# 2000-01-01T00:00:00Z: anything earlier is a unit or clock error, not an event.
EARLIEST_PLAUSIBLE_TS = 946_684_800.0


@dataclass(frozen=True)
class Limits:
    embedding_dim: int = 32
    max_candidates: int = 1000
    max_ads: int = 50
    max_ad_slots: int = 20
    max_metadata_entries: int = 32
    max_future_skew_s: float = 3600.0
    min_ts: float = EARLIEST_PLAUSIBLE_TS
    now: Callable[[], float] = field(default=time.time, compare=False)
