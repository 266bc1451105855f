"""``streamrank worker --processes 2``: two scoring processes in one group and on one port."""

from __future__ import annotations

import asyncio
import os
import signal
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import orjson
import pytest

from schemas import RankingResult
from stream.runtime.worker_process import WorkerProcess
from stream.settings import Settings
from tests.integration.harness import publish, read_records, serving_settings
from tests.integration.test_scoring import post_rank, request

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def worker(bootstrap: str, redis_url: str,
           serving_models: tuple[Path, Path]) -> Iterator[tuple[WorkerProcess, Settings]]:
    settings = serving_settings(bootstrap, redis_url, serving_models[0], "procs", partitions=4,
                                processes=2, roles="features,scoring")
    with WorkerProcess(settings, bootstrap) as process:
        yield process, settings


def ranked(process: WorkerProcess, port: int) -> int:
    return int(process.get("/stats", port)["requests_ranked"])


def test_each_process_answers_on_its_own_port_and_all_on_the_shared_one(
        worker: tuple[WorkerProcess, Settings]) -> None:
    process, _ = worker
    pids = [process.get("/health", port)["pid"] for port in process.process_ports]
    assert len(set(pids)) == 2 and process.process is not None
    assert process.process.pid not in pids  # the supervisor serves nothing itself
    assert process.get("/health")["pid"] in pids
    roles = [set(process.get("/health", port)["consumers"]) for port in process.process_ports]
    assert "features" in roles[0] and "features" not in roles[1]  # one runs every role
    assert all("scoring" in r for r in roles)


def listening_hosts(port: int) -> set[str]:
    """IPv4 addresses with a socket listening on ``port`` (from /proc/net/tcp: state 0A)."""
    hosts = set()
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        local, state = line.split()[1], line.split()[3]
        address, hex_port = local.split(":")
        if state == "0A" and int(hex_port, 16) == port:
            hosts.add(".".join(str(b) for b in reversed(bytes.fromhex(address))))
    return hosts


def test_every_port_is_bound_to_web_host_only(worker: tuple[WorkerProcess, Settings]) -> None:
    """Faust binds 0.0.0.0 unless told: STREAMRANK_WEB_HOST=127.0.0.1 must mean loopback."""
    process, _ = worker
    for port in (process.port, *process.process_ports):
        assert listening_hosts(port) == {"127.0.0.1"}


def test_topic_requests_spread_over_the_processes_each_answered_once(
        worker: tuple[WorkerProcess, Settings]) -> None:
    process, settings = worker
    before = [ranked(process, port) for port in process.process_ports]
    bodies = [(f"user{k}", request(user=f"user{k}")) for k in range(40)]  # every partition
    asyncio.run(publish(settings, "requests", bodies))
    deadline = time.monotonic() + 30
    while sum(ranked(process, p) for p in process.process_ports) - sum(before) < len(bodies):
        assert time.monotonic() < deadline, "some requests were not ranked"
        time.sleep(0.2)
    after = [ranked(process, port) for port in process.process_ports]
    assert all(a > b for a, b in zip(after, before, strict=True))  # both took partitions
    answered = Counter(r.request_id for r in asyncio.run(
        read_records(settings, "rankings", RankingResult, timeout_s=3)))
    sent = {orjson.loads(body)["request_id"] for _, body in bodies}
    assert set(answered) == sent and set(answered.values()) == {1}


def test_http_connections_spread_over_the_processes(
        worker: tuple[WorkerProcess, Settings]) -> None:
    process, _ = worker
    before = [ranked(process, port) for port in process.process_ports]
    for _ in range(40):  # a new connection each: the kernel hashes each to one process
        status, _ = post_rank(process.port, request())
        assert status == 200
    after = [ranked(process, port) for port in process.process_ports]
    assert sum(after) - sum(before) == 40
    assert all(a > b for a, b in zip(after, before, strict=True))


def test_a_process_killed_takes_the_worker_down_loudly(
        worker: tuple[WorkerProcess, Settings]) -> None:
    """Last in this module: it ends the module's worker."""
    process, _ = worker
    pids = [process.get("/health", port)["pid"] for port in process.process_ports]
    os.kill(pids[1], signal.SIGKILL)
    assert process.process is not None
    assert process.process.wait(timeout=40) == 128 + signal.SIGKILL
    for pid in pids:  # the other process was stopped too: nothing serves on half a worker
        with pytest.raises(ProcessLookupError):
            os.kill(pid, 0)
    assert "worker process 1" in process.log_path.read_text()
