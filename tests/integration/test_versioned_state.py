"""Versioned state on model-updates: in-process workers against the embedded broker."""

from __future__ import annotations

import asyncio
import logging
import shutil
import time
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from pathlib import Path

import orjson
import pytest
from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient
from kafka.admin import ConfigResource, ConfigResourceType, KafkaAdminClient, NewTopic
from pydantic import SecretStr

from models.signing import SIGNATURE_FIELD, sign
from stream.ads.serving import BanditSlot
from stream.runtime.environment import ensure_topics
from stream.runtime.metrics import WorkerMetrics
from stream.runtime.state_audit import StateAuditService
from stream.runtime.versioned_state import VersionedStateService
from stream.scoring.model_kind import publish_model
from stream.scoring.ranker import ModelSlot
from stream.scoring.state_kinds import serving_kinds
from stream.settings import Settings
from tests.integration.harness import publish, read_dead_letters, wait_until

pytestmark = pytest.mark.integration

FALLBACK = "popularity-fallback"
KEY = "k3y-" + "x" * 40


@pytest.fixture
def state_settings(settings: Settings, tmp_path: Path) -> Settings:
    """Short consumer-group timeouts: the audit group is joined again at every restart."""
    return settings.model_copy(update={
        "model_dir": (tmp_path / "models").resolve(), "scorer_threads": 1,
        "consumer_session_timeout_ms": 2000, "consumer_rebalance_timeout_ms": 1000})


@pytest.fixture
def models(state_settings: Settings, serving_models: tuple[Path, Path]) -> dict[str, Path]:
    """Manifests inside the model dir: test-v1, test-v2, and "broken" (whose model.onnx does
    not match the manifest)."""
    root = state_settings.model_dir
    manifests = {}
    for manifest in serving_models:
        copy = shutil.copytree(manifest.parent, root / manifest.parent.name)
        manifests[manifest.parent.name] = copy / "manifest.json"
    broken = root / "broken"
    broken.mkdir()
    raw = orjson.loads(serving_models[0].read_bytes())
    (broken / "manifest.json").write_bytes(orjson.dumps({**raw, "version": "broken"}))
    (broken / "model.onnx").write_bytes(b"not an onnx model")
    manifests["broken"] = broken / "manifest.json"
    return manifests


@asynccontextmanager
async def state_worker(settings: Settings, known: tuple[str, ...] | None = None
                       ) -> AsyncIterator[tuple[ModelSlot, WorkerMetrics]]:
    """The state services of one worker, as ``stream.app`` wires them; ``known``: only these
    kinds, as an older worker in a rolling upgrade knows fewer."""
    assert settings.broker_url is not None
    slot, metrics = ModelSlot(settings), WorkerMetrics()
    kinds = [kind for kind in serving_kinds(slot, BanditSlot(settings), settings)
             if known is None or kind.name in known]
    services = [VersionedStateService(settings, settings.broker_url, kinds, metrics),
                StateAuditService(settings, settings.broker_url, kinds, metrics)]
    async with AsyncExitStack() as stack:
        for service in services:
            await service.start()
            stack.push_async_callback(service.stop)
        yield slot, metrics


def refused(metrics: WorkerMetrics, reason: str | None = None) -> float:
    labels = {"kind": "model"} | ({"reason": reason} if reason else {})
    return metrics.total("streamrank_state_updates_refused", **labels)


async def publish_raw(settings: Settings, manifest: Path, kind: str = "model") -> None:
    """An update as any producer could write it: no signing, no checks."""
    raw = orjson.loads(manifest.read_bytes())
    update = {"ts": time.time(), "model": "ranker", "kind": kind, "version": raw["version"],
              "uri": manifest.parent.as_uri(), "sha256": raw["sha256"]}
    await publish(settings, "model-updates", [(kind, orjson.dumps(update))])


async def audited_up_to(settings: Settings, offset: int) -> bool:
    """True once the audit group has committed ``offset`` on model-updates. (An unsubscribed
    consumer only reads the group's offsets; aiokafka's admin client cannot parse tansu's
    OffsetFetch answer.)"""
    consumer = AIOKafkaConsumer(bootstrap_servers=settings.broker_url,
                                group_id=settings.group("state-audit"), enable_auto_commit=False)
    await consumer.start()
    try:
        committed = await consumer.committed(TopicPartition(settings.topic("model-updates"), 0))
    finally:
        await consumer.stop()
    return committed == offset


async def audit_settled_with(settings: Settings, members: int) -> bool:
    """True once the audit group has ``members`` members and no rebalance in progress."""
    admin = AIOKafkaAdminClient(bootstrap_servers=settings.broker_url)
    await admin.start()
    try:
        [response] = await admin.describe_consumer_groups([settings.group("state-audit")])
    finally:
        await admin.close()
    [(_, _, state, _, _, joined)] = response.groups
    return state == "Stable" and len(joined) == members


