"""A tiny ``streamrank bench ads`` run: every promised key, with shapes and types, and the
orderings the exact scoring guarantees. No timing assertions."""

from __future__ import annotations

import itertools
from typing import Any

import pytest

from bench.ads import ARMS, AdsBenchConfig, run_ads_bench

pytestmark = pytest.mark.xdist_group("cpu-heavy")


@pytest.fixture(scope="module")
def result() -> dict[str, Any]:
    return run_ads_bench(AdsBenchConfig(requests=1000, fixed_requests=200,
                                        frontier_dials=(0.05, 0.1, 0.2, 0.4, 0.8),
                                        frontier_requests=300, ope_requests=500,
                                        timing_repeats=50))


def test_every_arm_is_scored_and_the_oracle_bounds_them(result: dict[str, Any]) -> None:
    net = result["net_reward"]
    assert set(net) == set(ARMS)
    assert all(isinstance(v, float) for v in net.values())
    assert net["never"] == 0.0
    assert all(net["oracle"] >= v for v in net.values())
    assert net["oracle"] > 0.0
    assert isinstance(result["fixed_best_k"], int)
    assert isinstance(result["lift_vs_fixed_best"], float)


def test_regret_frontier_and_ope_have_their_shapes(result: dict[str, Any]) -> None:
    regret = result["regret_curve"]
    assert len(regret) == 10 and all(isinstance(r, float) for r in regret)
    assert all(b >= a for a, b in itertools.pairwise(regret))  # the oracle is never beaten
    assert len(result["frontier"]) >= 5
    assert all(set(p) == {"dial", "revenue", "engagement"} for p in result["frontier"])
    assert set(result["ope"]) == {"ips", "snips", "dm", "dr"}
    for estimate in result["ope"].values():
        assert set(estimate) == {"estimate", "truth", "relative_error", "ci_low", "ci_high",
                                 "ess", "lift", "true_lift"}
        assert estimate["ci_low"] <= estimate["ci_high"]
    assert result["ope"]["dm"]["ess"] == 500


def test_costs_config_and_bars_are_reported(result: dict[str, Any]) -> None:
    assert result["decisions_per_s"] > 0 and result["added_p99_ms"] > 0
    assert result["decide_vs_argmax_bound"] > 0
    assert result["config"]["requests"] == 1000
    assert all(set(bar) == {"value", "goal", "met"} for bar in result["bars"].values())
    assert isinstance(result["bar_met"], bool)
