"""``streamrank bench interests``: PinnerSage medoids against the mean embedding of the same
history and against popularity, as retrieval sources of K=100, on the world's users; then the
costs the serving path and the interests role pay. Pure simulation: no broker, no Redis.

Each user's history is simulated (:mod:`bench.interests.histories`) and replayed through
:func:`models.interests.update_interests` one entry at a time, so the interests are those the
role would hold. Retrieval follows the production rule, with the same functions: up to 3
interests sampled by importance, one ANN query each with its centroid
(:func:`models.interests.retrieval_queries`), hits merged by importance and cosine
(:func:`models.interests.merge_retrieved`), engaged items dropped. The diagnosis shows what
the paper's literal rule (medoid queries, merged by best cosine) would retrieve instead.
The bounds in the same run: the mean embedding for recall, exact search for the index's
recall and for retrieval time.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from bench.harness import median, percentile
from bench.interests.histories import UserHistory, clicked_actions, replay, simulate_histories
from bench.interests.truth import (
    exact_top_k,
    first_not_in,
    merge_best,
    most_engaged,
    overlap_recall,
    recall_at,
)
from models.ann import ItemIndex, unit_rows
from models.interests import (
    InterestParams,
    Interests,
    bounded_history,
    merge_retrieved,
    recluster,
    retrieval_queries,
    sample_medoids,
    update_interests,
)
from models.world import World, WorldConfig
from stream.runtime.gc_policy import tune_for_batches

K = 100
CURVE = tuple(range(10, 201, 10))  # the K of the recall curve; one search at the largest
SOURCES = ("pinnersage", "mean_embedding", "popularity")
TIMED_USERS = 200  # users whose clicks are drawn again for the update and recluster timings


@dataclass(frozen=True)
class InterestsBenchConfig:
    users: int = 1000
    items: int = 10_000  # the catalogue recall is measured on
    index_items: int = 100_000  # the index retrieval time and ANN recall are measured on
    history: tuple[int, int] = (30, 60)  # entries per user, drawn uniformly
    seed: int = 7
    params: InterestParams = field(default_factory=InterestParams)
    png: Path | None = None

    def __post_init__(self) -> None:
        low, high = self.history
        if not 1 <= low <= high:
            raise ValueError(f"history must be 1 <= min <= max entries, got {self.history}")
        if self.index_items < self.items:
            raise ValueError(f"the index ({self.index_items} items) must hold the catalogue "
                             f"({self.items} items)")


@dataclass(frozen=True)
class Replayed:
    history: UserHistory
    interests: Interests
    engaged: frozenset[str]
    seeds: np.ndarray  # the sampled interests' retrieval queries (their centroids)
    medoids: np.ndarray  # the sampled interests' medoids, for the diagnosis
    importance: np.ndarray  # the sampled interests' importance at the last action

    def retrieve(self, index: ItemIndex, k: int) -> list[str]:
        return pinnersage(index.search(self.seeds, k, self.engaged), self.importance, k)


def pinnersage(hits: Sequence[Sequence[tuple[str, float]]], importance: np.ndarray, k: int
               ) -> list[str]:
    return [item for item, _ in merge_retrieved(hits, importance.tolist(), k)]


def run_interests_bench(config: InterestsBenchConfig) -> dict[str, Any]:
    tune_for_batches()  # as the worker does: the timings are the serving process's
    world = World(WorldConfig(n_items=config.items, n_users=config.users, seed=config.seed))
    rng = np.random.default_rng(config.seed)
    users = [u for u in range(config.users) if len(world.interests(u, 0.0)) >= 2]
    lengths = rng.integers(config.history[0], config.history[1] + 1, size=len(users)).tolist()
    started = time.perf_counter()
    replayed = [_replayed(world, h, config) for h in simulate_histories(world, users, lengths, rng)]
    simulated_s = time.perf_counter() - started
    index = ItemIndex(world.config.dim, capacity=config.items)
    index.upsert(world.item_ids, world.item_embeddings)
    curves = _recall_curves(world, index, replayed)
    at_k = {source: curves[source][CURVE.index(K)] for source in SOURCES}
    mean_recall = at_k["mean_embedding"]
    ratio = at_k["pinnersage"] / mean_recall if mean_recall > 0 else float("nan")
    online, reclusters = _update_costs(world, config, rng)
    serving = _serving_costs(world, config, replayed)
    result = {
        "recall_at_100": {s: round(v, 4) for s, v in at_k.items()},
        "ratio_vs_mean": round(ratio, 3),
        "online_update_p99_ms": online["p99"],
        "online_update_ms": online,
        "recluster_ms": {n: r["p50"] for n, r in reclusters.items()},
        "recluster_p99_ms": {n: r["p99"] for n, r in reclusters.items()},
        **serving,
        "recall_curve": {"k": list(CURVE), **{s: [round(v, 4) for v in curves[s]]
                                              for s in SOURCES}},
        "diagnosis": _diagnosis(world, index, replayed),
        "users": len(replayed), "catalogue_items": config.items,
        "history_entries_mean": round(float(np.mean(lengths)), 1),
        "simulate_and_replay_s": round(simulated_s, 1),
        "config": {**asdict(config), "png": str(config.png) if config.png else None},
    }
    result["bars"] = {
        "ratio_vs_mean>=1.3": ratio >= 1.3 and config.items >= 10_000,
        "online_update_p99_ms<=1": online["p99"] <= 1.0,
        "ann_recall>=0.95": serving["ann_recall"] >= 0.95,
        "retrieval_p99_ms<=5": serving["retrieval_p99_ms"] <= 5.0
        and serving["index_items"] >= 100_000,
    }
    result["bar_met"] = all(result["bars"].values())
    if config.png is not None:
        result["png"] = _plot(curves, config.png)
    return result


def _replayed(world: World, history: UserHistory, config: InterestsBenchConfig) -> Replayed:
    interests = replay(history, world.item_embeddings, config.params)
    now = float(history.ts[-1])
    rng = np.random.default_rng([config.seed, history.user])
    sampled = sample_medoids(interests, now, rng)
    engaged = frozenset(world.item_ids[i] for i in history.items)
    return Replayed(history, interests, engaged, retrieval_queries(interests, sampled),
                    interests.medoids[sampled], interests.importance_at(now)[sampled])


def _recall_curves(world: World, index: ItemIndex, users: Sequence[Replayed]
                   ) -> dict[str, list[float]]:
    top = CURVE[-1]
    popular = most_engaged([world.item_ids[i] for i in u.history.items] for u in users)
    got: dict[str, list[list[str]]] = {source: [] for source in SOURCES}
    by_k: list[list[list[str]]] = [[] for _ in CURVE]  # the slots depend on K: merge per K
    for u in users:
        hits = index.search(u.seeds, top, u.engaged)
        for lists, k in zip(by_k, CURVE, strict=True):
            lists.append(pinnersage(hits, u.importance, k))
        mean = world.item_embeddings[u.history.items].mean(axis=0)
        got["mean_embedding"].append([i for i, _ in index.search(mean, top, u.engaged)[0]])
        got["popularity"].append(first_not_in(popular, u.engaged, top))
    held = [world.item_ids[u.history.held_out] for u in users]
    curves = {source: [recall_at(lists, held, k) for k in CURVE]
              for source, lists in got.items() if source != "pinnersage"}
    return {"pinnersage": [recall_at(lists, held, k) for lists, k in zip(by_k, CURVE,
                                                                         strict=True)],
            **curves}


def _diagnosis(world: World, index: ItemIndex, users: Sequence[Replayed]) -> dict[str, Any]:
    """What other rules would retrieve, each a change of one thing: the paper's literal rule
    (the sampled medoids as queries, merged by best cosine), medoids merged as production
    merges (:func:`models.interests.merge_retrieved`), and the world's true interest vectors,
    merged by best cosine or as production merges but with their true weights: what the rule
    could retrieve if the interests were estimated without error."""
    held = [world.item_ids[u.history.held_out] for u in users]
    variants: dict[str, list[list[str]]] = {
        "medoids_best_cosine": [], "medoids_by_importance": [], "true_interests": [],
        "true_interests_by_weight": []}
    for u in users:
        medoid_hits = index.search(u.medoids, K, u.engaged)
        variants["medoids_best_cosine"].append(merge_best(medoid_hits, K))
        variants["medoids_by_importance"].append(pinnersage(medoid_hits, u.importance, K))
        truth_hits = index.search(world.interests(u.history.user, 0.0), K, u.engaged)
        variants["true_interests"].append(merge_best(truth_hits, K))
        variants["true_interests_by_weight"].append(
            pinnersage(truth_hits, world.interest_weights(u.history.user, 0.0), K))
    truths = [len(world.interests(u.history.user, 0.0)) for u in users]
    return {
        "recall_at_100": {name: round(recall_at(lists, held, K), 4)
                          for name, lists in variants.items()},
        "interests_found_mean": round(float(np.mean([len(u.interests) for u in users])), 2),
        "true_interests_mean": round(float(np.mean(truths)), 2),
        "medoid_cosine_to_true_interest": round(float(np.mean([
            (u.interests.medoids @ world.interests(u.history.user, 0.0).T).max(axis=1).mean()
            for u in users])), 3),
    }


def _update_costs(world: World, config: InterestsBenchConfig, rng: np.random.Generator
                  ) -> tuple[dict[str, float], dict[str, dict[str, float]]]:
    """One online action on a 50-action history (never a recluster: it is the first since
    one), and full reclusters of 50 and 500 actions, on clicks drawn for the same users."""
    params = config.params
    wide = InterestParams(max_history=500)  # same cut; only the bound on actions moves
    online: list[float] = []
    full: dict[str, list[float]] = {"50": [], "500": []}
    for user in range(min(TIMED_USERS, config.users)):
        ts, emb = clicked_actions(world, user, 500, rng)
        now = float(ts[0])
        old_ts, old_unit = bounded_history(ts[1:51], emb[1:51], now, params)
        current = recluster(old_ts, old_unit, float(ts[1]), params)
        if update_interests(current, ts[:51], emb[:51], now, params).pending != 1:
            raise AssertionError("the timed update was not an online one")
        online.append(_ms(update_interests, current, ts[:51], emb[:51], now, params))
        full["50"].append(_ms(recluster, old_ts, old_unit, now, params))
        wide_ts, wide_unit = bounded_history(ts, emb, now, wide)
        full["500"].append(_ms(recluster, wide_ts, wide_unit, now, wide))
    return _spread(online), {n: _spread(samples) for n, samples in full.items()}


def _serving_costs(world: World, config: InterestsBenchConfig, users: Sequence[Replayed]
                   ) -> dict[str, Any]:
    """3 medoid queries plus the merge per user, over the world's items and extra ones drawn
    by a larger world of the same seed (so around the same topic centres), against exact
    search of the same queries; and the index's recall@100 against that exact search."""
    extra = config.index_items - config.items
    more = World(WorldConfig(n_items=max(extra, 100), n_users=10, seed=config.seed))
    ids = world.item_ids + [f"extra{i}" for i in range(extra)]
    vectors = unit_rows(np.vstack([world.item_embeddings, more.item_embeddings[:extra]]))
    index = ItemIndex(world.config.dim, capacity=len(ids))
    started = time.perf_counter()
    index.upsert(ids, vectors)
    build_s = time.perf_counter() - started
    ann, exact, found, truth = [], [], [], []
    for u in users:
        ann.append(_ms(u.retrieve, index, K))
        exact.append(_ms(_exact_merge, vectors, ids, u, u.history.items))
        rows = exact_top_k(vectors, unit_rows(u.seeds), K)
        found += [[i for i, _ in hits] for hits in index.search(u.seeds, K)]
        truth += [[ids[r] for r in row] for row in rows]
    ann_ms, exact_ms = _spread(ann), _spread(exact)
    return {"retrieval_p99_ms": ann_ms["p99"], "retrieval_ms": ann_ms,
            "exact_retrieval_ms": exact_ms,
            "retrieval_vs_exact": round(ann_ms["p50"] / exact_ms["p50"], 4),
            "ann_recall": round(overlap_recall(found, truth), 4),
            "index_items": len(ids), "index_build_s": round(build_s, 1)}


