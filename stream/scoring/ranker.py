"""The one scoring path behind both the requests topic and ``POST /rank``."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import itertools
import time
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import orjson

from models.ranking_features import (
    RANKER_FEATURE_NAMES,
    TASK_NAMES,
    CandidateFeatures,
    ranking_matrix,
)
from models.scorer import PopularityScorer, Scorer, load_scorer
from models.value import ValueModel
from schemas import SCHEMA_VERSION, RankingRequest
from stream.ads.serving import AdPlacer, PlacedAds, wants_ads
from stream.features.reader import FeatureReader
from stream.interests.retrieval import Retriever, wants_retrieval
from stream.runtime.latency import StageLatency
from stream.runtime.metrics import WorkerMetrics
from stream.settings import Settings


class ModelSlot:
    """The scorer in use. A new version is built off the event loop, then swapped in one
    assignment: a batch that already took ``current`` finishes on the old version."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.current: Scorer = PopularityScorer(RANKER_FEATURE_NAMES, TASK_NAMES)

    def build(self, manifest_path: Path, expected_sha256: str | None = None) -> Scorer:
        """Blocking: run it on an executor thread. With a signing key, only signed models."""
        return load_scorer(manifest_path, RANKER_FEATURE_NAMES, self.settings.scorer_device,
                           self.settings.scorer_threads, expected_sha256,
                           self.settings.signing_key)

    def install(self, scorer: Scorer) -> None:
        self.current = scorer

    def install_stats(self, scorer: Scorer) -> None:
        """New BatchNorm statistics, only for the model still in use: a model swapped in
        while they were built keeps its own."""
        if scorer.version == self.current.version:
            self.current = scorer

    async def load(self, manifest_path: Path) -> Scorer:
        scorer = await asyncio.get_running_loop().run_in_executor(None, self.build,
                                                                  manifest_path)
        self.install(scorer)
        return scorer


@dataclass(frozen=True)
class Received:
    request: RankingRequest
    at: float  # perf_counter() when the worker got it, for the latency it reports



@dataclass(frozen=True)
class Ranked:
    """One request's answer, kept as plain values and encoded straight into the wire format of
    :class:`schemas.RankingResult`, which is all the worker does with it. Building that model's
    twenty items and dumping them cost ~190 us per request, 3.5x the direct encoding; a test
    holds the two encodings byte for byte equal."""

    request_id: str
    user_id: str
    items: list[dict[str, object]]  # RankedItem fields, in their order
    model_version: str
    stats_version: str
    latency_ms: float
    ts: float
    rows: np.ndarray  # float32 [len(items), F]: the feature rows of the items, in rank order
    ads: PlacedAds | None = None

    def encode(self) -> bytes:
        return orjson.dumps({
            "schema_version": SCHEMA_VERSION, "ts": self.ts, "request_id": self.request_id,
            "user_id": self.user_id, "items": self.items,
            "ads": [] if self.ads is None else self.ads.results(),
            "model_version": self.model_version, "stats_version": self.stats_version,
            "latency_ms": self.latency_ms})


class Ranker:
    """``latency`` records the stages a request spends here (features, matrix, model, ads);
    without one, the ranker counts them on a registry of its own."""

    def __init__(self, reader: FeatureReader, models: ModelSlot, value: ValueModel,
                 retriever: Retriever, placer: AdPlacer,
                 latency: StageLatency | None = None) -> None:
        self.reader = reader
        self.models = models
        self.value = value
        self.retriever = retriever
        self.placer = placer
        self.latency = latency if latency is not None else WorkerMetrics().scoring_latency

    async def rank(self, received: Sequence[Received]) -> list[Ranked]:
        """Score a micro-batch of requests with one feature round trip and one model run,
        after retrieving candidates for those that want them."""
        started = time.perf_counter()
        retrieved = await self.retriever.retrieve([r.request for r in received])
        sources = [x.sources if wants_retrieval(r.request) else None
                   for x, r in zip(retrieved, received, strict=True)]
        received = [Received(x.request, r.at) for x, r in zip(retrieved, received, strict=True)]
        now = time.time()
        # The ad candidates' features come in the same round trip as the candidates'.
        fetched = await self.reader.fetch_many(
            [(r.request.user_id, [*r.request.candidates, *r.request.ad_candidates])
             if wants_ads(r.request) else (r.request.user_id, r.request.candidates)
             for r in received], now)
        fetched_at = time.perf_counter()
        features = [_first(f, len(r.request.candidates)) for f, r in
                    zip(fetched, received, strict=True)]
        # Each request's rows are written straight into the batch's matrix: no second copy.
        bounds = np.cumsum([0, *(len(f.items) for f in features)]).tolist()
        batch = np.empty((bounds[-1], len(RANKER_FEATURE_NAMES)), dtype=np.float32)
        rows = [slice(start, stop) for start, stop in itertools.pairwise(bounds)]
        for f, r, request_rows in zip(features, received, rows, strict=True):
            ranking_matrix(f, r.request.context, now, out=batch[request_rows])
        assembled_at = time.perf_counter()
        scorer = self.models.current
        probs = scorer.score(batch)
        values = self.value.values(probs, scorer.task_names)
        _refuse_non_finite(received, rows, probs, values)
        scored_at = time.perf_counter()
        count = len(received)
        self.latency.observe("features", fetched_at - started, count)
        self.latency.observe("matrix", assembled_at - fetched_at, count)
        self.latency.observe("model", scored_at - assembled_at, count)
        return [self._result(r, scorer, probs[request_rows], values[request_rows],
                             batch[request_rows], request_sources, f)
                for r, request_sources, request_rows, f
                in zip(received, sources, rows, fetched, strict=True)]

    def _result(self, received: Received, scorer: Scorer, probs: np.ndarray,
                values: np.ndarray, features: np.ndarray, sources: list[str] | None,
                fetched: CandidateFeatures) -> Ranked:
        request = received.request
        n = min(request.n, len(values))
        top = np.argpartition(-values, n - 1)[:n] if n < len(values) else np.arange(n)
        top = top[np.argsort(-values[top], kind="stable")]
        tasks = scorer.task_names
        items: list[dict[str, object]] = [
            {"schema_version": SCHEMA_VERSION, "item_id": request.candidates[i], "value": value,
             "probs": dict(zip(tasks, item_probs, strict=True))}
            for i, value, item_probs in zip(top.tolist(), values[top].tolist(),
                                            probs[top].tolist(), strict=True)
        ]
        if sources is not None:  # only then: a request with its own candidates is unchanged
            for item, i in zip(items, top.tolist(), strict=True):
                item["source"] = sources[i]
        ads = None
        if wants_ads(request):
            placing = time.perf_counter()
            ads = self.placer.place(request, _after(fetched, len(request.candidates)),
                                    values[top].tolist())
            self.latency.observe("ads", time.perf_counter() - placing)
        return Ranked(request.request_id, request.user_id, items, scorer.version,
                      scorer.stats_version, (time.perf_counter() - received.at) * 1000.0,
                      time.time(), features[top], ads)


