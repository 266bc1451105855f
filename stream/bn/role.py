"""The BN role: feature-log rows in, BatchNorm statistics versions out (:mod:`models.bn`).

It reads the feature log (the exact rows scorers scored) and, every ``STREAMRANK_BN_MIN_ROWS``
rows but at most once per ``STREAMRANK_BN_MIN_INTERVAL_S`` (:mod:`models.bn_batch`), blends
them into the statistics the workers serve, layer by layer, behind the guards.
An accepted update is a version ``bn-<n>``: a file under the model's directory and a
``bn_stats`` update on model-updates, which every scorer hot-swaps. A refused one changes
nothing; a collapse also goes out as a drift alert. The outcomes feed the watchdog
(:mod:`stream.bn.watchdog`), which rolls back a version worse than its parent.

Nothing lost, nothing twice: rows wait in memory until their version is published, and their
offsets are held (:meth:`holds`) until then. Each version records the last feature-log offset
of each partition it holds, so a role restarted after publishing, before committing, skips
those records (:meth:`already_applied`) instead of blending them in, or dead-lettering them,
twice. The statistics are global, so the role is a singleton: run one member of its group.
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
from aiokafka.structs import TopicPartition

from models.bn import Adapted, BnStats, Guards, Refused, adapt
from models.bn_batch import RowBatch
from models.ranking_features import RANKER_FEATURE_NAMES
from models.scorer import ModelError
from schemas import DriftAlert, FeatureLog, Outcome, Rejection, WindowStats, encode
from stream.bn.kind import write_stats
from stream.bn.versions import BnVersions, adapted_model
from stream.bn.watchdog import Probation, Watchdog, verdict
from stream.runtime.consumer import (
    MAX_FETCH_WAIT_MS,
    Decoded,
    RawRecord,
    Sends,
    SupervisedConsumer,
)
from stream.runtime.metrics import WorkerMetrics
from stream.runtime.versioned_state import VersionedStateService
from stream.scoring.model_kind import model_update
from stream.settings import Settings

log = logging.getLogger(__name__)

BN_RESULTS = ("accepted", "min_rows", "step_cap", "collapse", "frozen")
ON_PROBATION = "adapted"  # the note of versions the watchdog judges; operators' are trusted


def guards(settings: Settings) -> Guards:
    return Guards(momentum=settings.bn_momentum, min_rows=settings.bn_min_rows,
                  max_step_sd=settings.bn_max_step_sd, var_floor=settings.bn_var_floor,
                  collapse_ratio=settings.bn_collapse_ratio)


def row_batch(settings: Settings) -> RowBatch:
    return RowBatch(settings.bn_min_rows, settings.bn_max_rows, settings.bn_min_interval_s)


class BnService(SupervisedConsumer):
    def __init__(self, settings: Settings, bootstrap: str, metrics: WorkerMetrics,
                 **kwargs: Any) -> None:
        self._feature_log = settings.topic("feature-log")
        super().__init__(
            settings, bootstrap, metrics, name="bn",
            topics={self._feature_log: FeatureLog, settings.topic("outcomes"): Outcome},
            # Statistics are not latency-bound: the longest fetch wait polls the broker least.
            group_id=settings.group("bn"), fetch_wait_ms=MAX_FETCH_WAIT_MS,
            max_records=settings.batch_max_records, **kwargs)
        self.versions = BnVersions(settings, self._on_stats)
        self.reader = VersionedStateService(settings, bootstrap, self.versions.kinds(),
                                            metrics, name="bn-versions", **kwargs)
        self.guards = guards(settings)
        self.watchdog = Watchdog(settings.bn_watchdog_outcomes, settings.bn_watchdog_margin)
        self.batch = row_batch(settings)
        self._held: dict[TopicPartition, int] = {}  # first offset of the rows kept in memory
        self._last: dict[int, int] = {}  # per feature-log partition, the last offset kept
        self._updates = 0
        self._watched: set[str] = set()
        self._live = False  # the reader has caught up with model-updates once

    async def on_start(self) -> None:
        """A model served from STREAMRANK_MODEL_MANIFEST is adapted too, until one is
        published on model-updates."""
        manifest = self.settings.model_manifest
        if manifest is not None:
            try:
                self.versions.install_model(await asyncio.to_thread(
                    adapted_model, model_update(self.settings, manifest), self.settings))
            except (Rejection, ModelError) as exc:  # the scorer serves it all the same
                detail = exc.detail if isinstance(exc, Rejection) else str(exc)
                log.error("BN statistics of %s will not adapt: %s", manifest, detail)
        await super().on_start()

    def ready_to_read(self) -> bool:
        """Not before the reader has caught up with model-updates once: numbering goes on
        after every version published before, and replays are known by its offsets."""
        self._live = self._live or self.reader.synced()
        return self._live

    def already_applied(self, record: RawRecord) -> bool:
        current = self.versions.current
        return (record.topic == self._feature_log and current is not None
                and record.offset <= current.offsets.get(record.partition, -1))

    def holds(self) -> Mapping[TopicPartition, int]:
        return self._held

    def forget(self) -> None:
        self.batch.clear()
        self._held, self._last = {}, {}

    async def handle(self, batch: Sequence[Decoded[Any]]) -> Sends:
        for decoded in batch:
            if decoded.record.topic == self._feature_log:
                self._keep_rows(decoded)
            else:
                self._watch(decoded.value)
        sends: Sends = []
        if self.batch.due():
            sends += await self._update()
        for probation in self.watchdog.due():
            sends += await self._judge(probation)
        return sends

    def _keep_rows(self, decoded: Decoded[Any]) -> None:
        logged: FeatureLog = decoded.value
        record = decoded.record
        if not logged.rows:  # a ranking logged for its ad contexts alone: no item was sampled
            return
        if tuple(logged.feature_names) != RANKER_FEATURE_NAMES:
            self.metrics.bn_rows.labels("other_features").inc(len(logged.rows))
            return
        dropped = self.batch.add(np.asarray(logged.rows, dtype=np.float32), logged.ts)
        self.metrics.bn_rows.labels("dropped").inc(dropped)
        self._held.setdefault(TopicPartition(record.topic, record.partition), record.offset)
        self._last[record.partition] = record.offset

    def _watch(self, outcome: Outcome) -> None:
        if (outcome.kind == "item" and outcome.item_labels is not None
                and outcome.features is not None
                and tuple(outcome.feature_names or ()) == RANKER_FEATURE_NAMES):
            self.watchdog.add(np.asarray(outcome.features, dtype=np.float32),
                              float(outcome.item_labels.click))

    async def _update(self) -> Sends:
        model, current = self.versions.model, self.versions.current
        rows = self.batch.take()
        offsets = {**(current.offsets if current else {}), **self._last}
        self.forget()  # kept or not, these rows are done with once this batch is acknowledged
        if model is None or current is None:
            self.metrics.bn_rows.labels("no_model").inc(len(rows))
            return []
        if current.frozen:
            self.metrics.bn_updates.labels("frozen").inc()
            return []
        self._updates += 1
        result = await asyncio.to_thread(adapt, current, model.trained, rows, self.guards,
                                         model.taps)
        self.metrics.bn_rows.labels("non_finite").inc(result.rows_rejected)
        if isinstance(result, Refused):
            return self._refused(result, current, len(rows) - result.rows_rejected)
        return await self._publish(self._adapted(result, current, offsets))

    def _adapted(self, result: Adapted, current: BnStats, offsets: dict[int, int]) -> BnStats:
        self.metrics.bn_updates.labels("accepted").inc()
        self.metrics.bn_rows.labels("used").inc(result.rows_used)
        self.metrics.bn_channels_held.inc(result.channels_held)
        return self.versions.next_version(
            current, layers=result.layers, rows=current.rows + result.rows_used,
            offsets=offsets, note=ON_PROBATION, created_ts=time.time())

    def _refused(self, refused: Refused, current: BnStats, rows: int) -> Sends:
        self.metrics.bn_updates.labels(refused.reason).inc()
        self.metrics.bn_rows.labels("refused").inc(rows)
        log.warning("BN statistics update refused (%s): %s", refused.reason, refused.detail)
        if refused.reason != "collapse":
            return []
        # The effect: how many e-folds the variance fell (|log ratio|, as drift alerts have it).
        effect = float(np.log(max(refused.before, 1e-30) / max(refused.after, 1e-30)))
        alert = DriftAlert(
            ts=time.time(), alert_id=f"bn-collapse-{uuid.uuid4().hex[:12]}",
            signal="bn_variance.collapse", detector="bn_guard", severity="critical",
            direction="down", effect_size=abs(effect),
            before=WindowStats(mean=refused.before, std=0, n=current.rows),
            after=WindowStats(mean=refused.after, std=0, n=rows), update=self._updates,
            model_version=current.model_version, stats_version=current.version)
        log.error("BN variance collapse refused and alerted: %s", refused.detail)
        return [self.producer.send(self.settings.topic("drift-alerts"), encode(alert),
                                   key=alert.signal.encode())]

    async def _publish(self, stats: BnStats) -> Sends:
        model = self.versions.model
        assert model is not None
        update = await asyncio.to_thread(write_stats, stats, model.scorer.manifest,
                                         self.settings)
        self.versions.install(stats)  # the role goes on from it before reading it back
        log.info("published BN statistics %s (parent %s, %s)", stats.version, stats.parent,
                 stats.note)
        return [await self.producer.send(self.settings.topic("model-updates"), encode(update),
                                         key=b"bn_stats")]

    def _on_stats(self, stats: BnStats) -> None:
        """Versions adapted since the start go on probation, once: not those read back at a
        restart, whose labelled outcomes went by while the role was down."""
        parent = self.versions.known.get(stats.parent or "")
        if (stats.note == ON_PROBATION and parent is not None and self._live
                and stats.version not in self._watched):
            self._watched.add(stats.version)
            self.watchdog.watch(stats, parent)

    async def _judge(self, probation: Probation) -> Sends:
        model, current = self.versions.model, self.versions.current
        if model is None or current is None or probation.version.model_version != model.version:
            return []
        judged = await asyncio.to_thread(verdict, model, probation, self.watchdog.margin)
        self.metrics.bn_judged.inc()
        if not judged.worse:
            return []
        self.metrics.bn_rollbacks.inc()
        self.watchdog.clear()
        log.error("BN statistics %s rolled back: click log loss %.5f against %.5f of %s on "
                  "the same %d outcomes", judged.version, judged.loss, judged.parent_loss,
                  judged.parent, judged.outcomes)
        return await self._publish(self.versions.next_version(
            current, layers=probation.parent.layers, created_ts=time.time(),
            note=f"watchdog: rolled back {judged.version} (log loss {judged.loss:.5f} vs "
                 f"{judged.parent_loss:.5f} of {judged.parent})"))
