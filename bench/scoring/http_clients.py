"""``POST /rank``, which does not touch the broker: paced clients on the curve, and one client
back to back.

A paced client sends each request at its scheduled time, or when its previous one returns if
that is later, and times it **from the scheduled time**. A client that falls behind therefore
reports the wait it caused, instead of slowing the load down to what the worker can take
(coordinated omission)."""

from __future__ import annotations

import asyncio
import time

import aiohttp

from bench.scoring.catalogue import Requests
from bench.scoring.config import RESULT_N
from bench.scoring.environment import Environment
from schemas import RankingResult
from schemas.codec import decode
from stream.errors import BenchFailed

_HEADERS = {"content-type": "application/json"}


async def _post(http: aiohttp.ClientSession, url: str, requests: Requests) -> float:
    """One request; the ``perf_counter()`` its answer was read at (before it is checked)."""
    _, _, body = requests.next()
    async with http.post(url, data=body, headers=_HEADERS) as response:
        payload = await response.read()
    answered = time.perf_counter()
    if response.status != 200:
        raise BenchFailed(f"POST /rank answered {response.status}: {payload[:200]!r}")
    result = decode(payload, RankingResult)
    if len(result.items) != min(RESULT_N, requests.candidates):
        raise BenchFailed(f"POST /rank answered {len(result.items)} items")
    return answered


def _client() -> aiohttp.ClientSession:
    """One client: one keep-alive connection."""
    return aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=1))


async def paced(env: Environment, candidates: int, rate: float, clients: int, count: int
                ) -> list[float]:
    """``count`` requests at ``rate``/s in all from ``clients`` clients, each paced at
    ``rate / clients`` and offset so that the sends interleave evenly; ms from schedule."""
    requests = Requests.build(env.catalogue, candidates, env.rng, f"h{candidates}")
    url = f"http://127.0.0.1:{env.worker.port}/rank"
    latencies: list[float] = []

    async def client(http: aiohttp.ClientSession, first: int, start: float) -> None:
        for index in range(first, count, clients):
            scheduled = start + index / rate
            delay = scheduled - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            latencies.append((await _post(http, url, requests) - scheduled) * 1000.0)

    sessions = [_client() for _ in range(clients)]
    try:
        for _ in range(2):  # warm-up: each connection open, the path warm
            await asyncio.gather(*(_post(http, url, requests) for http in sessions))
        start = time.perf_counter() + 0.01
        await asyncio.gather(*(client(http, k, start) for k, http in enumerate(sessions)))
    finally:
        await asyncio.gather(*(http.close() for http in sessions))
    return latencies


async def serial(env: Environment, candidates: int, floor_port: int
                 ) -> tuple[list[float], list[float]]:
    """One client calling back to back, unpaced, after a warm-up: the worker's own latency
    over HTTP with nothing queued before it. Each request goes to the worker, then the same
    one to the floor (:mod:`bench.scoring.floor`), each over its own connection, so that both
    meet the same moments of a noisy machine; ms per request of each."""
    requests = Requests.build(env.catalogue, candidates, env.rng, f"s{candidates}")
    urls = [f"http://127.0.0.1:{port}/rank" for port in (env.worker.port, floor_port)]
    worker_ms: list[float] = []
    floor_ms: list[float] = []
    async with _client() as worker, _client() as floor:
        for _ in range(env.config.warmup_requests):
            await _post(worker, urls[0], requests)
            await _post(floor, urls[1], requests)
        deadline = time.perf_counter() + env.config.http_serial_seconds
        while (len(worker_ms) < env.config.http_serial_requests
               and time.perf_counter() < deadline):
            for http, url, latencies in ((worker, urls[0], worker_ms),
                                         (floor, urls[1], floor_ms)):
                started = time.perf_counter()
                latencies.append((await _post(http, url, requests) - started) * 1000.0)
    return worker_ms, floor_ms
