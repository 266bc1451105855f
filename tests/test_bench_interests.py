"""The interests bench: its merge and recall on hand-made cases, the histories it simulates,
and a tiny run end to end."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest

from bench.interests import InterestsBenchConfig, run_interests_bench
from bench.interests.histories import replay, simulate_histories
from bench.interests.truth import (
    exact_top_k,
    first_not_in,
    merge_best,
    most_engaged,
    overlap_recall,
    recall_at,
)
from models.interests import InterestParams
from models.world import World, WorldConfig


def test_merge_keeps_each_items_best_cosine_once_best_first() -> None:
    cats = [("a", 0.9), ("b", 0.8), ("c", 0.3)]
    cars = [("d", 0.85), ("b", 0.95), ("e", 0.2)]
    assert merge_best([cats, cars], k=4) == ["b", "a", "d", "c"]
    assert merge_best([cats, cars], k=10) == ["b", "a", "d", "c", "e"]
    assert merge_best([], k=3) == []


def test_merge_of_the_top_k_per_query_is_the_prefix_of_a_longer_merge() -> None:
    rng = np.random.default_rng(0)
    queries = [sorted(((f"i{j}", float(c)) for j, c in enumerate(rng.random(50))),
                      key=lambda hit: -hit[1]) for _ in range(3)]
    for k in (1, 5, 20):
        assert merge_best([q[:k] for q in queries], k) == merge_best(queries, 50)[:k]


def test_recall_counts_users_whose_held_out_item_is_in_their_first_k() -> None:
    retrieved = [["a", "b", "c"], ["d", "e"], []]
    assert recall_at(retrieved, ["b", "e", "z"], k=1) == 0.0
    assert recall_at(retrieved, ["b", "e", "z"], k=2) == pytest.approx(2 / 3)
    assert np.isnan(recall_at([], [], k=2))
    with pytest.raises(ValueError, match="2 retrieved lists for 1 users"):
        recall_at(retrieved[:2], ["a"], k=1)


def test_exact_search_and_the_recall_of_an_approximation_against_it() -> None:
    items = np.array([[1.0, 0.0], [0.0, 1.0], [0.6, 0.8], [-1.0, 0.0]])
    top = exact_top_k(items, np.array([[1.0, 0.0], [0.0, 1.0]]), k=2)
    assert top.tolist() == [[0, 2], [1, 2]]
    assert overlap_recall([["a", "b"], ["c", "x"]], [["a", "b"], ["c", "d"]]) == 0.75


def test_popularity_ranks_by_count_then_id_and_skips_the_users_own_items() -> None:
    ranked = most_engaged([["b", "a", "b"], ["c", "a", "b"]])
    assert ranked == ["b", "a", "c"]
    assert first_not_in(ranked, {"b"}, k=1) == ["a"]


def test_a_request_can_be_drawn_for_a_given_user() -> None:
    world = World(WorldConfig(n_items=500, n_users=20))
    rng = np.random.default_rng(0)
    assert {world.draw_request(rng, 0.0, user=7).user for _ in range(5)} == {7}
    with pytest.raises(ValueError, match="user 20 is not in a world of 20 users"):
        world.draw_request(rng, 0.0, user=20)


def test_histories_hold_positive_entries_in_time_order_and_a_new_next_item() -> None:
    world = World(WorldConfig(n_items=1000, n_users=10))
    histories = simulate_histories(world, [0, 3], [12, 25], np.random.default_rng(1))
    for history, length in zip(histories, [12, 25], strict=True):
        assert len(history.items) == len(history.ts) == length
        assert np.all(np.diff(history.ts) >= 0.0)
        assert history.held_out not in history.items
        interests = replay(history, world.item_embeddings, InterestParams())
        assert interests.last_ts == history.ts[-1]
        assert int(interests.sizes.sum()) == length  # every entry counted once


def test_a_tiny_run_reports_every_figure_and_its_bars() -> None:
    result = run_interests_bench(InterestsBenchConfig(
        users=12, items=1000, index_items=1500, history=(10, 15)))
    assert set(result["recall_at_100"]) == {"pinnersage", "mean_embedding", "popularity"}
    assert result["users"] == 12 and result["index_items"] == 1500
    assert 0.0 <= result["ann_recall"] <= 1.0
    assert set(result["recluster_ms"]) == {"50", "500"}
    assert result["online_update_ms"]["n"] == 12
    assert set(result["diagnosis"]["recall_at_100"]) == {
        "medoids_best_cosine", "medoids_by_importance", "true_interests",
        "true_interests_by_weight"}
    # A catalogue under 10k items, an index under 100k: the bars cannot be met.
    assert not result["bars"]["ratio_vs_mean>=1.3"]
    assert not result["bars"]["retrieval_p99_ms<=5"] and result["bar_met"] is False


def test_the_index_must_hold_the_catalogue() -> None:
    with pytest.raises(ValueError, match="must hold the catalogue"):
        InterestsBenchConfig(items=10_000, index_items=5_000)


def test_the_cli_refuses_an_index_smaller_than_the_catalogue() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "stream.cli", "bench", "interests", "--items", "5000",
         "--index-items", "2000"], capture_output=True, text=True, timeout=60)
    assert result.returncode == 2
    assert "error: the index (2000 items) must hold the catalogue (5000 items)" in result.stderr
    assert "Traceback" not in result.stderr + result.stdout
