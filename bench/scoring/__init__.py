"""Ranking requests through the real broker and a real worker process: a latency-throughput
curve per candidates size, and the maximum against bare onnxruntime.

One run sets up everything itself: a unique topic prefix, the broker (embedded tansu unless
``STREAMRANK_BROKER_URL`` is set), a Redis namespace filled with a synthetic catalogue and user
history through the real store API (``catalogue``), an untrained ONNX export of the ranker in a
temp dir (``bare``), the worker as a child process (``stream.runtime.worker_process``) and an
*echo* process (``echo``): the same batch consumer with the same fetch wait, which only copies
each request into a results topic. The echo's round trip is the broker's own floor.

Per candidates size (see ``run_scoring_bench`` for which passes share an environment):

- max (``repeats`` passes, ``passes.maximum``): open loop with many requests in flight, results
  counted from the first one back; and bare: plain ``session.run`` on the provider the worker
  chose, the session built by the worker's own ``OnnxScorer``, on one request's rows and on the
  micro-batch the worker was seen to run. ``ratio`` is the median max over the median bare.
- the curve, at ``offered_pcts`` of the median max requests/s, one pass per path and rate:
  end to end (produce to the result consumed, open loop, ``passes.broker_point``); in-worker,
  from the worker's own histogram over that same pass (``inworker``); the echo at the same
  rate; ``POST /rank`` from 1 and from 8 paced clients (``http_clients``), timed from each
  request's scheduled time.
- ``POST /rank`` from one client back to back (``http_serial_*``), in the last environment,
  each request also sent to the floor (``floor``): a bare aiohttp, Redis and onnxruntime
  service doing the least the same request needs (``http_serial_floor_*``).

The machine is small and shared by broker, Redis, worker and this process, so the path not
being measured is paused (SIGSTOP; the worker for at most half its consumer session timeout):
an idle consumer polling with a 1 ms fetch wait costs ~25% of a core between itself and the
broker. HTTP passes pause the echo; the worker's topic consumer polls on, idle.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import statistics
import tempfile
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

from bench.harness import paused
from bench.scoring import http_clients
from bench.scoring.bare import export_untrained_model
from bench.scoring.catalogue import Catalogue, populate_store
from bench.scoring.config import (
    BENCH_FETCH_WAIT_MS,
    DEFAULT_REDIS,
    HTTP_CLIENTS,
    RESULT_N,
    ScoringBenchConfig,
    parse_candidates,
)
from bench.scoring.echo import EchoProcess
from bench.scoring.environment import Environment, environment
from bench.scoring.floor import floor_server
from bench.scoring.passes import MaxPass, broker_point, in_flight_at_max, maximum
from bench.scoring.plot import curve_png
from bench.scoring.report import CurvePoint, figures
from stream.runtime.environment import check_store
from stream.settings import Settings

__all__ = ["Catalogue", "EchoProcess", "ScoringBenchConfig", "export_untrained_model",
           "parse_candidates", "populate_store", "run_scoring_bench"]

Fresh = Callable[[int, str], contextlib.AbstractContextManager[Environment]]


def run_scoring_bench(settings: Settings, config: ScoringBenchConfig | None = None,
                      png: Path | None = None) -> dict[str, Any]:
    """Per candidates size, ``repeats`` maximum-load passes, then the curve at
    ``offered_pcts`` of their median; the PNG of the curve when ``png`` is given.

    Each maximum pass, and each curve rate from ``fresh_from_pct`` up, runs in a fresh
    environment (broker, topics, store, worker, echo). The embedded broker's work per fetch
    grows with the record batches its partitions hold (tansu has no offset index, and no
    DeleteRecords): at 300 single-record produces/s, its CPU went from 32% to 91% of a core in
    20 s. Measured on one broker, later passes would measure that growth instead of streamrank:
    in one run that shared a broker, the echo's own p99 grew from 15 to 111 ms across the
    passes. The rates below ``fresh_from_pct`` share one environment, lowest first, since a
    worker's start (~15 s of joining groups) is most of an environment's cost, and a pass at
    10% of the maximum leaves a few hundred records. Measured at 100 candidates and 100
    requests/s, in three interleaved pairs, the 25% point after the 10% one read no higher
    than in a fresh environment (echo p99 15.5, 9.7, 9.1 ms against 32.9, 13.2, 9.6; end to
    end 50, 26, 23 against 97, 32, 86): if anything, a fresh worker's first pass is the colder
    one. The HTTP passes add no records.
    """
    config = config or ScoringBenchConfig()
    started = time.monotonic()
    run_id = uuid.uuid4().hex[:8]
    # The request pool's bodies are built once, with their ts: none may expire mid-pass.
    settings = settings.model_copy(update={"redis_url": settings.redis_url or DEFAULT_REDIS,
                                           "request_ttl_s": 86_400.0})
    if max(config.candidates) > min(settings.max_candidates, config.items):
        raise ValueError("more candidates per request than the catalogue or the limit allows")
    check_store(settings)
    load_before = os.getloadavg()
    by_candidates: dict[str, dict[str, Any]] = {}
    prefixes: list[str] = []
    worker: dict[str, Any] = {}
    with tempfile.TemporaryDirectory(prefix="streamrank-bench-scoring-") as tmp:
        manifest = export_untrained_model(Path(tmp), f"bench-{run_id}", settings.signing_key)

        def fresh(candidates: int, phase: str
                  ) -> contextlib.AbstractContextManager[Environment]:
            prefixes.append(f"bench-scoring-{run_id}-c{candidates}-{phase}")
            return environment(settings.model_copy(update={"topic_prefix": prefixes[-1]}),
                               config, manifest)

        for candidates in config.candidates:
            logs: dict[str, str] = {}
            maxima, side = _maxima(fresh, candidates, config, logs)
            max_rps = statistics.median(m.candidates_per_s for m in maxima) / candidates
            points, serial, worker = _curve(fresh, candidates, max_rps, config, logs)
            by_candidates[str(candidates)] = (figures(maxima, points, *serial) | side
                                              | {"worker_logs": logs})
    report = worker | {
        "by_candidates": by_candidates,
        "bare_provider": worker["provider"],
        "processes": config.processes,
        "offered_pcts": list(config.offered_pcts),
        "offered_rate": "percent of the median max_requests_per_s of the max passes",
        "environments": f"fresh per max pass and per offered pct >= {config.fresh_from_pct}; "
                        "the lower pcts share one",
        "result_n": RESULT_N,
        "http_clients": HTTP_CLIENTS,
        "partitions": settings.partitions,
        "scoring_wait_ms": settings.scoring_wait_ms,
        "bench_fetch_wait_ms": BENCH_FETCH_WAIT_MS,
        "scoring_batch_max_requests": settings.scoring_batch_max_requests,
        "in_flight_at_max": in_flight_at_max(settings),
        "repeats": config.repeats,
        "idle_path_paused": config.pause_idle,
        "catalogue": {"items": config.items, "users": config.users, "events": config.events},
        "run_id": run_id,
        "topic_prefixes": prefixes,
        "broker": "configured" if settings.broker_url else "embedded tansu, fresh per pass",
        "store": "redis",
        "cpu_count": os.cpu_count(),
        "load_average_before": [round(x, 2) for x in load_before],
        "elapsed_s": round(time.monotonic() - started, 1),
    }
    if png is not None:
        report |= curve_png(png, by_candidates)
    return report


def _maxima(fresh: Fresh, candidates: int, config: ScoringBenchConfig, logs: dict[str, str]
            ) -> tuple[list[MaxPass], dict[str, Any]]:
    """The maximum-load passes, each in a fresh environment; and what a side worker did
    meanwhile (``bench.bn`` runs the BN role beside the scorer)."""
    maxima: list[MaxPass] = []
    stats_served: list[str] = []  # a side BN role's versions reach the worker
    side_shares: list[float] = []  # the side worker's CPU over the scoring worker's
    for k in range(config.repeats):
        with fresh(candidates, f"max{k}") as env:
            before = env.cpu_s()
            maxima.append(asyncio.run(maximum(env, candidates)))
            spent = [after - start for after, start in zip(env.cpu_s(), before, strict=True)]
            stats_served.append(env.worker.get("/stats")["stats_version"])
            if env.side is not None and spent[0] > 0:
                side_shares.append(spent[1] / spent[0])
            logs[f"max{k}"] = str(env.worker.log_path)
    return maxima, {"stats_version_after_max": stats_served,
                    "side_cpu_share_at_max": round(statistics.median(side_shares), 4)
                    if side_shares else None}


def _curve(fresh: Fresh, candidates: int, max_rps: float, config: ScoringBenchConfig,
           logs: dict[str, str]
           ) -> tuple[list[CurvePoint], tuple[list[float], list[float]], dict[str, Any]]:
    """Every path at each offered rate; then, in the last environment, HTTP back to back
    (the worker's and the floor's) and what the worker ran."""
    points: list[CurvePoint] = []
    groups = config.environment_groups()
    for g, pcts in enumerate(groups):
        phase = "at" + "-".join(str(pct) for pct in pcts)
        with fresh(candidates, phase) as env:
            longest_s = env.settings.consumer_session_timeout_ms / 2000
            for pct in pcts:
                rate = max_rps * pct / 100
                count = config.paced_count(rate, longest_s)
                points.append(asyncio.run(_point(env, candidates, pct, rate, count)))
            logs[phase] = str(env.worker.log_path)
            if g == len(groups) - 1:
                with paused(env.echo.process, config.pause_idle), floor_server(
                        env.manifest, env.settings, env.worker.log_path.with_name(
                            f"floor-{candidates}.log")) as floor_port:
                    serial = asyncio.run(http_clients.serial(env, candidates, floor_port))
                worker = env.describe_worker()
    return points, serial, worker


async def _point(env: Environment, candidates: int, pct: int, rate: float, count: int
                 ) -> CurvePoint:
    """Through the broker (the worker, its histogram, the echo), then over HTTP."""
    broker = await broker_point(env, candidates, rate, count)
    with paused(env.echo.process, env.config.pause_idle):
        http1 = await http_clients.paced(env, candidates, rate, 1, count)
        http8 = await http_clients.paced(env, candidates, rate, HTTP_CLIENTS, count)
    return CurvePoint(pct, rate, broker, http1, http8)
