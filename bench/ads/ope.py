"""Off-policy evaluation where the truth is exact: single-slot requests logged by the learnt
running policy, a different setting of it evaluated from those logs with models.ope.

One allowed slot per request (drawn from the bench's slots) makes each logged row one
decision, OBP's layout with one position. The reward is
``revenue - dial * (E[engagement | no ad] - engagement)`` over the whole feed, realised except
for the no-ad expectation, so its mean given an action is the world's exact net of that action
and the truth is ``sum_a pi_target(a | x) * net(a)`` from World.ad_feed_expectations.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from bench.ads.arms import POSITIVE
from bench.ads.counters import Counters
from bench.ads.loop import Request
from models.bandit import BanditParams, action_probabilities, decide
from models.ope import BanditFeedback, evaluate
from models.world import World


def ope_phase(world: World, requests: Sequence[Request], counters: Counters,
              logging: BanditParams, target: BanditParams, slots: Sequence[int], seed: int
              ) -> dict[str, Any]:
    """``logging`` serves (and does not learn meanwhile, so its propensities are one
    policy's); ``target`` is evaluated; both score at ``target.dial``'s reward."""
    rng = np.random.default_rng([seed, 99])
    dial = target.dial
    actions = 1 + len(requests[0].draw.ads)
    rewards, chosen, pscores, truths = [], [], [], []
    dists, models = [], []
    for request in requests:
        draw, slot = request.draw, int(rng.choice(slots))
        ads = counters.ad_request(draw.user, draw.ads, request.organic_values, (slot,),
                                  request.ts)
        decision = decide(logging, ads, rng)[0]
        feasible = [None, *(int(draw.ads[ads.ad_ids.index(a)]) for a in decision.actions[1:])]
        index = decision.actions.index(decision.ad_id)
        shown = feasible[index]
        placement = {} if shown is None else {slot: shown}
        events = world.play(rng, draw, request.ranked, placement, request.elapsed_s)
        counters.record(draw.user, events, request.ts)
        revenue = sum(e.revenue or 0.0 for e in events if e.type == "conversion")
        engaged = sum(e.type in POSITIVE for e in events)
        rewards.append(revenue - dial * (request.engagement_never - engaged))
        chosen.append(index)
        pscores.append(decision.propensity)
        dist, model = np.zeros(actions), np.zeros(actions)
        dist[:len(feasible)] = action_probabilities(target, decision.ad_contexts)
        model[1:len(feasible)] = decision.ad_contexts @ target.net_mean
        dists.append(dist)
        models.append(model)
        truths.append(dist[:len(feasible)] @ [
            _net(world, request, {} if ad is None else {slot: ad}, dial) for ad in feasible])
    log = BanditFeedback(rewards, chosen, pscores, n_actions=actions)
    estimates = evaluate(log, np.array(dists)[:, :, None], np.array(models)[:, :, None],
                         seed=seed)
    truth = float(np.mean(truths))
    return {name: {"estimate": e.value, "truth": truth,
                   "relative_error": abs(e.value - truth) / abs(truth),
                   "ci_low": e.ci_low, "ci_high": e.ci_high, "ess": e.ess}
            for name, e in estimates.items()}


def _net(world: World, request: Request, placement: dict[int, int], dial: float) -> float:
    value = world.ad_feed_expectations(request.draw, request.ranked, placement,
                                       request.elapsed_s)
    return value.revenue - dial * (request.engagement_never - value.engagement)
