"""The BN role on the real broker: feature-log rows become a statistics version that scorers
hot-swap under load; the CLI freezes, rolls back and resets; the watchdog rolls back a bad
version; a kill -9 and restart blend no row twice; hostile rows change nothing."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import orjson
import pytest

from models.bn import BnStats, read_stats
from models.ranking_features import RANKER_FEATURE_NAMES
from models.scorer import CPU, Manifest, OnnxScorer
from schemas import FeatureLog, ModelUpdate, Outcome, encode
from schemas.examples import EXAMPLES
from stream.bn import control
from stream.runtime.environment import ensure_topics
from stream.runtime.worker_process import WorkerProcess
from stream.scoring.model_kind import publish_model, trusted_file
from stream.settings import Settings
from tests.conftest import export_serving_model
from tests.integration.harness import publish, read_dead_letters, read_records
from tests.integration.test_scoring import post_rank

pytestmark = pytest.mark.integration

MIN_ROWS = 400
WATCHDOG_OUTCOMES = 300
ROWS_PER_LOG = 20
ITEMS = [f"i{n}" for n in range(30)]


def feature_logs(count: int, seed: int, shift: float = 0.3) -> list[tuple[str, bytes]]:
    """Logged requests whose rows sit ``shift`` above the trained means (0: untrained BN)."""
    rng = np.random.default_rng(seed)
    messages = []
    for k in range(count):
        rows = rng.normal(shift, 1.2, (ROWS_PER_LOG, len(RANKER_FEATURE_NAMES)))
        record = FeatureLog(ts=time.time(), request_id=f"r{seed}-{k}", user_id=f"u{k % 5}",
                            model_version="bn-test", feature_names=list(RANKER_FEATURE_NAMES),
                            item_ids=ITEMS[:ROWS_PER_LOG], rows=rows.round(4).tolist())
        messages.append((record.user_id, encode(record)))
    return messages


def bn_settings(settings: Settings, models: Path, **overrides: Any) -> Settings:
    return settings.model_copy(update={
        "roles": "scoring,bn", "model_dir": models, "bn_min_rows": MIN_ROWS,
        "bn_min_interval_s": 0.0,  # batches published seconds apart each make a version
        "bn_watchdog_outcomes": WATCHDOG_OUTCOMES, "feature_log_rate": 0.0, **overrides})


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    directory = tmp_path_factory.mktemp("bn-models")
    export_serving_model(directory, "bn-m1", seed=5)
    return directory


def start(settings: Settings, model_dir: Path) -> WorkerProcess:
    assert settings.broker_url is not None
    ensure_topics(settings.broker_url, settings)
    asyncio.run(publish_model(settings, settings.broker_url, model_dir / "bn-m1" /
                              "manifest.json"))
    process = WorkerProcess(settings, settings.broker_url)
    process.start()
    process.wait_for(lambda s: s["model_version"] == "bn-m1", timeout_s=30)
    return process


@pytest.fixture(scope="module")
def served(bootstrap: str, redis_url: str, model_dir: Path) -> Iterator[tuple[WorkerProcess,
                                                                              Settings]]:
    settings = bn_settings(Settings(broker_url=bootstrap, redis_url=redis_url, partitions=2,
                                    topic_prefix=f"bn{uuid.uuid4().hex[:8]}"), model_dir)
    process = start(settings, model_dir)
    try:
        yield process, settings
    finally:
        process.stop()


def bn_cli(settings: Settings, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**{k: v for k, v in os.environ.items() if not k.startswith("STREAMRANK_")},
           **settings.as_env()}
    return subprocess.run([sys.executable, "-m", "stream.cli", "bn", *args], env=env,
                          capture_output=True, text=True, timeout=120)


def cli_status(settings: Settings, *args: str) -> dict[str, Any]:
    result = bn_cli(settings, *(args or ("status",)))
    assert result.returncode == 0, result.stderr
    status: dict[str, Any] = orjson.loads(result.stdout)
    return status


async def stats_updates(settings: Settings) -> list[ModelUpdate]:
    updates = await read_records(settings, "model-updates", ModelUpdate, 1.0)
    return [u for u in updates if u.kind == "bn_stats"]


def stats_of(update: ModelUpdate, settings: Settings) -> BnStats:
    return read_stats(trusted_file(update.uri, settings.model_dir), update.sha256)


def test_rows_become_a_version_that_is_hot_swapped_under_load(
        served: tuple[WorkerProcess, Settings]) -> None:
    process, settings = served
    answers: list[tuple[int, str]] = []
    stop = threading.Event()

    def load() -> None:
        while not stop.is_set():
            body = orjson.dumps({"request_id": uuid.uuid4().hex, "user_id": "u1",
                                 "ts": time.time(), "candidates": ITEMS, "n": 10})
            status, result = post_rank(process.port, body)
            answers.append((status, result.get("stats_version", "")))

    client = threading.Thread(target=load)
    client.start()
    try:
        time.sleep(0.5)
        asyncio.run(publish(settings, "feature-log",
                            feature_logs(MIN_ROWS // ROWS_PER_LOG, seed=1)))
        stats = process.wait_for(lambda s: s["stats_version"] == "bn-1", timeout_s=60)
        time.sleep(0.5)
    finally:
        stop.set()
        client.join()
    assert stats["bn_updates"]["accepted"] == 1
    statuses = {status for status, _ in answers}
    assert statuses == {200}, "a request failed during the swap"
    versions = [version for _, version in answers]
    assert versions[0] == "trained" and versions[-1] == "bn-1"
    assert set(versions[versions.index("bn-1"):]) == {"bn-1"}, "once swapped, never back"
    (update,) = asyncio.run(stats_updates(settings))
    adapted = stats_of(update, settings)
    assert (adapted.version, adapted.parent, adapted.rows) == ("bn-1", "trained", MIN_ROWS)
    # The input layer's mean moved a momentum's share of the way to the rows' 0.3.
    assert float(adapted.layers["bn_input"][0].mean()) == pytest.approx(0.03, abs=0.01)


def test_freeze_rollback_and_reset_through_the_cli(served: tuple[WorkerProcess,
                                                                 Settings]) -> None:
    process, settings = served
    process.wait_for(lambda s: s["stats_version"] == "bn-1", timeout_s=60)
    assert cli_status(settings)["stats_version"] == "bn-1"

    frozen = cli_status(settings, "freeze")
    assert (frozen["stats_version"], frozen["frozen"], frozen["note"]) == ("bn-2", True,
                                                                          "freeze")
    process.wait_for(lambda s: s["stats_version"] == "bn-2", timeout_s=30)
    asyncio.run(publish(settings, "feature-log", feature_logs(MIN_ROWS // ROWS_PER_LOG, 2)))
    process.wait_for(lambda s: s["bn_updates"]["frozen"] == 1, timeout_s=60)
    assert process.get("/stats")["stats_version"] == "bn-2"

    assert cli_status(settings, "unfreeze")["frozen"] is False
    rolled = cli_status(settings, "rollback", "trained")
    assert (rolled["stats_version"], rolled["note"]) == ("bn-4", "rollback to trained")
    reset = cli_status(settings, "reset")
    assert reset["stats_version"] == "bn-5" and reset["rows"] == 0
    process.wait_for(lambda s: s["stats_version"] == "bn-5", timeout_s=30)
    updates = {u.version: stats_of(u, settings)
               for u in asyncio.run(stats_updates(settings))}
    trained = Manifest.load(settings.model_dir / "bn-m1" / "manifest.json").trained_stats()
    for version in ("bn-4", "bn-5"):
        for name, (mean, var) in trained.layers.items():
            np.testing.assert_array_equal(updates[version].layers[name][0], mean)
            np.testing.assert_array_equal(updates[version].layers[name][1], var)

    missing = bn_cli(settings, "rollback", "bn-99")
    assert missing.returncode == 2
    assert "no statistics version 'bn-99'" in missing.stderr
    assert "Traceback" not in missing.stderr


def test_the_watchdog_rolls_back_an_injected_bad_version(
        served: tuple[WorkerProcess, Settings]) -> None:
    process, settings = served
    assert settings.broker_url is not None
    versions = asyncio.run(control.read_versions(settings, settings.broker_url))
    parent = versions.current
    assert parent is not None and versions.model is not None
    mean, var = parent.layers["bn_input"]
    bad = versions.next_version(parent, note="adapted", layers={
        **parent.layers, "bn_input": (mean + 2.0 * np.sqrt(var), var)})
    asyncio.run(control.publish(versions, settings, settings.broker_url, bad))
    process.wait_for(lambda s: s["stats_version"] == bad.version, timeout_s=30)

    # Users click as the parent predicts: the parent is the truth, the bad version is not.
    manifest = versions.model.scorer.manifest
    rng = np.random.default_rng(7)
    rows = rng.normal(0.0, 1.0, (WATCHDOG_OUTCOMES, len(RANKER_FEATURE_NAMES)))
    rows = rows.astype(np.float32).round(4)
    truth = OnnxScorer(manifest, CPU, 1, parent).score(rows)[:, 0]
    outcomes = []
    for k, (row, p) in enumerate(zip(rows, truth, strict=True)):
        outcome = Outcome.model_validate({
            **EXAMPLES["outcomes"], "request_id": f"w{k}", "user_id": f"u{k % 5}",
            "features": row.tolist(), "feature_names": list(RANKER_FEATURE_NAMES),
            "item_labels": {"click": bool(rng.random() < p)}})
        outcomes.append((outcome.user_id, encode(outcome)))
    asyncio.run(publish(settings, "outcomes", outcomes))
    stats = process.wait_for(lambda s: s["bn_watchdog_rollbacks"] == 1, timeout_s=60)
    rollback = asyncio.run(stats_updates(settings))[-1]
    restored = stats_of(rollback, settings)
    assert restored.parent == bad.version and restored.note.startswith("watchdog: rolled back")
    np.testing.assert_array_equal(restored.layers["bn_input"][0], mean)
    process.wait_for(lambda s: s["stats_version"] == restored.version, timeout_s=30)
    assert stats["bn_watchdog_rollbacks"] == 1


@pytest.mark.xdist_group("cpu-heavy")
async def test_a_kill_9_restart_blends_no_row_twice_and_hostile_rows_change_nothing(
        bootstrap: str, redis_url: str, model_dir: Path) -> None:
    # Commits far apart: the kill lands after the version is published, before its commit.
    settings = bn_settings(Settings(broker_url=bootstrap, redis_url=redis_url, partitions=2,
                                    topic_prefix=f"bnk{uuid.uuid4().hex[:8]}"), model_dir,
                           commit_interval_ms=60_000)
    process = await asyncio.to_thread(start, settings, model_dir)
    try:
        good = feature_logs(MIN_ROWS // ROWS_PER_LOG, seed=3)
        row = orjson.loads(good[0][1])
        hostile = [("u0", b"{not json"),
                   ("u0", orjson.dumps(row | {"rows": [[1e300] * len(RANKER_FEATURE_NAMES)]
                                              * ROWS_PER_LOG})),
                   ("u0", orjson.dumps(row | {"rows": row["rows"][:3]})),
                   ("u0", orjson.dumps(row).replace(b"0.", b"NaN", 1))]
        # Valid, not hostile: a ranking logged for its ad contexts alone, no item rows.
        ads_only = ("u0", orjson.dumps(row | {"item_ids": [], "rows": []}))
        await publish(settings, "feature-log", [*hostile, ads_only, *good])
        await asyncio.to_thread(process.wait_for, lambda s: s["stats_version"] == "bn-1", 60)
        letters = await read_dead_letters(settings, expected=len(hostile))
        assert len(letters) == len(hostile)
        process.kill()
        await asyncio.to_thread(process.start)
        await asyncio.to_thread(process.wait_for, lambda s: s["stats_version"] == "bn-1", 30)
        await asyncio.sleep(3.0)  # the role reads the uncommitted rows again, and skips them
        await publish(settings, "feature-log", feature_logs(MIN_ROWS // ROWS_PER_LOG, seed=4))
        await asyncio.to_thread(process.wait_for, lambda s: s["stats_version"] == "bn-2", 60)
        updates = [stats_of(u, settings) for u in await stats_updates(settings)]
        assert [(s.version, s.rows) for s in updates] == [("bn-1", MIN_ROWS),
                                                          ("bn-2", 2 * MIN_ROWS)]
        assert await read_dead_letters(settings, expected=len(hostile)) == letters
    finally:
        process.stop()
