"""Waiting for a child to listen: its early death is reported at once, with its exit code."""

from __future__ import annotations

import socket
import subprocess
import sys
from collections.abc import Iterator

import pytest

from stream.errors import BrokerUnavailable
from stream.runtime.broker import wait_for_port


@pytest.fixture
def listening_port() -> Iterator[int]:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        yield int(sock.getsockname()[1])


def test_a_child_that_dies_before_listening_is_reported_with_its_exit_code() -> None:
    child = subprocess.Popen([sys.executable, "-c", "raise SystemExit(3)"])
    child.wait()
    with pytest.raises(BrokerUnavailable, match="exited with code 3"):
        wait_for_port("127.0.0.1", 9, timeout_s=600, process=child)  # not at the deadline


def test_a_port_answered_for_a_child_that_has_gone_is_refused(listening_port: int) -> None:
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    with pytest.raises(BrokerUnavailable, match="exited with code 0"):
        wait_for_port("127.0.0.1", listening_port, timeout_s=5, process=child)


def test_a_live_child_and_an_answering_port_pass(listening_port: int) -> None:
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        wait_for_port("127.0.0.1", listening_port, timeout_s=5, process=child)
        wait_for_port("127.0.0.1", listening_port, timeout_s=5)
    finally:
        child.kill()
        child.wait()


def test_nothing_listening_fails_at_the_deadline() -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))  # bound, never listening: connections are refused
        port = int(sock.getsockname()[1])
        with pytest.raises(BrokerUnavailable, match="nothing listens"):
            wait_for_port("127.0.0.1", port, timeout_s=0.2)
