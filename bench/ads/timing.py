"""What the ad policy adds to a ranking request: ad_request() + decide() with 5 slots and 20
ads, against a bound measured in the same run (one numpy matrix product and argmax over the
same context matrices: the least any linear policy must do)."""

from __future__ import annotations

import time
from typing import Any

import numpy as np

from bench.harness import median, percentile
from models.ad_context import ad_request
from models.bandit import BanditParams, decide, slot_contexts
from models.features import FEATURE_NAMES, ITEM_FEATURE_NAMES

SLOTS = (2, 5, 8, 11, 14)
ADS = 20
N = 20


def decision_costs(params: BanditParams, repeats: int, seed: int) -> dict[str, Any]:
    rng = np.random.default_rng(seed)
    dim = 32
    added, decided, bound = [], [], []
    slots_decided = 0
    for _ in range(repeats):
        user = rng.random(len(FEATURE_NAMES)).astype(np.float32)
        rows = rng.random((ADS, len(ITEM_FEATURE_NAMES))).astype(np.float32)
        embeddings = rng.standard_normal((ADS, dim)).astype(np.float32)
        # Three interests: a PinnerSage user's typical count.
        interests, values = rng.standard_normal((3, dim)), np.sort(rng.random(N))[::-1] * 0.2
        ids = [f"a{i}" for i in range(ADS)]
        started = time.perf_counter()
        request = ad_request(user, interests, ids, rows, embeddings, values, SLOTS, N)
        middle = time.perf_counter()
        decisions = decide(params, request, rng)
        ended = time.perf_counter()
        added.append((ended - started) * 1e6)
        decided.append((ended - middle) * 1e6)
        slots_decided += len(decisions)
        contexts = [slot_contexts(request, slot) for slot in SLOTS]
        started = time.perf_counter()
        for x in contexts:
            int(np.argmax(x @ params.net_mean))
        bound.append((time.perf_counter() - started) * 1e6)
    per_slot = slots_decided / repeats
    return {  # timings in microseconds, reported in ms
        "decisions_per_s": round(per_slot / (median(decided) / 1e6)),
        "added_p99_ms": percentile(added, 99) / 1e3, "added_p50_ms": median(added) / 1e3,
        "decide_p50_ms": median(decided) / 1e3, "decide_p99_ms": percentile(decided, 99) / 1e3,
        "bound_argmax_p50_ms": median(bound) / 1e3,
        "decide_vs_argmax_bound": round(median(decided) / median(bound), 1),
        "repeats": repeats, "slots": len(SLOTS), "ads": ADS,
    }
