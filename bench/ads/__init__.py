"""``streamrank bench ads``: the bandit ad policy in a closed loop with the synthetic world,
against never showing ads, the best fixed ad load, random placement, a non-contextual
epsilon-greedy and the oracle (World.best_ads). In process: no broker, no Redis.

Every arm sees the same request draws and is scored by the world's exact expectations, so the
differences are the policies', not sampling noise: net = revenue - dial * (engagement with no
ads - engagement). The organic feed is the world's perfect ranking (see bench.ads.loop), which
isolates the ad policy from ranker error. Requests allow ads at feed positions SLOTS of a
20-item feed, at most 3 per feed, 3 apart: six decisions a request, of which the cap binds.
The bench dial is 0.2: there the oracle places no ad in ~20% of requests, one in ~half and two
or three in the rest, so an ad is sometimes worth its engagement and often not.

- ``fixed_best`` is the best of "an ad every k-th allowed slot", over k and over the slot it
  starts from (measured on the first requests): counted from the top slot only, every fixed
  load nets less than no ads at this dial, and a ratio against a negative baseline says nothing.
- The frontier turns the learnt policy's dial, as ``streamrank ads set --dial`` does: the
  posteriors do not depend on the dial, so it is the same policy, run on held-out requests.
- OPE evaluates the learnt parameters at another epsilon from the logs of the running policy
  (bench.ads.ope).
"""

from __future__ import annotations

import copy
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from bench.ads.arms import EpsilonGreedy, Fixed, Never, Oracle, Policy, Rules, uniform
from bench.ads.counters import Counters
from bench.ads.loop import START_TS, Arm, ArmRun, Request, draw_requests, play_arm
from bench.ads.ope import ope_phase
from bench.ads.plot import frontier_png
from bench.ads.timing import decision_costs
from models.bandit import BanditParams
from models.world import World, WorldConfig

SLOTS = (2, 5, 8, 11, 14, 17)
SHOWN = 20
ARMS = ("policy", "never", "fixed_best", "random", "epsilon_greedy", "oracle")


@dataclass(frozen=True)
class AdsBenchConfig:
    requests: int = 50_000
    seed: int = 7
    dial: float = 0.2
    max_ads: int = 3
    min_spacing: int = 3
    epsilon: float = 0.02  # the policy's exploration floor
    alpha: float = 0.0  # LinUCB width; 0: greedy on the posterior mean
    ridge: float = 1.0
    learn_every: int = 500  # requests between learn() calls
    fixed_requests: int = 5_000  # requests each fixed ad load is measured on to pick the best
    frontier_dials: tuple[float, ...] = (0.05, 0.1, 0.2, 0.4, 0.8)
    frontier_requests: int = 10_000
    ope_requests: int = 20_000
    ope_dial: float = 0.2  # the evaluated setting: the learnt parameters at this dial ...
    ope_epsilon: float = 0.2  # ... and this epsilon (the logger explores at ``epsilon``)
    timing_repeats: int = 3_000
    png: Path | None = None

    @property
    def rules(self) -> Rules:
        return Rules(SLOTS, self.max_ads, self.min_spacing)

    def prior(self, dial: float) -> BanditParams:
        return BanditParams.prior(self.ridge, dial, self.epsilon, self.alpha)


def run_ads_bench(config: AdsBenchConfig) -> dict[str, Any]:
    started = time.perf_counter()
    world = World(WorldConfig(seed=config.seed, shown=SHOWN, ad_slots=SLOTS))
    rules, dial = config.rules, config.dial
    requests = draw_requests(world, config.requests + config.ope_requests, config.seed)
    main, held = requests[:config.requests], requests[config.requests:]
    fixed = _fixed_loads(world, main[:config.fixed_requests], config)
    best = max(fixed, key=lambda name: fixed[name]["net"])
    k, first = fixed[best]["k"], fixed[best]["first_slot"]
    policy = Policy(rules, config.prior(dial), config.learn_every)
    counters = Counters(world, START_TS)
    arms: dict[str, Arm] = {
        "policy": policy, "never": Never(),
        "fixed_best": Fixed(Rules(SLOTS[SLOTS.index(first):], *_caps(config)), k),
        "random": uniform(rules),
        "epsilon_greedy": EpsilonGreedy(world, rules, dial, config.epsilon),
        "oracle": Oracle(world, rules, dial)}
    runs = {name: play_arm(world, main, arm, SLOTS, dial, config.seed, stream,
                           counters if name == "policy" else None)
            for stream, (name, arm) in enumerate(arms.items())}
    net = {name: float(run.net.mean()) for name, run in runs.items()}
    regret = _regret_curve(runs["oracle"], runs["policy"])
    counters.flush()
    frontier = [_frontier_point(world, held[:config.frontier_requests], config,
                                policy.params.retuned(dial=d), copy.deepcopy(counters))
                for d in config.frontier_dials]
    ope = ope_phase(world, held, counters, policy.params,
                    policy.params.retuned(dial=config.ope_dial, epsilon=config.ope_epsilon),
                    SLOTS, config.seed)
    timing = decision_costs(policy.params, config.timing_repeats, config.seed)
    lift = net["policy"] / net["fixed_best"] - 1.0
    half = len(regret) // 2
    result: dict[str, Any] = {
        "net_reward": net, "fixed_best_k": k, "fixed_best_first_slot": first,
        "fixed_loads": fixed, "lift_vs_fixed_best": lift,
        "revenue": {name: float(run.revenue.mean()) for name, run in runs.items()},
        "engagement": {name: float(run.engagement.mean()) for name, run in runs.items()},
        "regret_curve": regret, "frontier": frontier, "ope": ope, **timing,
        "policy_version": policy.params.version, "policy_samples": policy.params.samples,
        "config": {**asdict(config), "png": str(config.png) if config.png else None,
                   "slots": SLOTS, "shown": SHOWN, "ads_per_request": world.config.ads_per_request},
    }
    result["bars"] = _bars(result, regret[half - 1], regret[-1] - regret[half - 1])
    result["bar_met"] = all(bar["met"] for bar in result["bars"].values())
    if config.png is not None:
        result.update(frontier_png(config.png, frontier, fixed, regret))
    result["wall_s"] = round(time.perf_counter() - started, 1)
    return result


