"""Section ``scoring``: a worker killed with SIGKILL and restarted again and again under a steady
rate of ranking requests with unique ids. Afterwards every request must have a result on
``<prefix>.rankings`` or a dead letter with reason ``expired`` on ``<prefix>.dlq`` (requests
older than the request TTL when the worker gets to them). Results are delivered at least once,
so a request answered twice is reported, not failed.

No model is published: the worker serves its popularity fallback, which takes the same path
(decode, feature fetch, score, produce, commit)."""

from __future__ import annotations

import asyncio
import base64
import time
import uuid
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import orjson

from bench.faults.config import FaultsConfig
from bench.faults.kills import Lives
from bench.harness import (
    Environment,
    GroupProgress,
    Record,
    TopicTail,
    environment,
    paced,
    percentile,
)
from schemas import DeadLetter, RankingRequest, decode, encode
from stream.errors import BenchFailed
from stream.runtime.clients import kafka_producer
from stream.runtime.worker_process import WorkerProcess
from stream.settings import Settings

CATALOGUE_ITEMS = 1000
CATALOGUE_USERS = 1000
RESULT_N = 10


def scoring_section(settings: Settings, config: FaultsConfig) -> dict[str, Any]:
    with environment(settings, "faults-scoring") as env:
        return asyncio.run(_run(env, config))


@dataclass
class Answers:
    """What came back for each request id, from the results and dead-letter topics."""

    requests_topic: str
    sent: dict[str, float] = field(default_factory=dict)  # id -> monotonic time sent
    results: dict[str, list[float]] = field(default_factory=dict)  # id -> arrival times
    expired: Counter[str] = field(default_factory=Counter)
    other_dead_letters: Counter[str] = field(default_factory=Counter)  # reason -> count
    last_arrival: float = float("-inf")

    def on_result(self, record: Record, arrived: float) -> None:
        request_id = str(orjson.loads(record.value or b"{}")["request_id"])
        self.results.setdefault(request_id, []).append(arrived)
        self.last_arrival = arrived

    def on_dead_letter(self, record: Record, arrived: float) -> None:
        letter = decode(record.value or b"", DeadLetter)
        if letter.source_topic == self.requests_topic and letter.reason == "expired":
            original = orjson.loads(base64.b64decode(letter.original_b64))
            self.expired[str(original["request_id"])] += 1
        else:
            self.other_dead_letters[letter.reason] += 1

    def unresolved(self) -> int:
        return sum(1 for r in self.sent if r not in self.results and r not in self.expired)


async def _run(env: Environment, config: FaultsConfig) -> dict[str, Any]:
    settings = env.settings
    answers = Answers(settings.topic("requests"))
    worker = WorkerProcess(config.worker_settings(settings, "scoring"), env.bootstrap)
    lives = Lives(worker)
    stop = asyncio.Event()
    async with TopicTail(env.bootstrap, settings.topic("rankings"),
                         answers.on_result) as results, \
            TopicTail(env.bootstrap, settings.topic("dlq"), answers.on_dead_letter) as dead_letters:
        await lives.start()
        await _group_started(settings, env.bootstrap, config.catch_up_timeout_s)
        publishing = asyncio.ensure_future(_publish(env, config, answers, stop))
        try:
            await lives.kill_repeatedly(
                config.scoring_kills, config.uptime_s, np.random.default_rng(config.seed + 2),
                lambda launched: (answers.last_arrival - lives.t0 > launched
                                  or (bool(answers.sent) and not answers.unresolved())),
                lambda: {"in_flight": answers.unresolved()})
            stop.set()
            publish_s = await publishing
            drain = time.monotonic()
            while answers.unresolved() and time.monotonic() - drain < (
                    config.request_ttl_s + config.catch_up_timeout_s):
                await asyncio.sleep(0.1)
            drain_s = time.monotonic() - drain
        finally:
            stop.set()
            await asyncio.gather(publishing, return_exceptions=True)
            worker.stop()
        await results.read_to_end()
        await dead_letters.read_to_end()
    return _figures(answers, lives, publish_s, drain_s, config, settings)


async def _group_started(settings: Settings, bootstrap: str, timeout_s: float) -> None:
    """Until the scoring group has committed where it starts. It starts at the latest offset,
    so requests sent before it joined would never be its to answer (by design, not a fault)."""
    group = GroupProgress(settings, bootstrap, settings.group("scoring"),
                          (settings.topic("requests"),))
    deadline = time.monotonic() + timeout_s
    try:
        while len(await asyncio.to_thread(group.committed)) < len(group.partitions):
            if time.monotonic() > deadline:
                raise BenchFailed(f"the scoring group did not start within {timeout_s:.0f}s")
            await asyncio.sleep(0.1)
    finally:
        group.close()


async def _publish(env: Environment, config: FaultsConfig, answers: Answers,
                   stop: asyncio.Event) -> float:
    """Requests at ``config.request_rate``/s until ``stop``; the seconds it published."""
    rng = np.random.default_rng(config.seed + 3)
    tag = uuid.uuid4().hex[:6]
    topic = answers.requests_topic
    producer = kafka_producer(env.settings, env.bootstrap, linger_ms=0)
    await producer.start()
    started = time.monotonic()
    try:
        async for k in paced(config.request_rate, stop):
            user = f"u{rng.integers(CATALOGUE_USERS)}"
            chosen = rng.choice(CATALOGUE_ITEMS, size=config.candidates, replace=False)
            request = RankingRequest(ts=time.time(), request_id=f"{tag}-r{k}", user_id=user,
                                     candidates=[f"i{i}" for i in chosen], n=RESULT_N)
            answers.sent[request.request_id] = time.monotonic()
            await producer.send(topic, encode(request), key=user.encode())
        await producer.flush()
    finally:
        await producer.stop()
    return time.monotonic() - started


def _figures(answers: Answers, lives: Lives, publish_s: float, drain_s: float,
             config: FaultsConfig, settings: Settings) -> dict[str, Any]:
    sent = answers.sent
    answered = [r for r in sent if r in answers.results]
    first_ms = [(min(answers.results[r]) - sent[r]) * 1000.0 for r in answered]
    last_answer = max((min(answers.results[r]) for r in answered), default=float("nan"))
    answered_per_s = len(answered) / (last_answer - min(sent.values())) if answered else 0.0
    publish_per_s = len(sent) / publish_s
    kills = lives.summary()
    return {
        "kills": kills.pop("kills"),
        "requests": len(sent),
        "requests_answered": len(answered),
        "requests_expired": sum(1 for r in sent if r in answers.expired
                                and r not in answers.results),
        "requests_unanswered": answers.unresolved(),
        "requests_answered_twice": sum(1 for r in answered if len(answers.results[r]) > 1),
        "requests_answered_and_expired": sum(1 for r in answered if r in answers.expired),
        "results_unknown_id": sum(len(v) for r, v in answers.results.items() if r not in sent),
        "dead_letters_other": dict(answers.other_dead_letters),
        "answer_ms": {"p50": percentile(first_ms, 50), "p99": percentile(first_ms, 99),
                      "max": round(max(first_ms, default=float("nan")), 3)},
        "publish_per_s": round(publish_per_s, 1),
        "answered_per_s": round(answered_per_s, 1),
        "throughput_ratio": round(answered_per_s / publish_per_s, 4),
        "drain_s": round(drain_s, 3),
        "request_ttl_s": config.request_ttl_s,
        "scoring_wait_ms": settings.scoring_wait_ms,
        "worker_roles": "scoring",
        **kills,
        "worker_log": str(lives.worker.log_path),
    }
