"""The feature log: the exact rows a ranking's items were scored from, and its ads' contexts.

The outcomes role joins each logged row to what the user then did; training and the ad learner
read those outcomes, so a model is trained on the features it was served with (no
training-serving skew). Item rows are logged for a share of requests, chosen by id, not by
chance: every worker, and a replay, logs the same ones. Ad contexts are logged for every
ranking with ad decisions, since the learner needs each one; every feasible ad's context and
the whole distribution, which only off-policy evaluation needs, on the same sampled share.
"""

from __future__ import annotations

import zlib

import orjson

from models.bandit import CONTEXT_NAMES
from models.ranking_features import RANKER_FEATURE_NAMES
from schemas import SCHEMA_VERSION
from stream.scoring.ranker import Ranked


def logged(request_id: str, rate: float) -> bool:
    return zlib.crc32(request_id.encode()) < rate * 2**32


def feature_log(ranked: Ranked, rate: float) -> bytes | None:
    """The wire form of :class:`schemas.FeatureLog`, written directly as :meth:`Ranked.encode`
    is (a test holds it valid), or None for a ranking with nothing to log."""
    sampled = logged(ranked.request_id, rate)
    if not sampled and ranked.ads is None:
        return None
    body: dict[str, object] = {
        "schema_version": SCHEMA_VERSION, "ts": ranked.ts, "request_id": ranked.request_id,
        "user_id": ranked.user_id, "model_version": ranked.model_version,
        "feature_names": RANKER_FEATURE_NAMES,
        "item_ids": [i["item_id"] for i in ranked.items] if sampled else [],
        "rows": ranked.rows.tolist() if sampled else []}
    if ranked.ads is not None:
        body |= {"ad_feature_names": CONTEXT_NAMES, "ads": ranked.ads.logs(full=sampled)}
    return orjson.dumps(body)
