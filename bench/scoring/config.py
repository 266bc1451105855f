"""What one run of the scoring bench measures, and how long each of its passes lasts."""

from __future__ import annotations

from dataclasses import dataclass

DEFAULT_REDIS = "redis://127.0.0.1:6379/0"
BENCH_FETCH_WAIT_MS = 1  # the bench's own consumers, on the latency path
HTTP_CLIENTS = 8  # the concurrent clients of the http8 path
RESULT_N = 20
# The points the report names: the old "latency at half of max" and the in-worker bar's rate.
HALF_LOAD_PCT = 50
INWORKER_BAR_PCT = 25


@dataclass(frozen=True)
class ScoringBenchConfig:
    """Sizes and durations; the defaults keep ``--candidates 100,500,1000`` to ~10 minutes on
    a 2-core machine, most of it the set-up of 18 environments (a worker takes ~15 s to join
    its groups)."""

    candidates: tuple[int, ...] = (100, 500, 1000)
    repeats: int = 3                   # maximum-load passes per size; medians
    throughput_seconds: float = 3.0    # per max-load pass
    # The curve: offered rates in % of the median maximum, each measured once per path.
    offered_pcts: tuple[int, ...] = (10, 25, 50, 75)
    # Rates from this % up get a fresh environment each; those below share one, since they
    # leave few record batches in the broker (see ``run_scoring_bench``).
    fresh_from_pct: int = 50
    latency_seconds: float = 3.0       # per paced pass (each path)
    min_latency_requests: int = 50     # per paced pass, even when the rate is low
    max_latency_requests: int = 3000   # per paced pass
    http_serial_requests: int = 1000   # back to back, one client
    http_serial_seconds: float = 20.0  # ... or until this long has passed (with the floor)
    bare_seconds: float = 0.5          # per bare pass and shape
    warmup_requests: int = 32
    items: int = 5000
    users: int = 1000
    events: int = 20_000
    pause_idle: bool = True            # SIGSTOP the path not being measured
    seed: int = 0
    # Roles of a second worker process beside the measured one, as a deployment runs them
    # (docker-compose.yml): what they cost the scoring path on the same machine.
    side_roles: str = ""
    processes: int = 1                 # the measured worker's processes (Settings.processes)

    def __post_init__(self) -> None:
        pcts = self.offered_pcts
        if list(pcts) != sorted(set(pcts)) or not all(0 < p <= 100 for p in pcts):
            raise ValueError("offered_pcts must be increasing percentages in (0, 100]")
        if not {HALF_LOAD_PCT, INWORKER_BAR_PCT} <= set(pcts):
            raise ValueError(f"offered_pcts must hold {INWORKER_BAR_PCT} and {HALF_LOAD_PCT}: "
                             "the report's figures are read at those points")
        if self.processes < 1:
            raise ValueError("processes must be at least 1")

    def environment_groups(self) -> list[tuple[int, ...]]:
        """The offered pcts measured together in one environment, in order."""
        low = tuple(p for p in self.offered_pcts if p < self.fresh_from_pct)
        return ([low] if low else []) + [(p,) for p in self.offered_pcts
                                         if p >= self.fresh_from_pct]

    def paced_count(self, rate: float, longest_s: float) -> int:
        """Requests in one paced pass at ``rate``/s, at most ``longest_s`` of them (a paused
        worker must not be dropped from its group)."""
        return max(1, int(min(max(rate * self.latency_seconds, self.min_latency_requests),
                              self.max_latency_requests, rate * longest_s)))


def parse_candidates(text: str, limit: int) -> tuple[int, ...]:
    """``"100,500,1000"`` -> ``(100, 500, 1000)``; ValueError with a readable message."""
    try:
        sizes = tuple(int(part) for part in text.split(",") if part.strip())
    except ValueError:
        raise ValueError(f"--candidates must be comma-separated integers, not {text!r}") from None
    if not sizes or any(not 1 <= size <= limit for size in sizes):
        raise ValueError(f"--candidates must be between 1 and {limit} "
                         "(STREAMRANK_MAX_CANDIDATES) each")
    return sizes
