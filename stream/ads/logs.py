"""Where offline evaluation reads from: a JSON-lines file or the feature-log and outcomes
topics, and the bandit parameters of a file or the newest ``bandit`` version on model-updates.

A bad record is counted with where it was (a line number, or a partition and offset) and the
reason the schemas give, never a crash: one broken line must not hide a day of logs.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import TypeVar

from aiokafka.structs import TopicPartition

from models.bandit import BanditParams
from schemas import FeatureLog, Limits, Outcome, Record, Rejection, decode
from schemas.codec import parse_json, validate
from stream.ads.control import read_params
from stream.ads.offline import AdLogs
from stream.errors import StreamrankError
from stream.runtime.clients import READ_TO_END_WAIT_MS, kafka_consumer, read_to_end
from stream.settings import Settings

R = TypeVar("R", bound=Record)


class NoBanditParams(StreamrankError):
    """No usable bandit parameters: a bad file, or no version on model-updates that loads."""


class NoBanditVersion(NoBanditParams):
    """model-updates holds no bandit version at all."""


def _kind(payload: object) -> type[FeatureLog] | type[Outcome] | None:
    """Which record a JSON line is, by a field only that record has."""
    if isinstance(payload, dict):
        if "seq" in payload:
            return Outcome
        if "rows" in payload:
            return FeatureLog
    return None


def read_file(path: Path, limits: Limits) -> AdLogs:
    """Every FeatureLog and Outcome line of ``path``; blank lines are skipped, others counted
    as malformed with their line number."""
    if not path.is_file():
        raise StreamrankError(f"no log file at {path}")
    logs = AdLogs()
    with path.open("rb") as lines:
        for number, line in enumerate(lines, start=1):
            if not line.strip():
                continue
            try:
                kind = _kind(parse_json(line))
                if kind is None:
                    raise Rejection("wrong_type", "neither a FeatureLog nor an Outcome")
                logs.add(validate(parse_json(line), kind, limits))
            except Rejection as exc:
                logs.malformed.append(f"line {number}: {exc}")
    return logs


async def _read_topic(settings: Settings, bootstrap: str, suffix: str, record_type: type[R]
                      ) -> AsyncIterator[tuple[str, R | Rejection]]:
    """A topic from its start to its end: each record, or why it was refused, and where."""
    topic = settings.topic(suffix)
    consumer = kafka_consumer(settings, bootstrap, group_id=None, auto_offset_reset="earliest",
                              fetch_max_wait_ms=READ_TO_END_WAIT_MS)
    await consumer.start()
    try:
        await consumer.topics()  # loads metadata, so the partitions are known
        partitions = [TopicPartition(topic, p)
                      for p in sorted(consumer.partitions_for_topic(topic) or {0})]
        consumer.assign(partitions)
        for tp in partitions:
            consumer.seek(tp, 0)  # tansu's ListOffsets answer is wrong: seek, never reset
        async for tp, message in read_to_end(consumer):
            where = f"{topic} partition {tp.partition} offset {message.offset}"
            try:
                yield where, decode(message.value or b"", record_type, settings.limits)
            except Rejection as exc:
                yield where, exc
    finally:
        await consumer.stop()


async def read_topics(settings: Settings, bootstrap: str) -> AdLogs:
    """The feature-log and outcomes topics, whole."""
    logs = AdLogs()
    sources: tuple[tuple[str, type[FeatureLog] | type[Outcome]], ...] = (
        ("feature-log", FeatureLog), ("outcomes", Outcome))
    for suffix, record_type in sources:
        async for where, record in _read_topic(settings, bootstrap, suffix, record_type):
            if isinstance(record, Rejection):
                logs.malformed.append(f"{where}: {record}")
            else:
                logs.add(record)
    return logs


def params_file(path: Path) -> BanditParams:
    if not path.is_file():
        raise NoBanditParams(f"no bandit parameter file at {path}")
    try:
        return BanditParams.from_bytes(path.read_bytes())
    except ValueError as exc:
        raise NoBanditParams(f"{path}: {exc}") from exc


async def newest_params(settings: Settings, bootstrap: str) -> BanditParams:
    """The version the scorers serve: the newest on model-updates that loads, as they would
    install it (:func:`stream.ads.control.read_params`)."""
    served = await read_params(settings, bootstrap)
    if not served.published:
        raise NoBanditVersion(f"no bandit parameters: {settings.topic('model-updates')} holds "
                              "no bandit version that loads; give --params FILE")
    return served.current
