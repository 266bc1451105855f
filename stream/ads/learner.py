"""The ads role: ad-slot outcomes in, bandit parameter versions out (:func:`models.bandit.learn`).

It reads ``streamrank.outcomes``: each ad slot of a ranking, labelled with what it earned and
the organic engagement from the slot down, and carrying the context its decision saw (joined
from the feature log). Every ``STREAMRANK_ADS_UPDATE_OUTCOMES`` outcomes, but at most once per
``STREAMRANK_ADS_UPDATE_INTERVAL_S`` of event time, it learns them into the next version
``bandit-<n>``: a file under the model directory and a ``bandit`` update on model-updates,
which every scorer hot-swaps.

Delayed and missing rewards: a slot's reward is what the outcomes join saw within its window
(``STREAMRANK_OUTCOME_WINDOW_S``: a conversion later than that is counted late and never
learnt), and a slot nobody reached, or that earned nothing, is a reward of 0, which is what
it earned. Outcomes of rankings older than ``STREAMRANK_ADS_MAX_AGE_S`` are not learnt.

Malformed outcomes are dead-lettered and change no parameter. Nothing lost, nothing twice: the
outcomes are learnt into a pending version in memory (sums: its size does not grow with them)
until it is published, their offsets held until then, and
each version records the last offset of each partition it learnt, so a learner restarted
after publishing, before committing, skips them. The parameters are global, so the role is a
singleton: run one member of its group.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
from aiokafka.structs import TopicPartition

from models.bandit import CONTEXT_NAMES, BanditParams, Feedback, learn
from schemas import Outcome, Rejection, encode
from stream.ads.kind import bandit_kind, write_params
from stream.ads.serving import BanditSlot
from stream.runtime.consumer import (
    MAX_FETCH_WAIT_MS,
    Decoded,
    RawRecord,
    Sends,
    SupervisedConsumer,
)
from stream.runtime.metrics import WorkerMetrics
from stream.runtime.versioned_state import VersionedStateService
from stream.settings import Settings

log = logging.getLogger(__name__)

ADS_OUTCOMES = ("learnt", "no_context", "other_context", "stale")
# A slot's revenue is a sum of conversions, each at most an Amount (1e6); more than a hundred
# of them on one slot is not a reward but an attack on the posterior's arithmetic.
MAX_SLOT_REVENUE = 1e8
MAX_SLOT_ENGAGEMENTS = 30_000  # three positive events on each of 10,000 positions


class AdsLearnerService(SupervisedConsumer):
    def __init__(self, settings: Settings, bootstrap: str, metrics: WorkerMetrics,
                 **kwargs: Any) -> None:
        super().__init__(
            settings, bootstrap, metrics, name="ads",
            topics={settings.topic("outcomes"): Outcome},
            # Learning is not latency-bound: the longest fetch wait polls the broker least.
            group_id=settings.group("ads"), fetch_wait_ms=MAX_FETCH_WAIT_MS,
            max_records=settings.batch_max_records, **kwargs)
        self.params = BanditSlot(settings)
        self.reader = VersionedStateService(settings, bootstrap,
                                            [bandit_kind(self.params, settings)], metrics,
                                            name="ads-versions", **kwargs)
        # The served version plus every outcome read since, not published yet: the posteriors
        # are sums, so memory stays the same however many outcomes wait for the next version.
        self._pending: BanditParams | None = None
        self._pending_outcomes = 0
        self._held: dict[TopicPartition, int] = {}  # first offset of the outcomes kept
        self._last: dict[int, int] = {}  # per partition, the last offset read
        self._newest_ts = 0.0  # the newest ranking time read
        self._published_ts: float | None = None  # event time of the last version published
        self._live = False

    def ready_to_read(self) -> bool:
        """Not before the reader has caught up with model-updates once: learning goes on from
        the newest version, and replays are known by its offsets."""
        self._live = self._live or self.reader.synced()
        return self._live

    def already_applied(self, record: RawRecord) -> bool:
        return record.offset <= self.params.current.offsets.get(record.partition, -1)

    def holds(self) -> Mapping[TopicPartition, int]:
        return self._held

    def forget(self) -> None:
        self._pending, self._pending_outcomes, self._held, self._last = None, 0, {}, {}

    def check(self, decoded: Decoded[Any]) -> None:
        outcome: Outcome = decoded.value
        if outcome.kind != "ad":
            return
        labels = outcome.ad_labels
        if labels is None:
            raise Rejection("invalid_outcome", "an ad-slot outcome without ad_labels")
        if labels.revenue > MAX_SLOT_REVENUE:
            raise Rejection("invalid_outcome", f"revenue {labels.revenue:g} on one slot is "
                            f"beyond {MAX_SLOT_REVENUE:g}")
        if labels.engagements_after > MAX_SLOT_ENGAGEMENTS:
            raise Rejection("invalid_outcome", f"{labels.engagements_after} engagements "
                            f"below one slot are beyond {MAX_SLOT_ENGAGEMENTS}")
        if (labels.revenue > 0 or labels.click) and outcome.item_id is None:
            raise Rejection("invalid_outcome", "a slot without an ad cannot earn or be clicked")

    async def handle(self, batch: Sequence[Decoded[Any]]) -> Sends:
        rows = [row for decoded in batch
                if (row := self._learnable(decoded.value, decoded.record)) is not None]
        if rows:
            contexts, placed, revenues, engagements = zip(*rows, strict=True)
            self._pending = learn(self._pending or self.params.current, Feedback(
                np.array(contexts, dtype=np.float64), np.array(placed, dtype=bool),
                np.array(revenues), np.array(engagements)))
            self._pending_outcomes += len(rows)
        if not self._due():
            return []
        return await self._publish()

    def _learnable(self, outcome: Outcome, record: RawRecord
                   ) -> tuple[list[float], bool, float, float] | None:
        """What an ad outcome teaches (context, ad shown, revenue, engagement), or None."""
        self._last[record.partition] = record.offset
        if outcome.kind != "ad" or outcome.ad_labels is None:
            return None
        self._newest_ts = max(self._newest_ts, outcome.ts)
        if outcome.ts < self._newest_ts - self.settings.ads_max_age_s:
            self.metrics.ads_outcomes.labels("stale").inc()
            return None
        if outcome.features is None:
            self.metrics.ads_outcomes.labels("no_context").inc()
            return None
        if tuple(outcome.feature_names or ()) != CONTEXT_NAMES:
            self.metrics.ads_outcomes.labels("other_context").inc()
            return None
        self._held.setdefault(TopicPartition(record.topic, record.partition), record.offset)
        labels = outcome.ad_labels
        return (outcome.features, outcome.item_id is not None, labels.revenue,
                float(labels.engagements_after))

    def _due(self) -> bool:
        if self._pending_outcomes < self.settings.ads_update_outcomes:
            return False
        return (self._published_ts is None or self._newest_ts - self._published_ts
                >= self.settings.ads_update_interval_s)

    async def _publish(self) -> Sends:
        current, pending = self.params.current, self._pending
        assert pending is not None  # _due
        # The learnt posteriors under the knobs served now: a retune read meanwhile stands.
        params = BanditParams(
            f"bandit-{current.number + 1}", pending.revenue, pending.ad_engagement,
            pending.organic, dial=current.dial, epsilon=current.epsilon, alpha=current.alpha,
            samples=pending.samples, parent=current.version,
            offsets={**current.offsets, **self._last})
        update = await asyncio.to_thread(write_params, params, self.settings)
        self.params.install(params)  # the role goes on from it before reading it back
        self.metrics.ads_outcomes.labels("learnt").inc(self._pending_outcomes)
        self.metrics.ads_versions.inc()
        self._published_ts = self._newest_ts
        self.forget()  # done with once this batch is acknowledged
        log.info("published bandit parameters %s (parent %s, %d outcomes in all)",
                 params.version, params.parent, params.samples)
        return [await self.producer.send(self.settings.topic("model-updates"), encode(update),
                                         key=b"bandit")]
