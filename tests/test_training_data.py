"""Training rows from a simulator log: the replay skips warming requests' rows, not their
history."""

from __future__ import annotations

import asyncio
from pathlib import Path

import numpy as np
import pytest

from stream.settings import Settings
from stream.training_data import LogReplay
from tests.test_simulator import offline_simulator

REQUESTS = 60


@pytest.fixture(scope="module")
def log(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("log") / "logs.jsonl"
    simulator, _ = offline_simulator(path)
    asyncio.run(simulator.warm_up(REQUESTS, 50.0))
    simulator._log.close()  # type: ignore[union-attr]
    return path


def _replay(log: Path, warming: int) -> LogReplay:
    replay = LogReplay(Settings(embedding_dim=8), warming_requests=warming)
    asyncio.run(replay.read(log))
    return replay


def test_warming_requests_build_history_but_give_no_rows(log: Path) -> None:
    every = _replay(log, 0).dataset()
    later = _replay(log, 40).dataset()
    assert len(every.features) == 10 * REQUESTS and len(later.features) == 10 * (REQUESTS - 40)
    # The same rows as a full replay gives for those requests: the skipped requests'
    # engagements are in the store their features were read from.
    np.testing.assert_array_equal(later.features, every.features[-len(later.features):])
    np.testing.assert_array_equal(later.labels, every.labels[-len(later.labels):])
    assert later.request_index[0] == 0 and np.all(np.diff(later.request_index) >= 0)
