"""Section ``features``: a features worker killed with SIGKILL at random moments while a known
stream is produced and caught up, then every entity's counters against the closed form."""

from __future__ import annotations

import asyncio
import uuid
from typing import Any

import numpy as np

from bench.faults.config import FaultsConfig
from bench.faults.event_stream import (
    KnownStream,
    Produced,
    Progress,
    catch_up_per_s,
    compare_stored,
    known_stream,
    produce_paced,
    recovery_s,
)
from bench.faults.kills import Lives
from bench.faults.plot import recovery_png
from bench.features import raw_pass
from bench.harness import Environment, environment, median
from stream.runtime.worker_process import WorkerProcess
from stream.settings import Settings

# Measured here: a restarted worker commits its first batch ~2.4 s after /health says 200
# (the consumer group hands it partitions only then).
JOIN_S = 2.5


def features_section(settings: Settings, config: FaultsConfig) -> dict[str, Any]:
    with environment(settings, "faults-features") as env:
        return asyncio.run(_run(env, config))


def features_worker(env: Environment, config: FaultsConfig) -> WorkerProcess:
    """A worker of the features role alone."""
    return WorkerProcess(config.worker_settings(env.settings, "features"), env.bootstrap)


async def _run(env: Environment, config: FaultsConfig) -> dict[str, Any]:
    rng = np.random.default_rng(config.seed)
    stream = known_stream(config.events, config.users, config.items, config.item_upserts,
                          env.settings.embedding_dim, config.seed, uuid.uuid4().hex[:6])
    lives = Lives(features_worker(env, config))
    produced = Produced()
    progress = Progress(env, produced, lives.t0)
    first_start_s = await lives.start()
    # Production spans most of the kill phase's expected length; the last kills fall after it.
    life_s = first_start_s + JOIN_S + sum(config.uptime_s) / 2
    production_s = config.production_share * config.kills * life_s
    sampler = asyncio.ensure_future(progress.run())
    producing = asyncio.ensure_future(produce_paced(env, stream, production_s, produced))
    produced_at = lives.now()
    try:
        await lives.kill_repeatedly(
            config.kills, config.uptime_s, rng, progress.moved_since,
            lambda: {"lag": progress.lag, "while_producing": not producing.done()})
        produced_s = await producing
        caught_up = await progress.caught_up(config.catch_up_timeout_s)
        caught_up_at = lives.now()
    finally:
        sampler.cancel()
        await asyncio.gather(sampler, producing, return_exceptions=True)
        lives.worker.stop()
    comparison = await compare_stored(env, stream)
    raw_per_s = await raw_pass(env.settings, env.bootstrap, len(stream.events),
                               f"{env.settings.topic_prefix}-raw")
    figures = _figures(stream, lives, progress, comparison, raw_per_s, produced_at,
                       produced_s, caught_up, caught_up_at, first_start_s)
    if config.png is not None:
        figures |= recovery_png(config.png, progress.samples, lives.kills, (
            f"features: {figures['kills']} kills -9, {figures['events_lost']} lost, "
            f"{figures['events_double_counted']} double counted"))
    return figures


def _figures(stream: KnownStream, lives: Lives, progress: Progress, comparison: dict[str, Any],
             raw_per_s: float, produced_at: float, produced_s: float, caught_up: bool,
             caught_up_at: float, first_start_s: float) -> dict[str, Any]:
    production_per_s = len(stream.events) / produced_s
    # More waiting than 0.3 s of production (three samples, and the 100 ms commit interval):
    # a backlog, not the live edge.
    backlog = int(0.3 * production_per_s) + 1
    catch_up = catch_up_per_s(progress.samples, backlog)
    recovery = recovery_s(progress.samples, [k["at_s"] for k in lives.kills], backlog)
    last_healthy = lives.lives[-1].healthy or caught_up_at
    kills = lives.summary()
    return {
        **{key: comparison.pop(key) for key in ("events_lost", "events_double_counted")},
        "kills": kills.pop("kills"),
        "events": len(stream.events),
        "caught_up": caught_up,
        "kills_while_producing": sum(k["while_producing"] for k in lives.kills),
        "kills_with_backlog": sum(bool(k["lag"]) for k in lives.kills),
        "production_per_s": round(production_per_s, 1),
        "catch_up_per_s": catch_up,
        "raw_consume_per_s": round(raw_per_s, 1),
        # NaN when a pass is too small to time (everything arrived in its first fetch).
        "throughput_ratio": round(catch_up / raw_per_s, 4) if raw_per_s else float("nan"),
        "recovery_s": {"median": median(recovery),
                       "max": round(max(recovery, default=float("nan")), 3),
                       "kills_recovered": len(recovery)},
        "first_start_s": round(first_start_s, 3),
        "final_catch_up_s": round(max(caught_up_at - last_healthy, 0.0), 3),
        "production_s": [round(produced_at, 3), round(produced_at + produced_s, 3)],
        "worker_roles": "features",
        **kills,
        **comparison,
        "worker_log": str(lives.worker.log_path),
    }
