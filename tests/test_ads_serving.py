"""Ad slots on the serving path (stream/ads/serving.py with the ranker): every ranking with ad
slots gets logged decisions; a request is decided alike whichever batch it rides in; a
parameter hot swap under load fails no request; the feature log carries each context."""

from __future__ import annotations

import asyncio
import time

import numpy as np
import pytest

from models.ann import ItemIndex
from models.bandit import CONTEXT_NAMES, DIM, BanditParams, Feedback, learn
from models.features import ItemMeta
from models.ranking_features import RANKER_FEATURE_NAMES, TASK_NAMES
from models.scorer import PopularityScorer
from models.value import ValueModel
from schemas import FeatureLog, ItemUpsert, RankingRequest, RankingResult, decode
from stream.ads.serving import AdPlacer, BanditSlot
from stream.features.reader import FeatureReader
from stream.features.store import EventBatch, MemoryStore
from stream.interests.retrieval import Retriever
from stream.runtime.metrics import WorkerMetrics
from stream.scoring.feature_log import feature_log
from stream.scoring.ranker import ModelSlot, Ranker, Received
from stream.settings import Settings

DIM_EMBEDDING = 32
ADS = [f"a{k}" for k in range(6)]


async def ranker_with_ads(settings: Settings) -> tuple[Ranker, BanditSlot]:
    store = MemoryStore(60, 5)
    rng = np.random.default_rng(0)
    metas = {ad: ItemMeta.from_upsert(ItemUpsert(
        ts=time.time(), item_id=ad, kind="ad", bid=float(1 + k),
        embedding=rng.standard_normal(DIM_EMBEDDING).tolist())).pack()
        for k, ad in enumerate(ADS)}
    await store.apply(EventBatch(metas=metas))
    slot = ModelSlot(settings)
    slot.current = PopularityScorer(RANKER_FEATURE_NAMES, TASK_NAMES)
    index = ItemIndex(DIM_EMBEDDING)
    retriever = Retriever(store, lambda: index, default_k=10, metrics=WorkerMetrics())
    bandit = BanditSlot(settings)
    ranker = Ranker(FeatureReader(store, DIM_EMBEDDING), slot, ValueModel({"click": 1.0}),
                    retriever, AdPlacer(bandit, settings))
    return ranker, bandit


def request(request_id: str, slots: list[int] | None = None) -> Received:
    return Received(RankingRequest(
        request_id=request_id, user_id="u1", ts=time.time(),
        candidates=[f"i{k}" for k in range(12)], ad_candidates=ADS,
        ad_slots=[2, 5, 8] if slots is None else slots, n=10), time.perf_counter())


def keen_params(settings: Settings) -> BanditParams:
    """Parameters that learnt that ads pay: every ad row earned, no slot lost engagement."""
    rows = np.zeros((200, DIM))
    rows[:, 0] = 1.0
    rows[:, CONTEXT_NAMES.index("ad_log_bid")] = 1.0
    return learn(BanditParams.prior(epsilon=settings.ads_epsilon),
                 Feedback(rows, np.ones(200, dtype=bool), np.full(200, 5.0), np.zeros(200)))


