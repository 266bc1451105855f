"""Training rows from the stream's own logs, built by replaying them through the serving code.

Each logged request is featurised with the same store, reader and matrix code the worker uses,
at the request's own timestamp and with only the events logged before it; then its engagements
are applied. Training and serving therefore cannot disagree about what a feature means.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import orjson

from models.features import ItemMeta
from models.ranking_features import RANKER_FEATURE_NAMES, TASK_NAMES, ranking_matrix
from models.training import Dataset
from schemas import Event, ItemUpsert, RankingRequest
from schemas.codec import validate
from stream.feature_reader import FeatureReader
from stream.features_service import feature_update
from stream.settings import Settings
from stream.store import FeatureUpdate, MemoryStore


async def build_dataset(log_path: Path, settings: Settings,
                        max_requests: int | None = None) -> Dataset:
    """One row per shown item of each logged request; labels are its engagements."""
    store = MemoryStore(settings.dedup_ttl_s, settings.history_length)
    reader = FeatureReader(store, settings.embedding_dim)
    limits = settings.limits
    matrices: list[np.ndarray] = []
    labels: list[np.ndarray] = []
    item_ids: list[str] = []
    request_index: list[int] = []
    with log_path.open("rb") as lines:
        for line in lines:
            record = orjson.loads(line)
            if "item" in record:
                item = validate(record["item"], ItemUpsert, limits)
                await store.apply(FeatureUpdate(
                    item_meta={item.item_id: ItemMeta.from_upsert(item).pack()}))
                continue
            request = validate(record["request"], RankingRequest, limits)
            shown: list[str] = record["served"]["items"]
            events = [validate(e, Event, limits) for e in record["events"]]
            if shown:
                features = await reader.fetch(request.user_id, shown, now=request.ts)
                matrices.append(ranking_matrix(features, request.context, request.ts))
                labels.append(_labels(shown, events))
                item_ids += shown
                request_index += [len(matrices) - 1] * len(shown)
            await store.apply(feature_update(events, {}))
            if max_requests is not None and len(matrices) >= max_requests:
                break
    if not matrices:
        raise ValueError(f"{log_path} holds no logged requests to learn from")
    return Dataset(
        features=np.concatenate(matrices), labels=np.concatenate(labels),
        item_ids=np.asarray(item_ids, dtype=object),
        request_index=np.asarray(request_index, dtype=np.int64),
        feature_names=RANKER_FEATURE_NAMES, task_names=TASK_NAMES)


def _labels(shown: list[str], events: list[Event]) -> np.ndarray:
    position = {item_id: row for row, item_id in enumerate(shown)}
    labels = np.zeros((len(shown), len(TASK_NAMES)), dtype=np.float32)
    for event in events:
        if event.item_id in position and event.type in TASK_NAMES:
            labels[position[event.item_id], TASK_NAMES.index(event.type)] = 1.0
    return labels
