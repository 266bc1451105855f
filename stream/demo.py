"""``streamrank demo``: broker, a worker process and the simulator, end to end, with a report.

The warm-up is simulated, not played in real time: a first model needs far more exploration
data than a short demo could log at its request rate, and the synthetic world can produce it in
a fraction of the time. Only the served phase, whose rankings come from the worker, runs at
``rate`` in real time.

With a scenario (:mod:`models.scenarios`), the world changes at a known moment of the served
phase, so a drift detector's alerts can be scored against the truth.

With retrieval, the served requests carry no candidates: the worker retrieves them from the
user's interests, or, with ``STREAMRANK_RETRIEVAL_SOURCE=trending``, from the trending items.
:func:`compare_retrieval` runs the demo once with each, on the same seeds, and sets their
served CTRs side by side.

The first model learns from the warm-up's log. Retrains learn from production topics, as a
deployment would: the outcomes of the served requests, each with the feature row it was scored
from (the feature log), plus the warm-up's rows, which were simulated and never served.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, get_args

from models.dataset import Dataset
from models.scenarios import Scenario, shifts_at
from models.world import Shift, World, WorldConfig
from stream.outcomes.dataset import outcomes_dataset
from stream.runtime.environment import broker, check_store, describe
from stream.runtime.worker_process import WorkerProcess
from stream.scoring.model_kind import publish_model
from stream.settings import RetrievalSource, Settings
from stream.simulator import Simulator
from stream.training_data import LogReplay

log = logging.getLogger(__name__)

TRAIN_ROWS_PER_RETRAIN = 500_000
# A quarter of the served requests log their feature rows: enough rows for a retrain every
# 10 s at 150 requests/s, while the embedded broker's feature-log and outcomes partitions stay
# well under the size at which it stops answering fetches (docs/scoring.md).
FEATURE_LOG_RATE = 0.25
# Events follow their ranking within a second here; a short window closes outcomes in time for
# the next retrain.
OUTCOME_WINDOW_S = 5.0


def warmup_requests(warmup_s: float, rate: float) -> int:
    """Requests the simulated warm-up plays: ``warmup_s`` of traffic at ``rate``, at least 4."""
    return max(4, round(warmup_s * rate))


@dataclass(frozen=True)
class ScenarioPlan:
    """A scenario placed on the world's clock. The world counts traffic, not the pauses for
    training (stream/simulator.py), so the moment ``change_after_served_s`` into the served
    phase is known before the run: the warm-up's simulated seconds plus that."""

    scenario: Scenario
    change_after_served_s: float
    change_at_s: float  # world seconds (elapsed_s)
    shifts: tuple[Shift, ...]

    @classmethod
    def place(cls, scenario: Scenario, warmup_s: float, rate: float,
              change_after_served_s: float) -> ScenarioPlan:
        change_at_s = warmup_requests(warmup_s, rate) / rate + change_after_served_s
        return cls(scenario, change_after_served_s, change_at_s,
                   shifts_at(scenario, change_at_s))

    def report(self, change_request: int | None, change_ts: float | None) -> dict[str, Any]:
        """``change_request``: the index of the first served request after the change, from
        which a detector's delay is counted in requests; ``change_ts``: its event time."""
        return {
            "name": self.scenario.name, "change_at_s": round(self.change_at_s, 6),
            "change_after_served_s": self.change_after_served_s,
            "change_request": change_request, "change_ts": change_ts,
            "signals": list(self.scenario.signals),
            "incidental": list(self.scenario.incidental),
            "shifts": [asdict(shift) for shift in self.shifts]}


