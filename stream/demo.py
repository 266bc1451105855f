"""``streamrank demo``: broker, a worker process and the simulator, end to end, with a report."""

from __future__ import annotations

import asyncio
import logging
import time
from pathlib import Path
from typing import Any

from models.training import DEFAULT_EPOCHS, Dataset, train
from models.world import World, WorldConfig
from stream.runtime.environment import broker, check_store, describe
from stream.runtime.worker_process import WorkerProcess
from stream.scoring.model_kind import publish_model
from stream.settings import Settings
from stream.simulator import Simulator
from stream.training_data import LogReplay

log = logging.getLogger(__name__)

TRAIN_ROWS_PER_RETRAIN = 500_000


def run_demo(settings: Settings, seconds: float, rate: float, warmup_s: float,
             retrain_every_s: float, workdir: Path) -> dict[str, Any]:
    """Warm up on random feeds, train on those logs, publish, then serve the rest of the run,
    retraining on everything logged so far every ``retrain_every_s`` (0: never)."""
    check_store(settings)
    workdir.mkdir(parents=True, exist_ok=True)
    # The demo's models are the ones it trains into its workdir.
    settings = settings.model_copy(update={"model_dir": workdir.resolve()})
    with broker(settings) as bootstrap:
        log.info(describe(bootstrap, settings))
        # The closed loop is about quality, not latency: a 5 ms fetch wait leaves the embedded
        # broker (whose fetch cost grows as it fills) headroom for the whole run.
        serving = settings.model_copy(
            update={"scoring_wait_ms": max(settings.scoring_wait_ms, 5)})
        with WorkerProcess(serving, bootstrap) as worker:
            report = asyncio.run(_closed_loop(settings, bootstrap, worker, seconds, rate,
                                              warmup_s, retrain_every_s, workdir))
            stats = worker.wait_for(
                lambda s: s["events_processed"] + s["duplicates"] + s["dlq"]
                >= report["events_published"] and s["items_upserted"] >= report["items"],
                timeout_s=60.0)
    return {
        "seconds": report["seconds"],
        "requests": report["requests"],
        "events_published": report["events_published"],
        "events_processed": stats["events_processed"],
        "events_per_s": round(stats["events_processed"] / report["seconds"], 1),
        "dlq": stats["dlq"],
        "duplicates": stats["duplicates"],
        "users_with_features": stats["users_with_features"],
        "items_with_features": stats["items_with_features"],
        "requests_ranked": stats["requests_ranked"],
        **report["quality"],
        "model": report["model"],
        "retrained": report["retrained"],
        "broker": "configured" if settings.broker_url else "embedded tansu",
        "store": "redis" if settings.redis_url else "in-memory",
        "worker_log": str(worker.log_path),
    }


async def _closed_loop(settings: Settings, bootstrap: str, worker: WorkerProcess,
                       seconds: float, rate: float, warmup_s: float, retrain_every_s: float,
                       workdir: Path) -> dict[str, Any]:
    logs = workdir / "logs.jsonl"
    logs.unlink(missing_ok=True)
    world = World(WorldConfig(dim=settings.embedding_dim))
    models: list[dict[str, Any]] = []
    replay = LogReplay(settings)
    async with Simulator(settings, bootstrap, world, log_path=logs) as simulator:
        await simulator.publish_catalogue()
        await simulator.run(rate, warmup_s, policy="random")
        remaining = seconds - warmup_s
        while remaining > 0:
            await replay.read(logs)
            models.append(await _train_and_publish(settings, bootstrap, worker,
                                                   replay.dataset(), workdir))
            phase = min(remaining, retrain_every_s or remaining)
            log.info("serving %s for %.0fs", models[-1]["version"], phase)
            await simulator.run(rate, phase, policy="served")
            remaining -= phase
        report = simulator.report
    return {
        "seconds": round(report.seconds, 3),
        "requests": report.requests,
        "items": report.items,
        "events_published": report.events,
        "quality": report.quality(),
        "model": models[0],
        "retrained": [m["version"] for m in models[1:]],
    }


async def _train_and_publish(settings: Settings, bootstrap: str, worker: WorkerProcess,
                             dataset: Dataset, workdir: Path) -> dict[str, Any]:
    """Train on everything logged so far and wait until the worker serves the new version."""
    version = f"demo-{int(time.time() * 1000)}"
    # Traffic pauses while a model trains: fewer passes over a larger log keep each retrain
    # to a bounded number of rows (~15 s on 2 cores).
    epochs = max(1, min(DEFAULT_EPOCHS, TRAIN_ROWS_PER_RETRAIN // len(dataset.features)))
    trained = await asyncio.to_thread(train, dataset, workdir / version, version,
                                      epochs=epochs, progress=False,
                                      signing_key=settings.signing_key)
    update = await publish_model(settings, bootstrap, trained.manifest_path)
    await asyncio.to_thread(worker.wait_for, lambda s: s["model_version"] == update.version,
                            60.0)
    return {"version": update.version, "train_rows": trained.n_train,
            "holdout_rows": trained.n_holdout, "holdout": trained.metrics}
