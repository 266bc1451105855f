"""One candidates size's figures: medians over the maximum-load passes, and the curve, one
point per offered rate with each path's percentiles."""

from __future__ import annotations

import statistics
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from bench.harness import percentile
from bench.scoring import inworker
from bench.scoring.config import HALF_LOAD_PCT, INWORKER_BAR_PCT
from bench.scoring.passes import BrokerPoint, MaxPass


@dataclass(frozen=True)
class CurvePoint:
    """Every path at one offered rate."""

    offered_pct: int
    offered_rps: float
    broker: BrokerPoint
    http1_ms: list[float]
    http8_ms: list[float]

    def row(self) -> dict[str, Any]:
        """The point as the JSON's ``curve`` lists it."""
        inworker_p50, inworker_p99 = inworker.quantiles_ms(self.broker.inworker)
        produce_p50, produce_p99 = inworker.quantiles_ms(self.broker.inworker_produce)
        return {
            "offered_pct": self.offered_pct,
            "offered_rps": round(self.offered_rps, 2),
            "requests": len(self.broker.worker_ms),
            "p50_ms": percentile(self.broker.worker_ms, 50),
            "p99_ms": percentile(self.broker.worker_ms, 99),
            "echo_p50_ms": percentile(self.broker.echo_ms, 50),
            "echo_p99_ms": percentile(self.broker.echo_ms, 99),
            "inworker_p50_ms": inworker_p50,
            "inworker_p99_ms": inworker_p99,
            "inworker_requests": int(self.broker.inworker[float("inf")]),
            "inworker_produce_p50_ms": produce_p50,
            "inworker_produce_p99_ms": produce_p99,
            "produce_ack_p50_ms": percentile(self.broker.ack_ms, 50),
            "produce_ack_p99_ms": percentile(self.broker.ack_ms, 99),
            "http1_p50_ms": percentile(self.http1_ms, 50),
            "http1_p99_ms": percentile(self.http1_ms, 99),
            "http8_p50_ms": percentile(self.http8_ms, 50),
            "http8_p99_ms": percentile(self.http8_ms, 99),
            "micro_batch_requests": round(self.broker.micro_batch, 2),
        }


def figures(maxima: Sequence[MaxPass], points: Sequence[CurvePoint], serial_ms: Sequence[float],
            floor_ms: Sequence[float]) -> dict[str, Any]:
    """One candidates size's entry of ``by_candidates``."""
    curve = [point.row() for point in points]
    at = {point.offered_pct: (point, row) for point, row in zip(points, curve, strict=True)}
    half, half_row = at[HALF_LOAD_PCT]
    max_cands = round(statistics.median(m.candidates_per_s for m in maxima), 1)
    bare_cands = round(statistics.median(m.bare for m in maxima), 1)
    return {
        "curve": curve,
        "inworker_p99_ms_at_25pct": at[INWORKER_BAR_PCT][1]["inworker_p99_ms"],
        # In-worker time ends at the broker's ack of the ranking: the worker's own wait for
        # it, and the bench's produce-to-ack at that rate, are the broker's floor under it.
        "inworker_produce_p99_ms_at_25pct": at[INWORKER_BAR_PCT][1]["inworker_produce_p99_ms"],
        "produce_ack_p99_ms_at_25pct": at[INWORKER_BAR_PCT][1]["produce_ack_p99_ms"],
        "http_serial_p50_ms": percentile(serial_ms, 50),
        "http_serial_p99_ms": percentile(serial_ms, 99),
        "http_serial_requests": len(serial_ms),
        # The same requests, alternately, to the floor (bench.scoring.floor): what is left
        # of the serial latency once streamrank's own work is taken away.
        "http_serial_floor_p50_ms": percentile(floor_ms, 50),
        "http_serial_floor_p99_ms": percentile(floor_ms, 99),
        "http_serial_vs_floor": round(percentile(serial_ms, 50) / percentile(floor_ms, 50), 3),
        # At half of the maximum, as the bench reported before the curve:
        "p50_ms": half_row["p50_ms"],
        "p99_ms": half_row["p99_ms"],
        "echo_p50_ms": half_row["echo_p50_ms"],
        "echo_p99_ms": half_row["echo_p99_ms"],
        "added_p99_ms": round(half_row["p99_ms"] - half_row["echo_p99_ms"], 3),
        "stages_ms": _stages(half.broker.stages),
        "latency_rate_per_s": half_row["offered_rps"],
        "latency_requests": len(half.broker.worker_ms),
        "echo_requests": len(half.broker.echo_ms),
        "max_candidates_per_s": max_cands,
        "max_requests_per_s": round(max_cands / maxima[0].candidates, 1),
        "bare_candidates_per_s": bare_cands,
        "bare_batched_candidates_per_s": round(statistics.median(m.bare_batched
                                                                 for m in maxima), 1),
        "bare_batched_rows": max(m.batched_rows for m in maxima),
        "ratio": round(max_cands / bare_cands, 4),
        "micro_batch_requests": {
            "at_max": round(statistics.median(m.micro_batch for m in maxima), 1),
            "at_half_load": round(half.broker.micro_batch, 2)},
        "max_load_requests": [m.sent for m in maxima],
        "passes": {
            "max_candidates_per_s": [round(m.candidates_per_s, 1) for m in maxima],
            "bare_candidates_per_s": [round(m.bare, 1) for m in maxima],
        },
    }


def _stages(stages: Sequence[tuple[float, float, float]]) -> dict[str, dict[str, float]]:
    """p50/p99 of each stage of the worker path (see ``Results.stages``)."""
    table = np.asarray(stages, dtype=np.float64).reshape(-1, 3)
    return {name: {"p50": percentile(table[:, k], 50), "p99": percentile(table[:, k], 99)}
            for k, name in enumerate(("to_worker", "in_worker", "from_worker"))}
