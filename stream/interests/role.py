"""The interests role: positive engagements in, each user's PinnerSage interests out, into the
feature store (:mod:`models.interests` does the clustering; this wires it to the stream).

A positive engagement is a click, a like, a share, or a dwell of at least
``STREAMRANK_INTERESTS_LONG_DWELL_S``. Full reclusters run here, never on the scoring loop.
Each batch's users are read, updated and written before the next batch is handled, and an
update is a function of the stored value and the engagements (each counted once by time and
item), so a batch read again changes nothing. An engagement whose item has no embedding in the
store yet is counted and left out: the item's upsert may come later, and one engagement less
moves no medoid far.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from models.interests import InterestParams
from schemas import Event
from stream.features.store import FeatureStore
from stream.interests.trending import STATE_KEY, STATE_KIND, Trending, pack_top
from stream.interests.update import engaged, update_users
from stream.runtime.consumer import Decoded, Sends, SupervisedConsumer
from stream.runtime.metrics import WorkerMetrics
from stream.settings import Settings


def interest_params(settings: Settings) -> InterestParams:
    return InterestParams(
        threshold=settings.interests_threshold, join_cosine=settings.interests_join_cosine,
        lambda_per_day=settings.interests_lambda_per_day,
        max_history=settings.interests_max_history, max_age_s=settings.interests_max_age_s,
        online_max=settings.interests_online_max)


class InterestsService(SupervisedConsumer):
    def __init__(self, settings: Settings, bootstrap: str, store: FeatureStore,
                 metrics: WorkerMetrics, **kwargs: Any) -> None:
        super().__init__(
            settings, bootstrap, metrics, name="interests",
            topics={settings.topic("events"): Event},
            group_id=settings.group("interests"),
            fetch_wait_ms=settings.batch_wait_ms,
            max_records=settings.batch_max_records,
            **kwargs)
        self._store = store
        self._params = interest_params(settings)
        self._trending = Trending()
        self._trending_written = 0.0

    async def handle(self, batch: Sequence[Decoded[Any]]) -> Sends:
        events: list[Event] = [value for _, value in batch]
        long_dwell_s = self.settings.interests_long_dwell_s
        for event in events:
            if engaged(event, long_dwell_s):
                self._trending.add(event.item_id, event.ts)
        updated = await update_users(self._store, events, self._params, long_dwell_s,
                                     self.settings.embedding_dim)
        self.metrics.interests_updated.inc(updated.users)
        self.metrics.interests_unknown_items.inc(updated.unknown_items)
        self.metrics.interests_reset.inc(updated.unreadable)
        if events:
            await self._write_trending(max(e.ts for e in events))
        return []

    async def _write_trending(self, now: float) -> None:
        """The trending items, in event time every STREAMRANK_TRENDING_INTERVAL_S. They live
        in this worker's memory: a restarted role starts them over."""
        if now - self._trending_written >= self.settings.trending_interval_s:
            top = self._trending.top(self.settings.trending_size)
            await self._store.put_states(STATE_KIND, {STATE_KEY: pack_top(top)})
            self._trending_written = now
