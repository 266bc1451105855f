"""The worker's HTTP edge, as a client meets it: the API token, load shedding, and logs that hold
no secret. One worker process with a token, a tiny ranking queue, debug logging and a private
password-protected Redis."""

from __future__ import annotations

import asyncio
import contextlib
import re
import subprocess
import time
import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path

import aiohttp
import orjson
import pytest

from stream.demo import WorkerProcess
from stream.runtime.broker import free_port, wait_for_port
from stream.runtime.environment import ensure_topics
from stream.runtime.processes import stop_process
from stream.settings import Settings

pytestmark = pytest.mark.integration

TOKEN = "tok-" + uuid.uuid4().hex
REDIS_PASSWORD = "pw-" + uuid.uuid4().hex
CANDIDATES = [f"i{n}" for n in range(1000)]


@pytest.fixture(scope="module")
def private_redis() -> Iterator[str]:
    """A Redis of this module alone that wants a password."""
    port = free_port()
    process = subprocess.Popen(
        ["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--save", "",
         "--appendonly", "no", "--requirepass", REDIS_PASSWORD],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_for_port("127.0.0.1", port, timeout_s=10, process=process)
        yield f"redis://:{REDIS_PASSWORD}@127.0.0.1:{port}/0"
    finally:
        stop_process(process, timeout_s=5)


@pytest.fixture(scope="module")
def worker(bootstrap: str, private_redis: str) -> Iterator[WorkerProcess]:
    settings = Settings(broker_url=bootstrap, redis_url=private_redis, partitions=2,
                        topic_prefix=f"edge{uuid.uuid4().hex[:8]}", api_token=TOKEN,
                        scoring_batch_max_requests=1, rank_queue_max=2, log_level="debug")
    ensure_topics(bootstrap, settings)
    with WorkerProcess(settings, bootstrap) as process:
        yield process


def body() -> bytes:
    return orjson.dumps({"request_id": uuid.uuid4().hex, "user_id": "u1", "ts": 1.79e9,
                         "candidates": CANDIDATES, "n": 10})


async def post_many(port: int, count: int, authorization: str | None = f"Bearer {TOKEN}",
                    ) -> list[tuple[int, dict[str, str], dict[str, object]]]:
    """``count`` POST /rank at once; each answer's status, headers and JSON body."""
    headers = {"Authorization": authorization} if authorization else {}

    async def post(http: aiohttp.ClientSession) -> tuple[int, dict[str, str], dict[str, object]]:
        async with http.post(f"http://127.0.0.1:{port}/rank", data=body(),
                             headers=headers) as response:
            return response.status, dict(response.headers), await response.json()

    connector = aiohttp.TCPConnector(limit=count)
    async with aiohttp.ClientSession(connector=connector) as http:
        return await asyncio.gather(*(post(http) for _ in range(count)))


def refused(worker: WorkerProcess, reason: str) -> float:
    """``streamrank_http_refused_total`` for ``reason``, from the worker's /metrics."""
    with urllib.request.urlopen(f"http://127.0.0.1:{worker.port}/metrics", timeout=5) as page:
        text = page.read().decode()
    match = re.search(rf'^streamrank_http_refused_total{{reason="{reason}"}} (\S+)$', text, re.M)
    return float(match.group(1)) if match else 0.0


@pytest.mark.parametrize("authorization", [None, "Bearer wrong-token-0123456789", TOKEN,
                                           f"Basic {TOKEN}"],
                         ids=["none", "wrong-token", "no-scheme", "basic-scheme"])
def test_rank_without_the_token_is_unauthorized(worker: WorkerProcess,
                                                authorization: str | None) -> None:
    before = refused(worker, "unauthorized")
    [(status, headers, answer)] = asyncio.run(post_many(worker.port, 1, authorization))
    assert status == 401
    assert answer["error"] == "unauthorized" and "Authorization: Bearer" in str(answer["detail"])
    assert headers["WWW-Authenticate"].startswith("Bearer")
    assert refused(worker, "unauthorized") == before + 1


def test_rank_with_the_token_is_served_and_read_only_views_stay_open(
        worker: WorkerProcess) -> None:
    [(status, _, answer)] = asyncio.run(post_many(worker.port, 1, f"bearer {TOKEN}"))
    assert status == 200 and len(answer["items"]) == 10  # type: ignore[arg-type]
    assert worker.get("/health")["ready"] is True
    assert worker.get("/stats")["requests_ranked"] >= 1
    assert refused(worker, "overloaded") >= 0  # /metrics answered without a token


def test_overload_is_shed_with_429_and_the_worker_serves_on(worker: WorkerProcess) -> None:
    before = refused(worker, "overloaded")
    answers = asyncio.run(post_many(worker.port, 60))
    statuses = [status for status, _, _ in answers]
    assert set(statuses) == {200, 429}, "one request scored and two waiting; the rest shed"
    for status, headers, answer in answers:
        if status == 429:
            assert headers["Retry-After"] == "1"
            assert answer["error"] == "overloaded" and answer["detail"]
        else:
            assert len(answer["items"]) == 10  # type: ignore[arg-type]
    assert refused(worker, "overloaded") == before + statuses.count(429)
    [(status, _, _)] = asyncio.run(post_many(worker.port, 1))
    assert status == 200


def test_clients_that_give_up_leave_the_worker_serving(worker: WorkerProcess) -> None:
    async def give_up() -> None:
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=0.005)) as http:

            async def post_and_leave() -> None:
                with contextlib.suppress(TimeoutError, aiohttp.ClientError):
                    async with http.post(f"http://127.0.0.1:{worker.port}/rank", data=body(),
                                         headers={"Authorization": f"Bearer {TOKEN}"}) as answer:
                        await answer.read()

            await asyncio.gather(*(post_and_leave() for _ in range(20)))

    asyncio.run(give_up())
    # Under Faust's aiohttp a client that leaves does not cancel its handler: the abandoned
    # requests that were queued are still scored, so the queue of two drains first (seconds
    # on a loaded machine). A worker they broke would never answer 200 again.
    deadline = time.monotonic() + 20
    while True:
        [(status, _, answer)] = asyncio.run(post_many(worker.port, 1))
        if status != 429 or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    assert status == 200 and len(answer["items"]) == 10  # type: ignore[arg-type]
    assert worker.get("/health")["ready"] is True


def test_the_worker_log_holds_no_secret(worker: WorkerProcess) -> None:
    text = Path(worker.log_path).read_text()
    assert re.search(r"feature store: redis redis://:\*\*\*@127\.0\.0\.1:\d+/0", text)
    assert " DEBUG " in text  # the chattiest level was on
    assert "in getMessage" not in text, "masked records must still format (mode's formatter)"
    assert TOKEN not in text and REDIS_PASSWORD not in text
