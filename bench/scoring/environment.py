"""One pass's environment: a broker (fresh, unless one is configured), this prefix's topics and
store, the worker under test serving the bench's model, the echo, and optionally a side worker;
all of it removed afterwards."""

from __future__ import annotations

import asyncio
import contextlib
import os
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from bench.harness import create_topics, delete_topics, drop_store
from bench.scoring.bare import worker_model
from bench.scoring.catalogue import Catalogue, populate_store
from bench.scoring.config import ScoringBenchConfig
from bench.scoring.echo import ECHO_TOPICS, EchoProcess, echo_topic
from models.scorer import Manifest
from stream.errors import BenchFailed
from stream.runtime.environment import broker
from stream.runtime.worker_process import WorkerProcess
from stream.settings import Settings

# The roles on the scoring path: outcomes, which reads every ranking, runs as a service of its
# own in a deployment (docker-compose.yml), and would take this worker's CPU here.
SCORING_PATH_ROLES = "features,scoring"


@dataclass
class Environment:
    """What a pass measures with: the settings of this prefix, the broker's address, the
    catalogue in the store, and the processes."""

    settings: Settings
    bootstrap: str
    config: ScoringBenchConfig
    catalogue: Catalogue
    manifest: Manifest
    worker: WorkerProcess
    echo: EchoProcess
    side: WorkerProcess | None = None
    rng: np.random.Generator = field(init=False)

    def __post_init__(self) -> None:
        self.rng = np.random.default_rng(self.config.seed + 1)

    def worker_alive(self) -> None:
        """Raise when the worker died: its answers would never come."""
        process = self.worker.process
        if process is None or process.poll() is not None:
            raise BenchFailed(f"the worker exited; see {self.worker.log_path}")

    def cpu_s(self) -> tuple[float, float]:
        """CPU seconds spent so far by the scoring worker and by the side worker."""
        return _cpu_s(self.worker), _cpu_s(self.side)

    def describe_worker(self) -> dict[str, Any]:
        """What the worker really ran: provider and threads from its log, and no torch."""
        version = self.manifest.version
        provider, threads = worker_model(Path(self.worker.log_path), version, self.settings)
        return {"model_version": version, "provider": provider, "intra_op_threads": threads,
                "worker_imports_torch": any(_maps_torch(pid) for pid in self.worker.pids())}


@contextlib.contextmanager
def environment(settings: Settings, config: ScoringBenchConfig, manifest: Path
                ) -> Iterator[Environment]:
    """Everything a pass needs, up to the worker serving ``manifest``; gone afterwards."""
    with broker(settings) as bootstrap:
        create_topics(bootstrap, settings, [echo_topic(settings, s) for s in ECHO_TOPICS])
        try:
            catalogue = asyncio.run(populate_store(settings, config))
            version = Manifest.load(manifest).version
            worker = worker_process(settings.model_copy(update={
                "processes": config.processes}), bootstrap, manifest, SCORING_PATH_ROLES)
            with contextlib.ExitStack() as stack:
                echo = stack.enter_context(EchoProcess(settings, bootstrap))
                stack.enter_context(worker)
                side = None
                if config.side_roles:
                    side = stack.enter_context(worker_process(settings, bootstrap, manifest,
                                                              config.side_roles))
                worker.wait_for(lambda s: s["model_version"] == version, timeout_s=60.0)
                yield Environment(settings, bootstrap, config, catalogue,
                                  Manifest.load(manifest), worker, echo, side)
        finally:
            asyncio.run(drop_store(settings))
            delete_topics(settings, bootstrap)


def worker_process(settings: Settings, bootstrap: str, manifest: Path, roles: str
                   ) -> WorkerProcess:
    """The worker serving ``manifest``, with this run's settings (passed to the child as
    ``STREAMRANK_*`` variables); the model's directory is the model dir, so that BatchNorm
    statistics written beside it are trusted."""
    return WorkerProcess(settings.model_copy(update={
        "model_manifest": manifest, "roles": roles,
        "model_dir": manifest.parent.parent.resolve()}), bootstrap)


def _cpu_s(process: WorkerProcess | None) -> float:
    """CPU seconds (user and system) a worker's processes have spent; 0 when there is none."""
    if process is None or process.process is None:
        return 0.0
    spent = 0
    for pid in process.pids():
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        spent += int(fields[11]) + int(fields[12])
    return spent / os.sysconf("SC_CLK_TCK")


def _maps_torch(pid: int) -> bool:
    """Whether a worker process has libtorch mapped (it must not)."""
    try:
        return "libtorch" in Path(f"/proc/{pid}/maps").read_text()
    except OSError:  # gone: it maps nothing
        return False
