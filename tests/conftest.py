"""Shared fixtures: the embedded broker and the real Redis, as the standards require."""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis

from stream.runtime.broker import embedded_broker
from stream.settings import Settings

REDIS_URL = os.environ.get("STREAMRANK_TEST_REDIS_URL", "redis://127.0.0.1:6379/15")

# tansu completes a group join half a session timeout after it starts (measured: 5 s at the
# default 10 s, 2.5 s at 5 s), and every worker start and every kill -9 restart in these tests
# waits for one. Every Settings built here reads this, and workers get it from their settings.
os.environ.setdefault("STREAMRANK_CONSUMER_SESSION_TIMEOUT_MS", "5000")

# `make test` runs the suite on two pytest-xdist workers (each with its own embedded broker;
# tests keep apart by topic prefix), since most of it waits on brokers and subprocesses. Tests
# that keep both cores busy for tens of seconds (the demos, the kill -9 restarts, the bench
# runs) are marked ``xdist_group("cpu-heavy")``: ``--dist loadgroup`` runs them one after
# another on one worker, so that no two of them starve each other into time-outs.


@pytest.hookimpl(tryfirst=True)  # before xdist reads the groups off the items
def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Every other integration module runs whole on one xdist worker: its tests share
    module-scoped workers, and some build on what an earlier test of the module left (the BN
    CLI test reads the statistics version the test before it made). Split across workers, a
    module starts its workers twice, and such a test waits for a state nobody makes."""
    for item in items:
        if item.get_closest_marker("integration") and not item.get_closest_marker("xdist_group"):
            item.add_marker(pytest.mark.xdist_group(item.module.__name__))


def pytest_xdist_node_collection_finished(node: Any, ids: list[str]) -> None:
    """Refuse to run with the groups lost. xdist marks a grouped test by suffixing its node id
    with ``@group``, and every integration test has a group (above); where xdist cannot
    (pytest 9.2 with xdist 3.8), ``--dist loadgroup`` quietly spreads every group over the
    workers, and the suite fails at random instead."""
    if (node.config.getvalue("dist") == "loadgroup"
            and any(nodeid.startswith("tests/integration/") for nodeid in ids)
            and not any("@" in nodeid for nodeid in ids)):
        pytest.exit("--dist loadgroup lost every xdist group (no node id carries its @group "
                    "suffix): see the pytest pin in pyproject.toml", returncode=4)


@pytest.fixture(scope="session")
def bootstrap() -> Iterator[str]:
    with embedded_broker() as address:
        yield address


@pytest.fixture(scope="session")
def redis_url() -> str:
    client = redis.Redis.from_url(REDIS_URL, socket_connect_timeout=2)
    try:
        client.ping()
    except redis.RedisError as exc:  # pragma: no cover - environment problem, not a test result
        pytest.fail(f"the integration tests need Redis at {REDIS_URL}: {exc}")
    finally:
        client.close()
    return REDIS_URL


@pytest.fixture
def settings(bootstrap: str, redis_url: str) -> Settings:
    """Settings on a topic prefix (and Redis namespace) of this test alone."""
    return Settings(
        broker_url=bootstrap,
        redis_url=redis_url,
        topic_prefix=f"t{uuid.uuid4().hex[:10]}",
        partitions=2,
        batch_wait_ms=5,
    )


def export_serving_model(directory: Path, version: str, seed: int) -> Path:
    """An (untrained) ranker on the serving feature layout, exported like training does."""
    import torch

    from models.ranker import MultiTaskRanker, export_onnx
    from models.ranking_features import RANKER_FEATURE_NAMES, TASK_NAMES

    torch.manual_seed(seed)
    model = MultiTaskRanker(len(RANKER_FEATURE_NAMES), len(TASK_NAMES))
    return export_onnx(model, RANKER_FEATURE_NAMES, TASK_NAMES, directory / version, version, {})


@pytest.fixture(scope="session")
def serving_models(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """Two model versions for hot-swap tests: manifests of v1 and v2."""
    directory = tmp_path_factory.mktemp("models")
    return (export_serving_model(directory, "test-v1", 1),
            export_serving_model(directory, "test-v2", 2))