def run_demo(settings: Settings, seconds: float, rate: float, warmup_s: float,
             retrain_every_s: float, workdir: Path,
             scenario: ScenarioPlan | None = None,
             feature_log_rate: float = FEATURE_LOG_RATE,
             retrieval: bool = False) -> dict[str, Any]:
    """Simulate ``warmup_s`` of random feeds, train on that log, publish, then serve for
    ``seconds``, retraining on everything logged so far every ``retrain_every_s`` (0: never).
    A scenario's shifts change the world at their planned moment. With ``retrieval``, served
    requests carry no candidates: the worker retrieves them from
    ``settings.retrieval_source``."""
    check_store(settings)
    workdir.mkdir(parents=True, exist_ok=True)
    # The demo's models are the ones it trains into its workdir.
    settings = settings.model_copy(update={
        "model_dir": workdir.resolve(), "feature_log_rate": feature_log_rate,
        "outcome_window_s": OUTCOME_WINDOW_S})
    with broker(settings) as bootstrap:
        log.info(describe(bootstrap, settings))
        # The closed loop is about quality, not latency: a 5 ms fetch wait leaves the embedded
        # broker (whose fetch cost grows as it fills) headroom for the whole run.
        serving = settings.model_copy(
            update={"scoring_wait_ms": max(settings.scoring_wait_ms, 5)})
        with WorkerProcess(serving, bootstrap) as worker:
            report = asyncio.run(_closed_loop(settings, bootstrap, worker, seconds, rate,
                                              warmup_s, retrain_every_s, workdir, scenario,
                                              retrieval))
            stats = _applied_all(worker, report["events_published"], report["items"])
    return {
        "seconds": report["seconds"],
        "rate": rate,
        "warmup": report["warmup"],
        "requests": report["requests"],
        "events_published": report["events_published"],
        "events_processed": stats["events_processed"],
        "dlq": stats["dlq"],
        "duplicates": stats["duplicates"],
        "users_with_features": stats["users_with_features"],
        "items_with_features": stats["items_with_features"],
        "requests_ranked": stats["requests_ranked"],
        **report["quality"],
        "model": report["model"],
        "retrained": report["retrained"],
        "training": report["training"],
        "outcomes": {"count": stats["outcomes_emitted"],
                     "events_late": stats["outcome_events_late"]},
        "scenario": report["scenario"],
        "retrieval": {
            "source": settings.retrieval_source, "ctr_served": report["quality"]["ctr"]["served"],
            "feed_items_mean": report["quality"]["feed_items_mean"],
            "requests_by_source": stats["retrieved_by_source"],
            "interests_updated": stats["interests_updated"]} if retrieval else None,
        "drift": {"updates": stats["drift_updates"], "alerts": stats["drift_alerts"]},
        "interest_features": settings.interest_features,
        "broker": "configured" if settings.broker_url else "embedded tansu",
        "store": "redis" if settings.redis_url else "in-memory",
        "worker_log": str(worker.log_path),
    }


def _applied_all(worker: WorkerProcess, events: int, items: int) -> dict[str, Any]:
    """Wait until the worker has applied (or dead-lettered) every event and item sent so far."""
    return worker.wait_for(
        lambda s: s["events_processed"] + s["duplicates"] + s["dlq"] >= events
        and s["items_upserted"] >= items, timeout_s=120.0)


