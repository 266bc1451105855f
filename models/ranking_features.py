"""The ranker's input matrix: user, item, context and user-item similarity features.

One function builds it for serving and for training (which replays the logs through the same
feature store code), so the two cannot drift apart.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass

import numpy as np

from models.features import ITEM_FEATURE_NAMES, USER_FEATURE_NAMES
from models.interests import Interests, medoid_similarities
from schemas import Context

DEVICES: tuple[str, ...] = Context.model_fields["device"].annotation.__args__  # type: ignore[union-attr]
SURFACES: tuple[str, ...] = Context.model_fields["surface"].annotation.__args__  # type: ignore[union-attr]
CONTEXT_NAMES: tuple[str, ...] = (*(f"device_{d}" for d in DEVICES),
                                  *(f"surface_{s}" for s in SURFACES))
SIMILARITY_NAMES: tuple[str, ...] = ("sim_max", "sim_mean", "sim_recent", "log_history_len")
CANDIDATE_SET_NAMES: tuple[str, ...] = ("cand_density", "cand_centroid_sim")
# PinnerSage (models/interests.py): the candidate against the user's interest medoids.
INTEREST_NAMES: tuple[str, ...] = ("interest_max_cos", "interest_weighted_cos",
                                   "log_interests")
RANKER_FEATURE_NAMES: tuple[str, ...] = (
    *USER_FEATURE_NAMES, *ITEM_FEATURE_NAMES, *CONTEXT_NAMES, *SIMILARITY_NAMES,
    *CANDIDATE_SET_NAMES, *INTEREST_NAMES)

# The ranker's tasks: engagement types it predicts per shown item.
TASK_NAMES: tuple[str, ...] = ("click", "like", "share", "hide")
RECENCY_SCALE_S = 86_400.0  # engagements a day old weigh 1/e of fresh ones in sim_recent
# Two candidates count as neighbours above this cosine. On the synthetic world, ranking by
# popularity plus the neighbour share at 0.5 beat 0.4 and 0.6 (and top-10 mean similarity).
NEIGHBOUR_COSINE = 0.5
NEIGHBOUR_SAMPLE = 128


@dataclass(frozen=True)
class CandidateFeatures:
    """What the feature store knows about one request's user and candidates."""

    user: np.ndarray        # float32 [len(USER_FEATURE_NAMES)]
    items: np.ndarray       # float32 [n, len(ITEM_FEATURE_NAMES)]
    embeddings: np.ndarray  # float32 [n, dim], zeros for items never upserted
    known: np.ndarray       # bool [n]: the item has counters or metadata
    history_ts: np.ndarray  # float64 [k]: the user's recent positive engagements, newest first
    history: np.ndarray     # float32 [k, dim]: embeddings of those engaged items
    interests: Interests | None = None  # the user's interest medoids, when known


def _unit(rows: np.ndarray) -> np.ndarray:
    rows = rows.astype(np.float32, copy=False)
    norms = np.sqrt(np.einsum("ij,ij->i", rows, rows))[:, None]
    return np.asarray(rows / np.maximum(norms, 1e-12))


# The products below are laid out [other, candidate], so that every reduction runs over whole
# contiguous rows: at 500 candidates that made max, mean and the neighbour count ~4x faster.


def similarity_features(unit: np.ndarray, features: CandidateFeatures, now: float) -> np.ndarray:
    """Cosine similarity of each candidate (``unit``: its embeddings, unit length) to what the
    user engaged with: ``[n, 4]``."""
    n, k = len(unit), len(features.history)
    out = np.zeros((n, len(SIMILARITY_NAMES)), dtype=np.float32)
    out[:, 3] = np.log1p(k)
    if k == 0 or n == 0:
        return out
    sims = _unit(features.history) @ unit.T
    weights = np.exp(-np.maximum(now - features.history_ts, 0.0) / RECENCY_SCALE_S)
    out[:, 0] = sims.max(axis=0)
    out[:, 1] = sims.sum(axis=0) / k
    out[:, 2] = weights.astype(np.float32) @ sims / max(float(weights.sum()), 1e-12)
    return out