def _exact_merge(vectors: np.ndarray, ids: Sequence[str], u: Replayed,
                 engaged_rows: np.ndarray) -> list[str]:
    """The same retrieval by brute force: every item scored against every query."""
    scores = u.seeds @ vectors.T
    scores[:, engaged_rows] = -np.inf
    top = np.argpartition(-scores, K - 1, axis=1)[:, :K]
    return pinnersage([sorted(((ids[r], float(row_scores[r])) for r in row),
                              key=lambda hit: -hit[1])
                       for row, row_scores in zip(top, scores, strict=True)], u.importance, K)


def _ms(call: Callable[..., object], *args: Any) -> float:
    started = time.perf_counter()
    call(*args)
    return (time.perf_counter() - started) * 1000.0


def _spread(samples: Sequence[float]) -> dict[str, float]:
    return {"p50": median(samples), "p99": percentile(samples, 99), "n": len(samples)}


def _plot(curves: dict[str, list[float]], png: Path) -> str | None:
    """Recall@K per source; None when matplotlib is not installed."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    fig, ax = plt.subplots(figsize=(6, 4))
    for source in SOURCES:
        ax.plot(CURVE, curves[source], marker="o", markersize=3, label=source)
    ax.axvline(K, color="grey", linestyle=":", linewidth=1)
    ax.set(xlabel="K retrieved", ylabel="recall of the next engagement",
           title="Retrieval sources on the synthetic world")
    ax.legend()
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(png, dpi=120)
    plt.close(fig)
    return str(png)
