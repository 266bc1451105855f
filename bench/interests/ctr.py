"""``ctr.with_interest_features`` and ``ctr.without``: the served CTR of two closed-loop demo
runs on the same seeds, rate and seconds, one with the ranker's interest features and one with
``STREAMRANK_INTEREST_FEATURES`` off (their columns zero in training and serving alike).

Unlike the rest of the interests bench, this needs a broker (embedded unless one is
configured), the feature store and minutes, so it runs only when asked (``--ctr-seconds``).
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

from stream.demo import run_arms
from stream.settings import Settings

ARMS = {"with_interest_features": True, "without": False}


def served_ctr(settings: Settings, seconds: float, rate: float, warmup_s: float,
               retrain_every_s: float) -> dict[str, Any]:
    """Both arms' served CTR (the world's true expected clicks per shown slot), their ratio,
    and what each run did; the demos' logs and models go to a temp dir."""
    with tempfile.TemporaryDirectory(prefix="streamrank-bench-interests-") as workdir:
        runs = run_arms(settings, Path(workdir),
                        {arm: {"interest_features": enabled} for arm, enabled in ARMS.items()},
                        seconds=seconds, rate=rate, warmup_s=warmup_s,
                        retrain_every_s=retrain_every_s)
    ctr = {arm: run["ctr"]["served"] for arm, run in runs.items()}
    return {
        **ctr,
        "with_vs_without": round(ctr["with_interest_features"] / ctr["without"], 4)
        if ctr["without"] > 0 else None,
        "demo": {"seconds": seconds, "rate": rate, "warmup_s": warmup_s,
                 "retrain_every_s": retrain_every_s},
        "runs": {arm: {"interest_features": run["interest_features"],
                       "served_requests": run["served_requests"], "timeouts": run["timeouts"],
                       "ctr": run["ctr"], "model": run["model"]["version"],
                       "train_rows": run["model"]["train_rows"],
                       "retrained": run["retrained"]}
                 for arm, run in runs.items()},
    }
