"""A closed loop with no broker: the world's users against a ranking function, on a virtual
clock, every request featurised by the serving feature code.

A benchmark that trains, adapts and scores models over tens of thousands of requests cannot
wait for them in real time, nor for a broker; what it must keep is what serving would have
seen. So each request is drawn by the world at its time on the world's clock, featurised
against the engagements before it (:class:`~stream.features.offline.OfflineFeatures`), ranked,
shown, and its sampled engagements applied before the next request. Each shown row comes with
the world's true probability of its labels, so a model's log loss can be taken against the
truth instead of against noisy labels.

The clock advances ``1 / (rate_per_s * traffic scale)`` per request (``World.request_times``),
so a traffic surge packs more requests, and their engagements, into each world second.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

from models.dataset import Dataset
from models.ranking_features import RANKER_FEATURE_NAMES, TASK_NAMES
from models.scorer import Scorer
from models.world import World
from stream.features.offline import OfflineFeatures
from stream.settings import Settings
from stream.simulator import catalogue, engagement_events, ranking_request
from stream.training_data import shown_labels

# Requests per virtual second before any surge. The world's 1000 users then send one request
# each per ~17 minutes on average (the active ones far more often), so the 1 h counters of users
# and items fill within a warm-up of ~10k requests (2.8 h) and answer a surge within the hour;
# 1 d and 7 d counters keep growing through the run, as in a young deployment.
DEFAULT_RATE_PER_S = 1.0
# The first request's timestamp: any fixed time, so runs are the same whatever the wall clock.
DEFAULT_START_TS = 1_700_000_000.0

Rank = Callable[[np.ndarray], np.ndarray]


@dataclass(frozen=True)
class Served:
    """One request as it was shown, with the truth behind its labels."""

    request_index: int  # 0-based over the whole run
    elapsed_s: float  # the world's clock
    item_ids: np.ndarray  # str [k], the shown items in shown order
    rows: np.ndarray  # float32 [k, len(RANKER_FEATURE_NAMES)], the shown items' rows
    # float64 [k, len(TASK_NAMES)]: the true probability of each label (World.feed_probabilities:
    # the slot is reached, then the engagement happens there)
    true_probs: np.ndarray
    labels: np.ndarray  # float32 [k, len(TASK_NAMES)], the sampled engagements (0/1)


class ClosedLoop:
    """The world played against ``rank``; state (features, clock, random stream) carries over
    from one :meth:`serve` to the next, so phases with different rankers follow each other."""

    def __init__(self, world: World, settings: Settings, seed: int,
                 rate_per_s: float = DEFAULT_RATE_PER_S,
                 start_ts: float = DEFAULT_START_TS) -> None:
        if settings.embedding_dim != world.config.dim:
            raise ValueError(f"settings.embedding_dim {settings.embedding_dim} differs from the "
                             f"world's dim {world.config.dim}")
        self.world = world
        self.settings = settings
        self.start_ts = start_ts
        self.requests = 0  # served so far
        self.wall_s = 0.0  # spent in serve(), ranking included
        self._rng = np.random.default_rng(seed)
        self._features = OfflineFeatures(settings)
        self._times = world.request_times(rate_per_s, 0.0)
        self._catalogued = False

    async def serve(self, n_requests: int, rank: Rank) -> list[Served]:
        """Play the next ``n_requests``. ``rank`` maps a request's feature matrix ``[n, F]`` to
        one value per candidate; the ``world.config.shown`` highest are shown, best first."""
        started = time.perf_counter()
        world, shown = self.world, self.world.config.shown
        if not self._catalogued:
            await self._features.publish(catalogue(world, self.start_ts, self.settings.limits))
            self._catalogued = True
        served: list[Served] = []
        for _ in range(n_requests):
            elapsed = next(self._times)
            ts = self.start_ts + elapsed
            draw = world.draw_request(self._rng, elapsed)
            request = ranking_request(world, draw, ts, self.settings.limits)
            matrix = await self._features.matrix(request)
            top = np.argsort(-np.asarray(rank(matrix)), kind="stable")[:shown]
            ranked = draw.candidates[top]
            events = engagement_events(request, world.play(self._rng, draw, ranked, {}, elapsed),
                                       ts)
            truth = world.feed_probabilities(draw, ranked, elapsed)
            item_ids = np.asarray([world.item_ids[i] for i in ranked], dtype=object)
            served.append(Served(
                self.requests, elapsed, item_ids, matrix[top],
                np.stack([truth[task] for task in TASK_NAMES], axis=1),
                shown_labels(item_ids.tolist(), events)))
            await self._features.apply(events)
            self.requests += 1
        self.wall_s += time.perf_counter() - started
        return served


def by_click(scorer: Scorer) -> Rank:
    """Rank by a scorer's click probability (``PopularityScorer``: the items' click rate)."""
    click = scorer.task_names.index("click")
    return lambda matrix: scorer.score(matrix)[:, click]


def dataset(served: Sequence[Served]) -> Dataset:
    """The shown rows and their labels, in time order, for :func:`models.training.train`."""
    if not served:
        raise ValueError("no served requests to learn from")
    return Dataset(
        features=np.concatenate([s.rows for s in served]),
        labels=np.concatenate([s.labels for s in served]),
        item_ids=np.concatenate([s.item_ids for s in served]),
        request_index=np.concatenate(
            [np.full(len(s.rows), s.request_index, dtype=np.int64) for s in served]),
        feature_names=RANKER_FEATURE_NAMES, task_names=TASK_NAMES)
