"""Ranking requests through the real broker and a real worker process, against bare onnxruntime.

One run sets up everything itself: a unique topic prefix, the broker (embedded tansu unless
``STREAMRANK_BROKER_URL`` is set), a Redis namespace filled with a synthetic catalogue and user
history through the real store API, an untrained ONNX export of the ranker in a temp dir, the
worker as a child process (``stream.runtime.worker_process.WorkerProcess``) and an
*echo* process: the same batch consumer with the same fetch wait, which only copies each request
into a results topic. The echo's round trip is the broker's own floor.

Per candidates size, each pass in a fresh environment (see ``run_scoring_bench`` for why):

- max (``repeats`` passes): open loop with many requests in flight, results counted from the
  first one back; and bare: plain ``session.run`` on the provider the worker chose (CPU, or
  CUDA where usable), the session built by the worker's own ``OnnxScorer`` (same model file,
  options and intra-op threads), on one request's rows and on the micro-batch the worker was
  seen to run;
- latency (``repeats`` passes): paced at half of the median max, a pass of the worker and then
  one of the echo at the same rate, round trip from produce to the result consumed, matched by
  request id;
- http (in the last latency environment): ``POST /rank`` from 8 concurrent clients.

The machine is small and shared by broker, Redis, worker and this process, so each figure is a
median over passes (latency percentiles pool the passes), and the path not being measured is
paused (SIGSTOP; the worker for at most half its consumer session timeout): an idle consumer
polling with a 1 ms fetch wait costs ~25% of a core between itself and the broker.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import os
import re
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import AsyncIterator, Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import numpy as np
import onnxruntime as ort
import orjson
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition

from bench.harness import (
    assigned_consumer,
    create_topics,
    delete_topics,
    drop_store,
    paused,
    percentile,
    signal_child,
)
from models.features import ItemMeta
from models.ranking_features import RANKER_FEATURE_NAMES, TASK_NAMES
from models.scorer import Manifest, OnnxScorer, choose_provider
from schemas import Event, RankingRequest, RankingResult, encode
from schemas.codec import decode
from stream.errors import BenchFailed
from stream.features.store import EventBatch
from stream.features.watermarks import Origin
from stream.runtime.clients import kafka_consumer, kafka_producer
from stream.runtime.environment import broker, check_store, open_store
from stream.runtime.processes import stop_process
from stream.runtime.worker_process import WorkerProcess
from stream.settings import Settings

DEFAULT_REDIS = "redis://127.0.0.1:6379/0"
BENCH_FETCH_WAIT_MS = 1  # the bench's own consumers, on the latency path
HTTP_CLIENTS = 8
RESULT_N = 20
ECHO_TOPICS = ("echo-requests", "echo-results")
ENGAGEMENT_MIX = {"impression": 0.70, "click": 0.12, "dwell": 0.08, "like": 0.05, "hide": 0.03,
                  "share": 0.02}
_PLACEHOLDER = "REQUEST-ID-PLACEHOLDER"
_LOADED = re.compile(rb"model (\S+) loaded on (\w+) \((\d+) intra-op threads\)")


@dataclass(frozen=True)
class ScoringBenchConfig:
    """Sizes and durations; the defaults keep each candidates size to ~30 s."""

    candidates: tuple[int, ...] = (100, 500, 1000)
    repeats: int = 3                   # passes per figure; medians (or pooled percentiles)
    throughput_seconds: float = 3.0    # per max-load pass
    latency_seconds: float = 3.0       # per latency pass (worker and echo each)
    min_latency_requests: int = 50     # per latency pass, even when half load is slow
    max_latency_requests: int = 3000   # per latency pass
    http_seconds: float = 3.0
    http_requests: int = 3000          # at most, over all clients
    bare_seconds: float = 0.5          # per bare pass and shape
    warmup_requests: int = 32
    items: int = 5000
    users: int = 1000
    events: int = 20_000
    pause_idle: bool = True            # SIGSTOP the path not being measured
    seed: int = 0
    # Roles of a second worker process beside the measured one, as a deployment runs them
    # (docker-compose.yml): what they cost the scoring path on the same machine.
    side_roles: str = ""


def parse_candidates(text: str, limit: int) -> tuple[int, ...]:
    """``"100,500,1000"`` -> ``(100, 500, 1000)``; ValueError with a readable message."""
    try:
        sizes = tuple(int(part) for part in text.split(",") if part.strip())
    except ValueError:
        raise ValueError(f"--candidates must be comma-separated integers, not {text!r}") from None
    if not sizes or any(not 1 <= size <= limit for size in sizes):
        raise ValueError(f"--candidates must be between 1 and {limit} "
                         "(STREAMRANK_MAX_CANDIDATES) each")
    return sizes


def run_scoring_bench(settings: Settings, config: ScoringBenchConfig | None = None
                      ) -> dict[str, Any]:
    """Every pass runs in a fresh environment (broker, topics, store, worker, echo): per
    candidates size, ``repeats`` maximum-load passes, then ``repeats`` latency passes at half of
    their median, the last of which also measures ``POST /rank``.

    The embedded broker's work per fetch grows with the record batches its partitions hold
    (tansu has no offset index, and no DeleteRecords): at 300 single-record produces/s, its CPU
    went from 32% to 91% of a core in 20 s. Measured on one broker, later passes would measure
    that growth instead of streamrank: in one run that shared a broker, the echo's own p99 grew
    from 15 to 111 ms across the passes, and the last size lost answers.
    """
    config = config or ScoringBenchConfig()
    run_id = uuid.uuid4().hex[:8]
    # The request pool's bodies are built once, with their ts: none may expire mid-pass.
    settings = settings.model_copy(update={"redis_url": settings.redis_url or DEFAULT_REDIS,
                                           "request_ttl_s": 86_400.0})
    if max(config.candidates) > min(settings.max_candidates, config.items):
        raise ValueError("more candidates per request than the catalogue or the limit allows")
    check_store(settings)
    load_before = os.getloadavg()
    by_candidates: dict[str, dict[str, Any]] = {}
    prefixes: list[str] = []
    with tempfile.TemporaryDirectory(prefix="streamrank-bench-scoring-") as tmp:
        manifest = export_untrained_model(Path(tmp), f"bench-{run_id}", settings.signing_key)

        def environment(candidates: int, phase: str) -> contextlib.AbstractContextManager[_Bench]:
            prefixes.append(f"bench-scoring-{run_id}-c{candidates}-{phase}")
            return _environment(settings.model_copy(update={"topic_prefix": prefixes[-1]}),
                                config, manifest)

        for candidates in config.candidates:
            logs: dict[str, str] = {}
            maxima: list[_MaxPass] = []
            stats_served: list[str] = []  # a side BN role's versions reach the worker
            side_shares: list[float] = []  # the side worker's CPU over the scoring worker's
            for k in range(config.repeats):
                with environment(candidates, f"max{k}") as bench:
                    before = bench.cpu_s()
                    maxima.append(asyncio.run(bench.maximum(candidates)))
                    spent = [after - start for after, start in zip(bench.cpu_s(), before,
                                                                   strict=True)]
                    stats_served.append(bench.worker.get("/stats")["stats_version"])
                    if bench.side is not None and spent[0] > 0:
                        side_shares.append(spent[1] / spent[0])
                    logs[f"max{k}"] = str(bench.worker.log_path)
            rate = statistics.median(m.candidates_per_s for m in maxima) / candidates / 2
            passes: list[_LatencyPass] = []
            for k in range(config.repeats):
                with environment(candidates, f"latency{k}") as bench:
                    passes.append(asyncio.run(bench.latency(candidates, rate)))
                    logs[f"latency{k}"] = str(bench.worker.log_path)
                    if k == config.repeats - 1:
                        http_ms = asyncio.run(bench.http(candidates))
                        worker = bench.describe_worker()
            by_candidates[str(candidates)] = _figures(maxima, passes, http_ms, rate) | {
                "worker_logs": logs, "stats_version_after_max": stats_served,
                "side_cpu_share_at_max": round(statistics.median(side_shares), 4)
                if side_shares else None}
    return worker | {
        "by_candidates": by_candidates,
        "bare_provider": worker["provider"],
        "result_n": RESULT_N,
        "http_clients": HTTP_CLIENTS,
        "partitions": settings.partitions,
        "scoring_wait_ms": settings.scoring_wait_ms,
        "bench_fetch_wait_ms": BENCH_FETCH_WAIT_MS,
        "scoring_batch_max_requests": settings.scoring_batch_max_requests,
        "in_flight_at_max": _in_flight_at_max(settings),
        "latency_rate": "half of max_candidates_per_s, in requests/s (latency_rate_per_s)",
        "repeats": config.repeats,
        "idle_path_paused": config.pause_idle,
        "catalogue": {"items": config.items, "users": config.users, "events": config.events},
        "run_id": run_id,
        "topic_prefixes": prefixes,
        "broker": "configured" if settings.broker_url else "embedded tansu, fresh per pass",
        "store": "redis",
        "cpu_count": os.cpu_count(),
        "load_average_before": [round(x, 2) for x in load_before],
    }


def _figures(maxima: Sequence[_MaxPass], passes: Sequence[_LatencyPass], http_ms: Sequence[float],
             rate: float) -> dict[str, Any]:
    """One candidates size's entry: medians over the maximum-load passes, latency percentiles
    pooled over the latency passes."""
    pooled = np.concatenate([p.worker_ms for p in passes])
    echo_pooled = np.concatenate([p.echo_ms for p in passes])
    p99, echo_p99 = percentile(pooled, 99), percentile(echo_pooled, 99)
    max_cands = round(statistics.median(m.candidates_per_s for m in maxima), 1)
    bare_cands = round(statistics.median(m.bare for m in maxima), 1)
    batched_rows = max(m.batched_rows for m in maxima)
    return {
        "p50_ms": percentile(pooled, 50),
        "p99_ms": p99,
        "echo_p50_ms": percentile(echo_pooled, 50),
        "echo_p99_ms": echo_p99,
        "added_p99_ms": round(p99 - echo_p99, 3),
        "http_p50_ms": percentile(np.asarray(http_ms), 50),
        "http_p99_ms": percentile(np.asarray(http_ms), 99),
        "max_candidates_per_s": max_cands,
        "max_requests_per_s": round(max_cands / maxima[0].candidates, 1),
        "bare_candidates_per_s": bare_cands,
        "bare_batched_candidates_per_s": round(statistics.median(m.bare_batched
                                                                 for m in maxima), 1),
        "bare_batched_rows": batched_rows,
        "ratio": round(max_cands / bare_cands, 4),
        "stages_ms": _stages([stage for p in passes for stage in p.stages]),
        "micro_batch_requests": {
            "at_max": round(statistics.median(m.micro_batch for m in maxima), 1),
            "at_half_load": round(statistics.median(p.micro_batch for p in passes), 2)},
        "latency_rate_per_s": round(rate, 1),
        "latency_requests": len(pooled),
        "echo_requests": len(echo_pooled),
        "http_requests": len(http_ms),
        "max_load_requests": [m.sent for m in maxima],
        "passes": {
            "max_candidates_per_s": [round(m.candidates_per_s, 1) for m in maxima],
            "p99_ms": [percentile(np.asarray(p.worker_ms), 99) for p in passes],
            "echo_p99_ms": [percentile(np.asarray(p.echo_ms), 99) for p in passes],
            "bare_candidates_per_s": [round(m.bare, 1) for m in maxima],
        },
    }


def export_untrained_model(out_dir: Path, version: str, signing_key: bytes | None = None
                           ) -> Path:
    """The ranker with untrained weights: the speed is the same as a trained one's. Signed
    with ``signing_key``, so that a worker requiring signatures serves it."""
    import torch  # the bench process only; the worker never imports it

    from models.ranker import MultiTaskRanker, export_onnx

    torch.manual_seed(0)
    model = MultiTaskRanker(len(RANKER_FEATURE_NAMES), len(TASK_NAMES))
    return export_onnx(model, RANKER_FEATURE_NAMES, TASK_NAMES, out_dir / version, version,
                       {"untrained": 1.0}, signing_key)


@contextlib.contextmanager
def _environment(settings: Settings, config: ScoringBenchConfig, manifest: Path
                 ) -> Iterator[_Bench]:
    """A fresh broker (unless one is configured), this prefix's topics and store, a worker
    serving ``manifest`` and an echo; all of it removed afterwards."""
    with broker(settings) as bootstrap:
        create_topics(bootstrap, settings, [echo_topic(settings, s) for s in ECHO_TOPICS])
        try:
            catalogue = asyncio.run(populate_store(settings, config))
            version = Manifest.load(manifest).version
            worker = _worker_process(settings, bootstrap, manifest, SCORING_PATH_ROLES)
            with contextlib.ExitStack() as stack:
                echo = stack.enter_context(EchoProcess(settings, bootstrap))
                stack.enter_context(worker)
                side = None
                if config.side_roles:
                    side = stack.enter_context(_worker_process(settings, bootstrap, manifest,
                                                               config.side_roles))
                worker.wait_for(lambda s: s["model_version"] == version, timeout_s=60.0)
                yield _Bench(settings, bootstrap, config, catalogue, Manifest.load(manifest),
                             worker, echo, side)
        finally:
            asyncio.run(drop_store(settings))
            delete_topics(settings, bootstrap)


def _in_flight_at_max(settings: Settings) -> int:
    return 4 * settings.scoring_batch_max_requests


# The roles on the scoring path: outcomes, which reads every ranking, runs as a service of its
# own in a deployment (docker-compose.yml), and would take this worker's CPU here.
SCORING_PATH_ROLES = "features,scoring"


def _worker_process(settings: Settings, bootstrap: str, manifest: Path, roles: str
                    ) -> WorkerProcess:
    """The worker serving ``manifest``, with this run's settings (passed to the child as
    ``STREAMRANK_*`` variables); the model's directory is the model dir, so that BatchNorm
    statistics written beside it are trusted."""
    return WorkerProcess(settings.model_copy(update={
        "model_manifest": manifest, "roles": roles,
        "model_dir": manifest.parent.parent.resolve()}), bootstrap)


def _worker_model(log_path: Path, version: str, settings: Settings) -> tuple[str, int | None]:
    """The provider and threads the worker logged for the model; else what it would choose."""
    for match in _LOADED.finditer(log_path.read_bytes()):
        if match.group(1).decode() == version:
            return match.group(2).decode(), int(match.group(3))
    return choose_provider(settings.scorer_device), None


def _cpu_s(process: WorkerProcess | None) -> float:
    """CPU seconds (user and system) a worker process has spent; 0 when there is none."""
    if process is None or process.process is None:
        return 0.0
    fields = Path(f"/proc/{process.process.pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _maps_torch(pid: int | None) -> bool | None:
    """Whether the worker process has libtorch mapped (it must not)."""
    if pid is None:
        return None
    try:
        return "libtorch" in Path(f"/proc/{pid}/maps").read_text()
    except OSError:
        return None


# -- set-up ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Catalogue:
    item_ids: list[str]
    user_ids: list[str]


async def populate_store(settings: Settings, config: ScoringBenchConfig) -> Catalogue:
    """Items (metas with embeddings) and user/item history, written through the store API."""
    assert settings.redis_url is not None
    rng = np.random.default_rng(config.seed)
    now = time.time()
    item_ids = [f"i{k}" for k in range(config.items)]
    user_ids = [f"u{k}" for k in range(config.users)]
    embeddings = rng.standard_normal((config.items, settings.embedding_dim)).astype(np.float32)
    embeddings /= np.linalg.norm(embeddings, axis=1, keepdims=True)
    ages = rng.uniform(0, 30 * 86_400, size=config.items)
    metas = {item_id: ItemMeta(now - ages[k], 0.0, False, embeddings[k]).pack()
             for k, item_id in enumerate(item_ids)}
    types = rng.choice(list(ENGAGEMENT_MIX), size=config.events, p=list(ENGAGEMENT_MIX.values()))
    users = rng.integers(0, config.users, size=config.events)
    items = rng.zipf(1.3, size=config.events) % config.items
    stamps = now - rng.uniform(0, 7 * 86_400, size=config.events)
    events = [
        Event(ts=float(stamps[k]), event_id=f"bench-e{k}", user_id=user_ids[users[k]],
              item_id=item_ids[items[k]], type=str(types[k]),  # type: ignore[arg-type]
              dwell_s=12.5 if types[k] == "dwell" else None)
        for k in range(config.events)
    ]
    store = await open_store(settings)
    try:
        await store.apply(EventBatch(metas=metas))
        for start in range(0, len(events), 5000):
            chunk = events[start:start + 5000]
            applied = await store.apply(EventBatch(
                chunk, [Origin(0, start + k) for k in range(len(chunk))]))
            assert not applied.duplicates, "event ids of a fresh namespace were seen before"
    finally:
        await store.close()
    return Catalogue(item_ids, user_ids)


def echo_topic(settings: Settings, suffix: str) -> str:
    """The echo's topics, beside the run's own (``Settings.topic`` knows only the record topics)."""
    assert suffix in ECHO_TOPICS
    return f"{settings.topic_prefix}.{suffix}"


# -- the echo: the broker's floor ------------------------------------------------------------


class EchoService:
    """The scoring role's fetch wait, produce and commit, minus decode and scoring: each
    request's bytes go straight to the echo results topic, and offsets commit once the copies
    are acknowledged, as the worker's do.

    It takes every partition by manual assignment and commits to its group as a standalone
    consumer: no group membership, so it can be paused for any length of time without a
    rebalance. The worker keeps the usual membership and is paused for a few seconds at most."""

    def __init__(self, settings: Settings, bootstrap: str) -> None:
        self._in = echo_topic(settings, ECHO_TOPICS[0])
        self._out = echo_topic(settings, ECHO_TOPICS[1])
        self._max_records = settings.scoring_batch_max_requests
        self._consumer = kafka_consumer(settings, bootstrap,
                                        group_id=f"{settings.topic_prefix}-echo",
                                        auto_offset_reset="earliest",
                                        fetch_max_wait_ms=settings.scoring_wait_ms)
        self._producer = kafka_producer(settings, bootstrap, linger_ms=1)

    async def run(self, stop: asyncio.Event) -> None:
        await self._producer.start()
        await self._consumer.start()
        try:
            partitions = self._consumer.partitions_for_topic(self._in) or {0}
            self._consumer.assign([TopicPartition(self._in, p) for p in sorted(partitions)])
            while not stop.is_set():
                batch = await self._consumer.getmany(timeout_ms=200,
                                                     max_records=self._max_records)
                pending = [await self._producer.send(self._out, record.value, key=record.key)
                           for records in batch.values() for record in records]
                await asyncio.gather(*pending)
                if batch:
                    await self._consumer.commit(
                        {tp: records[-1].offset + 1 for tp, records in batch.items()})
        finally:
            await self._consumer.stop()
            await self._producer.stop()


class EchoProcess:
    """:class:`EchoService` in a child process of its own, like the worker."""

    def __init__(self, settings: Settings, bootstrap: str) -> None:
        self.args = [sys.executable, "-m", "bench.scoring", "echo", bootstrap,
                     settings.topic_prefix, str(settings.scoring_wait_ms),
                     str(settings.scoring_batch_max_requests), str(settings.partitions)]
        handle, name = tempfile.mkstemp(prefix="streamrank-echo-", suffix=".log")
        os.close(handle)
        self.log_path = Path(name)
        self.process: subprocess.Popen[bytes] | None = None

    def __enter__(self) -> EchoProcess:
        with open(self.log_path, "wb") as log_file:
            self.process = subprocess.Popen(self.args, stdout=log_file,
                                            stderr=subprocess.STDOUT)
        return self

    def __exit__(self, *exc: object) -> None:
        assert self.process is not None
        signal_child(self.process, signal.SIGCONT)
        stop_process(self.process, timeout_s=15)
        self.log_path.unlink(missing_ok=True)

    def check(self) -> None:
        if self.process is None or self.process.poll() is not None:
            raise BenchFailed(f"the echo process exited; see {self.log_path}")


def _echo_main(argv: Sequence[str]) -> None:
    bootstrap, prefix, wait_ms, max_records, partitions = argv
    settings = Settings(broker_url=bootstrap, topic_prefix=prefix,
                        scoring_wait_ms=int(wait_ms), scoring_batch_max_requests=int(max_records),
                        partitions=int(partitions))

    async def serve() -> None:
        stop = asyncio.Event()
        for signum in (signal.SIGTERM, signal.SIGINT):
            asyncio.get_running_loop().add_signal_handler(signum, stop.set)
        await EchoService(settings, bootstrap).run(stop)

    asyncio.run(serve())


# -- measuring -------------------------------------------------------------------------------


def _request_id(value: bytes) -> tuple[str, RankingResult | None]:
    result = decode(value, RankingResult)
    return result.request_id, result


def _echoed_id(value: bytes) -> tuple[str, RankingResult | None]:
    return str(orjson.loads(value)["request_id"]), None


@dataclass
class _Results:
    """Follows a results topic from its end and times each request id's answer.

    A result's arrival is stamped when its fetch returns, before it is decoded, so the decoding
    of the others in that fetch does not count against it."""

    bootstrap: str
    topic: str
    parse: Callable[[bytes], tuple[str, RankingResult | None]]
    alive: Callable[[], None]  # raises when the process answering this topic died
    sent: dict[str, float] = field(default_factory=dict)  # perf_counter() at send
    sent_wall: dict[str, float] = field(default_factory=dict)  # time.time() at send
    latencies_ms: list[float] = field(default_factory=list)
    arrivals: list[float] = field(default_factory=list)
    results: list[RankingResult] = field(default_factory=list)
    # Per worker result, in ms: send to the worker's receipt of its batch (broker in, queueing
    # behind the worker's previous batch), receipt to result (its own latency_ms), result to
    # arrival here (produce, broker out, our fetch). Wall clocks of one machine.
    stages: list[tuple[float, float, float]] = field(default_factory=list)
    on_arrival: Callable[[], None] | None = None
    _consumer: AIOKafkaConsumer | None = None
    _task: asyncio.Task[None] | None = None

    async def __aenter__(self) -> _Results:
        consumer = await assigned_consumer(self.bootstrap, self.topic, from_end=True,
                                           fetch_wait_ms=BENCH_FETCH_WAIT_MS)
        self._consumer = consumer
        self._task = asyncio.ensure_future(self._follow())
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
        if self._consumer is not None:
            await self._consumer.stop()

    async def _follow(self) -> None:
        assert self._consumer is not None
        while True:
            batch = await self._consumer.getmany(timeout_ms=100)
            arrived, arrived_wall = time.perf_counter(), time.time()
            for records in batch.values():
                for record in records:
                    request_id, result = self.parse(record.value or b"")
                    sent = self.sent.pop(request_id, None)
                    sent_wall = self.sent_wall.pop(request_id, None)
                    if sent is None or sent_wall is None:
                        continue  # a straggler of an earlier pass
                    self.latencies_ms.append((arrived - sent) * 1000.0)
                    self.arrivals.append(arrived)
                    if result is not None:
                        self.results.append(result)
                        received = result.ts - result.latency_ms / 1000.0
                        self.stages.append(((received - sent_wall) * 1000.0, result.latency_ms,
                                            (arrived_wall - result.ts) * 1000.0))
                    if self.on_arrival is not None:
                        self.on_arrival()

    def reset(self) -> None:
        self.latencies_ms, self.arrivals, self.results, self.stages = [], [], [], []

    async def wait_all(self, timeout_s: float) -> None:
        deadline = time.monotonic() + timeout_s
        while self.sent:
            if time.monotonic() > deadline:
                raise BenchFailed(f"{len(self.sent)} requests got no answer on {self.topic} "
                                   f"within {timeout_s:.0f}s")
            if self._task is not None and self._task.done():
                self._task.result()
            self.alive()
            await asyncio.sleep(0.005)


@dataclass
class _Requests:
    """Encoded requests for one candidates size: a pool of bodies, each sent under a fresh id."""

    candidates: int
    bodies: list[tuple[bytes, bytes]]  # key, encoded RankingRequest with a placeholder id
    tag: str
    _ids: Iterator[int] = field(default_factory=itertools.count)
    _next: Iterator[tuple[bytes, bytes]] | None = None

    @classmethod
    def build(cls, catalogue: Catalogue, candidates: int, rng: np.random.Generator,
              tag: str, pool: int = 256) -> _Requests:
        bodies = []
        for _ in range(pool):
            user = catalogue.user_ids[int(rng.integers(len(catalogue.user_ids)))]
            chosen = rng.choice(len(catalogue.item_ids), size=candidates, replace=False)
            request = RankingRequest(ts=time.time(), request_id=_PLACEHOLDER, user_id=user,
                                     candidates=[catalogue.item_ids[i] for i in chosen],
                                     n=RESULT_N)
            bodies.append((user.encode(), encode(request)))
        return cls(candidates, bodies, tag)

    def next(self) -> tuple[str, bytes, bytes]:
        if self._next is None:
            self._next = itertools.cycle(self.bodies)
        key, body = next(self._next)
        request_id = f"{self.tag}-{next(self._ids)}"
        return request_id, key, body.replace(_PLACEHOLDER.encode(), request_id.encode(), 1)


@dataclass(frozen=True)
class _MaxPass:
    """One maximum-load pass, in its own environment."""

    candidates: int
    candidates_per_s: float  # end to end
    micro_batch: float  # mean requests per worker micro-batch
    sent: int  # requests sent
    bare: float  # bare onnxruntime candidates/s on one request's shape
    bare_batched: float  # ... on the micro-batch's shape
    batched_rows: int


@dataclass(frozen=True)
class _LatencyPass:
    """One latency pass at a fixed rate, in its own environment: the worker, then the echo."""

    worker_ms: list[float]
    echo_ms: list[float]
    stages: list[tuple[float, float, float]]  # see _Results.stages
    micro_batch: float  # mean requests per worker micro-batch


class _Bench:
    def __init__(self, settings: Settings, bootstrap: str, config: ScoringBenchConfig,
                 catalogue: Catalogue, manifest: Manifest, worker: WorkerProcess,
                 echo: EchoProcess, side: WorkerProcess | None = None) -> None:
        self.settings = settings
        self.bootstrap = bootstrap
        self.config = config
        self.catalogue = catalogue
        self.manifest = manifest
        self.worker = worker
        self.echo = echo
        self.side = side
        self.window = _in_flight_at_max(settings)
        self.rng = np.random.default_rng(config.seed + 1)

    def cpu_s(self) -> tuple[float, float]:
        """CPU seconds spent so far by the scoring worker and by the side worker."""
        return _cpu_s(self.worker), _cpu_s(self.side)

    def _worker_alive(self) -> None:
        process = self.worker.process
        if process is None or process.poll() is not None:
            raise BenchFailed(f"the worker exited; see {self.worker.log_path}")

    def describe_worker(self) -> dict[str, Any]:
        """What the worker really ran: provider and threads from its log, and no torch."""
        version = self.manifest.version
        provider, threads = _worker_model(Path(self.worker.log_path), version, self.settings)
        pid = self.worker.process.pid if self.worker.process else None
        return {"model_version": version, "provider": provider, "intra_op_threads": threads,
                "worker_imports_torch": _maps_torch(pid)}

    @contextlib.asynccontextmanager
    async def _producing(self) -> AsyncIterator[None]:
        self.producer = AIOKafkaProducer(bootstrap_servers=self.bootstrap, linger_ms=0,
                                         max_request_size=8 * 1024 * 1024)
        await self.producer.start()
        try:
            yield
        finally:
            await self.producer.stop()

    async def maximum(self, candidates: int) -> _MaxPass:
        """End-to-end candidates/s with ``window`` requests in flight, and the bare bounds."""
        requests = _Requests.build(self.catalogue, candidates, self.rng, f"c{candidates}")
        requests_topic = self.settings.topic("requests")
        # Built by the worker's own code: the provider it got, same options, threads and model.
        provider, _ = _worker_model(Path(self.worker.log_path), self.manifest.version,
                                    self.settings)
        session = OnnxScorer(self.manifest, provider, self.settings.scorer_threads).session
        bare = self._bare(session, candidates)
        worker_results = _Results(self.bootstrap, self.settings.topic("rankings"), _request_id,
                                  self._worker_alive)
        async with self._producing():
            with paused(self.echo.process, self.config.pause_idle):
                async with worker_results:
                    await self._warm(worker_results, requests_topic, requests)
                    rate, micro_batch, sent = await self._saturate(
                        worker_results, requests_topic, requests)
        batched_rows = max(round(micro_batch * candidates), candidates)
        return _MaxPass(candidates, rate, micro_batch, sent, bare,
                        self._bare(session, batched_rows), batched_rows)

    async def latency(self, candidates: int, rate: float) -> _LatencyPass:
        """Round trips at ``rate`` requests/s through the worker, then through the echo."""
        cfg = self.config
        requests = _Requests.build(self.catalogue, candidates, self.rng, f"c{candidates}")
        worker_results = _Results(self.bootstrap, self.settings.topic("rankings"), _request_id,
                                  self._worker_alive)
        echo_results = _Results(self.bootstrap, echo_topic(self.settings, ECHO_TOPICS[1]),
                                _echoed_id, self.echo.check)
        # The worker is paused during the echo pass: well inside its consumer session timeout.
        longest_s = self.settings.consumer_session_timeout_ms / 2000
        count = max(1, int(min(max(rate * cfg.latency_seconds, cfg.min_latency_requests),
                               cfg.max_latency_requests, rate * longest_s)))
        async with self._producing():
            with paused(self.echo.process, cfg.pause_idle):
                async with worker_results:
                    await self._warm(worker_results, self.settings.topic("requests"), requests)
                    worker_ms = await self._paced(worker_results, self.settings.topic("requests"),
                                                  requests, rate, count)
            with paused(self.worker.process, cfg.pause_idle):
                async with echo_results:
                    echo_requests = echo_topic(self.settings, ECHO_TOPICS[0])
                    await self._warm(echo_results, echo_requests, requests)
                    echo_ms = await self._paced(echo_results, echo_requests, requests, rate,
                                                count)
        return _LatencyPass(worker_ms, echo_ms, list(worker_results.stages),
                            _mean_batch(worker_results.results))

    async def http(self, candidates: int) -> list[float]:
        """``POST /rank`` from ``HTTP_CLIENTS`` concurrent clients, closed loop, bounded; ms."""
        requests = _Requests.build(self.catalogue, candidates, self.rng, f"c{candidates}")
        url = f"http://127.0.0.1:{self.worker.port}/rank"
        headers = {"content-type": "application/json"}
        latencies: list[float] = []
        issued = itertools.count()
        deadline = time.perf_counter() + self.config.http_seconds
        connector = aiohttp.TCPConnector(limit=HTTP_CLIENTS)

        async def post(http: aiohttp.ClientSession, record: bool) -> None:
            _, _, body = requests.next()
            started = time.perf_counter()
            async with http.post(url, data=body, headers=headers) as response:
                payload = await response.read()
            took = (time.perf_counter() - started) * 1000.0
            if response.status != 200:
                raise BenchFailed(f"POST /rank answered {response.status}: {payload[:200]!r}")
            result = decode(payload, RankingResult)
            assert len(result.items) == min(RESULT_N, requests.candidates)
            if record:
                latencies.append(took)

        async def client(http: aiohttp.ClientSession) -> None:
            while next(issued) < self.config.http_requests and time.perf_counter() < deadline:
                await post(http, record=True)

        with paused(self.echo.process, self.config.pause_idle):
            async with aiohttp.ClientSession(connector=connector) as http:
                await asyncio.gather(*(post(http, record=False)
                                       for _ in range(HTTP_CLIENTS)))  # warm-up
                await asyncio.gather(*(client(http) for _ in range(HTTP_CLIENTS)))
        return latencies

    def _bare(self, session: ort.InferenceSession, rows: int) -> float:
        """Candidates/s of plain ``session.run`` on ``[rows, F]``."""
        features = self.rng.standard_normal((rows, len(RANKER_FEATURE_NAMES))).astype(np.float32)
        feed = {self.manifest.input_name: features}
        outputs = [self.manifest.output_name]
        for _ in range(3):
            session.run(outputs, feed)
        runs, start = 0, time.perf_counter()
        while (elapsed := time.perf_counter() - start) < self.config.bare_seconds or runs < 3:
            session.run(outputs, feed)
            runs += 1
        return runs * rows / elapsed

    async def _send(self, results: _Results, topic: str, requests: _Requests) -> None:
        request_id, key, body = requests.next()
        results.sent_wall[request_id] = time.time()
        results.sent[request_id] = time.perf_counter()
        await self.producer.send(topic, body, key=key)

    async def _warm(self, results: _Results, topic: str, requests: _Requests) -> None:
        """A few requests answered end to end: the group is joined, the path is warm."""
        for _ in range(self.config.warmup_requests):
            await self._send(results, topic, requests)
        await results.wait_all(90.0)
        results.reset()

    async def _saturate(self, results: _Results, topic: str, requests: _Requests
                        ) -> tuple[float, float, int]:
        """Candidates/s with ``window`` requests in flight, from the first answer back until
        sending stops; the mean micro-batch the worker ran; the requests sent."""
        slots = asyncio.Semaphore(self.window)
        results.on_arrival = slots.release
        results.reset()
        sent = 0
        end = time.perf_counter() + self.config.throughput_seconds
        try:
            while time.perf_counter() < end:
                await slots.acquire()
                await self._send(results, topic, requests)
                sent += 1
            stopped = time.perf_counter()
            await results.wait_all(60.0)
        finally:
            results.on_arrival = None
        arrivals = np.asarray(results.arrivals)
        first = arrivals[0]
        counted = int(np.count_nonzero((arrivals > first) & (arrivals <= stopped)))
        if counted == 0:  # a very short pass: everything came back in the first fetch
            counted, stopped = len(arrivals), arrivals[-1] + 1e-3
        return (counted * requests.candidates / (stopped - first), _mean_batch(results.results),
                sent)

    async def _paced(self, results: _Results, topic: str, requests: _Requests, rate: float,
                     count: int) -> list[float]:
        """Open loop at ``rate`` requests/s; round trips in ms."""
        results.reset()
        start = time.perf_counter() + 0.01
        for index in range(count):
            delay = start + index / rate - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            await self._send(results, topic, requests)
        await results.wait_all(60.0)
        return list(results.latencies_ms)


def _mean_batch(results: Sequence[RankingResult]) -> float:
    """Mean requests per worker micro-batch: the results of one batch share the instant the
    worker received it (``ts - latency_ms``), and batches are at least a model run apart."""
    if not results:
        return 0.0
    received = np.sort([r.ts - r.latency_ms / 1000.0 for r in results])
    batches = 1 + int(np.count_nonzero(np.diff(received) > 2e-4))
    return len(results) / batches


def _stages(stages: Sequence[tuple[float, float, float]]) -> dict[str, dict[str, float]]:
    """p50/p99 of each stage of the worker path at half load (see ``_Results.stages``)."""
    table = np.asarray(stages, dtype=np.float64).reshape(-1, 3)
    return {name: {"p50": percentile(table[:, k], 50), "p99": percentile(table[:, k], 99)}
            for k, name in enumerate(("to_worker", "in_worker", "from_worker"))}


if __name__ == "__main__":
    if sys.argv[1:2] != ["echo"]:
        sys.exit("usage: python -m bench.scoring echo BOOTSTRAP PREFIX WAIT_MS MAX_RECORDS "
                 "PARTITIONS")
    _echo_main(sys.argv[2:])
