"""``streamrank demo``: broker, a worker process and the simulator, end to end, with a report."""

from __future__ import annotations

import asyncio
import logging
import os
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from typing import Any

import orjson

from models.world import World, WorldConfig
from stream.broker import free_port
from stream.errors import WorkerFailed
from stream.runtime import broker, check_store, describe
from stream.settings import Settings
from stream.simulator import Simulator

log = logging.getLogger(__name__)


def run_demo(settings: Settings, seconds: float, rate: float) -> dict[str, Any]:
    check_store(settings)
    with broker(settings) as bootstrap:
        log.info(describe(bootstrap, settings))
        with WorkerProcess(settings, bootstrap) as worker:
            world = World(WorldConfig(dim=settings.embedding_dim))
            simulator = Simulator(settings, bootstrap, world)
            report = asyncio.run(simulator.run(rate, seconds))
            stats = worker.wait_for(
                lambda s: s["events_processed"] + s["duplicates"] + s["dlq"] >= report.events
                and s["items_upserted"] >= report.items,
                timeout_s=60.0,
            )
    return {
        "seconds": round(report.seconds, 3),
        "requests": report.requests,
        "events_published": report.events,
        "events_processed": stats["events_processed"],
        "events_per_s": round(stats["events_processed"] / report.seconds, 1),
        "dlq": stats["dlq"],
        "duplicates": stats["duplicates"],
        "users_with_features": stats["users_with_features"],
        "items_with_features": stats["items_with_features"],
        "broker": "configured" if settings.broker_url else "embedded tansu",
        "store": "redis" if settings.redis_url else "in-memory",
        "worker_log": str(worker.log_path),
    }


class WorkerProcess:
    """``streamrank worker`` as a child process, exactly as a deployment runs it."""

    def __init__(self, settings: Settings, bootstrap: str) -> None:
        self.port = free_port()
        self.env = {**os.environ, "STREAMRANK_BROKER_URL": bootstrap,
                    "STREAMRANK_WEB_HOST": "127.0.0.1", "STREAMRANK_WEB_PORT": str(self.port)}
        handle, self.log_path = tempfile.mkstemp(prefix="streamrank-worker-", suffix=".log")
        os.close(handle)
        self.process: subprocess.Popen[bytes] | None = None

    def __enter__(self) -> WorkerProcess:
        with open(self.log_path, "wb") as log_file:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "stream.cli", "worker"], env=self.env,
                stdout=log_file, stderr=subprocess.STDOUT)
        self.wait_for(lambda _: True, timeout_s=90.0, path="/health")
        return self

    def __exit__(self, *exc: object) -> None:
        assert self.process is not None
        self.process.terminate()
        try:
            self.process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()

    def get(self, path: str) -> dict[str, Any]:
        url = f"http://127.0.0.1:{self.port}{path}"
        with urllib.request.urlopen(url, timeout=5) as response:
            payload: dict[str, Any] = orjson.loads(response.read())
            return payload

    def wait_for(self, done: Any, timeout_s: float, path: str = "/stats") -> dict[str, Any]:
        """Poll ``path`` until ``done(payload)``; fail if the worker dies or time runs out."""
        assert self.process is not None
        deadline = time.monotonic() + timeout_s
        payload: dict[str, Any] = {}
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise WorkerFailed(f"worker exited with {self.process.returncode}; "
                                   f"see {self.log_path}")
            try:
                payload = self.get(path)
                if done(payload):
                    return payload
            except (urllib.error.URLError, ConnectionError, TimeoutError):
                pass
            time.sleep(0.2)
        raise WorkerFailed(f"worker did not reach the expected state on {path} within "
                           f"{timeout_s:.0f}s (last: {payload}); see {self.log_path}")
