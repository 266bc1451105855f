"""Training rows from the stream's own logs, built by replaying them through the serving code.

Each logged request is featurised with the same store, reader and matrix code the worker uses,
at the request's own timestamp and with only the events logged before it; then its engagements
are applied, to the features and to the users' interests (the interests role's own step).
Training and serving therefore cannot disagree about what a feature means.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import orjson

from models.dataset import Dataset
from models.ranking_features import RANKER_FEATURE_NAMES, TASK_NAMES
from schemas import Event, ItemUpsert, RankingRequest, Rejection
from schemas.codec import validate
from stream.errors import StreamrankError
from stream.features.offline import OfflineFeatures
from stream.settings import Settings


class LogError(StreamrankError):
    """A training log that is not what ``streamrank simulate --log`` writes."""


class LogReplay:
    """Replays a growing log incrementally: each :meth:`read` continues where the last stopped,
    so retraining during a run costs the new lines only."""

    def __init__(self, settings: Settings, warming_requests: int = 0) -> None:
        self.settings = settings
        # The first ``warming_requests`` logged requests only build the store's history: their
        # rows would show item counters far colder than serving meets after them.
        self.warming_requests = warming_requests
        self._requests = 0
        self._features = OfflineFeatures(settings)
        self._offset = 0
        self._lines = 0
        self._matrices: list[np.ndarray] = []
        self._labels: list[np.ndarray] = []
        self._item_ids: list[str] = []
        self._request_index: list[int] = []

    async def read(self, log_path: Path, max_requests: int | None = None) -> None:
        """One row per shown item of each logged request; labels are its engagements."""
        with log_path.open("rb") as lines:
            lines.seek(self._offset)
            for line in lines:
                if not line.endswith(b"\n"):
                    break  # still being written; the next read picks it up
                self._offset += len(line)
                self._lines += 1
                try:
                    await self._replay(orjson.loads(line))
                except (orjson.JSONDecodeError, Rejection, KeyError, TypeError) as exc:
                    raise LogError(f"{log_path}, line {self._lines}: not a simulator log "
                                   f"record ({exc})") from None
                if max_requests is not None and len(self._matrices) >= max_requests:
                    break

    async def _replay(self, record: dict[str, object]) -> None:
        limits = self.settings.limits
        if "item" in record:
            await self._features.publish([validate(record["item"], ItemUpsert, limits)])
            return
        request = validate(record["request"], RankingRequest, limits)
        served = record["served"]
        assert isinstance(served, dict)
        shown: list[str] = served["items"]
        events = [validate(e, Event, limits) for e in record["events"]]  # type: ignore[attr-defined]
        self._requests += 1
        if shown and self._requests > self.warming_requests:
            position = {item_id: row for row, item_id in enumerate(request.candidates)}
            if not all(item_id in position for item_id in shown):
                raise KeyError("a shown item is not among the request's candidates")
            matrix = await self._features.matrix(request)
            self._matrices.append(matrix[[position[item_id] for item_id in shown]])
            self._labels.append(shown_labels(shown, events))
            self._item_ids += shown
            self._request_index += [len(self._matrices) - 1] * len(shown)
        await self._features.apply(events)

    def dataset(self) -> Dataset:
        if not self._matrices:
            raise LogError("the log holds no logged requests to learn from")
        return Dataset(
            features=np.concatenate(self._matrices), labels=np.concatenate(self._labels),
            item_ids=np.asarray(self._item_ids, dtype=object),
            request_index=np.asarray(self._request_index, dtype=np.int64),
            feature_names=RANKER_FEATURE_NAMES, task_names=TASK_NAMES)


async def build_dataset(log_path: Path, settings: Settings,
                        max_requests: int | None = None) -> Dataset:
    replay = LogReplay(settings)
    await replay.read(log_path, max_requests)
    return replay.dataset()


def shown_labels(shown: Sequence[str], events: Sequence[Event]) -> np.ndarray:
    """float32 ``[len(shown), len(TASK_NAMES)]``: 1 where the user did that task to that item."""
    position = {item_id: row for row, item_id in enumerate(shown)}
    labels = np.zeros((len(shown), len(TASK_NAMES)), dtype=np.float32)
    for event in events:
        if event.item_id in position and event.type in TASK_NAMES:
            labels[position[event.item_id], TASK_NAMES.index(event.type)] = 1.0
    return labels
