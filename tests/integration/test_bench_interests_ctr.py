"""``streamrank bench interests --ctr-seconds``: two short closed-loop demos, with and without
the ranker's interest features, on one broker."""

from __future__ import annotations

import os

import pytest

from bench.interests.ctr import ARMS, served_ctr
from stream.settings import Settings

pytestmark = [pytest.mark.integration, pytest.mark.xdist_group("cpu-heavy")]


@pytest.mark.timeout(400)
def test_both_arms_serve_on_the_same_seeds_one_without_the_interest_columns(
        bootstrap: str) -> None:
    settings = Settings(broker_url=bootstrap, topic_prefix=f"ctr{os.getpid()}")
    result = served_ctr(settings, seconds=10, rate=50, warmup_s=10, retrain_every_s=0)

    runs = result["runs"]
    assert {arm: run["interest_features"] for arm, run in runs.items()} == ARMS
    for arm in ARMS:
        assert 0 < result[arm] < 1
        assert result[arm] == runs[arm]["ctr"]["served"]
        assert runs[arm]["served_requests"] > 0 and runs[arm]["timeouts"] == 0
        assert runs[arm]["retrained"] == []
    # The same seeds: the same warm-up, so both first models learned from as many rows.
    assert runs["with_interest_features"]["train_rows"] == runs["without"]["train_rows"] > 0
    assert result["with_vs_without"] == pytest.approx(
        result["with_interest_features"] / result["without"], rel=1e-3)
