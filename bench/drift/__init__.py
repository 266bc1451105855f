"""``streamrank bench drift``: each scenario through the simulator, the broker, the worker and
the alerts topic, scored against its known change point and against River's ADWIN alone on the
raw series of the same signals, in the same run.

Every run has a private broker, so no run's topics weigh on the next (the embedded broker slows
down as a partition fills). The worker runs every role; the model is trained once per run and
never retrained, so the only change in the world is the scenario's. The feature log logs every
request here (``feature_log_rate`` 1), so the features' raw series and the role's are the same
requests; in a deployment its rate trades delay on ``feature.*`` for volume.
"""

from __future__ import annotations

import asyncio
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
from river import drift

from bench.drift.delivery import run_delivery
from bench.drift.truth import Clock, false_alarms_alone, raw_series, score_scenario
from bench.harness import Record, TopicTail, run_settings
from models.scenarios import load_scenario
from schemas import DriftAlert, FeatureLog, Outcome, RankingResult, decode
from schemas import Record as WireRecord
from stream.demo import ScenarioPlan, run_demo
from stream.runtime.broker import embedded_broker
from stream.runtime.worker_process import WorkerProcess
from stream.settings import Settings

SCENARIOS = ("label_rate", "covariate", "stale_calibration")
R = TypeVar("R", bound=WireRecord)


@dataclass(frozen=True)
class DriftBenchConfig:
    scenarios: tuple[str, ...] = SCENARIOS
    seconds: float = 40.0  # served, per scenario
    change_after_s: float = 20.0
    control_seconds: float = 60.0
    rate: float = 120.0
    warmup_s: float = 120.0
    partitions: int = 8  # spreads the fully logged run over partitions of a sane size
    delivery_alerts: int = 300
    delivery_rate: float = 20.0  # alerts per second


@dataclass
class Run:
    settings: Settings
    report: dict[str, Any]
    rankings: list[RankingResult]
    outcomes: list[Outcome]
    logs: list[FeatureLog]
    alerts: list[DriftAlert]


def run_drift_bench(settings: Settings, config: DriftBenchConfig) -> dict[str, Any]:
    scenarios = {}
    for name in config.scenarios:
        plan_of = _planner(name, config)
        with embedded_broker() as bootstrap:
            run = _play(settings, bootstrap, config, config.seconds, plan_of)
        scenarios[name] = _score(run, settings)
    with embedded_broker() as bootstrap:
        control_run = _play(settings, bootstrap, config, config.control_seconds, None)
        control = _control(control_run, settings)
        speed = _speed(control_run.settings, control["updates"])
    with embedded_broker() as bootstrap:
        delivery = run_delivery(settings, bootstrap, config.delivery_alerts,
                                config.delivery_rate)
    updates_ratio = speed["updates_per_s"] / speed["river_updates_per_s"]
    delays = [s["delay_ratio"] for s in scenarios.values() if s["delay_ratio"] is not None]
    per_change = [s["alerts_per_change"] for s in scenarios.values() if not s["missed"]]
    result = {
        "scenarios": scenarios,
        "control": control,
        "alerts_per_change": round(float(np.mean(per_change)), 3) if per_change else None,
        **speed,
        "updates_ratio": round(updates_ratio, 4),
        "delivery": delivery,
        "config": config.__dict__,
    }
    result["bar_met"] = bool(
        all(s["missed"] == 0 for s in scenarios.values())
        and len(delays) == len(scenarios) and max(delays) <= 1.5
        and control["false_alarms_per_10k"] <= 0.5 and control["events"] >= 100_000
        and result["alerts_per_change"] is not None and result["alerts_per_change"] <= 1.5)
    return result


def _planner(name: str, config: DriftBenchConfig) -> ScenarioPlan:
    return ScenarioPlan.place(load_scenario(name), config.warmup_s, config.rate,
                              config.change_after_s)


def _play(settings: Settings, bootstrap: str, config: DriftBenchConfig, seconds: float,
          plan: ScenarioPlan | None) -> Run:
    run = run_settings(settings, "drift").model_copy(update={
        "broker_url": bootstrap, "partitions": config.partitions})
    with tempfile.TemporaryDirectory(prefix="streamrank-drift-") as workdir:
        report = run_demo(run, seconds=seconds, rate=config.rate, warmup_s=config.warmup_s,
                          retrain_every_s=0, workdir=Path(workdir), scenario=plan,
                          feature_log_rate=1.0)
    return asyncio.run(_read_run(run, bootstrap, report))


async def _read_run(settings: Settings, bootstrap: str, report: dict[str, Any]) -> Run:
    async def every(suffix: str, record_type: type[R]) -> list[R]:
        got: list[Record] = []
        async with TopicTail(bootstrap, settings.topic(suffix),
                             lambda record, _: got.append(record)) as tail:
            await tail.read_to_end(timeout_s=120)
        return [decode(r.value or b"", record_type, settings.limits) for r in got]

    return Run(settings, report, await every("rankings", RankingResult),
               await every("outcomes", Outcome), await every("feature-log", FeatureLog),
               await every("drift-alerts", DriftAlert))


def _score(run: Run, settings: Settings) -> dict[str, Any]:
    scenario = run.report["scenario"]
    series = raw_series(run.rankings, run.outcomes, run.logs, settings.drift_features)
    clock = Clock(np.sort([r.ts for r in run.rankings]))
    scored = score_scenario(run.alerts, series, clock, scenario["change_ts"],
                            scenario["signals"], scenario["incidental"])
    return {**scored, "change_request": scenario["change_request"],
            "requests": run.report["requests"], "alerts": len(run.alerts),
            "signal_values": int(sum(len(s.values) for s in series.values())),
            "ctr_served_vs_popularity": run.report["ctr"]}


def _control(run: Run, settings: Settings) -> dict[str, Any]:
    series = raw_series(run.rankings, run.outcomes, run.logs, settings.drift_features)
    updates = int(sum(len(s.values) for s in series.values()))
    return {
        "events": run.report["events_published"], "requests": run.report["requests"],
        "updates": updates, "false_alarms": len(run.alerts),
        "false_alarm_signals": sorted({a.signal for a in run.alerts}),
        "false_alarms_per_10k": round(1e4 * len(run.alerts) / max(updates, 1), 4),
        "adwin_alone_false_alarms_per_10k": round(
            1e4 * false_alarms_alone(series) / max(updates, 1), 4)}


def _speed(settings: Settings, updates: int) -> dict[str, Any]:
    """A fresh drift role (a group of its own) catching up on a run's topics, from its first
    update to its last, against River's bare ADWIN update on as many values."""
    catching_up = settings.model_copy(update={
        "roles": "drift", "drift_group": f"{settings.group('drift')}-catch-up"})
    with WorkerProcess(catching_up, str(settings.broker_url)) as worker:
        worker.wait_for(lambda s: s["drift_updates"] > 0, timeout_s=120)
        started = time.perf_counter()
        worker.wait_for(lambda s: s["drift_updates"] >= updates, timeout_s=300)
        role_s = time.perf_counter() - started
    values = np.random.default_rng(0).normal(size=min(updates, 2_000_000)).tolist()
    detector = drift.ADWIN()
    started = time.perf_counter()
    for value in values:
        detector.update(value)
    river_s = time.perf_counter() - started
    return {"updates_per_s": round(updates / role_s, 1),
            "river_updates_per_s": round(len(values) / river_s, 1)}