def _caps(config: AdsBenchConfig) -> tuple[int, int]:
    return config.max_ads, config.min_spacing


def _fixed_loads(world: World, requests: list[Request], config: AdsBenchConfig
                 ) -> dict[str, dict[str, Any]]:
    """Each ad load "every k-th allowed slot from the j-th" (distinct ones), measured on the
    first requests. Starting lower than the top slot is a stronger baseline than the usual
    fixed first position; at the bench dial an ad at the top never pays."""
    loads: dict[str, dict[str, Any]] = {}
    for k in range(1, len(SLOTS) + 1):
        for first in SLOTS[:k]:
            rules = Rules(SLOTS[SLOTS.index(first):], *_caps(config))
            schedule = rules.slots[::k][:config.max_ads]
            name = "+".join(map(str, schedule))
            if name in loads:
                continue
            run = play_arm(world, requests, Fixed(rules, k), SLOTS, config.dial, config.seed,
                           100 + len(loads))
            loads[name] = {"k": k, "first_slot": first, "net": float(run.net.mean()),
                           "revenue": float(run.revenue.mean()),
                           "engagement": float(run.engagement.mean())}
    return loads


def _regret_curve(oracle: ArmRun, policy: ArmRun, points: int = 10) -> list[float]:
    cumulative = np.cumsum(oracle.net - policy.net)
    ends = np.linspace(len(cumulative) / points, len(cumulative), points).round().astype(int)
    return [float(cumulative[end - 1]) for end in ends]


def _frontier_point(world: World, requests: list[Request], config: AdsBenchConfig,
                    params: BanditParams, counters: Counters) -> dict[str, float]:
    """The learnt policy with its dial turned to ``params.dial``, as ``streamrank ads set
    --dial`` turns it: the same posteriors (they do not depend on the dial), on held-out
    requests, learning nothing meanwhile."""
    run = play_arm(world, requests, Policy(config.rules, params, learn_every=None), SLOTS,
                   params.dial, config.seed, 200, counters)
    return {"dial": params.dial, "revenue": float(run.revenue.mean()),
            "engagement": float(run.engagement.mean())}


def _bars(result: dict[str, Any], first_half: float, second_half: float
          ) -> dict[str, dict[str, Any]]:
    frontier = result["frontier"]
    revenue = [p["revenue"] for p in frontier]
    engagement = [p["engagement"] for p in frontier]
    ope = result["ope"]

    def bar(value: Any, goal: str, met: bool) -> dict[str, Any]:
        return {"value": value, "goal": goal, "met": bool(met)}

    return {
        "lift_vs_fixed_best": bar(result["lift_vs_fixed_best"], ">= 0.05",
                                  result["net_reward"]["fixed_best"] > 0
                                  and result["lift_vs_fixed_best"] >= 0.05),
        "regret_sublinear": bar({"first_half": first_half, "second_half": second_half},
                                "second half < first half", second_half < first_half),
        "frontier_monotone": bar({"revenue": revenue, "engagement": engagement},
                                 "revenue falls and engagement rises with the dial",
                                 bool(np.all(np.diff(revenue) < 0)
                                      and np.all(np.diff(engagement) > 0))),
        "ope_dr": bar(ope["dr"]["relative_error"], "<= 0.15",
                      ope["dr"]["relative_error"] <= 0.15),
        "ope_snips": bar(ope["snips"]["relative_error"], "<= 0.25",
                         ope["snips"]["relative_error"] <= 0.25),
        "added_p99_ms": bar(result["added_p99_ms"], "<= 1", result["added_p99_ms"] <= 1.0),
    }
