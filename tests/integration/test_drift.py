"""The drift role on the real broker: a known step gives one alert, a kill -9 and restart give
no second one, and hostile outcomes change no monitor."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator

import numpy as np
import orjson
import pytest

from schemas import DriftAlert, Outcome, encode
from schemas.examples import EXAMPLES
from stream.runtime.worker_process import WorkerProcess
from stream.settings import Settings
from tests.integration.harness import publish, read_dead_letters, read_records

pytestmark = pytest.mark.integration

CHANGE = 4000  # outcomes before users start clicking less
T0 = time.time() - 3600


def outcomes(start: int, count: int, seed: int) -> list[tuple[str, bytes]]:
    """Item outcomes predicted at 0.2; users click 20% of the time before CHANGE, 5% after."""
    rng = np.random.default_rng(seed)
    messages = []
    for k in range(start, start + count):
        rate = 0.2 if k < CHANGE else 0.05
        outcome = Outcome.model_validate({
            **EXAMPLES["outcomes"], "ts": T0 + k * 0.1, "request_id": f"r{k}",
            "user_id": f"u{k % 7}", "probs": {"click": 0.2, "like": 0.05, "share": 0.02,
                                              "hide": 0.01},
            "item_labels": {"click": bool(rng.random() < rate)}})
        messages.append((outcome.user_id, encode(outcome)))
    return messages


async def read_alerts(settings: Settings, wait_s: float = 3.0) -> list[DriftAlert]:
    return await read_records(settings, "drift-alerts", DriftAlert, wait_s)


@pytest.fixture
def drift_settings(settings: Settings) -> Settings:
    return settings.model_copy(update={"roles": "drift", "alert_cooldown_s": 3600.0})


@pytest.fixture
def worker(drift_settings: Settings) -> Iterator[WorkerProcess]:
    with WorkerProcess(drift_settings, str(drift_settings.broker_url)) as process:
        yield process


def fed(worker: WorkerProcess, count: int, timeout_s: float = 60.0) -> None:
    # 12 values per item outcome: label rate, log loss and calibration of four tasks.
    worker.wait_for(lambda s: s["drift_updates"] >= 12 * count, timeout_s=timeout_s)


async def test_a_step_is_one_alert_and_a_kill_9_restart_sends_it_no_second_time(
        drift_settings: Settings, worker: WorkerProcess) -> None:
    await publish(drift_settings, "outcomes", outcomes(0, 6000, seed=1))
    await asyncio.to_thread(fed, worker, 6000)
    first = [a for a in await read_alerts(drift_settings) if a.signal == "label_rate.click"]
    assert len(first) == 1, first
    alert = first[0]
    assert alert.direction == "down" and alert.ts >= T0 + CHANGE * 0.1
    assert alert.before.mean == pytest.approx(0.2, abs=0.03)
    assert alert.severity == "critical"  # a quarter of the clicks: |log 0.25| = 1.4
    calibration = [a for a in await read_alerts(drift_settings, wait_s=0.5)
                   if a.signal == "calibration.click"]
    assert len(calibration) == 1
    before, after = calibration[0].before, calibration[0].after
    assert before.calibration_ratio == pytest.approx(1.0, abs=0.15)
    # Truly 4 (0.2 predicted, 0.05 clicked); partitions are read a batch at a time, so the
    # values right after the change mix both regimes.
    assert after.calibration_ratio is not None and after.calibration_ratio > 1.5

    worker.kill()
    worker.start()
    await publish(drift_settings, "outcomes", outcomes(6000, 1000, seed=2))
    # The restart reads the change again (it is within the replay) and detects it again.
    stats = await asyncio.to_thread(
        worker.wait_for, lambda s: s["drift_updates"] >= 12 * 7000, 60.0)
    assert stats["drift_detections_merged"] >= 1
    again = [a for a in await read_alerts(drift_settings) if a.signal == "label_rate.click"]
    assert [a.alert_id for a in again] == [alert.alert_id]


async def test_hostile_outcomes_go_to_the_dlq_and_feed_no_monitor(
        drift_settings: Settings, worker: WorkerProcess) -> None:
    good = outcomes(0, 10, seed=3)
    bad_prob = orjson.loads(good[0][1]) | {"probs": {"click": 5.0}}
    bad_rows = orjson.loads(good[1][1]) | {"features": [1e300], "feature_names": ["x"]}
    hostile = [("u0", orjson.dumps(bad_prob)), ("u0", orjson.dumps(bad_rows)),
               ("u0", b"{not json"), ("u0", b'{"probs": {"click": NaN}}')]
    await publish(drift_settings, "outcomes", hostile + good)
    stats = await asyncio.to_thread(worker.wait_for,
                                    lambda s: s["drift_updates"] >= 12 * 10, 60.0)
    letters = await read_dead_letters(drift_settings, expected=len(hostile))
    assert len(letters) == len(hostile)
    assert stats["drift_updates"] == 12 * 10
