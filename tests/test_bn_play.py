"""The benchmark's closed loop: serving's rows on a virtual clock, with the truth beside them."""

from __future__ import annotations

import asyncio

import numpy as np
import pytest

from bench.bn.play import ClosedLoop, Served, by_click, dataset
from models.ranking_features import RANKER_FEATURE_NAMES, TASK_NAMES
from models.scorer import PopularityScorer
from models.world import Shift, World, WorldConfig
from stream.settings import Settings

SMALL = WorldConfig(n_users=40, n_items=300, n_ads=5, dim=8, candidates_per_request=30, shown=5)
POPULARITY = by_click(PopularityScorer(RANKER_FEATURE_NAMES, TASK_NAMES))


def play(config: WorldConfig, n: int, seed: int = 3, rate_per_s: float = 2.0) -> list[Served]:
    loop = ClosedLoop(World(config), Settings(embedding_dim=8), seed, rate_per_s=rate_per_s)
    return asyncio.run(loop.serve(n, POPULARITY))


def test_same_seed_same_rows_labels_and_truth() -> None:
    a, b = play(SMALL, 60), play(SMALL, 60)
    for name in ("rows", "labels", "true_probs", "item_ids"):
        np.testing.assert_array_equal(dataset_of(a, name), dataset_of(b, name))
    assert not np.array_equal(dataset_of(a, "labels"), dataset_of(play(SMALL, 60, seed=4),
                                                                  "labels"))


def dataset_of(served: list[Served], name: str) -> np.ndarray:
    return np.concatenate([getattr(s, name) for s in served])


def test_rows_are_the_shown_items_with_labels_and_true_probabilities() -> None:
    served = play(SMALL, 60)
    assert [s.request_index for s in served] == list(range(60))
    for s in served:
        assert s.rows.shape == (5, len(RANKER_FEATURE_NAMES)) and s.rows.dtype == np.float32
        assert s.true_probs.shape == s.labels.shape == (5, len(TASK_NAMES))
        assert np.all((s.true_probs >= 0.0) & (s.true_probs <= 1.0))
        assert np.isin(s.labels, (0.0, 1.0)).all()
        # Shown in popularity order: the item click-rate column falls down the feed.
        rate = s.rows[:, RANKER_FEATURE_NAMES.index("item_click_rate_1d")]
        assert np.all(np.diff(rate) <= 0)
    # Engagements reach the features: later requests see counted impressions.
    impressions = RANKER_FEATURE_NAMES.index("item_log_impression_1h")
    assert served[-1].rows[:, impressions].max() > 0.0 == served[0].rows[:, impressions].max()
    # The labels follow the truth: clicks per row near the mean true click probability.
    data = dataset(served)
    assert data.features.shape == (300, len(RANKER_FEATURE_NAMES))
    click = TASK_NAMES.index("click")
    truth = dataset_of(served, "true_probs")[:, click].mean()
    assert abs(data.labels[:, click].mean() - truth) < 4 * np.sqrt(truth / 300) + 0.01


def test_a_traffic_surge_makes_each_request_take_less_world_time() -> None:
    surged = WorldConfig(**{**SMALL.__dict__, "shifts": (Shift(10.0, "traffic", 4.0),)})
    elapsed = np.array([s.elapsed_s for s in play(surged, 40, rate_per_s=2.0)])
    steps = np.diff(elapsed)
    assert steps[elapsed[1:] <= 10.0] == pytest.approx(0.5)
    assert steps[elapsed[:-1] >= 10.0] == pytest.approx(0.125)
    assert elapsed[-1] == pytest.approx(10.0 + 19 * 0.125)
