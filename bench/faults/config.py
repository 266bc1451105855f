"""Sizes of a fault run and the worker it runs; the defaults meet the issue's minimums (100k
events, 20 feature kills, 10 scoring kills, a 30 s outage) in a few minutes on 2 cores."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from stream.settings import Settings


@dataclass(frozen=True)
class FaultsConfig:
    events: int = 100_000               # per features and redis_outage section
    kills: int = 20                     # features section
    scoring_kills: int = 10
    outcome_kills: int = 10
    outage_s: float = 30.0
    users: int = 10_000
    items: int = 5_000
    item_upserts: int = 500
    # How long a worker works (from its first progress) before its kill -9: uniform. Short,
    # so that most kills land while it works off the backlog its restart left.
    uptime_s: tuple[float, float] = (0.1, 2.5)
    # Events are produced over this share of the kill phase's expected length, so that the
    # last kills fall after production, on the catch-up.
    production_share: float = 0.75
    outage_lead_s: float = 10.0         # events flow this long before Redis dies, and after
    request_rate: float = 100.0         # ranking requests/s, steady
    request_ttl_s: float = 5.0
    ranking_rate: float = 50.0          # rankings/s in the outcomes section, 1-4 events each
    candidates: int = 20
    catch_up_timeout_s: float = 60.0
    # A member killed with SIGKILL holds its partitions until its session times out; the
    # bench's worker uses short timeouts so that a restart takes seconds, not tens.
    session_timeout_ms: int = 3000
    rebalance_timeout_ms: int = 1000
    seed: int = 0
    png: Path | None = None             # the features section's recovery curve

    def worker_settings(self, settings: Settings, roles: str) -> Settings:
        return settings.model_copy(update={
            "roles": roles, "request_ttl_s": self.request_ttl_s,
            "consumer_session_timeout_ms": self.session_timeout_ms,
            "consumer_rebalance_timeout_ms": self.rebalance_timeout_ms})
