"""The blocking RankingClient (kafka-python) against the embedded broker and a real worker."""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from schemas import RankingRequest, encode
from stream.client import RankingClient, RankingTimeout, RankingUnavailable
from stream.runtime.worker_process import WorkerProcess
from stream.settings import Settings
from tests.integration.harness import serving_settings
from tests.integration.test_scoring import ITEMS, post_rank

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def worker(bootstrap: str, redis_url: str,
           serving_models: tuple[Path, Path]) -> Iterator[tuple[WorkerProcess, Settings]]:
    settings = serving_settings(bootstrap, redis_url, serving_models[0], "client", partitions=3,
                                roles="scoring")
    with WorkerProcess(settings, bootstrap) as process:
        yield process, settings


def ranking_request(user: str = "u1") -> RankingRequest:
    return RankingRequest(request_id=uuid.uuid4().hex, user_id=user, ts=time.time(),
                          candidates=ITEMS[:25], n=10)


def test_rank_gets_the_same_items_as_post_rank(worker: tuple[WorkerProcess, Settings]) -> None:
    process, settings = worker
    request = ranking_request()
    with RankingClient(settings, timeout_s=20) as client:
        result = client.rank(request)
    status, http = post_rank(process.port, encode(request))
    assert status == 200
    assert result.request_id == request.request_id
    assert result.model_version == http["model_version"] == "test-v1"
    assert [item.item_id for item in result.items] == [item["item_id"] for item in http["items"]]


def test_concurrent_callers_each_get_their_own_result(
        worker: tuple[WorkerProcess, Settings]) -> None:
    _, settings = worker
    requests = [ranking_request(user=f"u{k % 7}") for k in range(24)]  # over every partition
    with RankingClient(settings, timeout_s=20) as client, ThreadPoolExecutor(8) as pool:
        results = list(pool.map(client.rank, requests))
        assert not client._waiters  # every waiter is gone once its caller returned
    assert [r.request_id for r in results] == [r.request_id for r in requests]
    assert [r.user_id for r in results] == [r.user_id for r in requests]


def test_no_answer_raises_a_timeout_and_close_fails_no_one_silently(
        worker: tuple[WorkerProcess, Settings]) -> None:
    _, settings = worker
    # Older than STREAMRANK_REQUEST_TTL_S: the worker dead-letters it, no ranking ever comes.
    expired = ranking_request().model_copy(update={"ts": time.time() - 120})
    client = RankingClient(settings, timeout_s=20)
    with pytest.raises(RankingTimeout, match=expired.request_id):
        client.rank(expired, timeout_s=1.0)
    assert isinstance(RankingTimeout("x"), TimeoutError)  # what generic code catches
    assert client.rank(ranking_request()).items  # a timeout leaves the client usable
    client.close()
    with pytest.raises(RankingUnavailable, match="closed"):
        client.rank(ranking_request())


def test_a_missing_topic_is_a_clear_error(worker: tuple[WorkerProcess, Settings]) -> None:
    _, settings = worker
    elsewhere = settings.model_copy(update={"topic_prefix": f"none{uuid.uuid4().hex[:8]}"})
    with pytest.raises(RankingUnavailable, match="does not exist"):
        RankingClient(elsewhere)
