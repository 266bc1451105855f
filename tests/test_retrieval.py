"""Retrieval from a known index: interests, trending, exclusions, and the same candidates for
the same request."""

from __future__ import annotations

import numpy as np
import pytest

from models.ann import ItemIndex
from models.interests import InterestParams, update_interests
from schemas import RankingRequest
from schemas.examples import EXAMPLES
from stream.features.store import MemoryStore
from stream.interests.retrieval import Retriever
from stream.interests.state import STATE, UserInterests
from stream.interests.trending import STATE_KEY, STATE_KIND, pack_top
from stream.runtime.metrics import WorkerMetrics

DIM = 8
NORTH, EAST = np.eye(DIM, dtype=np.float32)[0], np.eye(DIM, dtype=np.float32)[1]


def near(direction: np.ndarray, count: int, rng: np.random.Generator) -> np.ndarray:
    return direction + 0.05 * rng.normal(size=(count, DIM)).astype(np.float32)


@pytest.fixture
async def catalogue() -> tuple[MemoryStore, ItemIndex]:
    """Items north, east and south; u1 engaged with ten north and ten east of them."""
    rng = np.random.default_rng(0)
    index = ItemIndex(DIM)
    index.upsert([f"n{k}" for k in range(50)], near(NORTH, 50, rng))
    index.upsert([f"e{k}" for k in range(50)], near(EAST, 50, rng))
    index.upsert([f"s{k}" for k in range(50)], near(-NORTH, 50, rng))  # nobody likes south
    store = MemoryStore(60, 50)
    ts = np.arange(20, 0, -1, dtype=np.float64) + 1.79e9  # newest first
    history = np.concatenate([near(NORTH, 10, rng), near(EAST, 10, rng)])
    ids = [f"n{k}" for k in range(10)] + [f"e{k}" for k in range(10)]
    interests = update_interests(None, ts, history, float(ts[0]), InterestParams())
    await store.put_states(STATE, {"u1": UserInterests(interests, ts, history,
                                                       tuple(ids)).to_bytes()})
    await store.put_states(STATE_KIND, {STATE_KEY: pack_top(["s3", "s4", "n0"])})
    return store, index


@pytest.fixture
def retriever(catalogue: tuple[MemoryStore, ItemIndex]) -> Retriever:
    store, index = catalogue
    return Retriever(store, lambda: index, default_k=30, metrics=WorkerMetrics())


def request(user: str, **fields: object) -> RankingRequest:
    return RankingRequest.model_validate({**EXAMPLES["requests"], "ts": 1.79e9 + 30,
                                          "user_id": user, "candidates": [], **fields})


async def test_a_user_with_interests_gets_items_near_them_and_not_what_they_engaged_with(
        retriever: Retriever) -> None:
    (got,) = await retriever.retrieve([request("u1")])
    candidates = got.request.candidates
    assert len(candidates) == 30
    assert all(c[0] in "ne" for c in candidates)  # never south
    engaged = {f"n{k}" for k in range(10)} | {f"e{k}" for k in range(10)}
    assert not set(candidates) & engaged
    assert {s.split(":")[0] for s in got.sources} == {"interest"}
    assert {c[0] for c in candidates} == {"n", "e"}  # both interests are queried


async def test_a_user_without_interests_gets_the_trending_items(retriever: Retriever) -> None:
    (got,) = await retriever.retrieve([request("stranger")])
    assert got.request.candidates == ["s3", "s4", "n0"]
    assert got.sources == ["trending"] * 3


async def test_the_same_request_gets_the_same_candidates(retriever: Retriever) -> None:
    first, second = await retriever.retrieve([request("u1"), request("u1")])
    assert first.request.candidates == second.request.candidates
    other = (await retriever.retrieve([request("u1", request_id="r-other")]))[0]
    assert sorted(other.request.candidates) != [] and other.sources


async def test_retrieve_adds_to_the_given_candidates_and_a_plain_request_is_untouched(
        retriever: Retriever) -> None:
    plus, plain = await retriever.retrieve([
        request("u1", candidates=["x1", "n0"], retrieve=5),
        request("u1", candidates=["x1", "x2"])])
    assert plus.request.candidates[:2] == ["x1", "n0"] and len(plus.request.candidates) == 7
    assert plus.sources[:2] == ["request", "request"]
    assert "n0" not in plus.request.candidates[2:]
    assert plain.request.candidates == ["x1", "x2"] and plain.sources == ["request"] * 2


async def test_the_trending_source_gives_everyone_the_trending_items_but_what_they_engaged_with(
        catalogue: tuple[MemoryStore, ItemIndex]) -> None:
    store, index = catalogue
    metrics = WorkerMetrics()
    trending = Retriever(store, lambda: index, default_k=30, metrics=metrics, source="trending")
    with_interests, stranger = await trending.retrieve([request("u1"), request("stranger")])
    assert with_interests.request.candidates == ["s3", "s4"]  # n0: u1 engaged with it
    assert stranger.request.candidates == ["s3", "s4", "n0"]
    assert with_interests.sources == ["trending"] * 2
    assert metrics.total("streamrank_retrieved_requests", source="trending") == 2
    assert metrics.total("streamrank_retrieved_requests", source="interests") == 0