def _first(features: CandidateFeatures, n: int) -> CandidateFeatures:
    """The features of the first ``n`` items (the candidates, before the ads)."""
    if len(features.items) == n:
        return features
    return dataclasses.replace(features, items=features.items[:n],
                               embeddings=features.embeddings[:n], known=features.known[:n])


def _after(features: CandidateFeatures, n: int) -> CandidateFeatures:
    """The features of the items after the first ``n`` (the ad candidates)."""
    return dataclasses.replace(features, items=features.items[n:],
                               embeddings=features.embeddings[n:], known=features.known[n:])


class NonFiniteScores(ValueError):
    """The model scored a request NaN or infinite: a result that must not go out, since
    :meth:`Ranked.encode` writes plain floats (orjson turns NaN into ``null``)."""


def _refuse_non_finite(received: Sequence[Received], rows: Sequence[slice], probs: np.ndarray,
                       values: np.ndarray) -> None:
    if np.isfinite(probs).all() and np.isfinite(values).all():
        return
    bad = [r.request.request_id for r, request_rows in zip(received, rows, strict=True)
           if not (np.isfinite(probs[request_rows]).all()
                   and np.isfinite(values[request_rows]).all())]
    raise NonFiniteScores(f"non-finite scores for request(s) {', '.join(bad[:5])}")
class Overloaded(Exception):
    """The queue of ``POST /rank`` requests is full: the caller should come back later."""


class MicroBatcher:
    """Lets concurrent single-request callers (``POST /rank``) share model runs: requests that
    arrive while a batch is being scored are ranked together in the next one.

    At most ``queue_max`` requests wait behind the batch being scored; beyond that a caller
    gets :class:`Overloaded` at once, instead of a latency that grows without bound. A caller
    that is cancelled (the worker stops, or the web server drops a handler) leaves the queue;
    if its request is already being scored, the result is dropped. Either way the rest of its
    batch, and every later caller, is answered."""

    def __init__(self, ranker: Ranker, max_requests: int, queue_max: int) -> None:
        self.ranker = ranker
        self.max_requests = max_requests
        self.queue_max = queue_max
        self._waiting: deque[tuple[Received, asyncio.Future[Ranked]]] = deque()
        self._draining: asyncio.Task[None] | None = None

    @property
    def full(self) -> bool:
        return len(self._waiting) >= self.queue_max

    async def rank_one(self, received: Received) -> Ranked:
        if self.full:
            raise Overloaded(f"{len(self._waiting)} requests are waiting to be ranked")
        entry = (received, asyncio.get_running_loop().create_future())
        self._waiting.append(entry)
        if self._draining is None:
            self._draining = asyncio.ensure_future(self._drain())
        try:
            return await entry[1]
        except asyncio.CancelledError:
            with contextlib.suppress(ValueError):  # not there once a batch has taken it
                self._waiting.remove(entry)
            raise

    def _next_batch(self) -> list[tuple[Received, asyncio.Future[Ranked]]]:
        """Up to ``max_requests`` waiting requests whose callers still wait for an answer."""
        batch: list[tuple[Received, asyncio.Future[Ranked]]] = []
        while self._waiting and len(batch) < self.max_requests:
            entry = self._waiting.popleft()
            if not entry[1].done():
                batch.append(entry)
        return batch

    async def _drain(self) -> None:
        try:
            while batch := self._next_batch():
                try:
                    results = await self.ranker.rank([received for received, _ in batch])
                except Exception as exc:  # every caller of this batch gets the failure
                    for _, future in batch:
                        if not future.done():
                            future.set_exception(exc)
                    continue
                except BaseException:  # this task is cancelled: no caller may wait forever
                    for _, future in batch:
                        future.cancel()
                    raise
                for (_, future), result in zip(batch, results, strict=True):
                    if not future.done():
                        future.set_result(result)
        finally:
            self._draining = None
            while self._waiting:  # only when cancelled: the loop above empties the queue
                self._waiting.popleft()[1].cancel()
