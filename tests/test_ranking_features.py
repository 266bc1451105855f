"""The ranker's matrix: its column layout, the similarity and candidate-set columns in closed
form, and the candidate-set columns' value on the world's truth."""

import numpy as np
import pytest

from models.features import ITEM_FEATURE_NAMES, USER_FEATURE_NAMES
from models.ranking_features import (
    CANDIDATE_SET_NAMES,
    RANKER_FEATURE_NAMES,
    RECENCY_SCALE_S,
    CandidateFeatures,
    candidate_set_features,
    ranking_matrix,
)
from models.world import World, WorldConfig
from schemas import Context

NOW = 1_790_000_000.0


def test_matrix_columns_hold_each_block_where_its_names_say() -> None:
    axis = np.eye(3, dtype=np.float32)
    user = np.arange(len(USER_FEATURE_NAMES), dtype=np.float32)
    items = np.arange(2 * len(ITEM_FEATURE_NAMES), dtype=np.float32).reshape(2, -1)
    # Candidate 0 is the user's newest engagement, candidate 1 is orthogonal to both (length 2,
    # which the cosine ignores). Engagements: axis 0 now, axis 1 a day ago.
    features = CandidateFeatures(user, items, np.stack([axis[0], 2 * axis[2]]),
                                 np.ones(2, dtype=bool), np.array([NOW, NOW - RECENCY_SCALE_S]),
                                 np.stack([axis[0], axis[1]]))
    matrix = ranking_matrix(features, Context(device="tablet", surface="search"), NOW)

    assert matrix.shape == (2, len(RANKER_FEATURE_NAMES)) and matrix.dtype == np.float32
    column = {name: matrix[:, k] for k, name in enumerate(RANKER_FEATURE_NAMES)}
    assert all(column[name].tolist() == [k, k]
               for k, name in enumerate(USER_FEATURE_NAMES[:3]))
    assert column[ITEM_FEATURE_NAMES[1]].tolist() == [1, len(ITEM_FEATURE_NAMES) + 1]
    assert column["device_tablet"].tolist() == column["surface_search"].tolist() == [1, 1]
    assert column["device_mobile"].tolist() == [0, 0]
    recent = 1 / (1 + np.exp(-1))  # weights 1 and 1/e
    assert column["sim_max"] == pytest.approx([1, 0])
    assert column["sim_mean"] == pytest.approx([0.5, 0])
    assert column["sim_recent"] == pytest.approx([recent, 0], rel=1e-6)
    assert column["log_history_len"] == pytest.approx([np.log(3), np.log(3)])
    assert column["cand_density"].tolist() == [0, 0]  # orthogonal: not neighbours

    batch = np.full((4, len(RANKER_FEATURE_NAMES)), np.nan, dtype=np.float32)
    written = ranking_matrix(features, Context(device="tablet", surface="search"), NOW,
                             out=batch[1:3])
    assert written.base is batch and np.array_equal(batch[1:3], matrix)
    assert np.isnan(batch[[0, 3]]).all()  # rows of other requests untouched


def test_a_clustered_candidate_has_more_neighbours_than_an_isolated_one() -> None:
    axis = np.eye(4, dtype=np.float32)
    embeddings = np.stack([axis[0], axis[0] + 0.1 * axis[1], axis[0] + 0.1 * axis[2],
                           axis[3], np.zeros(4, dtype=np.float32)])
    out = candidate_set_features(embeddings)
    assert out.shape == (5, len(CANDIDATE_SET_NAMES)) and out.dtype == np.float32
    assert out[:3, 0].tolist() == [0.5, 0.5, 0.5]  # 2 of the 4 others
    assert out[3:, 0].tolist() == [0.0, 0.0]  # isolated; never upserted (zero embedding)
    assert out[0, 1] > 0.9 > out[3, 1] and out[4, 1] == 0.0


def test_a_single_candidate_gets_zeros() -> None:
    assert candidate_set_features(np.ones((1, 3), dtype=np.float32)).tolist() == [[0.0, 0.0]]


def test_neighbour_share_ranks_better_than_chance_on_the_worlds_truth() -> None:
    """The reason the columns exist: candidates near the user's interests cluster together."""
    world = World(WorldConfig(n_users=200, n_items=1000))
    rng = np.random.default_rng(3)
    by_share, by_chance = [], []
    for _ in range(200):
        draw = world.draw_request(rng, 0.0)
        share = candidate_set_features(world.item_embeddings[draw.candidates])[:, 0]
        by_share.append(world.expected_clicks(draw, draw.candidates[np.argsort(-share)[:10]],
                                              0.0))
        by_chance.append(world.expected_clicks(draw, rng.permutation(draw.candidates)[:10],
                                               0.0))
    assert np.mean(by_share) > 1.5 * np.mean(by_chance)


def test_interest_columns_follow_the_medoids_in_closed_form() -> None:
    from models.interests import Interests

    axis = np.eye(3, dtype=np.float32)
    interests = Interests(medoids=np.stack([axis[0], axis[1]]),
                          centroids=np.stack([axis[0], axis[1]]),
                          importance=np.array([3.0, 1.0]), sizes=np.array([5, 2]),
                          as_of=NOW, lambda_per_day=0.01, last_full_ts=NOW, last_ts=NOW,
                          at_last_ts=1, pending=0)
    # Candidates: on the first interest, halfway between both, and on neither.
    embeddings = np.stack([axis[0], axis[0] + axis[1], 2 * axis[2]])
    features = CandidateFeatures(
        np.zeros(len(USER_FEATURE_NAMES), np.float32),
        np.zeros((3, len(ITEM_FEATURE_NAMES)), np.float32), embeddings, np.ones(3, bool),
        np.zeros(0), np.zeros((0, 3), np.float32), interests)
    matrix = ranking_matrix(features, Context(), NOW)
    column = {name: matrix[:, k] for k, name in enumerate(RANKER_FEATURE_NAMES)}
    half = 1 / np.sqrt(2)
    assert column["interest_max_cos"] == pytest.approx([1.0, half, 0.0], abs=1e-6)
    assert column["interest_weighted_cos"] == pytest.approx([0.75, half, 0.0], abs=1e-6)
    assert column["log_interests"] == pytest.approx([np.log(3)] * 3)
    without = ranking_matrix(CandidateFeatures(*[getattr(features, f) for f in (
        "user", "items", "embeddings", "known", "history_ts", "history")]), Context(), NOW)
    assert not without[:, -3:].any()