def test_model_updates_is_compacted_in_one_partition(state_settings: Settings,
                                                     caplog: pytest.LogCaptureFixture) -> None:
    assert state_settings.broker_url is not None
    ensure_topics(state_settings.broker_url, state_settings)
    topic = state_settings.topic("model-updates")
    legacy = state_settings.model_copy(update={"topic_prefix": state_settings.topic_prefix + "old"})
    admin = KafkaAdminClient(bootstrap_servers=state_settings.broker_url)
    try:
        configs = admin.describe_configs([ConfigResource(ConfigResourceType.TOPIC, topic)],
                                         config_filter="all")["topic"][topic]
        [described] = admin.describe_topics([topic])
        # A topic made by an earlier version, without compaction: flagged, not changed.
        admin.create_topics([NewTopic(legacy.topic("model-updates"), 2, 1)])
    finally:
        admin.close()
    assert configs["cleanup.policy"]["value"] == "compact"
    assert int(configs["min.compaction.lag.ms"]["value"]) == 7 * 86_400_000
    assert len(described["partitions"]) == 1
    with caplog.at_level(logging.WARNING, logger="stream.runtime.environment"):
        ensure_topics(state_settings.broker_url, legacy)
    assert f"topic {legacy.topic('model-updates')} has cleanup.policy=delete" in caplog.text


async def test_publishing_keys_the_update_by_kind(state_settings: Settings,
                                                  models: dict[str, Path]) -> None:
    assert state_settings.broker_url is not None
    ensure_topics(state_settings.broker_url, state_settings)
    update = await publish_model(state_settings, state_settings.broker_url, models["test-v1"])
    consumer = AIOKafkaConsumer(state_settings.topic("model-updates"),
                                bootstrap_servers=state_settings.broker_url,
                                auto_offset_reset="earliest", group_id=None)
    await consumer.start()
    try:
        record = await asyncio.wait_for(consumer.getone(), 30)
    finally:
        await consumer.stop()
    assert record.key == b"model"
    assert orjson.loads(record.value or b"")["version"] == update.version == "test-v1"


async def test_the_latest_valid_version_wins_at_start_up(state_settings: Settings,
                                                         models: dict[str, Path]) -> None:
    assert state_settings.broker_url is not None
    ensure_topics(state_settings.broker_url, state_settings)
    await publish_raw(state_settings, models["test-v1"])
    await publish_raw(state_settings, models["broken"])  # newest, but it does not load
    async with state_worker(state_settings) as (slot, metrics):
        await wait_until(lambda: refused(metrics, "invalid_state") == 1
                         and slot.current.version == "test-v1")

    both_valid = state_settings.model_copy(
        update={"topic_prefix": state_settings.topic_prefix + "b"})
    ensure_topics(state_settings.broker_url, both_valid)
    await publish_raw(both_valid, models["test-v1"])
    await publish_raw(both_valid, models["test-v2"])
    async with state_worker(both_valid) as (slot, metrics):
        await wait_until(lambda: slot.current.version == "test-v2")
        assert refused(metrics) == 0


async def test_a_model_outside_the_model_dir_is_refused(
        state_settings: Settings, models: dict[str, Path],
        serving_models: tuple[Path, Path]) -> None:
    assert state_settings.broker_url is not None
    ensure_topics(state_settings.broker_url, state_settings)
    escape = state_settings.model_dir / "escape"
    escape.symlink_to(serving_models[1].parent, target_is_directory=True)
    await publish_raw(state_settings, models["test-v1"])
    await publish_raw(state_settings, serving_models[1])  # a real model, elsewhere on disk
    await publish_raw(state_settings, escape / "manifest.json")  # a link out of the dir
    async with state_worker(state_settings) as (slot, metrics):
        await wait_until(lambda: refused(metrics, "untrusted_state") == 2
                         and slot.current.version == "test-v1")
        assert refused(metrics) == 2
        await wait_until(lambda: audited_up_to(state_settings, 3), timeout_s=60)
    letters = await read_dead_letters(state_settings, 2)
    assert [letter.reason for letter in letters] == ["untrusted_state"] * 2
    assert [letter.offset for letter in letters] == [1, 2]
    assert all("outside STREAMRANK_MODEL_DIR" in letter.detail for letter in letters)


