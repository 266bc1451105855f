"""The candidate-set columns of the ranker's matrix, and their value on the world's truth."""

import numpy as np

from models.ranking_features import CANDIDATE_SET_NAMES, candidate_set_features
from models.world import World, WorldConfig


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
