"""The feature log: for a share of requests, the exact rows their shown items were scored from.

The outcomes role joins each logged row to what the user then did, and training reads those
outcomes, so a model is trained on the features it was served with (no training-serving skew).
Which requests are logged is decided by their id, not by chance: every worker, and a replay,
logs the same ones.
"""

from __future__ import annotations

import zlib

import orjson

from models.ranking_features import RANKER_FEATURE_NAMES
from schemas import SCHEMA_VERSION
from stream.scoring.ranker import Ranked


def logged(request_id: str, rate: float) -> bool:
    return zlib.crc32(request_id.encode()) < rate * 2**32


def encode_feature_log(ranked: Ranked) -> bytes:
    """The wire form of :class:`schemas.FeatureLog`, written directly as :meth:`Ranked.encode`
    is (a test holds it valid)."""
    return orjson.dumps({
        "schema_version": SCHEMA_VERSION, "ts": ranked.ts, "request_id": ranked.request_id,
        "user_id": ranked.user_id, "model_version": ranked.model_version,
        "feature_names": RANKER_FEATURE_NAMES, "item_ids": [i["item_id"] for i in ranked.items],
        "rows": ranked.rows.tolist()})