async def test_each_allowed_slot_gets_a_logged_decision_with_its_version() -> None:
    settings = Settings(ads_epsilon=0.2)
    ranker, bandit = await ranker_with_ads(settings)
    bandit.install(keen_params(settings))
    [ranked] = await ranker.rank([request("r1")])

    result = decode(ranked.encode(), RankingResult)
    assert [ad.slot for ad in result.ads] == [2, 5, 8]
    assert {ad.policy_version for ad in result.ads} == {"bandit-1"}
    assert [ad.decision_id for ad in result.ads] == ["r1/2", "r1/5", "r1/8"]
    placed = [ad.ad_id for ad in result.ads if ad.ad_id is not None]
    assert placed and len(set(placed)) == len(placed) and set(placed) <= set(ADS)
    assert all(0 < ad.propensity <= 1 for ad in result.ads)

    log = decode(feature_log(ranked, rate=0.0) or b"", FeatureLog)  # ads: always logged
    assert (log.item_ids, log.rows) == ([], [])  # item rows: only when sampled
    assert tuple(log.ad_feature_names) == CONTEXT_NAMES
    assert [a.decision_id for a in log.ads] == [ad.decision_id for ad in result.ads]
    assert all(len(a.context) == DIM and a.actions is None for a in log.ads)
    full = decode(feature_log(ranked, rate=1.0) or b"", FeatureLog)
    for entry, ad in zip(full.ads, result.ads, strict=True):
        assert entry.actions is not None and entry.probabilities is not None
        assert entry.probabilities[entry.actions.index(ad.ad_id)] == pytest.approx(
            ad.propensity)
        assert sum(entry.probabilities) == pytest.approx(1.0)


async def test_a_request_is_decided_alike_alone_or_in_any_batch() -> None:
    """The topic micro-batches, POST /rank may not: the seed is the request's, not the
    batch's, so both paths log the same decisions for the same request."""
    settings = Settings(ads_epsilon=0.5)
    ranker, bandit = await ranker_with_ads(settings)
    bandit.install(keen_params(settings))
    alone = [(await ranker.rank([request(f"r{k}")]))[0].encode() for k in range(8)]
    together = await ranker.rank([request(f"r{k}") for k in reversed(range(8))])
    ads_alone = [decode(a, RankingResult).ads for a in alone]
    ads_together = [decode(t.encode(), RankingResult).ads for t in reversed(together)]
    assert ads_alone == ads_together
    # ... and the seed does matter: with epsilon 0.5 eight requests do not all agree.
    assert len({tuple(ad.ad_id for ad in ads) for ads in ads_alone}) > 1


async def test_requests_without_slots_or_ads_get_none_and_log_nothing_extra() -> None:
    ranker, _ = await ranker_with_ads(Settings())
    no_slots, = await ranker.rank([request("r1", slots=[])])
    assert no_slots.ads is None and decode(no_slots.encode(), RankingResult).ads == []
    assert feature_log(no_slots, rate=0.0) is None


async def test_a_hot_swap_under_load_fails_no_request() -> None:
    settings = Settings(ads_epsilon=0.1)
    ranker, bandit = await ranker_with_ads(settings)
    versions = [keen_params(settings)]
    for k in range(20):
        versions.append(versions[-1].retuned(dial=float(k)))
    served: list[str] = []

    async def load(worker: int) -> None:
        for k in range(30):
            [ranked] = await ranker.rank([request(f"w{worker}-{k}")])
            result = decode(ranked.encode(), RankingResult)
            assert len(result.ads) == 3
            served.extend(ad.policy_version for ad in result.ads)
            await asyncio.sleep(0)

    async def swap() -> None:
        for params in versions:
            bandit.install(params)
            await asyncio.sleep(0)

    await asyncio.gather(*(load(w) for w in range(4)), swap())
    assert len(served) == 4 * 30 * 3
    assert len(set(served)) > 1  # the swaps landed while requests were served
    assert set(served) <= {"bandit-0"} | {p.version for p in versions}


async def test_a_request_id_of_the_longest_kind_still_gives_valid_decision_ids() -> None:
    settings = Settings()
    ranker, _ = await ranker_with_ads(settings)
    longest = "r" * 128
    [ranked] = await ranker.rank([request(longest)])
    result = decode(ranked.encode(), RankingResult)  # every decision_id is a valid Id
    ids = [ad.decision_id for ad in result.ads]
    assert len(set(ids)) == 3 and all(len(i) <= 128 for i in ids)
    assert [i.rsplit("/", 1)[1] for i in ids] == ["2", "5", "8"]
    log = decode(feature_log(ranked, rate=0.0) or b"", FeatureLog)
    assert [a.decision_id for a in log.ads] == ids