async def _closed_loop(settings: Settings, bootstrap: str, worker: WorkerProcess,
                       seconds: float, rate: float, warmup_s: float, retrain_every_s: float,
                       workdir: Path, scenario: ScenarioPlan | None,
                       retrieval: bool) -> dict[str, Any]:
    logs = workdir / "logs.jsonl"
    logs.unlink(missing_ok=True)
    world = World(WorldConfig(dim=settings.embedding_dim,
                              shifts=scenario.shifts if scenario else ()))
    warmup = warmup_requests(warmup_s, rate)
    training = Training(settings, bootstrap, logs, warming_requests=warmup // 2)
    models = Models(settings, bootstrap, worker, workdir, training)
    async with Simulator(settings, bootstrap, world, log_path=logs,
                         retrieval=retrieval) as simulator:
        warmed = await simulator.warm_up(warmup, rate)
        log.info("warm-up: %d requests (%.0f s of traffic) simulated in %.1f s",
                 warmed.warmup_requests, warmup_s, warmed.warmup_wall_s)
        # The first served request must meet features that hold the whole warm-up.
        await asyncio.to_thread(_applied_all, worker, warmed.events, warmed.items)
        remaining = seconds
        while remaining > 0:
            await models.next()
            phase = min(remaining, retrain_every_s or remaining)
            await simulator.run(rate, phase, policy="served")
            remaining -= phase
        report = simulator.report
    return {
        "seconds": round(report.seconds, 3),
        "warmup": {"requests": report.warmup_requests, "simulated_s": warmup_s,
                   "wall_s": round(report.warmup_wall_s, 3),
                   "trained_on_requests": warmup - training.replay.warming_requests},
        # Where the model served last learned: a retrain reads the topics.
        "training": {"source": "topics" if len(models.trained) > 1 else "log",
                     "first_model_source": "log", "outcome_rows": training.outcome_rows},
        "requests": report.requests,
        "items": report.items,
        "events_published": report.events,
        "quality": report.quality(),
        "model": models.trained[0],
        "retrained": [m["version"] for m in models.trained[1:]],
        "scenario": scenario.report(report.change_request, report.change_ts)
        if scenario else None,
    }


def run_arms(settings: Settings, workdir: Path, arms: Mapping[str, Mapping[str, Any]],
             **demo: Any) -> dict[str, dict[str, Any]]:
    """The demo once per arm of a comparison, with that arm's settings changed as given and in
    ``workdir/<arm>``, on the same world and user seeds, rate and seconds. ``demo``:
    :func:`run_demo`'s other arguments."""
    return {arm: run_demo(settings.model_copy(update=dict(changes)), workdir=workdir / arm,
                          **demo)
            for arm, changes in arms.items()}


def compare_retrieval(settings: Settings, workdir: Path, **demo: Any) -> dict[str, Any]:
    """The demo with retrieval, once per source (:func:`run_arms`): the served CTR of interest
    retrieval against that of trending (popularity) retrieval."""
    runs = run_arms(settings, workdir, {source: {"retrieval_source": source}
                                        for source in get_args(RetrievalSource)},
                    retrieval=True, **demo)
    ctr = {source: run["retrieval"]["ctr_served"] for source, run in runs.items()}
    return {
        "retrieval_comparison": {
            "ctr_served": ctr,
            "interests_vs_trending": round(ctr["interests"] / ctr["trending"], 4)
            if ctr["trending"] > 0 else None},
        "runs": runs,
    }


class Training:
    """Where every model's training rows come from. The first model: the warm-up's log,
    replayed through the serving feature code (the warm-up was simulated, not served, so it has
    no outcomes). Retrains: those rows, then every outcome of a served request that carries the
    feature row it was scored from, read from the outcomes topic
    (:func:`stream.outcomes.dataset.outcomes_dataset`).

    The first ``warming_requests`` only warm the replayed store. A model trained on every
    warm-up row learns that item counters say little, because early in a warm-up they are
    nearly empty; at serving they hold the whole warm-up. Measured in 30 s demos: a first
    model trained on all of a 120 s warm-up served at 0.80-0.83x popularity (held-out click
    AUC 0.725 all the same), 0.94x on its second half (offline, on the same served
    requests), and 1.29x on the second half of 240 s.
    """

    def __init__(self, settings: Settings, bootstrap: str, logs: Path,
                 warming_requests: int = 0) -> None:
        self.settings, self.bootstrap, self.logs = settings, bootstrap, logs
        self.replay = LogReplay(settings, warming_requests)
        self.outcome_rows = 0  # in the latest retrain
        self._warmup: Dataset | None = None

    async def dataset(self) -> Dataset:
        if self._warmup is None:
            await self.replay.read(self.logs)
            self._warmup = self.replay.dataset()
            return self._warmup
        served = await outcomes_dataset(self.settings, self.bootstrap)
        self.outcome_rows = len(served.features)
        return self._warmup.followed_by(served)


class Models:
    """Trains, publishes and records each model version of the run."""

    def __init__(self, settings: Settings, bootstrap: str, worker: WorkerProcess,
                 workdir: Path, training: Training) -> None:
        self.settings = settings
        self.bootstrap = bootstrap
        self.worker = worker
        self.workdir = workdir
        self.training = training
        self.trained: list[dict[str, Any]] = []

    async def next(self) -> None:
        """Train on everything logged so far and wait until the worker serves the new
        version."""
        from models.training import DEFAULT_EPOCHS, train  # torch: only once a model trains

        started = time.monotonic()
        dataset = await self.training.dataset()
        version = f"demo-{int(time.time() * 1000)}"
        # Traffic pauses while a model trains: fewer passes over a larger log keep each
        # training to a bounded number of rows (~15 s on 2 cores).
        epochs = max(1, min(DEFAULT_EPOCHS, TRAIN_ROWS_PER_RETRAIN // len(dataset.features)))
        trained = await asyncio.to_thread(train, dataset, self.workdir / version, version,
                                          epochs=epochs, progress=False,
                                          signing_key=self.settings.signing_key)
        update = await publish_model(self.settings, self.bootstrap, trained.manifest_path)
        await asyncio.to_thread(self.worker.wait_for,
                                lambda s: s["model_version"] == update.version, 60.0)
        train_s = time.monotonic() - started
        log.info("serving %s, trained on %d rows in %.1f s", update.version, trained.n_train,
                 train_s)
        self.trained.append({
            "version": update.version, "train_rows": trained.n_train, "epochs": epochs,
            "train_s": round(train_s, 1), "holdout_rows": trained.n_holdout,
            "holdout": trained.metrics})


def summary(report: dict[str, Any], json_out: Path | None) -> str:
    """What a person reads at the end of a run; the report itself is the JSON."""
    warmup, model, retrieval = report["warmup"], report["model"], report["retrieval"]
    versions = (report["served_ctr_by_model"] if retrieval
                else report["served_vs_popularity_by_model"])
    lines = [
        f"streamrank demo: {report['seconds']:.0f} s served at {report['rate']:g} requests/s, "
        f"after a simulated warm-up of {warmup['simulated_s']:g} s "
        f"({warmup['requests']:,} random feeds, made in {warmup['wall_s']:.1f} s)",
        *(_retrieval_lines(report) if retrieval else _reference_lines(report)),
        f"ads (the bandit's, from the world's expectations): {report['ads']['per_request']:.2f} "
        f"a request, revenue {report['ads']['revenue_per_request']:.4f} and organic "
        f"engagement cost {report['ads']['engagement_cost_per_request']:.4f} a request",
        f"events: {report['events_published']:,} published, {report['events_processed']:,} "
        f"applied, {report['dlq']} in the DLQ; {report['timeouts']} requests timed out",
        f"outcomes: {report['outcomes']['count']:,} joined"
        + (f"; retrains learned from the topics ({report['training']['outcome_rows']:,} "
           "served rows with their logged features, after the warm-up's)"
           if report["training"]["source"] == "topics" else ""),
        f"models ({'served CTR' if retrieval else 'served / popularity'}): first "
        f"{model['version']} on {model['train_rows']:,} rows "
        f"(click AUC {model['holdout']['click']['auc']:.3f})",
        *(f"  {version}  {value:.{4 if retrieval else 2}f}"
          for version, value in versions.items()),
    ]
    if report["scenario"] is not None:
        lines.append(_scenario_line(report["scenario"]))
    if json_out is not None:
        lines.append(f"full report: {json_out}")
    return "\n".join(lines)


def comparison_summary(report: dict[str, Any], json_out: Path | None) -> str:
    """Each run's summary, then their served CTRs side by side."""
    comparison = report["retrieval_comparison"]
    ratio = comparison["interests_vs_trending"]
    return "\n".join([
        *(f"--- retrieval from {source}\n{summary(run, None)}"
          for source, run in report["runs"].items()),
        "--- served CTR (true expected clicks per shown item), same seeds, rate and seconds:",
        *(f"  {source:<11}{ctr:.4f}" for source, ctr in comparison["ctr_served"].items()),
        f"  interests / trending: {ratio:.3f}" if ratio is not None else
        "  interests / trending: no trending clicks to compare with",
        *([f"full report: {json_out}"] if json_out is not None else []),
    ])


def _reference_lines(report: dict[str, Any]) -> list[str]:
    ctr = report["ctr"]
    popularity = ctr["popularity"]
    return [
        f"expected CTR per shown item, on the same {report['served_requests']:,} served "
        "requests:",
        *(f"  {name:<11}{ctr[name]:.4f}" + (f"  ({ctr[name] / popularity:.2f}x popularity)"
                                            if name == "served" and popularity > 0 else "")
          for name in ("served", "popularity", "random", "oracle"))]


def _retrieval_lines(report: dict[str, Any]) -> list[str]:
    """The served feeds were retrieved by the worker: no reference ranks the same items."""
    retrieval = report["retrieval"]
    by_source = retrieval["requests_by_source"]
    return [
        f"expected CTR per shown item of the {report['served_requests']:,} served feeds, "
        f"retrieved from {retrieval['source']}:",
        f"  {'served':<11}{report['ctr']['served']:.4f}",
        f"retrieval: {by_source['interests']:,} requests from interests, "
        f"{by_source['trending']:,} from trending, {by_source['none']:,} with nothing found; "
        f"{retrieval['feed_items_mean']:g} items per feed"]


def _scenario_line(scenario: dict[str, Any]) -> str:
    request = scenario["change_request"]
    at = "after the last request" if request is None else f"from served request {request:,}"
    return (f"scenario {scenario['name']}: the world changed {scenario['change_after_served_s']:g}"
            f" s into the served phase (world clock {scenario['change_at_s']:g} s), {at}; "
            f"expected alerts: {', '.join(scenario['signals'])}")
