"""MicroBatcher's queueing logic, on a ranker that scores only when the test lets it."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence

import numpy as np
import pytest

from schemas import RankingRequest
from stream.scoring.ranker import MicroBatcher, Overloaded, Ranked, Received


class GatedRanker:
    """Records each batch it is given, and answers it once ``gate`` is open."""

    def __init__(self) -> None:
        self.batches: list[list[str]] = []
        self.gate = asyncio.Event()
        self.failure: Exception | None = None

    async def rank(self, received: Sequence[Received]) -> list[Ranked]:
        self.batches.append([r.request.request_id for r in received])
        await self.gate.wait()
        if self.failure is not None:
            raise self.failure
        return [Ranked(r.request.request_id, r.request.user_id, [], "m", "s", 0.0, time.time(),
                       np.zeros((0, 1), dtype=np.float32)) for r in received]


def batcher(max_requests: int = 64, queue_max: int = 256) -> tuple[MicroBatcher, GatedRanker]:
    ranker = GatedRanker()
    return MicroBatcher(ranker, max_requests, queue_max), ranker  # type: ignore[arg-type]


async def call(micro: MicroBatcher, request_id: str) -> str:
    request = RankingRequest(request_id=request_id, user_id="u1", ts=time.time(),
                             candidates=["i1"])
    return (await micro.rank_one(Received(request, time.perf_counter()))).request_id


def callers(micro: MicroBatcher, *ids: str) -> list[asyncio.Task[str]]:
    return [asyncio.ensure_future(call(micro, i)) for i in ids]


async def settle() -> None:
    """Let every task that can run do so (the tasks here only wait on each other)."""
    for _ in range(5):
        await asyncio.sleep(0)


async def answers(tasks: list[asyncio.Task[str]]) -> list[str]:
    # A guard against a hang (the bug this file is about), not a timing assertion.
    return await asyncio.wait_for(asyncio.gather(*tasks), timeout=10)


async def test_requests_that_arrive_during_a_batch_share_the_next_one() -> None:
    micro, ranker = batcher()
    first = callers(micro, "a")
    await settle()
    rest = callers(micro, "b", "c", "d")
    await settle()
    ranker.gate.set()
    assert await answers(first + rest) == ["a", "b", "c", "d"]
    assert ranker.batches == [["a"], ["b", "c", "d"]]


async def test_a_full_queue_refuses_at_once_and_accepts_again_once_drained() -> None:
    micro, ranker = batcher(max_requests=1, queue_max=2)
    accepted = callers(micro, "a")
    await settle()  # "a" is being scored; two more may wait
    accepted += callers(micro, "b", "c")
    await settle()
    assert micro.full
    with pytest.raises(Overloaded):
        await call(micro, "d")
    ranker.gate.set()
    assert await answers(accepted) == ["a", "b", "c"]
    assert not micro.full
    assert await call(micro, "e") == "e"
    assert ranker.batches == [["a"], ["b"], ["c"], ["e"]]


async def test_a_cancelled_waiting_caller_is_not_scored_and_frees_its_place() -> None:
    micro, ranker = batcher(max_requests=1, queue_max=1)
    first = callers(micro, "a")
    await settle()
    [leaving] = callers(micro, "b")
    await settle()
    assert micro.full
    leaving.cancel()
    await settle()
    assert not micro.full
    [later] = callers(micro, "c")
    ranker.gate.set()
    assert await answers([*first, later]) == ["a", "c"]
    assert leaving.cancelled()
    assert ranker.batches == [["a"], ["c"]]


async def test_a_caller_cancelled_mid_batch_breaks_neither_its_batch_nor_later_callers() -> None:
    micro, ranker = batcher()
    leaving, staying = callers(micro, "a", "b")
    await settle()
    assert ranker.batches == [["a", "b"]]  # both are being scored
    leaving.cancel()
    await settle()
    ranker.gate.set()
    assert await answers([staying]) == ["b"]
    assert await asyncio.wait_for(call(micro, "c"), timeout=10) == "c"
    assert leaving.cancelled()


async def test_a_failed_batch_fails_its_callers_only() -> None:
    micro, ranker = batcher()
    failing = callers(micro, "a", "b")
    await settle()
    ranker.failure = ConnectionError("feature store down")
    ranker.gate.set()
    results = await asyncio.wait_for(asyncio.gather(*failing, return_exceptions=True), 10)
    assert [type(r) for r in results] == [ConnectionError, ConnectionError]
    ranker.failure = None
    assert await asyncio.wait_for(call(micro, "c"), timeout=10) == "c"


async def test_stopping_the_batcher_leaves_no_caller_waiting() -> None:
    micro, ranker = batcher(max_requests=1)
    scoring, waiting = callers(micro, "a", "b")
    await settle()
    assert micro._draining is not None
    micro._draining.cancel()
    results = await asyncio.wait_for(asyncio.gather(scoring, waiting, return_exceptions=True),
                                     timeout=10)
    assert all(isinstance(r, asyncio.CancelledError) for r in results)
    ranker.gate.set()
    assert await asyncio.wait_for(call(micro, "c"), timeout=10) == "c"
