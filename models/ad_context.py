"""The bandit's view of one ranking: an :class:`models.bandit.AdRequest` from feature-store rows.

The serving path and ``streamrank bench ads`` both build the request with :func:`ad_request`,
from the same decayed counters (:mod:`models.features`), so the policy the bench measures is the
one that serves. Rates are smoothed with a Beta prior at the 7-day half-life: an ad or a user
with no evidence looks like the population, and one with a little evidence moves towards its
own rate without jumping to 0 or 1.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from models.bandit import AdRequest
from models.features import FEATURE_NAMES, ITEM_FEATURE_NAMES
from models.interests import Interests

# Beta priors: pseudo-counts and the population rates they pull towards.
AD_PRIOR_IMPRESSIONS, AD_PRIOR_CLICK_RATE = 50.0, 0.02  # P(ad_click | ad_impression)
AD_PRIOR_CLICKS, AD_PRIOR_CONVERSION_RATE = 10.0, 0.2   # P(conversion | ad_click)

_USER = {name: i for i, name in enumerate(FEATURE_NAMES)}
_ITEM = {name: i for i, name in enumerate(ITEM_FEATURE_NAMES)}


def _counts(rows: np.ndarray, index: dict[str, int], prefix: str, channel: str) -> np.ndarray:
    """A 7-day decayed count, back from the log1p the feature rows hold."""
    return np.expm1(rows[..., index[f"{prefix}log_{channel}_7d"]].astype(np.float64))


def _rate(hits: np.ndarray, trials: np.ndarray, prior_trials: float, prior_rate: float
          ) -> np.ndarray:
    return np.asarray((hits + prior_trials * prior_rate) / (trials + prior_trials))


def user_columns(user: np.ndarray) -> np.ndarray:
    """``USER_NAMES`` of :mod:`models.bandit` from one user's entity feature row."""
    return np.array([
        user[_USER["click_rate_7d"]],
        _rate(_counts(user, _USER, "", "ad_click"), _counts(user, _USER, "", "ad_impression"),
              AD_PRIOR_IMPRESSIONS, AD_PRIOR_CLICK_RATE),
        user[_USER["log_impression_7d"]],
    ], dtype=np.float64)


def ad_rates(ads: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Each ad's smoothed click rate per impression and conversion rate per click, from its
    item feature rows ``[k, len(ITEM_FEATURE_NAMES)]``."""
    clicks = _counts(ads, _ITEM, "item_", "ad_click")
    click_rates = _rate(clicks, _counts(ads, _ITEM, "item_", "ad_impression"),
                        AD_PRIOR_IMPRESSIONS, AD_PRIOR_CLICK_RATE)
    conversion_rates = _rate(_counts(ads, _ITEM, "item_", "conversion"), clicks,
                             AD_PRIOR_CLICKS, AD_PRIOR_CONVERSION_RATE)
    return click_rates, conversion_rates


def interest_vectors(interests: Interests | None, history: np.ndarray, dim: int
                     ) -> np.ndarray:
    """What the user is into, as ``[k, dim]`` directions an ad's affinity is the largest
    cosine to: the interests' centroids (the mean of each cluster, less noisy than its one
    medoid item), else the mean of the recent engagements, else none (affinity 0)."""
    if interests is not None and len(interests):
        return np.asarray(interests.centroids, dtype=np.float64)
    if len(history):
        return np.asarray(history.mean(axis=0, keepdims=True), dtype=np.float64)
    return np.zeros((0, dim))


def ad_request(user: np.ndarray, interests: np.ndarray, ad_ids: Sequence[str], ads: np.ndarray,
               ad_embeddings: np.ndarray, organic_values: np.ndarray, slots: Sequence[int],
               n: int) -> AdRequest:
    """``user``: the user's entity feature row (:data:`models.features.FEATURE_NAMES`);
    ``ads``: the ads' item feature rows; ``organic_values``: the ranker's values of the items
    shown, best first. An ad whose upsert has not arrived has bid 0, so it never earns."""
    click_rates, conversion_rates = ad_rates(ads)
    bids = np.maximum(ads[:, _ITEM["item_bid"]].astype(np.float64), 0.0)
    return AdRequest(user=user_columns(user), interests=interests, ad_ids=ad_ids, bids=bids,
                     click_rates=click_rates, conversion_rates=conversion_rates,
                     embeddings=ad_embeddings, organic_values=organic_values, slots=slots, n=n)
