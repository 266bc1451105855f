"""Ad slots on the serving path: after the ranker, the policy places the ranking's ads.

The decisions of a request are drawn from a generator seeded by ``STREAMRANK_ADS_SEED`` and
the request id, so the requests topic and ``POST /rank`` decide the same request alike, and
a replay logs what was served. Each decision carries its propensity and the policy version it
came from, and its context goes to the feature log (:meth:`PlacedAds.logs`): learning and
evaluation see exactly what the policy saw.
"""

from __future__ import annotations

import hashlib
import zlib
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from models.ad_context import ad_request, interest_vectors
from models.bandit import BanditParams, SlotDecision, decide
from models.ranking_features import CandidateFeatures
from schemas import SCHEMA_VERSION, RankingRequest
from stream.settings import Settings

ID_MAX_LENGTH = 128  # schemas' Id


class BanditSlot:
    """The parameters in use: the settings' prior (``bandit-0``) until a version is
    published, so a fresh deployment explores at its epsilon floor from the first request."""

    def __init__(self, settings: Settings) -> None:
        self.current = BanditParams.prior(ridge=settings.ads_ridge, dial=settings.ads_dial,
                                          epsilon=settings.ads_epsilon,
                                          alpha=settings.ads_alpha)

    def install(self, params: BanditParams) -> None:
        self.current = params


def policy_family(params: BanditParams) -> str:
    """What kind of policy logged a decision, beside the version that says which one."""
    return "epsilon-linucb" if params.alpha > 0.0 else "epsilon-greedy"


def decision_rng(seed: int, request_id: str) -> np.random.Generator:
    return np.random.default_rng([seed, zlib.crc32(request_id.encode())])


@dataclass(frozen=True)
class PlacedAds:
    """One ranking's ad decisions, and the version they came from."""

    request_id: str
    params: BanditParams
    decisions: list[SlotDecision]

    def decision_id(self, decision: SlotDecision) -> str:
        """``<request id>/<slot>``; a request id too long for that to stay an ``Id`` (128
        characters) is replaced by its digest, which is as unique."""
        suffix = f"/{decision.slot}"
        request = self.request_id
        if len(request) + len(suffix) > ID_MAX_LENGTH:
            request = hashlib.blake2b(request.encode(), digest_size=16).hexdigest()
        return request + suffix

    def results(self) -> list[dict[str, object]]:
        """The :class:`schemas.AdDecision` fields of each slot, in wire order."""
        family = policy_family(self.params)
        return [{"schema_version": SCHEMA_VERSION, "decision_id": self.decision_id(d),
                 "slot": d.slot, "ad_id": d.ad_id, "propensity": d.propensity,
                 "policy": family, "policy_version": self.params.version}
                for d in self.decisions]

    def logs(self, full: bool) -> list[dict[str, object]]:
        """The :class:`schemas.AdSlotLog` of each slot; ``full`` adds every feasible ad's
        context and the whole distribution, for off-policy evaluation."""
        logs: list[dict[str, object]] = []
        for d in self.decisions:
            log: dict[str, object] = {"schema_version": SCHEMA_VERSION,
                                      "decision_id": self.decision_id(d), "slot": d.slot,
                                      "context": d.context.tolist()}
            if full:
                log |= {"actions": list(d.actions), "probabilities": d.probabilities.tolist(),
                        "ad_contexts": d.ad_contexts.tolist()}
            logs.append(log)
        return logs


def wants_ads(request: RankingRequest) -> bool:
    return bool(request.ad_slots) and bool(request.ad_candidates)


class AdPlacer:
    """Places ads with whatever parameters are installed when a ranking asks."""

    def __init__(self, slot: BanditSlot, settings: Settings) -> None:
        self.slot = slot
        self.seed = settings.ads_seed
        self.max_ads = settings.ads_max_ads
        self.min_spacing = settings.ads_min_spacing

    def place(self, request: RankingRequest, ads: CandidateFeatures,
              organic_values: Sequence[float]) -> PlacedAds:
        """``ads``: the features of the request's user and ad candidates; ``organic_values``:
        the ranker's values of the items shown, best first."""
        params = self.slot.current  # one version for the whole request
        dim = ads.embeddings.shape[1]
        interests = interest_vectors(ads.interests, ads.history, dim)
        seen = ad_request(ads.user, interests, request.ad_candidates, ads.items,
                          ads.embeddings, np.asarray(organic_values), request.ad_slots,
                          request.n)
        decisions = decide(params, seen, decision_rng(self.seed, request.request_id),
                           self.max_ads, self.min_spacing)
        return PlacedAds(request.request_id, params, decisions)
