"""Training rows from the outcomes topic: the served feature rows with their labels.

Only items of requests in the feature log carry their row, and only rows of the serving layout
(``RANKER_FEATURE_NAMES``) are used: a model trained here sees exactly the features it will be
served with. Rows come out in time order, one request's rows together, as training splits by
time.
"""

from __future__ import annotations

import numpy as np
from aiokafka.structs import TopicPartition

from models.dataset import Dataset
from models.ranking_features import RANKER_FEATURE_NAMES, TASK_NAMES
from schemas import Outcome, Rejection, decode
from stream.errors import StreamrankError
from stream.runtime.clients import READ_TO_END_WAIT_MS, kafka_consumer, read_to_end
from stream.settings import Settings


class NoTrainingRows(StreamrankError):
    """The outcomes topic holds no item outcome with a served feature row."""


async def outcomes_dataset(settings: Settings, bootstrap: str) -> Dataset:
    """Every item outcome with a feature row of the serving layout, from the whole topic."""
    outcomes = await _read_all(settings, bootstrap)
    names = list(RANKER_FEATURE_NAMES)
    usable = sorted((o for o in outcomes if o.kind == "item" and o.features is not None
                     and o.item_labels is not None and o.feature_names == names),
                    key=lambda o: (o.ts, o.request_id, o.seq))
    if not usable:
        raise NoTrainingRows(
            f"{settings.topic('outcomes')} holds no item outcome with a served feature row "
            f"(of {len(outcomes)} outcomes); is STREAMRANK_FEATURE_LOG_RATE above 0, and has "
            "the outcomes role run past a window?")
    requests = {request_id: k for k, request_id in
                enumerate(dict.fromkeys(o.request_id for o in usable))}
    return Dataset(
        features=np.asarray([o.features for o in usable], dtype=np.float32),
        labels=np.asarray([[float(getattr(o.item_labels, task)) for task in TASK_NAMES]
                           for o in usable], dtype=np.float32),
        item_ids=np.asarray([o.item_id for o in usable], dtype=object),
        request_index=np.asarray([requests[o.request_id] for o in usable], dtype=np.int64),
        feature_names=RANKER_FEATURE_NAMES, task_names=TASK_NAMES)


async def _read_all(settings: Settings, bootstrap: str) -> list[Outcome]:
    """The topic from its start to its end."""
    consumer = kafka_consumer(settings, bootstrap, group_id=None, enable_auto_commit=False,
                              auto_offset_reset="earliest",
                              fetch_max_wait_ms=READ_TO_END_WAIT_MS)
    await consumer.start()
    try:
        topic = settings.topic("outcomes")
        await consumer.topics()  # loads metadata, so the partitions are known
        partitions = consumer.partitions_for_topic(topic) or {0}
        consumer.assign([TopicPartition(topic, p) for p in sorted(partitions)])
        outcomes: list[Outcome] = []
        async for _, record in read_to_end(consumer):
            try:
                outcomes.append(decode(record.value or b"", Outcome))
            except Rejection:
                continue  # not a training row; its consumers dead-letter it
        return outcomes
    finally:
        await consumer.stop()
