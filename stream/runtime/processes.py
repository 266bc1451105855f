"""The child processes we start (broker, workers): started so that they die with us, stopped
politely first, then for sure."""

from __future__ import annotations

import ctypes
import signal
import subprocess
import sys

_PR_SET_PDEATHSIG = 1


def die_with_parent(signum: int = signal.SIGTERM) -> None:
    """Linux: the child gets ``signum`` if we die without cleaning up (SIGKILL, a crash).

    Meant as ``preexec_fn``. The signal follows the thread that forked, not the process, so
    start children from a thread that lives as long as they should (not a pool thread)."""
    if sys.platform.startswith("linux"):
        ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signum)


def stop_process(process: subprocess.Popen[bytes], timeout_s: float) -> None:
    process.terminate()
    try:
        process.wait(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()
