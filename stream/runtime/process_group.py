"""``streamrank worker --processes N``: one worker as N processes on one machine.

One event loop bounds a worker at the Python it runs per request, whatever the cores. Scoring
is the role that needs more: process 0 runs every configured role, processes 1..N-1 only
scoring, all in one consumer group (the requests' partitions spread over them) and on one web
port through ``SO_REUSEPORT`` (the kernel spreads HTTP connections over them). Process k also
answers alone on ``web_port + 1 + k``, for probes and Prometheus.

The processes are supervised as one: when one exits, the others are stopped and the command
exits with its code, so an orchestrator restarts the whole worker rather than serving on with
a process missing. Each child dies with this process (SIGKILL: a child whose embedded broker
went with us would hang in a clean stop), and its offsets are committed only after its effects
are durable, so that is safe.
"""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import time
from functools import partial
from types import FrameType

from stream.runtime.processes import die_with_parent
from stream.settings import Settings

log = logging.getLogger(__name__)

STOP_TIMEOUT_S = 30.0
_POLL_S = 0.2


def process_settings(settings: Settings, index: int) -> Settings:
    """The settings of process ``index`` of ``settings.processes``. Unless set, the cores are
    shared out as onnxruntime intra-op threads: N processes each with a thread per core
    would run N times more threads than cores, and every model run would wait on the others'."""
    threads = settings.scorer_threads or max(1, (os.cpu_count() or 1) // settings.processes)
    return settings.model_copy(update={
        "processes": 1,
        "roles": settings.roles if index == 0 else "scoring",
        "web_reuse_port": True,
        "process_port": settings.web_port + 1 + index,
        "scorer_threads": threads})


def run_processes(settings: Settings, bootstrap: str) -> int:
    """Run the processes until a signal stops them (0) or one of them exits (its code, or 1
    if it exited 0 unasked)."""
    inherited = {k: v for k, v in os.environ.items() if not k.startswith("STREAMRANK_")}
    children = [
        subprocess.Popen(
            [sys.executable, "-m", "stream.cli", "worker"],
            env={**inherited, **process_settings(settings, k).as_env(),
                 "STREAMRANK_BROKER_URL": bootstrap},
            preexec_fn=partial(die_with_parent, signal.SIGKILL))
        for k in range(settings.processes)]
    stopping: list[int] = []

    def stop(signum: int, frame: FrameType | None) -> None:
        stopping.append(signum)

    previous = {s: signal.signal(s, stop) for s in (signal.SIGTERM, signal.SIGINT)}
    try:
        log.info("worker processes started: %s (web port %d shared; process k alone on %d+k)",
                 ", ".join(str(c.pid) for c in children), settings.web_port,
                 settings.web_port + 1)
        while not stopping:
            exited = [(k, c.returncode) for k, c in enumerate(children) if c.poll() is not None]
            if exited:
                index, code = exited[0]
                log.error("worker process %d (pid %d) exited with code %s; stopping the others",
                          index, children[index].pid, code)
                # A child killed by a signal exits as a shell reports it: 128 + the signal.
                return 128 - code if code < 0 else code or 1
            time.sleep(_POLL_S)
        return 0
    finally:
        _stop_all(children)
        for signum, handler in previous.items():
            signal.signal(signum, handler)


def _stop_all(children: list[subprocess.Popen[bytes]]) -> None:
    """SIGTERM to every child at once, then SIGKILL to those still there after the timeout."""
    for child in children:
        if child.poll() is None:
            child.terminate()
    deadline = time.monotonic() + STOP_TIMEOUT_S
    for child in children:
        try:
            child.wait(timeout=max(deadline - time.monotonic(), 0.0))
        except subprocess.TimeoutExpired:
            child.kill()
            child.wait()