def candidate_set_features(embeddings: np.ndarray) -> np.ndarray:
    """Where each candidate sits in its own candidate set: ``[n, 2]``.

    Retrieval puts candidates near the user's interests, so the set itself carries the user's
    intent, even for a user with no history yet: a candidate with many close neighbours in the
    set is likely on-interest, an isolated one is likely filler. Columns: the share of the
    other candidates within ``NEIGHBOUR_COSINE`` of it, and its cosine to the set's centroid.
    Above ``NEIGHBOUR_SAMPLE`` candidates the share is taken over that many evenly spaced ones,
    so its cost grows as ``n``, not ``n²``.
    """
    return _candidate_set(_unit(embeddings))


def _candidate_set(unit: np.ndarray) -> np.ndarray:
    n = len(unit)
    out = np.zeros((n, len(CANDIDATE_SET_NAMES)), dtype=np.float32)
    if n < 2:
        return out
    reference = np.arange(0, n, -(-n // NEIGHBOUR_SAMPLE))
    neighbours = unit[reference] @ unit.T > NEIGHBOUR_COSINE
    neighbours[np.arange(len(reference)), reference] = False  # a candidate is not its own
    others = np.full(n, len(reference), dtype=np.float32)
    others[reference] -= 1.0
    out[:, 0] = neighbours.sum(axis=0, dtype=np.float32) / others
    centroid = unit.sum(axis=0)
    out[:, 1] = unit @ (centroid / max(float(np.linalg.norm(centroid)), 1e-12))
    return out


def interest_features(unit: np.ndarray, interests: Interests | None, now: float
                      ) -> np.ndarray:
    """``[n, 3]``: each candidate's largest cosine to a medoid, its cosine to the medoids
    weighted by their importance, and log(1 + number of interests); zeros with none."""
    out = np.zeros((len(unit), len(INTEREST_NAMES)), dtype=np.float32)
    if interests is None or len(interests) == 0 or len(unit) == 0:
        return out
    out[:, 0], out[:, 1] = medoid_similarities(interests, unit, now)
    out[:, 2] = np.log1p(len(interests))
    return out


def context_features(context: Context) -> np.ndarray:
    row = np.zeros(len(CONTEXT_NAMES), dtype=np.float32)
    row[DEVICES.index(context.device)] = 1.0
    row[len(DEVICES) + SURFACES.index(context.surface)] = 1.0
    return row


# Where each block of columns sits in the matrix, in RANKER_FEATURE_NAMES order.
_BLOCK_COLUMNS = [slice(start, stop) for start, stop in itertools.pairwise(np.cumsum(
    [0, len(USER_FEATURE_NAMES), len(ITEM_FEATURE_NAMES), len(CONTEXT_NAMES),
     len(SIMILARITY_NAMES), len(CANDIDATE_SET_NAMES), len(INTEREST_NAMES)]).tolist())]


def ranking_matrix(features: CandidateFeatures, context: Context, now: float,
                   out: np.ndarray | None = None) -> np.ndarray:
    """float32 ``[n, len(RANKER_FEATURE_NAMES)]``, columns in that order, written into ``out``
    when given (a micro-batch's rows for this request).

    ``features`` must hold the request's whole candidate set, also in training, where only the
    shown rows are kept afterwards: the candidate-set columns depend on all of it.
    """
    unit = _unit(features.embeddings)
    user, items, context_columns, similarity, candidate_set, interest = _BLOCK_COLUMNS
    if out is None:
        out = np.empty((len(features.items), len(RANKER_FEATURE_NAMES)), dtype=np.float32)
    out[:, user] = features.user
    out[:, items] = features.items
    out[:, context_columns] = context_features(context)
    out[:, similarity] = similarity_features(unit, features, now)
    out[:, candidate_set] = _candidate_set(unit)
    out[:, interest] = interest_features(unit, features.interests, now)
    return out
