"""The passes through the broker in one environment: the maximum (with the bare bound beside
it), and a paced point of the curve (end to end with the worker's own histogram, then the
echo at the same rate)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from bench.harness import paused
from bench.scoring import inworker
from bench.scoring.bare import bare_candidates_per_s, worker_model
from bench.scoring.catalogue import Requests
from bench.scoring.echo import ECHO_TOPICS, echo_topic
from bench.scoring.environment import Environment
from bench.scoring.inworker import Buckets
from bench.scoring.load import Load, Results, echoed_id, mean_batch, producing, ranking_id
from models.scorer import OnnxScorer
from stream.settings import Settings


def in_flight_at_max(settings: Settings) -> int:
    """Requests in flight at maximum load: enough for full micro-batches back to back."""
    return 4 * settings.scoring_batch_max_requests


@dataclass(frozen=True)
class MaxPass:
    """One maximum-load pass, in its own environment."""

    candidates: int
    candidates_per_s: float  # end to end
    micro_batch: float  # mean requests per worker micro-batch
    sent: int  # requests sent
    bare: float  # bare onnxruntime candidates/s on one request's shape
    bare_batched: float  # ... on the micro-batch's shape
    batched_rows: int


@dataclass(frozen=True)
class BrokerPoint:
    """One offered rate through the broker: the worker's round trips and its own histogram's
    delta over them, then the echo's round trips at the same rate."""

    worker_ms: list[float]
    echo_ms: list[float]
    ack_ms: list[float]  # the requests' produce acks in the echo pass: the broker's alone
    inworker: Buckets
    inworker_produce: Buckets  # the worker's wait for the acks of its rankings
    stages: list[tuple[float, float, float]]  # see Results.stages
    micro_batch: float  # mean requests per worker micro-batch


def _worker_results(env: Environment) -> Results:
    return Results(env.bootstrap, env.settings.topic("rankings"), ranking_id, env.worker_alive)


async def maximum(env: Environment, candidates: int) -> MaxPass:
    """End-to-end candidates/s with many requests in flight, and the bare bounds."""
    requests = Requests.build(env.catalogue, candidates, env.rng, f"c{candidates}")
    # Built by the worker's own code: the provider it got, same options, threads and model.
    provider, _ = worker_model(Path(env.worker.log_path), env.manifest.version, env.settings)
    session = OnnxScorer(env.manifest, provider, env.settings.scorer_threads).session
    seconds = env.config.bare_seconds
    bare = bare_candidates_per_s(session, env.manifest, candidates, seconds, env.rng)
    async with producing(env.bootstrap) as producer:
        with paused(env.echo.process, env.config.pause_idle):
            async with _worker_results(env) as results:
                load = Load(producer, env.settings.topic("requests"), results, requests)
                await load.warm(env.config.warmup_requests)
                rate, micro_batch, sent = await load.saturate(in_flight_at_max(env.settings),
                                                              env.config.throughput_seconds)
    rows = max(round(micro_batch * candidates), candidates)
    return MaxPass(candidates, rate, micro_batch, sent, bare,
                   bare_candidates_per_s(session, env.manifest, rows, seconds, env.rng), rows)


async def broker_point(env: Environment, candidates: int, rate: float, count: int
                       ) -> BrokerPoint:
    """``count`` requests at ``rate``/s through the worker, then through the echo; each path
    measured with the other paused."""
    requests = Requests.build(env.catalogue, candidates, env.rng, f"c{candidates}")
    pause = env.config.pause_idle
    ports = env.worker.process_ports
    async with producing(env.bootstrap) as producer:
        with paused(env.echo.process, pause):
            async with _worker_results(env) as results:
                load = Load(producer, env.settings.topic("requests"), results, requests)
                # The histogram before and after the pass, each read once every request
                # answered has been counted: the difference counts this pass's alone.
                base = await inworker.scrape(ports)
                await load.warm(env.config.warmup_requests)
                before = await inworker.settled(ports, base, env.config.warmup_requests,
                                                env.worker_alive)
                # A ranking's produce and total are observed together, at its ack.
                produce_before = await inworker.scrape(ports, inworker.PRODUCE)
                worker_ms = await load.paced(rate, count)
                observed = inworker.delta(await inworker.settled(
                    ports, before, count, env.worker_alive), before)
                produce = inworker.delta(await inworker.scrape(ports, inworker.PRODUCE),
                                         produce_before)
        # The worker is paused during the echo pass: ``count`` keeps that well inside its
        # consumer session timeout.
        with paused(env.worker.process, pause):
            async with Results(env.bootstrap, echo_topic(env.settings, ECHO_TOPICS[1]),
                               echoed_id, env.echo.check) as echo_results:
                echo = Load(producer, echo_topic(env.settings, ECHO_TOPICS[0]), echo_results,
                            requests)
                await echo.warm(env.config.warmup_requests)
                echo_ms = await echo.paced(rate, count)
    return BrokerPoint(worker_ms, echo_ms, echo.acks_ms, observed, produce,
                       list(results.stages), mean_batch(results.results))
