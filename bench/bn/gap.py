"""How much a covariate shift costs a model trained before it: the frozen model's click log
loss against the world's truth, after the shift, over that of models retrained after it.

Per scenario (and a control with no shift), on the same world seed: a warm-up ranked by
popularity, a model trained on it (frozen from then on), more requests ranked by it before and
after the change, and an upper bound: models trained on the post-change requests, cross-fitted
(one on the even requests scores the odd ones, and the other way round), so every post-change
row has a prediction from a model that learned the new world but not that row. A scenario that
costs the frozen model little against this bound tests no adaptation.

    python -m bench.bn.gap --scenario control traffic_surge device_mix
"""

from __future__ import annotations

import argparse
import asyncio
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal, get_args

import numpy as np
import orjson

from bench.bn.play import DEFAULT_RATE_PER_S, ClosedLoop, Served, by_click, dataset
from models.ranking_features import RANKER_FEATURE_NAMES, TASK_NAMES
from models.scenarios import load_scenario, shifts_at
from models.scorer import OnnxScorer, PopularityScorer, load_scorer
from models.training import EPS, train
from models.world import World, WorldConfig
from stream.settings import Settings

CONTROL = "control"
CLICK = TASK_NAMES.index("click")
Ranker = Literal["frozen", "popularity"]


def click_log_loss(true_click: np.ndarray, predicted_click: np.ndarray) -> float:
    """Mean cross-entropy of predictions against the true click probabilities: the expected
    log loss on labels drawn from the truth, without their noise."""
    p, q = true_click, np.clip(predicted_click, EPS, 1.0 - EPS)
    return float(-np.mean(p * np.log(q) + (1.0 - p) * np.log1p(-q)))


def fit(served: Sequence[Served], workdir: Path, version: str) -> OnnxScorer:
    report = train(dataset(served), workdir / version, version, progress=False)
    return load_scorer(report.manifest_path, RANKER_FEATURE_NAMES, "cpu")


def clicks(scorer: OnnxScorer, served: Sequence[Served]) -> np.ndarray:
    return np.asarray(scorer.score(np.concatenate([s.rows for s in served]))[:, CLICK])


def truth(served: Sequence[Served]) -> np.ndarray:
    return np.concatenate([s.true_probs[:, CLICK] for s in served])


async def measure(scenario: str, seed: int, warmup: int, warming: int, pre: int, post: int,
                  ranker: Ranker, workdir: Path, rate: float = DEFAULT_RATE_PER_S
                  ) -> dict[str, Any]:
    """One scenario's frozen and retrained click log loss after the change, and phase times.
    ``ranker``: who ranks after the warm-up. A model judged on the items it picked itself is
    judged where it over-rates them most (the winner's curse), which the cross-fitted models,
    scoring rows they did not pick, escape; popularity picks for neither."""
    change_at_s = (warmup + pre) / rate  # the traffic scale is 1 until the change
    shifts = () if scenario == CONTROL else shifts_at(load_scenario(scenario), change_at_s)
    settings = Settings()
    world = World(WorldConfig(seed=seed, dim=settings.embedding_dim, shifts=shifts))
    loop = ClosedLoop(world, settings, seed=seed, rate_per_s=rate)
    wall: dict[str, float] = {}

    def lap(phase: str, started: float) -> None:
        wall[phase] = round(time.perf_counter() - started, 1)

    popularity = by_click(PopularityScorer(RANKER_FEATURE_NAMES, TASK_NAMES))
    started = time.perf_counter()
    warm = await loop.serve(warmup, popularity)
    lap("warmup", started)
    started = time.perf_counter()
    # The first requests only build history: their counters are far colder than later ones.
    frozen = fit(warm[warming:], workdir, f"{scenario}-frozen")
    lap("train_frozen", started)
    started = time.perf_counter()
    rank = by_click(frozen) if ranker == "frozen" else popularity
    before = await loop.serve(pre, rank)
    after = await loop.serve(post, rank)
    lap("serve_frozen", started)
    started = time.perf_counter()
    even = [s for s in after if s.request_index % 2 == 0]
    odd = [s for s in after if s.request_index % 2 == 1]
    on_even, on_odd = fit(even, workdir, f"{scenario}-even"), fit(odd, workdir, f"{scenario}-odd")
    lap("train_retrained", started)
    p = np.concatenate([truth(odd), truth(even)])
    q_retrained = np.concatenate([clicks(on_even, odd), clicks(on_odd, even)])
    q_frozen = np.concatenate([clicks(frozen, odd), clicks(frozen, even)])
    retrained, frozen_loss = click_log_loss(p, q_retrained), click_log_loss(p, q_frozen)
    return {
        "scenario": scenario, "ranker": ranker, "rate_per_s": rate,
        "shifts": [s.kind for s in shifts],
        "change_request": warmup + pre, "change_at_s": change_at_s,
        "end_s": round(after[-1].elapsed_s, 1),
        "frozen_pre": round(click_log_loss(truth(before), clicks(frozen, before)), 5),
        "frozen": round(frozen_loss, 5), "retrained": round(retrained, 5),
        "gap_pct": round((frozen_loss - retrained) / retrained * 100.0, 2),
        "true_ctr_after": round(float(p.mean()), 5),
        "mean_click_after": {"frozen": round(float(q_frozen.mean()), 5),
                             "retrained": round(float(q_retrained.mean()), 5)},
        "requests_per_s": round(loop.requests / loop.wall_s, 1),
        "wall_s": wall,
    }


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scenario", nargs="+", default=[CONTROL, "traffic_surge"])
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--warmup", type=int, default=10_000)
    parser.add_argument("--warming", type=int, default=2_000)
    parser.add_argument("--pre", type=int, default=2_000)
    parser.add_argument("--post", type=int, default=20_000)
    parser.add_argument("--ranker", choices=get_args(Ranker), default="frozen")
    parser.add_argument("--rate", type=float, default=DEFAULT_RATE_PER_S,
                        help="requests per virtual second before any surge")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        for scenario in args.scenario:
            result = asyncio.run(measure(scenario, args.seed, args.warmup, args.warming,
                                         args.pre, args.post, args.ranker, Path(tmp), args.rate))
            print(orjson.dumps(result).decode(), flush=True)


if __name__ == "__main__":
    main()
