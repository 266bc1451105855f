"""Killing the worker with SIGKILL at random moments and starting it again, with a record of
every life: when it was launched, healthy and killed."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from bench.harness import median, until_healthy
from stream.runtime.worker_process import WorkerProcess

READY_TIMEOUT_S = 90.0
WORKING_TIMEOUT_S = 30.0  # a life that never gets to work is killed anyway (~7.5 s is usual)


@dataclass
class Life:
    launched: float
    healthy: float | None = None
    working: float | None = None
    killed: float | None = None


@dataclass
class Lives:
    """One worker process, restarted many times; times are seconds since ``t0``."""

    worker: WorkerProcess
    t0: float = field(default_factory=time.monotonic)
    lives: list[Life] = field(default_factory=list)
    kills: list[dict[str, Any]] = field(default_factory=list)
    unexpected_exits: int = 0
    never_worked: int = 0  # lives killed after WORKING_TIMEOUT_S without any progress

    def now(self) -> float:
        return time.monotonic() - self.t0

    async def start(self) -> float:
        """Launch (from the event loop's thread, which outlives the child) and wait until
        ``/health`` says 200; the seconds that took."""
        life = Life(self.now())
        self.lives.append(life)
        self.worker.launch()
        await until_healthy(lambda: self.worker.status("/health"), self.worker.alive,
                            READY_TIMEOUT_S, f"the worker (see {self.worker.log_path})")
        life.healthy = self.now()
        return life.healthy - life.launched

    def kill(self, context: dict[str, Any]) -> None:
        life = self.lives[-1]
        self.worker.kill()
        life.killed = self.now()
        self.kills.append({
            "at_s": round(life.killed, 3),
            "working_s": None if life.working is None else round(life.killed - life.working, 3),
            "launch_to_working_s": None if life.working is None else round(
                life.working - life.launched, 3),
            **context})

    async def kill_repeatedly(self, kills: int, uptime_s: tuple[float, float],
                              rng: np.random.Generator, working: Callable[[float], bool],
                              context: Callable[[], dict[str, Any]]) -> None:
        """``kills`` times: wait until the worker is working (``working(launched)``: it made
        progress since it was launched, or has nothing to do), let it work a uniform random
        time, SIGKILL it, start it again. Counting from ``/health`` instead would kill most
        lives before they consume anything: a restarted worker is healthy seconds before its
        consumer group hands it partitions. A worker that died by itself is restarted and
        counted."""
        for _ in range(kills):
            life = self.lives[-1]
            while not (worked := working(life.launched)) and self.worker.alive() and (
                    self.now() - life.launched < WORKING_TIMEOUT_S):
                await asyncio.sleep(0.02)
            if worked:
                life.working = self.now()
            else:
                self.never_worked += 1
            deadline = time.monotonic() + float(rng.uniform(*uptime_s))
            while time.monotonic() < deadline and self.worker.alive():
                await asyncio.sleep(0.02)
            if not self.worker.alive():
                self.unexpected_exits += 1
                life.killed = self.now()
            else:
                self.kill(context())
            await self.start()

    def summary(self) -> dict[str, Any]:
        restarts = [life.healthy - life.launched for life in self.lives[1:]
                    if life.healthy is not None]
        to_work = [life.working - life.launched for life in self.lives
                   if life.working is not None]
        return {
            "kills": len(self.kills),
            "unexpected_exits": self.unexpected_exits,
            "lives_that_never_worked": self.never_worked,
            "restart_to_healthy_s": {"median": median(restarts),
                                     "max": round(max(restarts, default=float("nan")), 3)},
            "launch_to_working_s": {"median": median(to_work),
                                    "max": round(max(to_work, default=float("nan")), 3)},
            "kill_log": self.kills,
        }
