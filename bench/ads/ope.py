"""Off-policy evaluation where the truth is exact: single-slot requests logged by the learnt
running policy, a different setting of it evaluated from those logs with models.ope.

One allowed slot per request (drawn from the bench's slots) makes each logged row one
decision, OBP's layout with one position. The reward is the one ``streamrank ads evaluate``
estimates from the outcomes topic, the slot's value ``revenue + dial * engagement from the slot
down`` (it differs from the net reward by the engagement without an ad, which no action
changes), so the bench measures the estimator the product ships. Its truth is exact:
``sum_a pi_target(a | x) * value(a)`` from World.ad_feed_expectations, the engagement above the
slot taken off. Because that engagement level is most of the value, the lift over the logging
policy (its on-policy value on the same rows) is reported too, with its own truth: the harder
figure.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from bench.ads.arms import POSITIVE
from bench.ads.counters import Counters
from bench.ads.loop import Request
from models.bandit import BanditParams, action_probabilities, action_values, decide, without_ad
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
    rewards, chosen, pscores, truths, logged_truths = [], [], [], [], []
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
        engaged = sum(e.type in POSITIVE and e.position >= slot for e in events)
        rewards.append(revenue + dial * engaged)
        chosen.append(index)
        pscores.append(decision.propensity)
        dist, model = np.zeros(actions), np.zeros(actions)
        dist[:len(feasible)] = action_probabilities(target, decision.ad_contexts)
        model[:len(feasible)] = action_values(
            target, np.vstack((without_ad(decision.context[None]), decision.ad_contexts)))
        dists.append(dist)
        models.append(model)
        values = np.array([_value(world, request, slot, ad, dial) for ad in feasible])
        truths.append(dist[:len(feasible)] @ values)
        logged_truths.append(decision.probabilities @ values)
    log = BanditFeedback(rewards, chosen, pscores, n_actions=actions)
    estimates = evaluate(log, np.array(dists)[:, :, None], np.array(models)[:, :, None],
                         seed=seed)
    truth, logged = float(np.mean(truths)), float(np.mean(logged_truths))
    on_policy = float(np.mean(rewards))
    return {name: {"estimate": e.value, "truth": truth,
                   "relative_error": abs(e.value - truth) / abs(truth),
                   "ci_low": e.ci_low, "ci_high": e.ci_high, "ess": e.ess,
                   "lift": e.value - on_policy, "true_lift": truth - logged}
            for name, e in estimates.items()}


def _value(world: World, request: Request, slot: int, ad: int | None, dial: float) -> float:
    """The exact expected slot value of ``ad`` (or none) at ``slot``: its revenue plus dial
    times the organic engagement from the slot down (the whole feed's, less that above)."""
    value = world.ad_feed_expectations(request.draw, request.ranked,
                                       {} if ad is None else {slot: ad}, request.elapsed_s)
    above = world.feed_probabilities(request.draw, request.ranked[:slot], request.elapsed_s)
    engaged_above = sum(float(above[task].sum()) for task in POSITIVE)
    return value.revenue + dial * (value.engagement - engaged_above)
