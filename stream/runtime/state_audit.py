"""Dead-letters each bad version on model-updates once for the deployment, not once per worker.

Every worker reads every version (:class:`stream.runtime.versioned_state.VersionedStateService`)
and, at every start, the whole topic again; if those readers dead-lettered, one bad update
would land in the DLQ once per worker and again at each restart. So the readers only count
and log, and the verdict that reaches the DLQ comes from here.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

from schemas import ModelUpdate, Rejection
from stream.runtime.consumer import Decoded, Sends, SupervisedConsumer
from stream.runtime.metrics import WorkerMetrics
from stream.runtime.versioned_state import StateKind, load_off_loop, registry
from stream.settings import Settings


class StateAuditService(SupervisedConsumer):
    """Judges every version once, in one consumer group, ``<prefix>-state-audit``.

    Every worker that serves runs this service, and the group gives each partition of
    model-updates (one, as ``ensure_topics`` makes it) to one live worker. That worker loads
    each update as the readers would and dead-letters those that fail (``invalid_state``) or
    are refused (``untrusted_state``); a record that does not decode goes with its decode
    reason, as in every role. The runtime commits past a batch once its dead letters are
    acknowledged, so a restart resumes after them and never judges them again, and a worker
    joining or leaving moves the partition, not the offset. Gating on the committed offset
    without group membership would not do: workers running side by side all read the same
    committed offset before any of them commits, so each would dead-letter a bad update
    published while they run.

    What remains is Kafka's at-least-once: an owner that dies between a dead letter and its
    commit (at most ``STREAMRANK_COMMIT_INTERVAL_MS`` apart) leaves the next owner to judge
    that record again; a repeated dead letter carries the same source partition and offset.
    Updates of a kind this worker has no loader for are not judged: a newer worker may know
    them, and the readers count them.
    """

    def __init__(self, settings: Settings, bootstrap: str, kinds: Iterable[StateKind[Any]],
                 metrics: WorkerMetrics, **kwargs: Any) -> None:
        super().__init__(settings, bootstrap, metrics, name="state-audit",
                         topics={settings.topic("model-updates"): ModelUpdate},
                         group_id=settings.group("state-audit"), fetch_wait_ms=100, max_records=100,
                         **kwargs)
        self.kinds = registry(kinds)

    async def handle(self, batch: Sequence[Decoded[Any]]) -> Sends:
        dead_letters: Sends = []
        for decoded in batch:
            kind = self.kinds.get(decoded.value.kind)
            if kind is None:
                continue
            try:
                await load_off_loop(kind, decoded.value)  # the verdict; the version is dropped
            except Rejection as rejection:
                dead_letters.append(self.dead_letter(decoded.record, rejection))
        return dead_letters
