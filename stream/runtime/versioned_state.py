"""Versioned state: every worker installs the latest valid version of each kind on model-updates.

A model, a set of BatchNorm statistics and a bandit parameter set are each a *kind* of state
(DESIGN.md, "Versioned state"). Each kind registers one :class:`StateKind`; this module knows
none of them, so a new kind is a new registration, never a new branch here.

``model-updates`` is compacted and keyed by kind (see :func:`stream.runtime.environment.
ensure_topics`), so all the versions of a kind are in one partition, in publishing order.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import os
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Generic, Literal, TypeVar

from aiokafka.structs import TopicPartition

from schemas import ModelUpdate, Rejection, decode, encode
from stream.runtime.clients import (
    READ_TO_END_WAIT_MS,
    kafka_consumer,
    read_to_end,
    started_producer,
)
from stream.runtime.consumer import Decoded, Sends, SupervisedConsumer
from stream.runtime.metrics import WorkerMetrics
from stream.settings import Settings

log = logging.getLogger(__name__)

T = TypeVar("T")
StateKindName = Literal["model", "bn_stats", "bandit"]  # ModelUpdate.kind
SERVING_READER = "versioned-state"  # the scorers' reader; other roles name theirs


@dataclass(frozen=True)
class StateKind(Generic[T]):
    """How one kind of state builds a version and puts it in use.

    ``load`` builds the version from its update on an executor thread, off the event loop
    (an ONNX session takes tens of milliseconds). For a version that cannot be served it
    raises :class:`schemas.Rejection` with reason ``invalid_state`` (it does not load) or
    ``untrusted_state`` (refused before reading it). ``install`` runs on the loop and only
    swaps a reference, so work in flight finishes on the version it took.
    """

    name: str
    load: Callable[[ModelUpdate], T]
    install: Callable[[T], None]


def registry(kinds: Iterable[StateKind[Any]]) -> dict[str, StateKind[Any]]:
    by_name: dict[str, StateKind[Any]] = {}
    for kind in kinds:
        if kind.name in by_name:
            raise ValueError(f"state kind {kind.name!r} registered twice")
        by_name[kind.name] = kind
    return by_name


async def load_off_loop(kind: StateKind[T], update: ModelUpdate) -> T:
    return await asyncio.get_running_loop().run_in_executor(None, kind.load, update)


class VersionedStateService(SupervisedConsumer):
    """Follows model-updates in every worker and installs, per kind, the latest valid version.

    Every worker must see every version, so this is a broadcast reader (no group) that reads
    the whole topic from the start. Within a batch each kind's versions are tried newest
    first: the first that loads is installed and the older ones are skipped unread. A version
    that fails leaves in use the one installed before, from this batch's older versions or
    from an earlier batch. So a worker starts on the latest valid version of each kind, and a
    failing publish later changes nothing. A kind with no registration (a role's own reader
    registers only the kinds it follows; an older worker in a rolling upgrade knows fewer) is
    counted, and logged once per kind, instead of being dropped unseen.

    A failure is counted and logged by every worker, but this reader sends nothing to the
    DLQ, not even a record that does not decode: every worker reads every record again at
    every start, so its dead letters would repeat without end. The one verdict per record
    comes from :class:`stream.runtime.state_audit.StateAuditService`.
    """

    def __init__(self, settings: Settings, bootstrap: str, kinds: Iterable[StateKind[Any]],
                 metrics: WorkerMetrics, name: str = SERVING_READER, **kwargs: Any) -> None:
        super().__init__(settings, bootstrap, metrics, name=name,
                         topics={settings.topic("model-updates"): ModelUpdate},
                         group_id=None, fetch_wait_ms=100, max_records=1000,
                         dead_letters=False, **kwargs)
        self.kinds = registry(kinds)
        self._unknown_logged: set[str] = set()
        self._next: dict[int, int] = {}  # per partition, the offset after the last handled

    def synced(self) -> bool:
        """Whether every version published before this reader started has been handled: a
        role that publishes versions itself waits for it, so its numbering continues."""
        consumer = self._consumer
        if consumer is None or not consumer.assignment():
            return False
        ends = {tp.partition: consumer.highwater(tp) for tp in consumer.assignment()}
        return all(end is not None and self._next.get(p, 0) >= end for p, end in ends.items())

    async def handle(self, batch: Sequence[Decoded[Any]]) -> Sends:
        by_kind: dict[str, list[ModelUpdate]] = {}
        for decoded in batch:  # offset order: a kind's versions all sit in one partition
            by_kind.setdefault(decoded.value.kind, []).append(decoded.value)
        # Kinds in the order of their newest version: statistics published after a model are
        # for that model, so they are installed after it.
        last = {decoded.value.kind: i for i, decoded in enumerate(batch)}
        for kind_name, updates in sorted(by_kind.items(), key=lambda item: last[item[0]]):
            kind = self.kinds.get(kind_name)
            if kind is None:
                self._ignore(kind_name, len(updates))
            else:
                await self._install_latest_valid(kind, updates)
        for decoded in batch:
            self._next[decoded.record.partition] = decoded.record.offset + 1
        return []

    async def _install_latest_valid(self, kind: StateKind[Any],
                                    updates: list[ModelUpdate]) -> None:
        for update in reversed(updates):
            try:
                loaded = await load_off_loop(kind, update)
            except Rejection as refusal:
                self.metrics.state_refused.labels(self.health.name, kind.name, refusal.reason).inc()
                log.error("%s %s not installed (%s): %s", kind.name, update.version,
                          refusal.reason, refusal.detail)
                continue
            kind.install(loaded)
            log.info("now serving %s %s", kind.name, update.version)
            return

    def _ignore(self, kind_name: str, count: int) -> None:
        self.metrics.state_ignored.labels(self.health.name, kind_name).inc(count)
        if kind_name not in self._unknown_logged:
            self._unknown_logged.add(kind_name)
            log.warning("ignoring %s updates: this worker has no loader for that kind (counted "
                        "in streamrank_state_updates_ignored_total)", kind_name)


async def publish_update(settings: Settings, bootstrap: str, update: ModelUpdate) -> None:
    """Key by kind: compaction then keeps the newest version of each kind."""
    producer = await started_producer(settings, bootstrap)
    try:
        await producer.send_and_wait(settings.topic("model-updates"), encode(update),
                                     key=update.kind.encode())
    finally:
        await producer.stop()


async def replay_versions(settings: Settings, bootstrap: str,
                          kinds: Iterable[StateKind[Any]]) -> None:
    """Install every version on model-updates in order, as a worker would, for a command
    that shows or changes the state (``streamrank bn``, ``streamrank ads``). Versions that
    do not load are skipped: workers refuse them too, and the state audit dead-letters them."""
    by_name = registry(kinds)
    topic = settings.topic("model-updates")
    consumer = kafka_consumer(settings, bootstrap, group_id=None, auto_offset_reset="earliest",
                              fetch_max_wait_ms=READ_TO_END_WAIT_MS)
    await consumer.start()
    try:
        await consumer.topics()
        partitions = [TopicPartition(topic, p)
                      for p in sorted(consumer.partitions_for_topic(topic) or {0})]
        consumer.assign(partitions)
        for tp in partitions:
            consumer.seek(tp, 0)  # tansu's ListOffsets answer is wrong: seek, never reset
        async for _, record in read_to_end(consumer):
            try:
                update = decode(record.value or b"", ModelUpdate, settings.limits)
                kind = by_name.get(update.kind)
                if kind is not None:
                    kind.install(kind.load(update))
            except Rejection:
                continue
    finally:
        await consumer.stop()


def write_version(path: Path, data: bytes, model: str, kind: StateKindName, version: str
                  ) -> ModelUpdate:
    """Write a version's file atomically (a reader never sees half of it) and return the
    update that announces it, with the sha256 every reader checks the file against."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_bytes(data)
    os.replace(tmp, path)
    return ModelUpdate(ts=time.time(), model=model, kind=kind, version=version,
                       uri=path.resolve().as_uri(),
                       sha256=hashlib.sha256(data).hexdigest())