async def test_with_a_signing_key_only_signed_models_are_served(
        state_settings: Settings, models: dict[str, Path],
        caplog: pytest.LogCaptureFixture) -> None:
    keyed = state_settings.model_copy(update={"model_signing_key": SecretStr(KEY)})
    assert keyed.broker_url is not None
    ensure_topics(keyed.broker_url, keyed)
    forged_dir = models["test-v1"].parent.parent / "forged"
    shutil.copytree(models["test-v1"].parent, forged_dir)
    raw = orjson.loads((forged_dir / "manifest.json").read_bytes())
    forged = {**raw, "version": "forged", SIGNATURE_FIELD: sign(raw, b"not our key" * 4)}
    (forged_dir / "manifest.json").write_bytes(orjson.dumps(forged))
    await publish_raw(keyed, models["test-v1"])  # unsigned
    await publish_raw(keyed, forged_dir / "manifest.json")  # signed with another key

    with caplog.at_level(logging.DEBUG):
        async with state_worker(keyed) as (slot, metrics):
            await wait_until(lambda: refused(metrics, "untrusted_state") == 2)
            assert slot.current.version == FALLBACK
            update = await publish_model(keyed, keyed.broker_url, models["test-v2"])
            await wait_until(lambda: slot.current.version == "test-v2")
            await wait_until(lambda: audited_up_to(keyed, 3), timeout_s=60)
    assert update.version == "test-v2"
    assert SIGNATURE_FIELD in orjson.loads(models["test-v2"].read_bytes())  # signed in place
    letters = await read_dead_letters(keyed, 2)
    assert [letter.reason for letter in letters] == ["untrusted_state"] * 2
    assert "unsigned" in letters[0].detail and "wrongly signed" in letters[1].detail
    assert KEY not in caplog.text
    assert all(KEY not in letter.detail for letter in letters)


async def test_a_bad_update_is_dead_lettered_once(state_settings: Settings,
                                                  models: dict[str, Path]) -> None:
    """Once by two workers running side by side, and not again after two restarts."""
    assert state_settings.broker_url is not None
    ensure_topics(state_settings.broker_url, state_settings)
    async with state_worker(state_settings) as (_, first):
        async with state_worker(state_settings) as (_, second):
            # Publish once the partition has its one owner: a rebalance in between is the
            # at-least-once window that StateAuditService's docstring describes.
            await wait_until(lambda: audit_settled_with(state_settings, 2), timeout_s=60)
            await publish(state_settings, "model-updates", [("model", b"{not json")])  # 0
            await publish_raw(state_settings, models["broken"])  # offset 1
            await wait_until(lambda: refused(first) == refused(second) == 1)  # both tried it
            await wait_until(lambda: audited_up_to(state_settings, 2))
        # One at a time: when both members of a tansu group leave at once, tansu may keep
        # the departed leader in the next generation, and the next member never syncs.
        await wait_until(lambda: audit_settled_with(state_settings, 1), timeout_s=60)

    for offset, version in ((2, "test-v1"), (3, "test-v2")):  # two restarts
        async with state_worker(state_settings) as (slot, metrics):
            if version == "test-v1":  # nothing valid yet: the restarted reader tries it again
                await wait_until(lambda: refused(metrics) == 1)
            await publish_raw(state_settings, models[version])
            await wait_until(lambda v=version: slot.current.version == v)
            # The audit read past the bad records in this run, and let them be.
            await wait_until(lambda o=offset: audited_up_to(state_settings, o + 1), timeout_s=60)

    letters = await read_dead_letters(state_settings, 2)
    topic = state_settings.topic("model-updates")
    assert [(x.reason, x.source_topic, x.offset) for x in letters] == [
        ("not_json", topic, 0), ("invalid_state", topic, 1)]
    assert "does not match the manifest's sha256" in letters[1].detail


async def test_an_update_of_a_kind_the_worker_does_not_know_is_counted_not_dropped(
        state_settings: Settings, models: dict[str, Path],
        caplog: pytest.LogCaptureFixture) -> None:
    assert state_settings.broker_url is not None
    ensure_topics(state_settings.broker_url, state_settings)
    for _ in range(2):
        await publish_raw(state_settings, models["test-v1"], kind="bandit")
    await publish_raw(state_settings, models["test-v1"])
    with caplog.at_level(logging.INFO, logger="stream.runtime.versioned_state"):
        async with state_worker(state_settings, known=("model", "bn_stats")) as (slot,
                                                                                 metrics):
            await wait_until(lambda: slot.current.version == "test-v1")
            await wait_until(lambda: audited_up_to(state_settings, 3), timeout_s=60)
            ignored = metrics.total("streamrank_state_updates_ignored", kind="bandit")
    assert ignored == 2
    assert caplog.text.count("ignoring bandit updates") == 1  # logged once, counted each
    assert await read_dead_letters(state_settings, 0) == []  # a newer worker may know the kind

