"""Section ``redis_outage``: the feature store's Redis killed with SIGKILL mid-stream and, after
the outage, restarted on the same port from its append-only file (fsynced on every write, so it
lost nothing it acknowledged). The worker is left alone: it must stall, not drop or double, and
catch up. Its ``/health`` is polled throughout the outage."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections import Counter
from typing import Any

from bench.faults.config import FaultsConfig
from bench.faults.event_stream import (
    Produced,
    Progress,
    compare_stored,
    known_stream,
    produce_paced,
)
from bench.faults.features import features_worker
from bench.faults.kills import Lives
from bench.harness import Environment, environment
from stream.settings import Settings

HEALTH_INTERVAL_S = 0.25


def redis_outage_section(settings: Settings, config: FaultsConfig) -> dict[str, Any]:
    with environment(settings, "faults-outage", durable_redis=True) as env:
        return asyncio.run(_run(env, config))


async def _run(env: Environment, config: FaultsConfig) -> dict[str, Any]:
    stream = known_stream(config.events, config.users, config.items, config.item_upserts,
                          env.settings.embedding_dim, config.seed + 1, uuid.uuid4().hex[:6])
    lives = Lives(features_worker(env, config))
    produced = Produced()
    progress = Progress(env, produced, lives.t0)
    await lives.start()
    sampler = asyncio.ensure_future(progress.run())
    producing = asyncio.ensure_future(
        produce_paced(env, stream, config.outage_s + 2 * config.outage_lead_s, produced))
    statuses: Counter[str] = Counter()
    try:
        await asyncio.sleep(config.outage_lead_s)
        lag_before = progress.lag
        down = time.monotonic()
        env.redis.kill()
        watching = asyncio.ensure_future(_watch_health(lives, statuses))
        await asyncio.sleep(config.outage_s)
        env.redis.launch()
        await asyncio.to_thread(env.redis.wait_ready)
        outage_s = time.monotonic() - down
        watching.cancel()
        await asyncio.gather(watching, return_exceptions=True)
        exited = not lives.worker.alive()
        if exited:  # so that what it left can still be checked
            await lives.start()
        await producing
        back = time.monotonic()
        caught_up = await progress.caught_up(config.catch_up_timeout_s)
        catch_up_s = time.monotonic() - back
    finally:
        sampler.cancel()
        await asyncio.gather(sampler, producing, return_exceptions=True)
        lives.worker.stop()
    comparison = await compare_stored(env, stream)
    return {
        **{key: comparison.pop(key) for key in ("events_lost", "events_double_counted")},
        "outage_s": round(outage_s, 3),
        "health_503_seen": statuses["503"] > 0,
        "health_during_outage": dict(statuses),
        "events": len(stream.events),
        "caught_up": caught_up,
        "catch_up_after_production_s": round(catch_up_s, 3),
        "lag_before_outage": lag_before,
        "worker_exited_during_outage": exited,
        "redis": "SIGKILL, restarted on the same port from its append-only file "
                 "(appendfsync always)",
        "worker_roles": "features",
        **comparison,
        "worker_log": str(lives.worker.log_path),
    }


async def _watch_health(lives: Lives, statuses: Counter[str]) -> None:
    while True:
        status = await asyncio.to_thread(lives.worker.status, "/health")
        statuses["no_answer" if status is None else str(status)] += 1
        await asyncio.sleep(HEALTH_INTERVAL_S)
