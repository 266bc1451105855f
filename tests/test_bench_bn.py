"""The BN bench's figures (bench/bn/recovery.py) and its command line."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest

from bench.bn.recovery import ArmPredictions, curve, events_to_recover, recovery


def test_recovery_is_the_share_of_the_gap_won_back() -> None:
    assert recovery({"frozen": 0.30, "adaptive": 0.24, "retrained": 0.20}) == pytest.approx(0.6)
    assert recovery({"frozen": 0.30, "adaptive": 0.33, "retrained": 0.20}) == pytest.approx(-0.3)
    assert recovery({"frozen": 0.20, "adaptive": 0.19, "retrained": 0.21}) == 0.0  # no gap


def test_events_to_recover_is_where_every_later_window_holds_90_percent() -> None:
    points = [{"end_request": e, "recovery": r}
              for e, r in [(2000, 0.1), (2500, 0.75), (3000, 0.6), (3500, 0.8), (4000, 0.78)]]
    assert events_to_recover(points, final=0.8) == 3500  # 0.6 at 3000 is below 0.72
    assert events_to_recover(points, final=-0.1) is None


def test_the_curve_scores_each_window_of_requests_after_the_change() -> None:
    rng = np.random.default_rng(0)
    requests = np.repeat(np.arange(3000), 2)
    truth = rng.uniform(0.02, 0.2, len(requests))
    arms = ArmPredictions(request=requests, truth=truth, frozen=truth * 1.5,
                          adaptive=np.where(requests < 1000, truth * 1.5, truth * 1.1),
                          retrained=truth)
    points = curve(arms)
    assert [p["end_request"] for p in points] == [2000, 2500, 3000]
    assert points[0]["recovery"] < points[-1]["recovery"]
    assert all(p["retrained"] < p["adaptive"] <= p["frozen"] for p in points)


def test_the_cli_refuses_an_unknown_scenario_before_it_starts() -> None:
    result = subprocess.run([sys.executable, "-m", "stream.cli", "bench", "bn", "--scenarios",
                             "traffic_surge,nope"], capture_output=True, text=True, timeout=60)
    assert result.returncode == 2
    assert "error: unknown scenario 'nope'" in result.stderr
    assert "Traceback" not in result.stderr + result.stdout
