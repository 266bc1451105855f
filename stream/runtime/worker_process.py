"""``streamrank worker`` as a child process, exactly as a deployment runs it: the demo, the
benches and the tests drive real workers through this one class."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any

import orjson

from stream.errors import WorkerFailed
from stream.runtime.broker import free_port
from stream.runtime.processes import die_with_parent, stop_process
from stream.settings import Settings


class WorkerProcess:
    """The settings travel as ``STREAMRANK_*`` variables. The port and the log stay the same
    across :meth:`kill` and :meth:`start`, so a bench can kill -9 and restart it."""

    def __init__(self, settings: Settings, bootstrap: str) -> None:
        # With several processes, process k also answers alone on port + 1 + k.
        self.processes = settings.processes
        self.port = free_port(1 + self.processes if self.processes > 1 else 1)
        inherited = {k: v for k, v in os.environ.items() if not k.startswith("STREAMRANK_")}
        self.env = {**inherited, **settings.as_env(),
                    "STREAMRANK_BROKER_URL": bootstrap,
                    "STREAMRANK_WEB_HOST": "127.0.0.1", "STREAMRANK_WEB_PORT": str(self.port)}
        handle, name = tempfile.mkstemp(prefix="streamrank-worker-", suffix=".log")
        os.close(handle)
        self.log_path = Path(name)
        self.process: subprocess.Popen[bytes] | None = None

    def __enter__(self) -> WorkerProcess:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def process_ports(self) -> list[int]:
        """The port of each process alone (the shared port, when there is one process)."""
        if self.processes == 1:
            return [self.port]
        return [self.port + 1 + k for k in range(self.processes)]

    def pids(self) -> list[int]:
        """The child and its own children: with several processes, the supervisor and each
        process (Linux: from /proc)."""
        assert self.process is not None
        pid = self.process.pid
        try:
            children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
        except OSError:  # gone
            return [pid]
        return [pid, *(int(child) for child in children)]

    def stop(self) -> None:
        """A clean stop (SIGTERM, then SIGKILL after 30 s) of a child that may be gone."""
        if self.process is not None and self.process.poll() is None:
            stop_process(self.process, timeout_s=30)

    def launch(self) -> None:
        """Start the child and return at once; its log is appended to across restarts."""
        with open(self.log_path, "ab") as log_file:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "stream.cli", "worker"], env=self.env,
                stdout=log_file, stderr=subprocess.STDOUT,
                # A group of its own: a bench pauses a worker of several processes as one.
                process_group=0,
                # SIGKILL: a worker whose broker went with us hangs in a clean stop.
                preexec_fn=partial(die_with_parent, signal.SIGKILL))

    def start(self, timeout_s: float = 90.0) -> None:
        """Start the child and wait until ``/health`` answers 200 (from every process). A child
        that does not get there is killed: left running, it would sit in its consumer groups
        and stall the rebalances of whatever joins them next."""
        self.launch()
        try:
            self.wait_for(lambda _: True, timeout_s=timeout_s, path="/health")
        except BaseException:
            if self.alive():
                self.kill()
            raise

    def kill(self) -> None:
        """SIGKILL: no clean stop, no last commit; what a crash or an OOM kill does."""
        assert self.process is not None
        self.process.kill()
        self.process.wait()

    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def status(self, path: str) -> int | None:
        """The HTTP status ``path`` answers with, or None when nothing answers."""
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.port}{path}",
                                        timeout=2) as response:
                return int(response.status)
        except urllib.error.HTTPError as exc:
            return int(exc.code)
        except (urllib.error.URLError, ConnectionError, TimeoutError):
            return None

    def get(self, path: str, port: int | None = None) -> dict[str, Any]:
        """``path``'s JSON from the shared port, or from one process's ``port``."""
        url = f"http://127.0.0.1:{port or self.port}{path}"
        with urllib.request.urlopen(url, timeout=5) as response:
            payload: dict[str, Any] = orjson.loads(response.read())
            return payload

    def wait_for(self, done: Callable[[dict[str, Any]], bool], timeout_s: float,
                 path: str = "/stats") -> dict[str, Any]:
        """Poll ``path`` of every process until ``done(payload)`` holds for each; fail if the
        worker dies or time runs out. Returns the last process's payload."""
        assert self.process is not None
        deadline = time.monotonic() + timeout_s
        payload: dict[str, Any] = {}
        waiting = list(self.process_ports)
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise WorkerFailed(f"worker exited with {self.process.returncode}; "
                                   f"see {self.log_path}")
            try:
                while waiting:
                    payload = self.get(path, waiting[0])
                    if not done(payload):
                        break
                    waiting.pop(0)
                if not waiting:
                    return payload
            except (urllib.error.URLError, ConnectionError, TimeoutError):
                pass
            time.sleep(0.2)
        raise WorkerFailed(f"worker did not reach the expected state on {path} within "
                           f"{timeout_s:.0f}s (last: {payload}); see {self.log_path}")
